"""Geometry and Label Studio region building shared by the task types (pure functions).

Coordinate conventions (Label Studio percent of the image, YOLO normalised to [0, 1], rotation
and corner order, pixel masks through pixel centres) are described in ``labelloop.task_types.convert``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt

from labelloop.task_types.spec import MIN_BOX_PX, TrainSpec, xyxy_to_rectangle

# A polygon whose area after clipping to the image is below this (pixels^2) is degenerate.
MIN_POLYGON_AREA_PX = 1.0
# Connected parts of a brush mask with fewer pixels than this are specks and dropped.
MIN_BRUSH_AREA_PX = 3.0
#: Longest brush ``rle`` list decoded (values): label-studio-sdk's decoder first makes a bit string
#: and a list of about 72 bytes per value. Label Studio brushes are runs, a few KB; the SDK's
#: longest encoding (alternating pixels) of a 512x512 image is 1.8 MB.
MAX_BRUSH_RLE_BYTES = 2 * 1024 * 1024
# Predicted keypoints below this confidence are left out of predictions.
MIN_KEYPOINT_CONF = 0.5
# ``value.width`` of predicted keypoint regions (percent of the image width; how big LS draws them).
KEYPOINT_WIDTH = 0.5
# Polygons traced from predicted masks are simplified to this tolerance (pixels).
PREDICTION_POLYGON_EPSILON_PX = 1.0

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
        ValueError: not ``rle`` format, more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS``, a
            size in the RLE's header (its first 32 bits, big-endian, which ``decode_rle``
            allocates before reading on) that does not match the image, a list longer than any
            encoding of the image could be or than ``MAX_BRUSH_RLE_BYTES``, or a value that is
            not a byte; all checked before decoding, so a hostile header or list cannot make the
            worker allocate gigabytes.
    """
    from label_studio_sdk.converter.brush import decode_rle
    from PIL import Image

    rle = value.get("rle")
    if value.get("format", "rle") != "rle" or not rle or not isinstance(rle, list):
        raise ValueError(f"brush format {value.get('format')!r} without rle data")
    W, H = int(original_width), int(original_height)
    if W <= 0 or H <= 0 or W * H > (Image.MAX_IMAGE_PIXELS or 2**31):
        raise ValueError(f"brush mask of {W}x{H} pixels is out of bounds")
    try:
        claimed = int.from_bytes(bytes(rle[:4]), "big")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rle is not a list of bytes: {exc}") from exc
    if len(rle) < 7 or claimed != W * H * 4:
        raise ValueError(f"rle header claims {claimed} bytes, expected {H}x{W}x4 = {W * H * 4}")
    limit = min(MAX_BRUSH_RLE_BYTES, _rle_bound(rle, claimed))
    if len(rle) > limit:  # decode_rle makes a str of 8 chars and a list of 8 refs per value first
        raise ValueError(f"rle has {len(rle)} values, more than {limit} (the longest encoding of {W}x{H}, or the cap)")
    try:
        data = bytes(rle)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rle is not a list of bytes: {exc}") from exc
    flat = decode_rle(data)
    if flat.size != W * H * 4:
        raise ValueError(f"rle holds {flat.size} bytes, expected {H}x{W}x4 = {W * H * 4}")
    return np.asarray(flat.reshape(H, W, 4)[:, :, 3] > 0)


def _rle_bound(rle: Sequence[int], values: int) -> int:
    """The most bytes an RLE of ``values`` values can take with its header's word size and run-length
    sizes (bits 32-52): every value its own run, 1 + 2 + the longest size + the word size bits each."""
    head = int.from_bytes(bytes(rle[:7]), "big")  # 56 bits: 32 count, 5 word size - 1, 4 x 4 sizes - 1
    word = ((head >> 19) & 0x1F) + 1
    longest = max(((head >> (15 - 4 * k)) & 0xF) + 1 for k in range(4))
    return math.ceil((53 + values * (3 + longest + word)) / 8)


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
