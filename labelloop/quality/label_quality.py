"""Label quality of detection annotations: how much a model disagrees with each annotation, and where.

Pure functions, no I/O. The method is cleanlab's object detection module (ObjectLab, Tkachenko et
al. 2023, https://docs.cleanlab.ai/stable/cleanlab/object_detection/rank.html): one score per
annotated image in [0, 1] (low: the annotation is likely wrong), computed as cleanlab's
``get_label_quality_scores`` does (its three public per-box scores, each pooled per image with
``pool_box_scores_per_image``, combined by geometric mean) but with confidence thresholds suited
to small models (``HIGH_PROBABILITY``); the per-box scores say which kind of mistake is suspected:

- ``compute_swap_box_scores`` (one per annotated box; low: the model sees another class there)
  -> **wrong class**;
- ``compute_badloc_box_scores`` (one per annotated box; low: the overlapping predicted boxes of
  that class sit elsewhere) -> **badly placed box**;
- ObjectLab has no score of its own for a box drawn where the model sees nothing (its
  badly-located score ignores predicted boxes that do not intersect): ``_extra_scores`` (one per
  annotated box; the best confidence of any predicted box overlapping it, over
  ``HIGH_PROBABILITY``) -> **extra box**, pooled with the badly-located scores (their minimum);
- ``compute_overlooked_box_scores`` (one per *predicted* box; low: a confident predicted box
  that no annotated box of its class covers) -> **missed object**, at the predicted box.

A box is suspected when its score is below ``BOX_THRESHOLD``. The predictions must come from a
model that was **not trained on the annotation it judges** (``labelloop.quality.mistakes`` picks the
version), and should keep low-confidence boxes too (cleanlab's advice: the scores use every
class's evidence).

Coordinates: Label Studio ``rectanglelabels`` regions are percent of the displayed image
(https://labelstud.io/guide/predictions); here they become pixel ``xyxy`` (``original_width`` /
``original_height`` of the region, else percent units) for cleanlab, and ``Issue`` gives the
suspected region back in percent (``x, y, width, height``) for drawing.

Only detection (``RectangleLabels``) is scored: ObjectLab is defined for axis-aligned boxes.
Rotated boxes (obb), polygons, masks, keypoints and choices are not (``SUPPORTED_TASKS``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from labelloop.ls_json import Region, RegionValue
from labelloop.quality.records import DrawnBox, IssueRecord, Percent

SUPPORTED_TASKS = frozenset({"detect"})
BOX_THRESHOLD = 0.3  # a per-box score below this is a suspected mistake
EXTRA_IOU = 0.1
# cleanlab's defaults are 0.95 / 0.5 / 0.1 (``cleanlab.internal.constants``); a YOLO trained on a
# few dozen images seldom reaches 0.95, so labelloop counts boxes from 0.5 as confident (bench/mistakes).
HIGH_PROBABILITY = 0.5
LOW_PROBABILITY = 0.3
TEMPERATURE = 0.1  # an annotated box overlapping no predicted box this much is an extra box

MISSED = "missed object"
EXTRA = "extra box"
WRONG_CLASS = "wrong class"
BADLY_PLACED = "badly placed box"
KINDS = (MISSED, EXTRA, WRONG_CLASS, BADLY_PLACED)


class CleanlabLabels(TypedDict):
    """One image's annotated boxes in cleanlab's object detection format: ``bboxes`` (L, 4) float32
    xyxy pixels, ``labels`` (L,) int64 class ids (``cleanlab.object_detection.rank``'s ``labels`` item)."""

    bboxes: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]


@dataclass(frozen=True)
class Box:
    """One box in pixels (``x1 < x2``, ``y1 < y2``) with its label and, for a prediction, its score.

    ``width``/``height`` are the image's pixel size the box was drawn on (for percent output).
    """

    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    score: float | None = None
    width: float = 100.0
    height: float = 100.0

    def percent(self) -> Percent:
        """``{"x", "y", "width", "height"}`` in percent of the image (Label Studio's region values)."""
        return {
            "x": round(self.x1 / self.width * 100, 2),
            "y": round(self.y1 / self.height * 100, 2),
            "width": round((self.x2 - self.x1) / self.width * 100, 2),
            "height": round((self.y2 - self.y1) / self.height * 100, 2),
        }


