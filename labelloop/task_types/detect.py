"""``detect``: RectangleLabels as axis-aligned boxes (``cls cx cy w h``; a rotated rectangle
becomes the box around it); predictions are rectangles (rotated when the model is an OBB one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from labelloop.task_types.base import Rows, Score, TaskType, instances_or_none
from labelloop.task_types.geometry import (
    _box_regions,
    _fmt,
    _region,
    _where,
    corners_to_rectangle,
)
from labelloop.task_types.spec import MIN_BOX_PX, TrainSpec, rectangle_to_yolo, xyxy_to_rectangle


class Rectangles(TaskType):
    """What detect and obb share: rectangles in, rectangles out."""

    region_types: ClassVar[tuple[str, ...]] = ("rectanglelabels",)

    def results_arrays(self, res: Any, spec: TrainSpec) -> dict[str, Any] | None:
        """Rotated boxes when the model is an OBB one (a detect spec then gets rotated rectangles)."""
        obb = getattr(res, "obb", None)
        if obb is not None:
            return instances_or_none({"obb_xyxyxyxy": obb.xyxyxyxy, "classes": obb.cls, "scores": obb.conf})
        return super().results_arrays(res, spec)

    def predictions_to_regions(
        self,
        spec: TrainSpec,
        names: Mapping[int, str],
        width: int,
        height: int,
        cls: npt.NDArray[np.int_],
        score: Score,
        rows: Rows,
        arrays: dict[str, Any],
    ) -> list[dict[str, Any]]:
        if arrays.get("obb_xyxyxyxy") is not None:
            corners = rows(arrays["obb_xyxyxyxy"], "obb boxes", (4, 2))
            regions = []
            for i in range(len(cls)):
                label = names.get(int(cls[i]))
                if label not in spec.labels:
                    continue
                rect = corners_to_rectangle(corners[i], width, height)
                if rect["width"] / 100 * width < MIN_BOX_PX or rect["height"] / 100 * height < MIN_BOX_PX:
                    continue
                value = {**rect, "rectanglelabels": [label]}
                regions.append(_region(spec, "rectanglelabels", value, width, height, score(i)))
            return regions
        if arrays.get("boxes_xyxy") is None:
            raise ValueError(f"{spec.task} predictions need boxes_xyxy or obb_xyxyxyxy")
        return _box_regions(spec, names, width, height, rows(arrays["boxes_xyxy"], "boxes", (4,)), cls, score)[0]


class Detect(Rectangles):
    name = "detect"
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
        box = rectangle_to_yolo(region["value"], width, height)
        if box is None:
            dropped.append(f"{_where(region)}: degenerate box (under {MIN_BOX_PX:g} px after clamping)")
            return
        lines.append(f"{cls} {_fmt(box)}")

    def line_to_regions(
        self, nums: npt.NDArray[np.float64], label: str, spec: TrainSpec, width: int, height: int, line: str
    ) -> list[dict[str, Any]]:
        if len(nums) < 4:
            raise ValueError(f"a detect line needs cx cy w h: {line!r}")
        if len(nums) != 4:
            raise ValueError(f"a detect line has 5 fields: {line!r}")
        return [box_region(nums, label, spec, width, height)]


def box_region(nums: npt.NDArray[np.float64], label: str, spec: TrainSpec, width: int, height: int) -> dict[str, Any]:
    """The rectangle region of a ``cx cy w h`` (normalised) box."""
    W, H = float(width), float(height)
    cx, cy, w, h = nums[:4]
    xyxy = ((cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H)
    rect = {**xyxy_to_rectangle(xyxy, W, H), "rectanglelabels": [label]}
    return _region(spec, "rectanglelabels", rect, int(width), int(height), None)
