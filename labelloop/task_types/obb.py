"""``obb``: RectangleLabels with rotation as oriented boxes (``cls x1 y1 .. x4 y4``: the corners
top-left, top-right, bottom-right, bottom-left of the unrotated box, clockwise on screen)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from labelloop.ls_json import Region
from labelloop.task_types.base import LabelLine, Lines
from labelloop.task_types.detect import Rectangles
from labelloop.task_types.geometry import corners_to_rectangle, rectangle_corners, yolo_numbers
from labelloop.task_types.regions import describe
from labelloop.task_types.spec import MIN_BOX_PX


class Obb(Rectangles):
    name = "obb"
    trained_alone = False
    control_tags = ("RectangleLabels",)

    def region_lines(self, region: Region, cls: int, width: int, height: int) -> Lines:
        size = np.array([width, height], dtype=np.float64)
        corners = np.clip(rectangle_corners(region["value"], width, height) / size, 0.0, 1.0)
        if not sides_ok(corners, width, height):
            return [], [f"{describe(region)}: degenerate box (under {MIN_BOX_PX:g} px after clamping)"]
        return [f"{cls} {yolo_numbers(corners.ravel())}"], []

    def line_to_regions(self, line: LabelLine, width: int, height: int) -> list[Region]:
        if len(line.nums) != 8:
            raise ValueError(f"an obb line has 9 fields: {line.text!r}")
        W, H = float(width), float(height)
        corners = line.nums.reshape(4, 2) * np.array([W, H])
        return [self.make.rectangle(corners_to_rectangle(corners, W, H), line.label, int(width), int(height), None)]


def sides_ok(corners_n: npt.NDArray[np.float64], width: int, height: int) -> bool:
    """Both sides of the minimum-area rectangle of normalised corners are >= ``MIN_BOX_PX`` pixels
    on a ``width`` x ``height`` image (``cv2.minAreaRect``)."""
    import cv2

    px = (corners_n * np.array([width, height], dtype=np.float64)).astype(np.float32)
    (_, _), (w, h), _ = cv2.minAreaRect(px)
    return min(w, h) >= MIN_BOX_PX