@dataclass(frozen=True)
class Issue:
    """One suspected mistake: its ``kind`` (one of ``KINDS``), the annotated ``label``, the
    model's label where it differs (``predicted``), the per-box ``score`` (low: worse) and the
    region in percent (``Box.percent``)."""

    kind: str
    label: str
    score: float
    region: Percent
    predicted: str | None = None

    def record(self) -> IssueRecord:
        """The issue as the report keeps it (``labelloop.quality.records``)."""
        return {
            "kind": self.kind,
            "label": self.label,
            "score": self.score,
            "region": self.region,
            "predicted": self.predicted,
        }

    def describe(self) -> str:
        """One line, e.g. ``wrong class: circle (model: square) at x=10.0% y=20.0%``."""
        what = f"{self.label} (model: {self.predicted})" if self.predicted else self.label
        return f"{self.kind}: {what} at x={self.region['x']:.1f}% y={self.region['y']:.1f}%"


@dataclass(frozen=True)
class Quality:
    """One annotated task's label quality: ``score`` in [0, 1] (low: likely mistaken), its
    suspected ``issues`` worst first, and the annotated boxes (percent) for drawing."""

    score: float
    issues: list[Issue] = field(default_factory=list)
    boxes: list[DrawnBox] = field(default_factory=list)


def boxes_from_result(result: Sequence[Region], scored: bool = False) -> list[Box]:
    """The ``rectanglelabels`` regions of a Label Studio ``result`` as pixel boxes.

    Args:
        result: an annotation's or a prediction's ``result`` (regions in percent).
        scored: read each region's ``score`` (a prediction's; missing -> 1.0).

    Returns:
        one ``Box`` per rectangle with a label; other region types are skipped.
    """
    out = []
    for region in result:
        if region.get("type") != "rectanglelabels":
            continue
        v: RegionValue = region.get("value") or {}
        labels = v.get("rectanglelabels") or []
        if not labels:
            continue
        w = float(region.get("original_width") or 100.0)
        h = float(region.get("original_height") or 100.0)
        x1, y1 = float(v.get("x", 0)) / 100 * w, float(v.get("y", 0)) / 100 * h
        x2, y2 = x1 + float(v.get("width", 0)) / 100 * w, y1 + float(v.get("height", 0)) / 100 * h
        score = float(region.get("score", 1.0)) if scored else None
        out.append(Box(x1, y1, x2, y2, str(labels[0]), score, w, h))
    return out


def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    ih = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = iw * ih
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def cleanlab_inputs(
    annotated: Sequence[Box], predicted: Sequence[Box], classes: Sequence[str]
) -> tuple[CleanlabLabels, npt.NDArray[Any]]:
    """One image in cleanlab's object detection format.

    Returns:
        ``({"bboxes": (L, 4) float32 xyxy, "labels": (L,) int}, predictions)``; predictions is
        an object array of ``len(classes)`` arrays (M_k, 5) ``[x1, y1, x2, y2, conf]``
        (``cleanlab.object_detection.rank``'s ``predictions`` item). Boxes of labels not in
        ``classes`` are left out.
    """
    index = {c: i for i, c in enumerate(classes)}
    kept = [b for b in annotated if b.label in index]
    labels: CleanlabLabels = {
        "bboxes": np.array([[b.x1, b.y1, b.x2, b.y2] for b in kept], dtype=np.float32).reshape(-1, 4),
        "labels": np.array([index[b.label] for b in kept], dtype=np.int64),
    }
    per_class: list[list[list[float]]] = [[] for _ in classes]
    for b in predicted:
        if b.label in index:
            per_class[index[b.label]].append([b.x1, b.y1, b.x2, b.y2, float(b.score or 0.0)])
    preds = np.empty(len(classes), dtype=object)
    for k, rows in enumerate(per_class):
        preds[k] = np.array(rows, dtype=np.float32).reshape(-1, 5)
    return labels, preds


