"""Label Studio regions <-> Ultralytics YOLO labels and predictions, for every task type (pure functions).

Label Studio side (https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks,
https://labelstud.io/guide/predictions): coordinates are percent of the image
(``original_width`` x ``original_height``):

- rectangle ``value``: ``x, y`` (top-left corner), ``width, height`` and ``rotation``, degrees
  clockwise around the top-left corner (image y axis points down). ``width`` is percent of the
  image width and ``height`` percent of the image height whatever the rotation.
- polygon ``value.points``: ``[[x, y], ...]``.
- keypoint ``value``: ``x, y`` (the point) and ``width`` (the drawn size).
- brush ``value``: ``format: "rle"`` and ``rle``, label-studio-sdk's RLE
  (``label_studio_sdk.converter.brush``) of the RGBA bytes of an
  ``original_height x original_width`` image; the alpha channel is the mask (any alpha > 0,
  as the SDK's own COCO export reads it).
- choices ``value.choices``: ``[name]``.

YOLO side (https://docs.ultralytics.com/datasets/), one line per object, normalised to [0, 1]:
detect ``cls cx cy w h``; obb ``cls x1 y1 x2 y2 x3 y3 x4 y4``; segment ``cls x1 y1 x2 y2 ...``;
pose ``cls cx cy w h px1 py1 v1 ...`` (``kpt_shape [K, 3]``, ``v=2`` visible, a missing
keypoint is ``0 0 0``).

Rotation conventions agree: a Label Studio rectangle with ``rotation`` r (degrees) is the
Ultralytics ``xywhr`` box with ``r`` in radians and the same width and height, both rotating
clockwise on screen. Ultralytics' ``xyxyxyxy`` corners come in a different order (the local
bottom-right first); ``corners_to_rectangle`` accepts any cyclic order and picks the corner
that gives the smallest rotation, so nearly axis-aligned boxes get a rotation near 0.

Pixel masks become polygons through pixel centres: mask pixel ``(i, j)`` is the point
``((j + 0.5) / W, (i + 0.5) / H)``, and ``polygons_to_mask`` fills polygons back onto the
same pixels.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt

from labelloop.labels import MIN_BOX_PX, TrainSpec, rectangle_to_yolo, xyxy_to_rectangle

# A polygon whose area after clipping to the image is below this (pixels^2) is degenerate.
MIN_POLYGON_AREA_PX = 1.0
# Connected parts of a brush mask with fewer pixels than this are specks and dropped.
MIN_BRUSH_AREA_PX = 3.0
# Predicted keypoints below this confidence are left out of predictions.
MIN_KEYPOINT_CONF = 0.5
# ``value.width`` of predicted keypoint regions (percent of the image width; how big LS draws them).
KEYPOINT_WIDTH = 0.5
# Polygons traced from predicted masks are simplified to this tolerance (pixels).
PREDICTION_POLYGON_EPSILON_PX = 1.0

_LINE_TASKS = ("detect", "obb", "segment", "pose")


# ---------------------------------------------------------------------------- geometry


_Scalar = TypeVar("_Scalar", bound=np.generic)


@overload
def _np(x: Any) -> npt.NDArray[np.float64]: ...
@overload
def _np(x: Any, dtype: type[_Scalar]) -> npt.NDArray[_Scalar]: ...
def _np(x: Any, dtype: type[np.generic] = np.float64) -> npt.NDArray[Any]:
    """A numpy array from a list, numpy array or (CPU/GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _fmt(values: Any) -> str:
    return " ".join(f"{float(v):.6f}" for v in values)


def region_id() -> str:
    """A new region id the way Label Studio makes them: 10 hex characters."""
    return uuid.uuid4().hex[:10]


def rectangle_corners(value: Mapping[str, Any], width: float, height: float) -> npt.NDArray[np.float64]:
    """The corners of a Label Studio rectangle, in pixels.

    Args:
        value: ``x, y, width, height`` in percent, optional ``rotation`` in degrees clockwise
            around the top-left corner.
        width, height: image size in pixels.

    Returns:
        float array (4, 2): top-left, top-right, bottom-right, bottom-left of the unrotated
        box, rotated (clockwise on screen, image y down). Not clamped.

    Raises:
        KeyError, TypeError, ValueError: a missing or non-numeric field.
    """
    W, H = float(width), float(height)
    x = float(value["x"]) / 100 * W
    y = float(value["y"]) / 100 * H
    w = float(value["width"]) / 100 * W
    h = float(value["height"]) / 100 * H
    a = math.radians(float(value.get("rotation") or 0.0))
    cos, sin = math.cos(a), math.sin(a)
    local = np.array([(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)])
    rot = np.array([[cos, -sin], [sin, cos]])
    return np.asarray(local @ rot.T + np.array([x, y]), dtype=np.float64)


def _is_rectangle(pts: npt.NDArray[np.float64], rel_tol: float = 1e-3) -> bool:
    edges = np.roll(pts, -1, axis=0) - pts
    lengths = np.linalg.norm(edges, axis=1)
    scale = max(float(lengths.max()), 1e-12)
    if abs(lengths[0] - lengths[2]) > rel_tol * scale or abs(lengths[1] - lengths[3]) > rel_tol * scale:
        return False
    return abs(float(edges[0] @ edges[1])) <= rel_tol * scale * scale


def corners_to_rectangle(corners: Any, width: float, height: float) -> dict[str, float]:
    """Convert a rotated box given by its corners (pixels) to Label Studio rectangle values.

    Args:
        corners: (4, 2) corners in cyclic order, either direction, any starting corner
            (Ultralytics ``obb.xyxyxyxy``, a YOLO obb label line times the image size). Four
            points that do not form a rectangle (e.g. clamped corners), or any other number
            of points, are replaced by their minimum-area rectangle (``cv2.minAreaRect``).
        width, height: image size in pixels.

    Returns:
        ``{"x", "y", "width", "height", "rotation"}``: percent of the image and degrees in
        [0, 360), clockwise around ``(x, y)``. Of the four equivalent descriptions the one with
        the rotation closest to 0 is returned. Not clamped.

    Raises:
        ValueError: fewer than 3 points.
    """
    pts: npt.NDArray[np.float64] = _np(corners).reshape(-1, 2)
    if len(pts) < 3:
        raise ValueError(f"a rotated box needs at least 3 points, got {len(pts)}")
    if len(pts) != 4 or not _is_rectangle(pts):
        import cv2

        pts = np.asarray(cv2.boxPoints(cv2.minAreaRect(pts.astype(np.float32))), dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    if float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) < 0:  # counter-clockwise on screen
        pts = pts[::-1]
    edges = np.roll(pts, -1, axis=0) - pts
    cosines = edges[:, 0] / np.maximum(np.linalg.norm(edges, axis=1), 1e-12)
    i = int(np.argmax(cosines + 1e-9 * np.arange(4)[::-1]))  # ties (45 degrees): the first corner
    a, b, d = pts[i], pts[(i + 1) % 4], pts[(i - 1) % 4]
    rotation = math.degrees(math.atan2(b[1] - a[1], b[0] - a[0])) % 360
    if rotation > 360 - 1e-9:
        rotation = 0.0
    W, H = float(width), float(height)
    return {
        "x": float(a[0]) / W * 100,
        "y": float(a[1]) / H * 100,
        "width": float(np.linalg.norm(b - a)) / W * 100,
        "height": float(np.linalg.norm(d - a)) / H * 100,
        "rotation": rotation,
    }


def clip_polygon(points: Any) -> npt.NDArray[np.float64]:
    """Clip a polygon to the unit square (Sutherland-Hodgman), dropping repeated points.

    Args:
        points: (P, 2) normalised ``x, y``.

    Returns:
        float array (Q, 2) of the clipped polygon (Q may be 0).
    """
    out = [tuple(p) for p in _np(points).reshape(-1, 2)]
    for axis, bound, keep_below in ((0, 0.0, False), (0, 1.0, True), (1, 0.0, False), (1, 1.0, True)):

        def inside(p: tuple[float, ...], axis: int = axis, bound: float = bound, keep_below: bool = keep_below) -> bool:
            return p[axis] <= bound if keep_below else p[axis] >= bound

        def cross(
            p: tuple[float, ...], q: tuple[float, ...], axis: int = axis, bound: float = bound
        ) -> tuple[float, float]:
            t = (bound - p[axis]) / (q[axis] - p[axis])
            r = [p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])]
            r[axis] = bound
            return (r[0], r[1])

        src, out = out, []
        for k, cur in enumerate(src):
            prev = src[k - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(cross(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cross(prev, cur))
    dedup: list[tuple[float, ...]] = []
    for p in out:
        if not dedup or abs(p[0] - dedup[-1][0]) > 1e-12 or abs(p[1] - dedup[-1][1]) > 1e-12:
            dedup.append(p)
    while len(dedup) > 1 and abs(dedup[0][0] - dedup[-1][0]) <= 1e-12 and abs(dedup[0][1] - dedup[-1][1]) <= 1e-12:
        dedup.pop()
    return np.asarray(dedup, dtype=np.float64).reshape(-1, 2)


def polygon_area(points: Any, width: float = 1.0, height: float = 1.0) -> float:
    """Area of a simple polygon (shoelace), scaled by ``width * height``.

    Args:
        points: (P, 2) ``x, y``; normalised points with the image size give pixels^2.
    """
    p = _np(points).reshape(-1, 2)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return abs(float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))) / 2 * float(width) * float(height)


