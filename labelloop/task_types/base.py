"""The interface every Ultralytics task type implements (one module per type in this package).

A task type knows, for its Ultralytics task (https://docs.ultralytics.com/tasks/): which Label
Studio region types it trains, how an annotation becomes YOLO label lines and a line becomes
regions again, how model outputs become prediction regions, and its dataset layout. The
dispatching functions of ``labelloop.task_types.convert`` look the type up by ``spec.task``
(``labelloop.task_types.task_type``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from labelloop.task_types.geometry import _first_label, _np, _where
from labelloop.task_types.spec import TrainSpec

Score = Callable[[int], float | None]
Rows = Callable[[Any, str, tuple[int, ...]], npt.NDArray[np.float64]]


class TaskType:
    """One Ultralytics task type (subclasses set the class attributes and override what applies).

    Attributes:
        name: the Ultralytics task (``detect``, ``obb``, ``segment``, ``pose``, ``classify``).
        control_tags: the Label Studio control tags it trains (README's "What it trains").
        label_files: the dataset has ``labels/*.txt`` next to ``images/`` (False: one folder per
            class, Ultralytics' classification layout).
        trained_alone: its control tag alone picks it (``labelloop.task_types.labels``).
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

    def data_yaml_extra(self, spec: TrainSpec) -> dict[str, Any]:
        """Keys the dataset's ``data.yaml`` needs besides path, train, val and names."""
        return {}

    def val_metrics(self, result: Any) -> dict[str, float]:
        """Fractions in [0, 1] from an Ultralytics validation result: ``map50_95``, ``map50``,
        ``precision`` and ``recall`` of the task's own regions, plus ``box_map50_95`` when those
        are not boxes."""
        m = getattr(result, self.metrics_attr)
        metrics = {"map50_95": float(m.map), "map50": float(m.map50), "precision": float(m.mp), "recall": float(m.mr)}
        if self.metrics_attr != "box":
            metrics["box_map50_95"] = float(result.box.map)
        return metrics

    def class_metrics(self, result: Any) -> dict[str, dict[str, float]]:
        """Per class name, fractions in [0, 1] from an Ultralytics validation result:
        ``{"ap50", "map50_95", "precision", "recall"}`` of the task's own regions, for the classes
        the validation split has (``Metric.ap_class_index`` and ``Metric.class_result(i)``)."""
        m = getattr(result, self.metrics_attr)
        names = getattr(result, "names", None) or {}
        out: dict[str, dict[str, float]] = {}
        for i, c in enumerate(m.ap_class_index):
            p, r, ap50, ap = (float(x) for x in m.class_result(i))
            out[str(names.get(int(c), int(c)))] = {"ap50": ap50, "map50_95": ap, "precision": p, "recall": r}
        return out

    def validation_count(self, images: int, instances: int) -> int:
        """What the promotion gate's noise term counts in the validation split."""
        return instances

    def annotation_to_lines(
        self, result: list[dict[str, Any]], spec: TrainSpec, class_ids: Mapping[str, int], width: int, height: int
    ) -> tuple[list[str], list[str]]:
        """YOLO label lines of one annotation's ``result`` and a reason per dropped region (see
        ``labelloop.task_types.convert.annotation_to_yolo``)."""
        lines: list[str] = []
        dropped: list[str] = []
        for region in result:
            if region.get("from_name") != spec.from_name:
                continue
            where = _where(region)
            rtype = region.get("type")
            if rtype not in self.region_types:
                dropped.append(f"{where}: region type {rtype!r} is not trained as {spec.task}")
                continue
            label, reason = _first_label(region, str(rtype))
            if label is None:
                dropped.append(f"{where}: {reason}")
                continue
            if label not in class_ids:
                dropped.append(f"{where}: label {label!r} has no class id (not in the label config)")
                continue
            try:
                self.region_lines(region, str(rtype), int(class_ids[label]), width, height, lines, dropped)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                dropped.append(f"{where}: malformed value ({type(exc).__name__}: {exc})")
        return lines, dropped

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
        """Append the label line(s) of one labelled region, or the reason it is dropped."""
        raise ValueError(f"{self.name} has no YOLO label lines")

    def line_to_regions(
        self, nums: npt.NDArray[np.float64], label: str, spec: TrainSpec, width: int, height: int, line: str
    ) -> list[dict[str, Any]]:
        """Regions of one parsed label line (the class already mapped to ``label``)."""
        raise ValueError(f"yolo_to_regions converts detect, obb, segment, pose, not {self.name}")

    def predictions(
        self, spec: TrainSpec, names: Mapping[int, str], width: int, height: int, arrays: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Prediction regions from model outputs (``arrays``: the keyword arguments of
        ``labelloop.task_types.convert.predictions_to_regions``): checks ``classes`` and ``scores``, then
        ``predictions_to_regions``."""
        classes, scores = arrays.get("classes"), arrays.get("scores")
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

        return self.predictions_to_regions(spec, names, int(width), int(height), cls, score, rows, arrays)

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
        """Prediction regions of ``len(cls)`` instances (``arrays``: the model outputs given to
        ``labelloop.task_types.convert.predictions_to_regions``)."""
        raise NotImplementedError

    def results_arrays(self, res: Any, spec: TrainSpec) -> dict[str, Any] | None:
        """What ``predictions_to_regions`` needs from one Ultralytics ``Results`` (plus
        ``class_scores``, (N, nc) every class's score per box, when the predictor set
        ``res.class_scores``: ``labelloop.task_types.informativeness`` reads it); None when it holds no
        instance."""
        boxes = getattr(res, "boxes", None)
        if boxes is None:
            return None
        arrays = {"boxes_xyxy": boxes.xyxy, "classes": boxes.cls, "scores": boxes.conf}
        class_scores = getattr(res, "class_scores", None)  # (N, nc), labelloop.serving.predictor's detect predictor
        if class_scores is not None:
            arrays["class_scores"] = class_scores
        return instances_or_none(arrays)


def instances_or_none(arrays: dict[str, Any]) -> dict[str, Any] | None:
    """``arrays``, or None when they hold no instance."""
    return arrays if len(_np(arrays["classes"]).ravel()) else None