def score_tasks(
    pairs: Sequence[tuple[Sequence[Box], Sequence[Box]]],
    classes: Sequence[str],
    box_threshold: float = BOX_THRESHOLD,
    high: float = HIGH_PROBABILITY,
    low: float = LOW_PROBABILITY,
) -> list[Quality]:
    """Label quality of annotated images, one ``Quality`` per ``(annotated boxes, predicted boxes)``
    pair, in order.

    Args:
        pairs: per task, the annotation's boxes and the boxes predicted by a version not trained
            on that annotation (with their scores; keep low-confidence ones).
        classes: the label names in model class-id order.
        box_threshold: a per-box score under this is a suspected mistake.
        high: cleanlab's ``high_probability_threshold`` (predicted boxes at least this confident
            count for the swap and overlooked scores).
        low: cleanlab's ``low_probability_threshold`` (for the badly-located score).

    Returns:
        ``Quality`` per pair; an image with no annotated box and no predicted box scores 1.0.
    """
    if not pairs:
        return []
    labels, preds = [], []
    for annotated, predicted in pairs:
        lab, pred = cleanlab_inputs(annotated, predicted, classes)
        labels.append(lab)
        preds.append(pred)
    from cleanlab.object_detection import rank  # heavy import (pandas, sklearn): only when scoring

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about images with no box at all
        swap = rank.compute_swap_box_scores(labels=labels, predictions=preds, high_probability_threshold=high)
        badloc = rank.compute_badloc_box_scores(labels=labels, predictions=preds, low_probability_threshold=low)
        overlooked = rank.compute_overlooked_box_scores(
            labels=labels, predictions=preds, high_probability_threshold=high
        )
        extra = [
            _extra_scores([b for b in a if b.label in classes], [b for b in p if b.label in classes], high)
            for a, p in pairs
        ]
        located = [np.fmin(np.nan_to_num(b, nan=1.0), e) for b, e in zip(badloc, extra, strict=True)]
        pooled = [rank.pool_box_scores_per_image(s, temperature=TEMPERATURE) for s in (overlooked, located, swap)]
    # cleanlab's get_label_quality_scores: the geometric mean of the three pooled subtype scores
    scores = np.exp(sum(np.log(1e-100 + np.nan_to_num(p, nan=1.0)) for p in pooled) / 3)
    out = []
    for i, (annotated, predicted) in enumerate(pairs):
        kept = [b for b in annotated if b.label in classes]
        issues = _issues(
            kept, [b for b in predicted if b.label in classes], classes, swap[i], badloc[i], extra[i], overlooked[i]
        )
        issues = [x for x in issues if x.score < box_threshold]
        issues.sort(key=lambda x: x.score)
        boxes: list[DrawnBox] = [{**b.percent(), "label": b.label} for b in kept]
        out.append(Quality(float(np.nan_to_num(scores[i], nan=1.0)), issues, boxes))
    return out


def _issues(
    annotated: list[Box],
    predicted: list[Box],
    classes: Sequence[str],
    swap: npt.NDArray[Any],
    badloc: npt.NDArray[Any],
    extra: npt.NDArray[Any],
    overlooked: npt.NDArray[Any],
) -> list[Issue]:
    """Every box's worst kind with its score (unfiltered); see the module docstring."""
    issues = []
    for j, box in enumerate(annotated):
        s_swap = _finite(swap, j)
        s_loc = _finite(badloc, j)
        s_extra = _finite(extra, j)
        best = max(predicted, key=lambda p: _iou(box, p) * (p.score or 0.0), default=None)
        if s_swap <= min(s_loc, s_extra):
            other = best.label if best is not None and best.label != box.label and _iou(box, best) > 0 else None
            issues.append(Issue(WRONG_CLASS, box.label, s_swap, box.percent(), other))
        elif s_extra < s_loc:
            issues.append(Issue(EXTRA, box.label, s_extra, box.percent()))
        else:
            issues.append(Issue(BADLY_PLACED, box.label, s_loc, box.percent()))
    per_class = {k: [p for p in predicted if p.label == c] for k, c in enumerate(classes)}
    order = [p for k in range(len(classes)) for p in per_class[k]]  # cleanlab concatenates by class id
    for m, p in enumerate(order):
        s = _finite(overlooked, m)
        issues.append(Issue(MISSED, p.label, s, p.percent()))
    return issues


def _extra_scores(annotated: list[Box], predicted: list[Box], high: float) -> npt.NDArray[np.float64]:
    """Per annotated box, the evidence that something is there: the best confidence of a predicted
    box of any class overlapping it by ``EXTRA_IOU`` or more, over ``high`` (capped at 1).

    ObjectLab's badly-located score only compares a box with the predicted boxes that intersect
    it, so a box drawn where the model sees nothing at all keeps 1.0; this score (low: nothing
    there) stands in for it, in the same family (``min`` with the badly-located score).
    """
    out = np.ones(len(annotated))
    for j, box in enumerate(annotated):
        conf = max((p.score or 0.0 for p in predicted if _iou(box, p) >= EXTRA_IOU), default=0.0)
        out[j] = min(1.0, conf / high)
    return out


def _finite(scores: npt.NDArray[Any], j: int) -> float:
    """A per-box score; cleanlab gives NaN where a box has nothing to compare with (not suspected)."""
    if j >= len(scores):
        return 1.0
    v = float(scores[j])
    return 1.0 if np.isnan(v) else v