def mask_to_polygons(
    mask: Any, min_area_px: float = 0.0, epsilon_px: float = 0.0
) -> tuple[list[npt.NDArray[np.float64]], int]:
    """Trace the external contours of a binary mask, one polygon per connected part (8-connected).

    Args:
        mask: (H, W) array; nonzero is foreground.
        min_area_px: parts with fewer pixels than this are dropped as specks.
        epsilon_px: ``cv2.approxPolyDP`` tolerance in mask pixels; 0 keeps every contour corner
            (``CHAIN_APPROX_SIMPLE``).

    Returns:
        ``(polygons, specks)``: (P, 2) float arrays normalised by the mask size through pixel
        centres (``(col + 0.5) / W, (row + 0.5) / H``), and the number of dropped specks. Holes
        are not traced (YOLO polygons have none).
    """
    import cv2

    m = (_np(mask, np.float32) > 0).astype(np.uint8)
    H, W = m.shape
    specks = 0
    if min_area_px > 0:
        n, cc, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        small = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] < min_area_px]
        specks = len(small)
        if small:
            m[np.isin(cc, small)] = 0
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        if epsilon_px > 0:
            c = cv2.approxPolyDP(c, epsilon_px, True)
        pts = c.reshape(-1, 2).astype(np.float64) + 0.5
        polygons.append(pts / np.array([W, H], dtype=np.float64))
    return polygons, specks


