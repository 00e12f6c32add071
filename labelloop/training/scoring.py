"""Detection scoring as in the benchmarks and the demo: mAP50, precision and recall of regions.

Pure functions on pixel boxes. Matching is greedy and COCO-style (predictions by descending
score, each taking the unmatched truth of its image and label with the highest IoU at or above
the threshold); AP is all-point interpolated (the precision envelope integrated over recall),
per class present in the truth, averaged into mAP. Label Studio rectangles (percent of the
displayed image, ``rotation`` in degrees about the top-left corner; see Label Studio's
"Export annotations" docs) convert with ``regions_to_dets``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from labelloop.ls_json import Region, RegionValue

IOU = 0.5


@dataclass(frozen=True)
class Det:
    """A detection or a ground-truth object: image key, label, score (1.0 for truth), pixel box."""

    image: int
    label: str
    score: float
    box: tuple[float, float, float, float]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(preds: Iterable[Det], truths: Iterable[Det], threshold: float = IOU) -> list[tuple[Det, bool]]:
    """Greedy matching per class, COCO-style: predictions in descending score order (ties keep
    input order), each taking the unmatched truth of its image and label with the highest IoU
    >= ``threshold``.

    Returns:
        ``(prediction, is_true_positive)`` in descending score order.
    """
    free: dict[tuple[int, str], list[Det]] = {}
    for t in truths:
        free.setdefault((t.image, t.label), []).append(t)
    out = []
    for p in sorted(preds, key=lambda d: -d.score):
        pool = free.get((p.image, p.label), [])
        best, best_iou = -1, threshold
        for i, t in enumerate(pool):
            v = iou(p.box, t.box)
            if v >= best_iou:
                best, best_iou = i, v
        if best >= 0:
            pool.pop(best)
        out.append((p, best >= 0))
    return out


def average_precision(hits: Sequence[bool], n_truth: int) -> float:
    """All-point interpolated AP of ranked predictions (``hits`` in descending score order).

    The precision envelope (max precision at any recall >= r) integrated over recall; 0.0
    without truth or predictions.
    """
    if n_truth <= 0 or not hits:
        return 0.0
    tp = 0
    recall, precision = [0.0], [1.0]
    for k, hit in enumerate(hits, start=1):
        tp += bool(hit)
        recall.append(tp / n_truth)
        precision.append(tp / k)
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    return sum((recall[i] - recall[i - 1]) * precision[i] for i in range(1, len(recall)))


class Score(TypedDict):
    """``score``'s result: mAP50 (``map50``, fractions), AP per label, precision and recall, and the
    counts they come from."""

    map50: float
    ap: dict[str, float]
    precision: float
    recall: float
    tp: int
    predictions: int
    truths: int


def score(preds: Sequence[Det], truths: Sequence[Det], threshold: float = IOU) -> Score:
    """mAP at ``threshold`` over the classes present in ``truths``, and precision / recall of all
    predictions (a prediction is right when it matches a truth of its label).

    Returns:
        ``{"map50", "ap": {label: AP}, "precision", "recall", "tp", "predictions", "truths"}``;
        precision is 0.0 without predictions.
    """
    matched = match(preds, truths, threshold)
    labels = sorted({t.label for t in truths})
    ap = {}
    for label in labels:
        n = sum(t.label == label for t in truths)
        ap[label] = average_precision([hit for p, hit in matched if p.label == label], n)
    tp = sum(hit for _, hit in matched)
    return Score(
        map50=sum(ap.values()) / len(ap) if ap else 0.0,
        ap=ap,
        precision=tp / len(matched) if matched else 0.0,
        recall=tp / len(truths) if truths else 0.0,
        tp=tp,
        predictions=len(matched),
        truths=len(truths),
    )


def edits(preds: Sequence[Det], truths: Sequence[Det], threshold: float = IOU) -> dict[str, int]:
    """What an annotator must change to turn ``preds`` into ``truths``: draw each missed object,
    delete each wrong region (matching as in ``match``; a region of the wrong label is both a
    wrong region and a missed object, as relabelling it is one edit plus a check).

    Returns:
        ``{"missed", "wrong", "edits", "truths", "predictions"}``; ``edits = missed + wrong``.
        With no prediction at all, ``edits`` is the number of truths (every box drawn by hand).
    """
    matched = match(preds, truths, threshold)
    tp = sum(hit for _, hit in matched)
    missed, wrong = len(truths) - tp, len(matched) - tp
    return {
        "missed": missed,
        "wrong": wrong,
        "edits": missed + wrong,
        "truths": len(truths),
        "predictions": len(matched),
    }


def region_box(value: RegionValue, width: float, height: float) -> tuple[float, float, float, float]:
    """Pixel box of a Label Studio rectangle value (percent; a rotation gives the box around it)."""
    x, y = float(value["x"]) / 100 * width, float(value["y"]) / 100 * height
    w, h = float(value["width"]) / 100 * width, float(value["height"]) / 100 * height
    a = math.radians(float(value.get("rotation") or 0.0))
    if not a:
        return (x, y, x + w, y + h)
    c, s = math.cos(a), math.sin(a)
    xs = [x + dx * c - dy * s for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [y + dx * s + dy * c for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    return (min(xs), min(ys), max(xs), max(ys))


def regions_to_dets(image: int, regions: Iterable[Region], width: int, height: int) -> list[Det]:
    """Detections from Label Studio ``rectanglelabels`` regions, in the displayed ``width x height``
    frame (the region's own ``original_width`` is deliberately not used: a region made for the
    wrong orientation scores as wrong). A region without ``score`` counts as 1.0."""
    out = []
    for r in regions:
        value = r.get("value") or RegionValue()
        labels = value.get("rectanglelabels") or []
        if r.get("type") != "rectanglelabels" or not labels:
            continue
        out.append(Det(image, str(labels[0]), float(r.get("score", 1.0)), region_box(value, width, height)))
    return out
