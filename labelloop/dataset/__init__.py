"""Ultralytics datasets from Label Studio annotations: images, video keyframes, pseudo-labels."""

from __future__ import annotations

import math
from collections.abc import Sequence


def _nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` by nearest rank (the ``ceil(q * n)``-th smallest); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def long_side_p90(sizes: Sequence[tuple[int, int]]) -> int | None:
    """The 90th percentile (nearest rank) of ``max(width, height)`` over ``sizes``; None when empty."""
    side = _nearest_rank([max(int(w), int(h)) for w, h in sizes], 0.9)
    return None if side is None else int(side)


def object_sides(label: str, task: str, width: int, height: int) -> list[float]:
    """Each labelled object's shorter side as a fraction of its image's longer side.

    Args:
        label: one image's YOLO label file (https://docs.ultralytics.com/datasets/): ``cls cx cy w h``
            lines for detect and pose (keypoints after the box are ignored), ``cls x1 y1 x2 y2 ...``
            polygons for segment and obb (the polygon's axis-aligned extent counts).
        task: the Ultralytics task of the lines.
        width, height: the image's size in pixels (EXIF orientation applied).

    Returns:
        one fraction per line in (0, 1]; none for an empty label or a malformed line.
    """
    long_side = max(int(width), int(height), 1)
    sides: list[float] = []
    for line in label.splitlines():
        values = [float(v) for v in line.split()[1:]]
        if task in ("detect", "pose") and len(values) >= 4:
            w, h = values[2], values[3]
        elif len(values) >= 6 and len(values) % 2 == 0:
            xs, ys = values[0::2], values[1::2]
            w, h = max(xs) - min(xs), max(ys) - min(ys)
        else:
            continue
        side = min(w * width, h * height) / long_side
        if side > 0:
            sides.append(min(1.0, side))
    return sides


def p10(values: Sequence[float]) -> float | None:
    """The 10th percentile (nearest rank) of ``values``; None when empty."""
    return _nearest_rank(values, 0.1)