def polygons_to_mask(polygons: Sequence[Any], width: int, height: int) -> npt.NDArray[np.bool_]:
    """Rasterise normalised polygons (pixel-centre convention, see ``mask_to_polygons``).

    Returns:
        bool array (height, width); a pixel is set when its centre is inside or on a polygon, or
        (``cv2.fillPoly``'s rounding) within half a pixel of its outline.
    """
    import cv2

    shift = 8
    m = np.zeros((int(height), int(width)), dtype=np.uint8)
    scaled = []
    for poly in polygons:
        p = _np(poly).reshape(-1, 2) * np.array([width, height], dtype=np.float64) - 0.5
        if len(p) >= 3:
            scaled.append(np.round(p * (1 << shift)).astype(np.int32))
    if scaled:
        cv2.fillPoly(m, scaled, 1, lineType=cv2.LINE_8, shift=shift)
    return m.astype(bool)


def brush_to_mask(value: Mapping[str, Any], original_width: int, original_height: int) -> npt.NDArray[np.bool_]:
    """Decode a Label Studio brush ``value`` to its mask.

    Args:
        value: ``{"format": "rle", "rle": [int, ...]}``; label-studio-sdk's ``decode_rle`` gives
            ``original_height * original_width * 4`` RGBA bytes.
        original_width, original_height: the region's ``original_width/height``.

    Returns:
        bool array (original_height, original_width): alpha > 0.

    Raises:
        ValueError: not ``rle`` format, or the decoded size does not match the image.
    """
    from label_studio_sdk.converter.brush import decode_rle

    if value.get("format", "rle") != "rle" or not value.get("rle"):
        raise ValueError(f"brush format {value.get('format')!r} without rle data")
    flat = decode_rle(value["rle"])
    W, H = int(original_width), int(original_height)
    if flat.size != W * H * 4:
        raise ValueError(f"rle holds {flat.size} bytes, expected {H}x{W}x4 = {W * H * 4}")
    return np.asarray(flat.reshape(H, W, 4)[:, :, 3] > 0)


def mask_to_brush(mask: Any) -> dict[str, Any]:
    """Encode a mask as a Label Studio brush ``value`` (label-studio-sdk ``mask2rle``, 255 where set).

    Args:
        mask: (H, W) array, nonzero is foreground; H x W must be the image's original size.

    Returns:
        ``{"format": "rle", "rle": [int, ...]}``.
    """
    from label_studio_sdk.converter.brush import mask2rle

    m = (_np(mask, np.float32) > 0).astype(np.uint8) * 255
    return {"format": "rle", "rle": [int(v) for v in mask2rle(m)]}


