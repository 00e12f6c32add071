"""``obb``: RectangleLabels with rotation as oriented boxes (``cls x1 y1 .. x4 y4``: the corners
top-left, top-right, bottom-right, bottom-left of the unrotated box, clockwise on screen)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from labelloop.task_types.detect import Rectangles
from labelloop.task_types.geometry import (
    _fmt,
    _rect_pixels_ok,
    _region,
    _where,
    corners_to_rectangle,
    rectangle_corners,
)
from labelloop.task_types.spec import MIN_BOX_PX, TrainSpec


class Obb(Rectangles):
    name = "obb"
    trained_alone = False
    control_tags = ("RectangleLabels",)

    def region_lines(
        self,
        region: dict[str, Any],
        rtype: str,
        cls: int,
        width: int,
        height: int,
        lines: list[str],
        dropped: list[str],
    ) -> None:
        size = np.array([width, height], dtype=np.float64)
        corners = np.clip(rectangle_corners(region["value"], width, height) / size, 0.0, 1.0)
        if not _rect_pixels_ok(corners, width, height):
            dropped.append(f"{_where(region)}: degenerate box (under {MIN_BOX_PX:g} px after clamping)")
            return
        lines.append(f"{cls} {_fmt(corners.ravel())}")

    def line_to_regions(
        self, nums: npt.NDArray[np.float64], label: str, spec: TrainSpec, width: int, height: int, line: str
    ) -> list[dict[str, Any]]:
        if len(nums) != 8:
            raise ValueError(f"an obb line has 9 fields: {line!r}")
        W, H = float(width), float(height)
        corners = nums.reshape(4, 2) * np.array([W, H])
        value = {**corners_to_rectangle(corners, W, H), "rectanglelabels": [label]}
        return [_region(spec, "rectanglelabels", value, int(width), int(height), None)]
