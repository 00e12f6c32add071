"""The interface every Ultralytics task type implements (one module per type in this package).

A task type knows, for its Ultralytics task (https://docs.ultralytics.com/tasks/): which Label
Studio region types it trains, how an annotation becomes YOLO label lines and a line becomes
regions again, how model outputs become prediction regions, and its dataset layout.

A task type object is bound once to the ``TrainSpec`` it trains (``labelloop.task_types.task_type(spec)``),
as label-studio-ml-backend's YOLO example binds a control tag's ``from_name``, ``to_name`` and
label map in ``ControlModel.create`` (``label_studio_ml/examples/yolo/control_models/base.py``):
its methods then take the data only. What does not depend on the spec (layout, metrics) is on
the class (``labelloop.task_types.task_class(name)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from labelloop.ls_json import Region
from labelloop.task_types.outputs import Instances, ModelOutputs, RegionsOf, instances_or_none
from labelloop.task_types.regions import RegionBuilder, describe, first_label
from labelloop.task_types.spec import TrainSpec

#: YOLO label lines and a human-readable reason per dropped region.
Lines = tuple[list[str], list[str]]


@dataclass(frozen=True)
class LabelLine:
    """One parsed YOLO label line: its class id, that class's label, the numbers after the class
    (normalised coordinates) and the line as written (for error messages)."""

    cls: int
    label: str
    nums: npt.NDArray[np.float64]
    text: str


class TaskType:
    """One Ultralytics task type bound to one ``TrainSpec`` (subclasses set the class attributes and
    override what applies).

    Attributes:
        name: the Ultralytics task (``detect``, ``obb``, ``segment``, ``pose``, ``classify``).
        control_tags: the Label Studio control tags it trains (README's "What it trains").
        label_files: the dataset has ``labels/*.txt`` next to ``images/`` (False: one folder per
            class, Ultralytics' classification layout).
        trained_alone: its control tag alone picks it (``labelloop.task_types.labels``).
        spec: the bound spec (control tag names, labels, keypoint labels).
        make: builds this spec's regions (``labelloop.task_types.regions.RegionBuilder``).
    """

    name: ClassVar[str]
    control_tags: ClassVar[tuple[str, ...]]
    region_types: ClassVar[tuple[str, ...]] = ()
    label_files: ClassVar[bool] = True
    # False: the label config never picks this type from one control tag by itself (obb is
    # detect's rectangles with rotation, pose pairs a KeyPointLabels with a RectangleLabels).
    trained_alone: ClassVar[bool] = True
    # The Ultralytics validator's metrics attribute (``DetMetrics.box``, ``.seg``, ``.pose``).
    metrics_attr: ClassVar[str] = "box"
    # The promotion gate's metric when the project's own (mAP, precision, recall) does not apply.
    promotion_metric: ClassVar[str | None] = None

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec
        self.make = RegionBuilder(spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    # ------------------------------------------------------------------ what needs no spec

    @classmethod
    def val_metrics(cls, result: Any) -> dict[str, float]:
        """Fractions in [0, 1] from an Ultralytics validation result: ``map50_95``, ``map50``,
        ``precision`` and ``recall`` of the task's own regions, plus ``box_map50_95`` when those
        are not boxes."""
        m = getattr(result, cls.metrics_attr)
        metrics = {"map50_95": float(m.map), "map50": float(m.map50), "precision": float(m.mp), "recall": float(m.mr)}
        if cls.metrics_attr != "box":
            metrics["box_map50_95"] = float(result.box.map)
        return metrics

    @classmethod
    def class_metrics(cls, result: Any) -> dict[str, dict[str, float]]:
        """Per class name, fractions in [0, 1] from an Ultralytics validation result:
        ``{"ap50", "map50_95", "precision", "recall"}`` of the task's own regions, for the classes
        the validation split has (``Metric.ap_class_index`` and ``Metric.class_result(i)``)."""
        m = getattr(result, cls.metrics_attr)
        names = getattr(result, "names", None) or {}
        out: dict[str, dict[str, float]] = {}
        for i, c in enumerate(m.ap_class_index):
            p, r, ap50, ap = (float(x) for x in m.class_result(i))
            out[str(names.get(int(c), int(c)))] = {"ap50": ap50, "map50_95": ap, "precision": p, "recall": r}
        return out

    @classmethod
    def validation_count(cls, images: int, instances: int) -> int:
        """What the promotion gate's noise term counts in the validation split."""
        return instances

    # ------------------------------------------------------------------ annotations -> YOLO lines

    def data_yaml_extra(self) -> dict[str, object]:
        """Keys the dataset's ``data.yaml`` needs besides path, train, val and names."""
        return {}

    def annotation_to_lines(
        self, result: Sequence[Region], class_ids: Mapping[str, int], width: int, height: int
    ) -> Lines:
        """YOLO label lines of one annotation's ``result`` and a reason per dropped region (see
        ``labelloop.task_types.convert.annotation_to_yolo``): each region of ``spec.from_name``
        with a trained region type and a label that has a class id goes to ``region_lines``."""
        lines: list[str] = []
        dropped: list[str] = []
        for region in result:
            if region.get("from_name") != self.spec.from_name:
                continue
            where = describe(region)
            rtype = region.get("type")
            if rtype not in self.region_types:
                dropped.append(f"{where}: region type {rtype!r} is not trained as {self.spec.task}")
                continue
            label, reason = first_label(region, str(rtype))
            if label is None:
                dropped.append(f"{where}: {reason}")
                continue
            if label not in class_ids:
                dropped.append(f"{where}: label {label!r} has no class id (not in the label config)")
                continue
            try:
                got, lost = self.region_lines(region, int(class_ids[label]), width, height)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                dropped.append(f"{where}: malformed value ({type(exc).__name__}: {exc})")
                continue
            lines += got
            dropped += lost
        return lines, dropped

    def region_lines(self, region: Region, cls: int, width: int, height: int) -> Lines:
        """The label line(s) of one labelled region of class ``cls`` on a ``width`` x ``height``
        pixel image, and why (part of) it is dropped.

        Raises:
            KeyError, TypeError, ValueError, IndexError, AttributeError: a malformed ``value``.
        """
        raise NotImplementedError(f"{self.name} has no YOLO label lines")

    # ------------------------------------------------------------------ YOLO lines -> regions

    def line_regions(self, text: str, names: Mapping[int, str], width: int, height: int) -> list[Region]:
        """Regions of one YOLO label line (see ``labelloop.task_types.convert.yolo_to_regions``);
        empty when its label is not in ``spec.labels``.

        Raises:
            ValueError: the line does not parse for this task, or its class id is not in ``names``.
        """
        parts = text.split()
        if not parts:
            raise ValueError("empty label line")
        try:
            cls = int(parts[0])
            nums = np.array([float(v) for v in parts[1:]], dtype=np.float64)
        except ValueError:
            raise ValueError(f"label line does not parse: {text!r}") from None
        if cls not in names:
            raise ValueError(f"class id {cls} is not in names")
        if names[cls] not in self.spec.labels:
            return []
        return self.line_to_regions(LabelLine(cls, names[cls], nums, text), width, height)

    def line_to_regions(self, line: LabelLine, width: int, height: int) -> list[Region]:
        """Regions of one parsed label line of a ``width`` x ``height`` pixel image.

        Raises:
            ValueError: the line has the wrong number of fields for this task.
        """
        raise ValueError(f"yolo_to_regions converts detect, obb, segment, pose, not {self.name}")

    # ------------------------------------------------------------------ model outputs -> regions

    def predictions(self, names: Mapping[int, str], width: int, height: int, outputs: ModelOutputs) -> list[Region]:
        """Prediction regions of one image's model outputs (``labelloop.task_types.outputs``), for the
        instances whose label is in ``spec.labels``, in instance order: ``classes`` and ``scores``
        are checked, then ``instance_regions`` checks what the task reads and makes each one's.

        Raises:
            ValueError: an output the task needs is missing or its length disagrees.
        """
        found = Instances.of(outputs, names, int(width), int(height), self.spec.task)
        if not len(found):
            return []
        regions_of = self.instance_regions(found)
        return [region for i, label in found.labelled(self.spec.labels) for region in regions_of(i, label)]

    def instance_regions(self, found: Instances) -> RegionsOf:
        """Check the outputs this task reads (ValueError when missing or not one per instance) and
        return what makes instance ``i``'s regions (none when it is too small to keep)."""
        raise NotImplementedError

    def outputs(self, res: Any) -> ModelOutputs | None:
        """What ``predictions`` needs from one Ultralytics ``Results`` (plus ``class_scores``, (N, nc)
        every class's score per box, when the predictor set ``res.class_scores``:
        ``labelloop.task_types.informativeness`` reads it); None when it holds no instance."""
        boxes = getattr(res, "boxes", None)
        if boxes is None:
            return None
        outputs = ModelOutputs(boxes_xyxy=boxes.xyxy, classes=boxes.cls, scores=boxes.conf)
        class_scores = getattr(res, "class_scores", None)  # (N, nc): serving.inference.class_scores_predictor
        if class_scores is not None:
            outputs["class_scores"] = class_scores
        return instances_or_none(outputs)