def _unletterbox(mask: npt.NDArray[np.float32], width: int, height: int) -> npt.NDArray[np.bool_]:
    """A model-resolution mask as a (height, width) bool mask of the original image.

    A mask of another aspect ratio is taken to be letterboxed (centred padding), as
    Ultralytics' ``ops.scale_masks`` does; its padding is cropped before resizing.
    """
    import cv2

    h1, w1 = mask.shape
    if (h1, w1) == (height, width):
        return np.asarray(mask > 0.5)
    gain = min(h1 / height, w1 / width)
    pad_w = (w1 - max(round(width * gain), 1)) / 2
    pad_h = (h1 - max(round(height * gain), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    bottom, right = top + max(round(height * gain), 1), left + max(round(width * gain), 1)
    crop = np.ascontiguousarray(mask[top:bottom, left:right], dtype=np.float32)
    return np.asarray(cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR) > 0.5)


# ---------------------------------------------------------------------------- LS -> YOLO


def _first_label(region: Mapping[str, Any], key: str) -> tuple[str | None, str | None]:
    """(label, None) or (None, reason)."""
    value = region.get("value")
    if not isinstance(value, Mapping):
        return None, "malformed value (not an object)"
    names = value.get(key)
    if not names:
        return None, "no label"
    if not isinstance(names, list):
        return None, f"malformed value ({key} is not a list)"
    return str(names[0]), None


def _where(region: Mapping[str, Any]) -> str:
    return f"region {region.get('id')} ({region.get('type')})"


def _rect_pixels_ok(corners_n: npt.NDArray[np.float64], width: int, height: int) -> bool:
    """Both sides of the minimum-area rectangle of normalised corners are >= MIN_BOX_PX pixels."""
    import cv2

    px = (corners_n * np.array([width, height], dtype=np.float64)).astype(np.float32)
    (_, _), (w, h), _ = cv2.minAreaRect(px)
    return min(w, h) >= MIN_BOX_PX


def annotation_to_yolo(
    result: list[dict[str, Any]], spec: TrainSpec, class_ids: Mapping[str, int], width: int, height: int
) -> tuple[list[str], list[str]]:
    """Turn one annotation's ``result`` into YOLO label lines for ``spec.task``.

    Only regions whose ``from_name`` is one of ``spec.control_tags`` count. Per task:

    - ``detect``: rectangles -> ``cls cx cy w h`` (a rotated rectangle becomes the axis-aligned
      box around it), clamped to the image.
    - ``obb``: rectangles -> ``cls x1 y1 .. x4 y4``, the corners top-left, top-right,
      bottom-right, bottom-left of the unrotated box (clockwise on screen), each clamped to
      [0, 1].
    - ``segment``: polygons -> one ``cls x1 y1 ...`` line, clipped to the image; brush masks ->
      one line per connected part (external contours, ``cv2.findContours``), parts under
      ``MIN_BRUSH_AREA_PX`` pixels dropped.
    - ``pose``: rectangles of ``spec.from_name`` are instances; each keypoint of
      ``spec.keypoint_from_name`` belongs to the rectangle its ``parentID`` names, else to the
      smallest rectangle containing it. Line ``cls cx cy w h`` then ``x y 2`` per keypoint in
      ``spec.keypoint_labels`` order, ``0 0 0`` for a missing one.

    Args:
        result: the annotation's ``result`` list (Label Studio JSON export).
        spec: what is trained; ``spec.task`` must be detect, obb, segment or pose.
        class_ids: label -> class id (the dataset's stable ids, not the config order).
        width, height: the (EXIF-corrected) image size in pixels. Normalised coordinates come
            from the percents; the size only sets the pixel thresholds (boxes narrower than
            ``MIN_BOX_PX``, polygons under ``MIN_POLYGON_AREA_PX``), and obb angles.

    Returns:
        ``(lines, dropped)``: label lines (coordinates with 6 decimals) and a human-readable
        reason per dropped region: no label, label without class id, malformed value,
        degenerate after clamping, keypoint without a box.

    Raises:
        ValueError: ``spec.task`` is not one of detect, obb, segment, pose.
    """
    if spec.task not in _LINE_TASKS:
        raise ValueError(f"annotation_to_yolo converts {', '.join(_LINE_TASKS)}, not {spec.task}")
    if spec.task == "pose":
        return _pose_lines(result, spec, class_ids, width, height)
    lines: list[str] = []
    dropped: list[str] = []
    wanted = ("rectanglelabels",) if spec.task in ("detect", "obb") else ("polygonlabels", "brushlabels")
    for region in result:
        if region.get("from_name") != spec.from_name:
            continue
        where = _where(region)
        rtype = region.get("type")
        if rtype not in wanted:
            dropped.append(f"{where}: region type {rtype!r} is not trained as {spec.task}")
            continue
        label, reason = _first_label(region, str(rtype))
        if label is None:
            dropped.append(f"{where}: {reason}")
            continue
        if label not in class_ids:
            dropped.append(f"{where}: label {label!r} has no class id (not in the label config)")
            continue
        cls = int(class_ids[label])
        value = region["value"]
        try:
            if spec.task == "detect":
                box = rectangle_to_yolo(value, width, height)
                if box is None:
                    dropped.append(f"{where}: degenerate box (under {MIN_BOX_PX:g} px after clamping)")
                    continue
                lines.append(f"{cls} {_fmt(box)}")
            elif spec.task == "obb":
                corners = np.clip(rectangle_corners(value, width, height) / np.array([width, height]), 0.0, 1.0)
                if not _rect_pixels_ok(corners, width, height):
                    dropped.append(f"{where}: degenerate box (under {MIN_BOX_PX:g} px after clamping)")
                    continue
                lines.append(f"{cls} {_fmt(corners.ravel())}")
            elif rtype == "polygonlabels":
                points = _np(value["points"]).reshape(-1, 2) / 100
                if len(points) < 3:
                    dropped.append(f"{where}: degenerate polygon ({len(points)} points)")
                    continue
                clipped = clip_polygon(points)
                if len(clipped) < 3 or polygon_area(clipped, width, height) < MIN_POLYGON_AREA_PX:
                    dropped.append(
                        f"{where}: degenerate polygon (under 3 distinct points or {MIN_POLYGON_AREA_PX:g} px^2 "
                        "after clipping to the image)"
                    )
                    continue
                lines.append(f"{cls} {_fmt(clipped.ravel())}")
            else:
                lines_before = len(lines)
                W0, H0 = int(region["original_width"]), int(region["original_height"])
                mask = brush_to_mask(value, W0, H0)
                min_px = MIN_BRUSH_AREA_PX * (W0 * H0) / max(1.0, float(width) * float(height))
                polygons, specks = mask_to_polygons(mask, min_area_px=min_px)
                thin = 0
                for poly in polygons:
                    if len(poly) < 3 or polygon_area(poly, width, height) < MIN_POLYGON_AREA_PX:
                        thin += 1
                        continue
                    lines.append(f"{cls} {_fmt(np.clip(poly, 0.0, 1.0).ravel())}")
                if specks or thin:
                    dropped.append(
                        f"{where}: {specks + thin} brush part(s) dropped ({specks} under {MIN_BRUSH_AREA_PX:g} px, "
                        f"{thin} without area)"
                    )
                if len(lines) == lines_before and not (specks or thin):
                    dropped.append(f"{where}: empty brush mask")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            dropped.append(f"{where}: malformed value ({type(exc).__name__}: {exc})")
    return lines, dropped


def _pose_lines(
    result: list[dict[str, Any]], spec: TrainSpec, class_ids: Mapping[str, int], width: int, height: int
) -> tuple[list[str], list[str]]:
    if not spec.keypoint_from_name or not spec.keypoint_labels:
        raise ValueError("a pose TrainSpec needs keypoint_from_name and keypoint_labels")
    dropped: list[str] = []
    # Kept boxes: id -> (cls, (cx, cy, w, h), (x1, y1, x2, y2) normalised, keypoints by slot)
    boxes: dict[str, tuple[int, tuple[float, float, float, float], list[tuple[float, float] | None]]] = {}
    dropped_boxes: set[str] = set()
    K = len(spec.keypoint_labels)
    for n, region in enumerate(result):
        if region.get("from_name") != spec.from_name:
            continue
        where = _where(region)
        rid = str(region.get("id", f"#{n}"))
        if region.get("type") != "rectanglelabels":
            dropped.append(f"{where}: region type {region.get('type')!r} is not a pose box")
            dropped_boxes.add(rid)
            continue
        label, reason = _first_label(region, "rectanglelabels")
        if label is None or label not in class_ids:
            dropped.append(f"{where}: {reason or f'label {label!r} has no class id (not in the label config)'}")
            dropped_boxes.add(rid)
            continue
        try:
            box = rectangle_to_yolo(region["value"], width, height)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            dropped.append(f"{where}: malformed value ({type(exc).__name__}: {exc})")
            dropped_boxes.add(rid)
            continue
        if box is None:
            dropped.append(f"{where}: degenerate box (under {MIN_BOX_PX:g} px after clamping)")
            dropped_boxes.add(rid)
            continue
        boxes[rid] = (int(class_ids[label]), box, [None] * K)

    def contains(box: tuple[float, float, float, float], x: float, y: float) -> bool:
        cx, cy, w, h = box
        eps = 1e-9
        return cx - w / 2 - eps <= x <= cx + w / 2 + eps and cy - h / 2 - eps <= y <= cy + h / 2 + eps

    for region in result:
        if region.get("from_name") != spec.keypoint_from_name:
            continue
        where = _where(region)
        if region.get("type") != "keypointlabels":
            dropped.append(f"{where}: region type {region.get('type')!r} is not a keypoint")
            continue
        label, reason = _first_label(region, "keypointlabels")
        if label is None:
            dropped.append(f"{where}: {reason}")
            continue
        if label not in spec.keypoint_labels:
            dropped.append(f"{where}: keypoint label {label!r} not in the label config")
            continue
        try:
            x = float(region["value"]["x"]) / 100
            y = float(region["value"]["y"]) / 100
        except (KeyError, TypeError, ValueError) as exc:
            dropped.append(f"{where}: malformed value ({type(exc).__name__}: {exc})")
            continue
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            dropped.append(f"{where}: keypoint outside the image")
            continue
        parent = region.get("parentID")
        owner: str | None = None
        if parent is not None and str(parent) in boxes:
            owner = str(parent)
        elif parent is not None and str(parent) in dropped_boxes:
            dropped.append(f"{where}: its box {parent} was dropped")
            continue
        else:
            inside = [rid for rid, (_, box, _) in boxes.items() if contains(box, x, y)]
            if inside:
                owner = min(inside, key=lambda rid: boxes[rid][1][2] * boxes[rid][1][3])
        if owner is None:
            dropped.append(f"{where}: keypoint {label!r} is in no box")
            continue
        slot = spec.keypoint_labels.index(label)
        slots = boxes[owner][2]
        if slots[slot] is not None:
            dropped.append(f"{where}: box {owner} already has keypoint {label!r}")
            continue
        slots[slot] = (x, y)
    lines = []
    for cls, box, slots in boxes.values():
        kpts = " ".join("0 0 0" if p is None else f"{_fmt(p)} 2" for p in slots)
        lines.append(f"{cls} {_fmt(box)} {kpts}")
    return lines, dropped


def annotation_to_class(
    result: list[dict[str, Any]], spec: TrainSpec, class_ids: Mapping[str, int]
) -> tuple[str | None, list[str]]:
    """The class label of one classify annotation (a single-choice Choices on the image).

    Args:
        result: the annotation's ``result``; ``choices`` regions of ``spec.from_name`` count.
        spec: a classify spec.
        class_ids: label -> class id; a choice without one is not trained.

    Returns:
        ``(label, reasons)``: the chosen label, or None with the reason (no choice, several
        choices, choice without class id) so the caller skips the task.
    """
    chosen: list[str] = []
    reasons: list[str] = []
    for region in result:
        if region.get("from_name") != spec.from_name:
            continue
        label, reason = _first_label(region, "choices")
        if label is None:
            reasons.append(f"{_where(region)}: {reason}")
            continue
        chosen.extend(str(c) for c in region["value"]["choices"])
    distinct = list(dict.fromkeys(chosen))
    if not distinct:
        return None, reasons + [f"no choice of {spec.from_name!r}"]
    if len(distinct) > 1:
        return None, reasons + [f"several choices of {spec.from_name!r}: {', '.join(distinct)}"]
    if distinct[0] not in class_ids:
        return None, reasons + [f"choice {distinct[0]!r} has no class id (not in the label config)"]
    return distinct[0], reasons


def has_rotation(result: list[dict[str, Any]], spec: TrainSpec) -> bool:
    """Whether any region of ``spec.from_name`` has a ``rotation`` that is not a multiple of 360 degrees."""
    for region in result:
        if region.get("from_name") != spec.from_name:
            continue
        value = region.get("value")
        if not isinstance(value, Mapping):
            continue
        try:
            r = float(value.get("rotation") or 0.0) % 360
        except (TypeError, ValueError):
            continue
        if min(r, 360 - r) > 1e-6:
            return True
    return False


# ---------------------------------------------------------------------------- YOLO/predictions -> LS


def _region(
    spec: TrainSpec,
    rtype: str,
    value: dict[str, Any],
    width: int,
    height: int,
    score: float | None,
    from_name: str | None = None,
) -> dict[str, Any]:
    region: dict[str, Any] = {
        "id": region_id(),
        "from_name": from_name or spec.from_name,
        "to_name": spec.to_name,
        "type": rtype,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": value,
    }
    if score is not None:
        region["score"] = float(score)
    return region


def yolo_to_regions(
    line: str, spec: TrainSpec, names: Mapping[int, str], width: int, height: int
) -> list[dict[str, Any]]:
    """Convert one YOLO label line back to Label Studio regions (the inverse of ``annotation_to_yolo``).

    Args:
        line: ``cls ...`` in the format of ``spec.task`` (detect, obb, segment, pose).
        spec: what the line was made for; segment lines become ``polygonlabels`` or, with
            ``spec.region_type == "brushlabels"``, an RLE ``brushlabels`` region.
        names: class id -> label.
        width, height: image size in pixels.

    Returns:
        Regions without ``score``: one rectangle (obb: with the rotation closest to 0), one
        polygon or brush region, or for pose the box and a ``keypointlabels`` region (``parentID``
        = the box id) per visible keypoint. Empty when the label is not in ``spec.labels``.

    Raises:
        ValueError: the line does not parse for ``spec.task``, or its class id is not in ``names``.
    """
    parts = line.split()
    if not parts:
        raise ValueError("empty label line")
    try:
        cls = int(parts[0])
        nums = np.array([float(v) for v in parts[1:]], dtype=np.float64)
    except ValueError:
        raise ValueError(f"label line does not parse: {line!r}") from None
    if cls not in names:
        raise ValueError(f"class id {cls} is not in names")
    label = names[cls]
    if label not in spec.labels:
        return []
    W, H = float(width), float(height)
    if spec.task in ("detect", "pose"):
        if len(nums) < 4:
            raise ValueError(f"a {spec.task} line needs cx cy w h: {line!r}")
        cx, cy, w, h = nums[:4]
        xyxy = ((cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H)
        rect = {**xyxy_to_rectangle(xyxy, W, H), "rectanglelabels": [label]}
        box = _region(spec, "rectanglelabels", rect, int(width), int(height), None)
        if spec.task == "detect":
            if len(nums) != 4:
                raise ValueError(f"a detect line has 5 fields: {line!r}")
            return [box]
        K = len(spec.keypoint_labels)
        rest = nums[4:]
        if K == 0 or len(rest) not in (2 * K, 3 * K):
            raise ValueError(f"a pose line for {K} keypoints needs {5 + 2 * K} or {5 + 3 * K} fields: {line!r}")
        kpts = rest.reshape(K, -1)
        regions = [box]
        for k, kp in enumerate(kpts):
            visible = kp[2] > 0 if len(kp) == 3 else bool(kp[0] or kp[1])
            if visible:
                regions.append(_keypoint_region(spec, kp[0], kp[1], k, box["id"], width, height, None))
        return regions
    if spec.task == "obb":
        if len(nums) != 8:
            raise ValueError(f"an obb line has 9 fields: {line!r}")
        corners = nums.reshape(4, 2) * np.array([W, H])
        value = {**corners_to_rectangle(corners, W, H), "rectanglelabels": [label]}
        return [_region(spec, "rectanglelabels", value, int(width), int(height), None)]
    if spec.task == "segment":
        if len(nums) < 6 or len(nums) % 2:
            raise ValueError(f"a segment line needs at least 3 points: {line!r}")
        poly = nums.reshape(-1, 2)
        return [_segment_region(spec, label, [poly], None, width, height, None)]
    raise ValueError(f"yolo_to_regions converts {', '.join(_LINE_TASKS)}, not {spec.task}")


def _keypoint_region(
    spec: TrainSpec, x: float, y: float, k: int, parent: str, width: int, height: int, score: float | None
) -> dict[str, Any]:
    value = {
        "x": float(x) * 100,
        "y": float(y) * 100,
        "width": KEYPOINT_WIDTH,
        "keypointlabels": [spec.keypoint_labels[k]],
    }
    region = _region(spec, "keypointlabels", value, width, height, score, from_name=spec.keypoint_from_name)
    region["parentID"] = parent
    return region


def _segment_region(
    spec: TrainSpec,
    label: str,
    polygons: list[npt.NDArray[np.float64]],
    mask: npt.NDArray[np.bool_] | None,
    width: int,
    height: int,
    score: float | None,
) -> dict[str, Any]:
    """A polygonlabels region of ``polygons[0]``, or a brushlabels region of ``mask`` (or the polygons filled)."""
    if spec.region_type == "brushlabels":
        if mask is None:
            mask = polygons_to_mask(polygons, width, height)
        value: dict[str, Any] = {**mask_to_brush(mask), "brushlabels": [label]}
        return _region(spec, "brushlabels", value, width, height, score)
    points = [[float(x) * 100, float(y) * 100] for x, y in polygons[0]]
    return _region(
        spec, "polygonlabels", {"points": points, "closed": True, "polygonlabels": [label]}, width, height, score
    )


def predictions_to_regions(
    spec: TrainSpec,
    names: Mapping[int, str],
    width: int,
    height: int,
    *,
    boxes_xyxy: Any = None,
    obb_xyxyxyxy: Any = None,
    masks: Any = None,
    polygons_xyn: Sequence[Any] | None = None,
    keypoints_xy: Any = None,
    keypoints_conf: Any = None,
    classes: Any = None,
    scores: Any = None,
    probs: Any = None,
) -> list[dict[str, Any]]:
    """Model outputs for one image as Label Studio prediction regions (https://labelstud.io/guide/predictions).

    Arrays may be lists, numpy arrays or torch tensors (e.g. ``res.boxes.xyxy``). Every region
    has ``id`` (10 hex characters), ``from_name``, ``to_name``, ``type``, ``original_width``,
    ``original_height``, ``image_rotation`` 0, ``value`` and, when ``scores`` is given (or for
    classify and keypoints with ``keypoints_conf``), ``score``. Instances whose label
    (``names[cls]``) is not in ``spec.labels`` are skipped.

    Per ``spec.task``:

    - detect / obb: ``rectanglelabels``. With ``obb_xyxyxyxy`` (N, 4, 2) pixel corners, rotated
      (Label Studio convention, rotation closest to 0, not clamped); else ``boxes_xyxy`` (N, 4)
      pixels, clamped to the image, rotation 0. Boxes under ``MIN_BOX_PX`` are skipped.
    - segment with ``spec.region_type == "polygonlabels"``: one ``polygonlabels`` region per
      polygon: ``polygons_xyn[i]`` ((P, 2) normalised, clipped to the image) when given, else
      every connected part of ``masks[i]`` (traced, simplified to
      ``PREDICTION_POLYGON_EPSILON_PX``, specks under ``MIN_BRUSH_AREA_PX`` dropped).
    - segment with ``brushlabels``: one ``brushlabels`` region (``format: "rle"``, SDK
      ``mask2rle`` at the original size) from ``masks[i]``, else from ``polygons_xyn[i]`` filled.
      ``masks`` is (N, h, w), bool or probabilities (> 0.5); a mask of another size is resized to
      ``height x width``, and one of another aspect ratio is taken to be letterboxed (centred
      padding, as Ultralytics' ``ops.scale_masks``) and cropped first.
    - pose: a ``rectanglelabels`` box per instance from ``boxes_xyxy`` (``from_name =
      spec.from_name``) and a ``keypointlabels`` region (``from_name = spec.keypoint_from_name``,
      ``width`` ``KEYPOINT_WIDTH``, ``parentID`` = the box id) for each of ``keypoints_xy``
      (N, K, 2 pixels) whose ``keypoints_conf`` (N, K) is >= ``MIN_KEYPOINT_CONF``; without
      ``keypoints_conf`` every keypoint except ``(0, 0)`` (YOLO's "missing").
    - classify: one ``choices`` region with the most probable label of ``probs`` (C,) that is in
      ``spec.labels``; score = its probability.

    Args:
        spec: the trained spec (``spec.task`` picks the format above).
        names: class id -> label, the model's names.
        width, height: the original image size in pixels.
        classes: (N,) class ids; scores: (N,) confidences.

    Raises:
        ValueError: the inputs ``spec.task`` needs are missing or their lengths disagree.
    """
    W, H = int(width), int(height)
    if spec.task == "classify":
        if probs is None:
            raise ValueError("classify predictions need probs")
        p = _np(probs).ravel()
        order = [int(i) for i in np.argsort(-p, kind="stable")]
        for i in order:
            if names.get(i) in spec.labels:
                value = {"choices": [names[i]]}
                return [_region(spec, "choices", value, W, H, float(p[i]))]
        return []
    if classes is None:
        raise ValueError(f"{spec.task} predictions need classes")
    cls = _np(classes).ravel().astype(int)
    n = len(cls)
    conf = None if scores is None else _np(scores).ravel()
    if conf is not None and len(conf) != n:
        raise ValueError(f"{len(conf)} scores for {n} classes")
    if n == 0:
        return []

    def score(i: int) -> float | None:
        return None if conf is None else float(conf[i])

    def rows(x: Any, what: str, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
        a = _np(x).reshape((-1, *shape))
        if len(a) != n:
            raise ValueError(f"{len(a)} {what} for {n} classes")
        return a

    regions: list[dict[str, Any]] = []
    if spec.task in ("detect", "obb"):
        if obb_xyxyxyxy is not None:
            corners = rows(obb_xyxyxyxy, "obb boxes", (4, 2))
            for i in range(n):
                label = names.get(int(cls[i]))
                if label not in spec.labels:
                    continue
                rect = corners_to_rectangle(corners[i], W, H)
                if rect["width"] / 100 * W < MIN_BOX_PX or rect["height"] / 100 * H < MIN_BOX_PX:
                    continue
                regions.append(_region(spec, "rectanglelabels", {**rect, "rectanglelabels": [label]}, W, H, score(i)))
            return regions
        if boxes_xyxy is None:
            raise ValueError(f"{spec.task} predictions need boxes_xyxy or obb_xyxyxyxy")
        return _box_regions(spec, names, W, H, rows(boxes_xyxy, "boxes", (4,)), cls, score)[0]
    if spec.task == "pose":
        if not spec.keypoint_from_name:
            raise ValueError("a pose TrainSpec needs keypoint_from_name")
        if boxes_xyxy is None:
            raise ValueError("pose predictions need boxes_xyxy")
        box_regions, kept = _box_regions(spec, names, W, H, rows(boxes_xyxy, "boxes", (4,)), cls, score)
        if keypoints_xy is None:
            return box_regions
        kxy = _np(keypoints_xy)
        kxy = kxy.reshape(len(kxy), -1, 2) if kxy.size else kxy.reshape(0, 0, 2)
        if len(kxy) != n:
            raise ValueError(f"{len(kxy)} keypoint sets for {n} classes")
        kconf = None if keypoints_conf is None else _np(keypoints_conf).reshape(n, -1)
        K = min(kxy.shape[1], len(spec.keypoint_labels))
        for box, i in zip(box_regions, kept, strict=True):
            regions.append(box)
            for k in range(K):
                x, y = float(kxy[i, k, 0]), float(kxy[i, k, 1])
                c = None if kconf is None else float(kconf[i, k])
                if (c is not None and c < MIN_KEYPOINT_CONF) or (c is None and x == 0 and y == 0):
                    continue
                if not (0 <= x <= W and 0 <= y <= H):
                    continue
                regions.append(_keypoint_region(spec, x / W, y / H, k, box["id"], W, H, c))
        return regions
    if spec.task == "segment":
        if masks is None and polygons_xyn is None:
            raise ValueError("segment predictions need masks or polygons_xyn")
        m = None if masks is None else _np(masks, np.float32)
        if m is not None:
            m = m.reshape(-1, *m.shape[-2:])
            if len(m) != n:
                raise ValueError(f"{len(m)} masks for {n} classes")
        if polygons_xyn is not None and len(polygons_xyn) != n:
            raise ValueError(f"{len(polygons_xyn)} polygons for {n} classes")
        for i in range(n):
            label = names.get(int(cls[i]))
            if label not in spec.labels:
                continue
            mask = None if m is None else _unletterbox(m[i], W, H)
            if spec.region_type == "brushlabels":
                if mask is None:
                    assert polygons_xyn is not None
                    mask = polygons_to_mask([polygons_xyn[i]], W, H)
                if mask.any():
                    regions.append(_segment_region(spec, label, [], mask, W, H, score(i)))
                continue
            if polygons_xyn is not None:
                polys = [clip_polygon(polygons_xyn[i])]
            else:
                assert mask is not None
                polys = mask_to_polygons(mask, MIN_BRUSH_AREA_PX, PREDICTION_POLYGON_EPSILON_PX)[0]
            for poly in polys:
                if len(poly) >= 3 and polygon_area(poly, W, H) > 0:
                    regions.append(_segment_region(spec, label, [poly], None, W, H, score(i)))
        return regions
    raise ValueError(f"unknown task {spec.task!r}")


def _box_regions(
    spec: TrainSpec,
    names: Mapping[int, str],
    W: int,
    H: int,
    xyxy: npt.NDArray[np.float64],
    cls: npt.NDArray[np.int_],
    score: Any,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Axis-aligned rectangle regions, and the instance index of each."""
    regions, kept = [], []
    for i in range(len(cls)):
        label = names.get(int(cls[i]))
        if label not in spec.labels:
            continue
        rect = xyxy_to_rectangle(tuple(xyxy[i]), W, H)
        if rect["width"] / 100 * W < MIN_BOX_PX or rect["height"] / 100 * H < MIN_BOX_PX:
            continue
        regions.append(_region(spec, "rectanglelabels", {**rect, "rectanglelabels": [label]}, W, H, score(i)))
        kept.append(i)
    return regions, kept


def results_to_regions(res: Any, spec: TrainSpec, names: Mapping[int, str]) -> tuple[list[dict[str, Any]], float]:
    """Label Studio regions from one Ultralytics ``Results`` (duck-typed; ultralytics is not imported).

    Reads ``res.orig_shape`` and, by ``spec.task``: ``res.probs.data`` (classify);
    ``res.obb.xyxyxyxy/cls/conf`` when ``res.obb`` is set, else ``res.boxes.xyxy/cls/conf``;
    ``res.masks.data`` (model resolution, letterboxed; see ``predictions_to_regions``);
    ``res.keypoints.xy/conf``. A detect spec given obb results produces rotated rectangles.

    Returns:
        ``(regions, score)``: regions as ``predictions_to_regions`` makes them, and the mean
        ``score`` of the regions of ``spec.from_name`` (the top-1 probability for classify;
        0.0 without regions).
    """
    height, width = (int(v) for v in res.orig_shape[:2])
    if spec.task == "classify":
        if getattr(res, "probs", None) is None:
            return [], 0.0
        regions = predictions_to_regions(spec, names, width, height, probs=res.probs.data)
    else:
        kwargs: dict[str, Any] = {}
        obb = getattr(res, "obb", None)
        boxes = getattr(res, "boxes", None)
        if obb is not None and spec.task in ("detect", "obb"):
            kwargs.update(obb_xyxyxyxy=obb.xyxyxyxy, classes=obb.cls, scores=obb.conf)
        elif boxes is not None:
            kwargs.update(boxes_xyxy=boxes.xyxy, classes=boxes.cls, scores=boxes.conf)
        else:
            return [], 0.0
        if len(_np(kwargs["classes"]).ravel()) == 0:
            return [], 0.0
        if spec.task == "segment":
            if getattr(res, "masks", None) is None:
                return [], 0.0
            kwargs["masks"] = res.masks.data
        if spec.task == "pose" and getattr(res, "keypoints", None) is not None:
            kwargs.update(keypoints_xy=res.keypoints.xy, keypoints_conf=res.keypoints.conf)
        regions = predictions_to_regions(spec, names, width, height, **kwargs)
    scores = [r["score"] for r in regions if r["from_name"] == spec.from_name and "score" in r]
    return regions, (float(sum(scores) / len(scores)) if scores else 0.0)
