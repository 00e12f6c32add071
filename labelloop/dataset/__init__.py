"""Ultralytics datasets from Label Studio annotations: images, video keyframes, pseudo-labels."""

from __future__ import annotations

import math
from collections.abc import Sequence


def long_side_p90(sizes: Sequence[tuple[int, int]]) -> int | None:
    """The 90th percentile (nearest rank) of ``max(width, height)`` over ``sizes``; None when empty."""
    if not sizes:
        return None
    ordered = sorted(max(int(w), int(h)) for w, h in sizes)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
