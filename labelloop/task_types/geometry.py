"""Geometry shared by the task types (pure functions): arrays from model outputs, YOLO numbers,
rotated rectangles, polygons and pixel masks.

Coordinate conventions (Label Studio percent of the image, YOLO normalised to [0, 1], rotation
and corner order, pixel masks through pixel centres) are described in ``labelloop.task_types.convert``.
Brush RLE lives in ``labelloop.task_types.brush``, region building in ``labelloop.task_types.regions``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt

from labelloop.ls_json import RegionValue

# A polygon whose area after clipping to the image is below this (pixels^2) is degenerate.
MIN_POLYGON_AREA_PX = 1.0
# Connected parts of a brush mask with fewer pixels than this are specks and dropped.
MIN_BRUSH_AREA_PX = 3.0
# Polygons traced from predicted masks are simplified to this tolerance (pixels).
PREDICTION_POLYGON_EPSILON_PX = 1.0

_Scalar = TypeVar("_Scalar", bound=np.generic)


@overload
def as_array(x: Any) -> npt.NDArray[np.float64]: ...
@overload
def as_array(x: Any, dtype: type[_Scalar]) -> npt.NDArray[_Scalar]: ...
def as_array(x: Any, dtype: type[np.generic] = np.float64) -> npt.NDArray[Any]:
    """A numpy array of ``dtype`` (float64 by default) from a list, numpy array or (CPU/GPU) torch
    tensor, e.g. Ultralytics' ``Results.boxes.xyxy``."""
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def yolo_numbers(values: Any) -> str:
    """Numbers as a YOLO label line writes them: 6 decimals, space separated."""
    return " ".join(f"{float(v):.6f}" for v in values)


def rectangle_corners(value: RegionValue | Mapping[str, float], width: float, height: float) -> npt.NDArray[np.float64]:
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


def corners_to_rectangle(corners: Any, width: float, height: float) -> RegionValue:
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
    pts: npt.NDArray[np.float64] = as_array(corners).reshape(-1, 2)
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
    return RegionValue(
        x=float(a[0]) / W * 100,
        y=float(a[1]) / H * 100,
        width=float(np.linalg.norm(b - a)) / W * 100,
        height=float(np.linalg.norm(d - a)) / H * 100,
        rotation=rotation,
    )


def clip_polygon(points: Any) -> npt.NDArray[np.float64]:
    """Clip a polygon to the unit square (Sutherland-Hodgman), dropping repeated points.

    Args:
        points: (P, 2) normalised ``x, y``.

    Returns:
        float array (Q, 2) of the clipped polygon (Q may be 0).
    """
    out = [tuple(p) for p in as_array(points).reshape(-1, 2)]
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
    p = as_array(points).reshape(-1, 2)
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

    m = (as_array(mask, np.float32) > 0).astype(np.uint8)
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
        p = as_array(poly).reshape(-1, 2) * np.array([width, height], dtype=np.float64) - 0.5
        if len(p) >= 3:
            scaled.append(np.round(p * (1 << shift)).astype(np.int32))
    if scaled:
        cv2.fillPoly(m, scaled, 1, lineType=cv2.LINE_8, shift=shift)
    return m.astype(bool)


def unletterbox(mask: npt.NDArray[np.float32], width: int, height: int) -> npt.NDArray[np.bool_]:
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
