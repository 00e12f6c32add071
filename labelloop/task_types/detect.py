"""``detect``: RectangleLabels as axis-aligned boxes (``cls cx cy w h``; a rotated rectangle
becomes the box around it); predictions are rectangles (rotated when the model is an OBB one)."""

from __future__ import annotations

from typing import Any, ClassVar

from labelloop.ls_json import Region
from labelloop.task_types.base import LabelLine, Lines, TaskType
from labelloop.task_types.geometry import corners_to_rectangle, yolo_numbers
from labelloop.task_types.outputs import Instances, ModelOutputs, RegionsOf, instances_or_none
from labelloop.task_types.regions import big_enough, describe
from labelloop.task_types.spec import MIN_BOX_PX, rectangle_to_yolo


class Rectangles(TaskType):
    """What detect and obb share: rectangles in, rectangles out."""

    region_types: ClassVar[tuple[str, ...]] = ("rectanglelabels",)

    def outputs(self, res: Any) -> ModelOutputs | None:
        """Rotated boxes when the model is an OBB one (a detect spec then gets rotated rectangles)."""
        obb = getattr(res, "obb", None)
        if obb is not None:
            return instances_or_none(ModelOutputs(obb_xyxyxyxy=obb.xyxyxyxy, classes=obb.cls, scores=obb.conf))
        return super().outputs(res)

    def instance_regions(self, found: Instances) -> RegionsOf:
        """One rectangle per instance: rotated from ``obb_xyxyxyxy`` when given, else from
        ``boxes_xyxy`` clamped to the image; none under ``MIN_BOX_PX``."""
        W, H = found.width, found.height
        if found.outputs.get("obb_xyxyxyxy") is not None:
            corners = found.rows(found.outputs["obb_xyxyxyxy"], "obb boxes", (4, 2))

            def rotated(i: int, label: str) -> list[Region]:
                rect = corners_to_rectangle(corners[i], W, H)
                return [self.make.rectangle(rect, label, W, H, found.score(i))] if big_enough(rect, W, H) else []

            return rotated
        if found.outputs.get("boxes_xyxy") is None:
            raise ValueError(f"{self.spec.task} predictions need boxes_xyxy or obb_xyxyxyxy")
        xyxy = found.rows(found.outputs["boxes_xyxy"], "boxes", (4,))

        def box(i: int, label: str) -> list[Region]:
            region = self.make.box(xyxy[i], label, W, H, found.score(i))
            return [] if region is None else [region]

        return box


class Detect(Rectangles):
    name = "detect"
    control_tags = ("RectangleLabels",)

    def region_lines(self, region: Region, cls: int, width: int, height: int) -> Lines:
        box = rectangle_to_yolo(region["value"], width, height)
        if box is None:
            return [], [f"{describe(region)}: degenerate box (under {MIN_BOX_PX:g} px after clamping)"]
        return [f"{cls} {yolo_numbers(box)}"], []

    def line_to_regions(self, line: LabelLine, width: int, height: int) -> list[Region]:
        if len(line.nums) < 4:
            raise ValueError(f"a detect line needs cx cy w h: {line.text!r}")
        if len(line.nums) != 4:
            raise ValueError(f"a detect line has 5 fields: {line.text!r}")
        return [self.make.yolo_box(line.nums, line.label, width, height)]
