"""``classify``: a single-choice Choices on the image as the image's class (Ultralytics'
classification layout: one folder per class, no label files)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from labelloop.task_types.base import TaskType
from labelloop.task_types.geometry import _first_label, _np, _region, _where
from labelloop.task_types.spec import TrainSpec


class Classify(TaskType):
    name = "classify"
    control_tags = ("Choices",)
    label_files = False
    promotion_metric = "accuracy_top1"

    def val_metrics(self, result: Any) -> dict[str, float]:
        return {"accuracy_top1": float(result.top1), "accuracy_top5": float(result.top5)}

    def class_metrics(self, result: Any) -> dict[str, dict[str, float]]:
        return {}  # Ultralytics' ClassifyMetrics has top-1/top-5 only

    def validation_count(self, images: int, instances: int) -> int:
        return images

    def predictions(
        self, spec: TrainSpec, names: Mapping[int, str], width: int, height: int, arrays: dict[str, Any]
    ) -> list[dict[str, Any]]:
        probs = arrays.get("probs")
        if probs is None:
            raise ValueError("classify predictions need probs")
        p = _np(probs).ravel()
        for i in (int(i) for i in np.argsort(-p, kind="stable")):
            if names.get(i) in spec.labels:
                return [_region(spec, "choices", {"choices": [names[i]]}, int(width), int(height), float(p[i]))]
        return []

    def results_arrays(self, res: Any, spec: TrainSpec) -> dict[str, Any] | None:
        if getattr(res, "probs", None) is None:
            return None
        return {"probs": res.probs.data}


def annotation_to_class(
    result: list[dict[str, Any]], spec: TrainSpec, class_ids: Mapping[str, int]
) -> tuple[str | None, list[str]]:
    """The class label of one classify annotation (a single-choice Choices on the image).

    Args:
        result: the annotation's ``result``; ``choices`` regions of ``spec.from_name`` count.
        spec: a classify spec.
        class_ids: label -> class id; a choice without one is not trained.

    Returns:
        ``(label, reasons)``: the chosen label, or None with the reason (no choice, several
        choices, choice without class id) so the caller skips the task.
    """
    chosen: list[str] = []
    reasons: list[str] = []
    for region in result:
        if region.get("from_name") != spec.from_name:
            continue
        label, reason = _first_label(region, "choices")
        if label is None:
            reasons.append(f"{_where(region)}: {reason}")
            continue
        chosen.extend(str(c) for c in region["value"]["choices"])
    distinct = list(dict.fromkeys(chosen))
    if not distinct:
        return None, reasons + [f"no choice of {spec.from_name!r}"]
    if len(distinct) > 1:
        return None, reasons + [f"several choices of {spec.from_name!r}: {', '.join(distinct)}"]
    if distinct[0] not in class_ids:
        return None, reasons + [f"choice {distinct[0]!r} has no class id (not in the label config)"]
    return distinct[0], reasons
