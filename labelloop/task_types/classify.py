"""``classify``: a single-choice Choices on the image as the image's class (Ultralytics'
classification layout: one folder per class, no label files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from labelloop.ls_json import Region, RegionValue
from labelloop.task_types.base import Lines, TaskType
from labelloop.task_types.geometry import as_array
from labelloop.task_types.outputs import ModelOutputs
from labelloop.task_types.regions import describe, first_label


class Classify(TaskType):
    name = "classify"
    control_tags = ("Choices",)
    label_files = False
    promotion_metric = "accuracy_top1"

    @classmethod
    def val_metrics(cls, result: Any) -> dict[str, float]:
        return {"accuracy_top1": float(result.top1), "accuracy_top5": float(result.top5)}

    @classmethod
    def class_metrics(cls, result: Any) -> dict[str, dict[str, float]]:
        return {}  # Ultralytics' ClassifyMetrics has top-1/top-5 only

    @classmethod
    def validation_count(cls, images: int, instances: int) -> int:
        return images

    def annotation_to_lines(
        self, result: Sequence[Region], class_ids: Mapping[str, int], width: int, height: int
    ) -> Lines:
        raise ValueError("classify has no YOLO label lines (annotation_to_class gives the image's class)")

    def predictions(self, names: Mapping[int, str], width: int, height: int, outputs: ModelOutputs) -> list[Region]:
        """One ``choices`` region: the most probable class of ``probs`` (C,) that is in
        ``spec.labels``, scored with its probability; none when no class is.

        Raises:
            ValueError: no ``probs``.
        """
        probs = outputs.get("probs")
        if probs is None:
            raise ValueError("classify predictions need probs")
        p = as_array(probs).ravel()
        for i in (int(i) for i in np.argsort(-p, kind="stable")):
            if names.get(i) in self.spec.labels:
                value = RegionValue(choices=[names[i]])
                return [self.make.region("choices", value, int(width), int(height), float(p[i]))]
        return []

    def outputs(self, res: Any) -> ModelOutputs | None:
        if getattr(res, "probs", None) is None:
            return None
        return ModelOutputs(probs=res.probs.data)

    def annotation_to_class(
        self, result: Sequence[Region], class_ids: Mapping[str, int]
    ) -> tuple[str | None, list[str]]:
        """The class label of one classify annotation (a single-choice Choices on the image).

        Args:
            result: the annotation's ``result``; ``choices`` regions of ``spec.from_name`` count.
            class_ids: label -> class id; a choice without one is not trained.

        Returns:
            ``(label, reasons)``: the chosen label, or None with the reason (no choice, several
            choices, choice without class id) so the caller skips the task.
        """
        chosen: list[str] = []
        reasons: list[str] = []
        from_name = self.spec.from_name
        for region in result:
            if region.get("from_name") != from_name:
                continue
            label, reason = first_label(region, "choices")
            if label is None:
                reasons.append(f"{describe(region)}: {reason}")
                continue
            chosen.extend(str(c) for c in region["value"]["choices"])
        distinct = list(dict.fromkeys(chosen))
        if not distinct:
            return None, reasons + [f"no choice of {from_name!r}"]
        if len(distinct) > 1:
            return None, reasons + [f"several choices of {from_name!r}: {', '.join(distinct)}"]
        if distinct[0] not in class_ids:
            return None, reasons + [f"choice {distinct[0]!r} has no class id (not in the label config)"]
        return distinct[0], reasons
