"""The promotion gate: does a trained candidate replace the served version? (pure function)

The candidate was trained on every annotation the served version saw and more, so it is
expected to be at least as good; the gate's job is to stop a training that went wrong, not to
pick between two good models on noise. Both are scored on the same validation split. With a
handful of validation objects a metric moves by tens of points between two equally good
models, so the gate rejects only a drop larger than ``margin`` plus the noise of the split:
one standard error of the difference of two proportions measured on ``n`` objects (images for
classification), ``sqrt((c (1 - c) + i (1 - i)) / n)``, each shrunk by ``(p n + 1) / (n + 2)``.
On 8 validation objects at mAP 0.5 that is 0.25; on 1,000 objects it is 0.02, and the configured
margin dominates.

When the label config gained (or lost) a label since the served version, the two versions do
not know the same classes and their overall scores are not comparable; the gate then compares
them on the classes both know under the same class id (``comparable``): the mean of the metric's
per-class value over those classes, with the noise of their validation objects. Only when no
class is shared (or the metric has no per-class value, classification's accuracy) does it fall
back to the overall scores, the incumbent's on its own classes, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

METRICS = ("map50_95", "map50", "precision", "recall", "accuracy_top1")
# A promotion metric -> its name in the per-class metrics (``TaskType.class_metrics``).
PER_CLASS = {"map50_95": "map50_95", "map50": "ap50", "precision": "precision", "recall": "recall"}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    noise: float = 0.0


def shrunk_proportion(p: float, n: int) -> float:
    """A proportion ``p`` (clipped to [0, 1]) measured on ``n`` > 0 items, shrunk towards 1/2 by one
    success and one failure: ``(p n + 1) / (n + 2)`` (as in the Agresti-Coull interval), so that
    0/2 and 2/2 on a tiny split do not claim zero uncertainty."""
    return (min(max(p, 0.0), 1.0) * n + 1) / (n + 2)


def noise_margin(candidate: float, incumbent: float, n: int) -> float:
    """One standard error of ``candidate - incumbent`` for proportions measured on ``n`` items
    (0 when ``n`` is unknown, i.e. 0), each shrunk by ``shrunk_proportion``."""
    if n <= 0:
        return 0.0
    c, i = shrunk_proportion(candidate, n), shrunk_proportion(incumbent, n)
    return math.sqrt((c * (1 - c) + i * (1 - i)) / n)


def decide_promotion(
    candidate: dict[str, float], incumbent: dict[str, float] | None, metric: str, margin: float, n_val: int = 0
) -> Decision:
    """Promote when there is no incumbent, or the candidate's ``metric`` is not worse than the
    incumbent's by more than ``margin`` (absolute, same units as the metric) plus
    ``noise_margin`` over ``n_val`` validation objects (images for classification).

    Both sets of metrics must come from the same validation split (see ``labelloop.training.child``).

    Raises:
        ValueError: ``metric`` is not one of ``METRICS`` or missing from the candidate.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown promotion metric {metric!r}; one of {', '.join(METRICS)}")
    if metric not in candidate:
        raise ValueError(f"candidate has no {metric}")
    if not incumbent or metric not in incumbent:
        return Decision(True, "no incumbent")
    c, i = candidate[metric], incumbent[metric]
    noise = noise_margin(c, i, n_val)
    allowed = margin + noise
    detail = f"margin {margin} + noise {noise:.3f} on {n_val} val objects" if n_val else f"margin {margin}"
    if c - i >= -allowed:
        return Decision(True, f"{metric} {c:.4f} vs {i:.4f} ({detail})", noise)
    return Decision(False, f"{metric} {c:.4f} < {i:.4f} - {allowed:.4f} ({detail})", noise)


@dataclass(frozen=True)
class Comparison:
    """What the gate compares: the candidate's and the incumbent's metrics, the validation
    objects behind them, and a ``note`` on how they were made comparable ('' when as measured)."""

    candidate: dict[str, float]
    incumbent: dict[str, float] | None
    n_val: int
    note: str = ""

    def decide(self, metric: str, margin: float) -> Decision:
        """``decide_promotion`` on these metrics, ``note`` added to the reason."""
        decision = decide_promotion(self.candidate, self.incumbent, metric, margin, self.n_val)
        reason = f"{decision.reason}; {self.note}" if self.note else decision.reason
        return Decision(decision.promote, reason, decision.noise)


def comparable(
    metric: str,
    candidate: Mapping[str, float],
    candidate_classes: Mapping[str, Mapping[str, float]],
    incumbent: Mapping[str, float] | None,
    incumbent_classes: Mapping[str, Mapping[str, float]] | None,
    shared: Mapping[str, int] | None,
    n_val: int,
) -> Comparison:
    """The metrics the gate compares for one candidate.

    Args:
        candidate, incumbent: overall metrics on the same validation split (fractions).
        candidate_classes, incumbent_classes: per class name ``{"ap50", "map50_95",
            "precision", "recall"}`` from the same validations (``TaskType.class_metrics``).
        shared: None when both versions know the same classes; otherwise each class name that
            both know under the same id -> its validation objects.
        n_val: the split's validation objects (``TaskType.validation_count``).

    Returns:
        as measured when the classes are the same or nothing is served; else ``{metric: mean
        over the shared classes validated in both}`` for each side with those classes' objects
        as ``n_val``; the overall metrics when no such class exists or ``metric`` has no
        per-class value. ``note`` says which.
    """
    if incumbent is None or shared is None:
        return Comparison(dict(candidate), dict(incumbent) if incumbent is not None else None, n_val)
    per_class = PER_CLASS.get(metric)
    both = sorted(c for c in shared if c in candidate_classes and c in (incumbent_classes or {}))
    if per_class is None or not both or incumbent_classes is None:
        why = f"{metric} has no per-class value" if per_class is None else "no class validated in both"
        return Comparison(dict(candidate), dict(incumbent), n_val, f"classes changed, {why}: overall scores")

    def mean(classes: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        return {metric: sum(float(classes[c][per_class]) for c in both) / len(both)}

    objects = sum(shared[c] for c in both)
    return Comparison(mean(candidate_classes), mean(incumbent_classes), objects, f"on shared classes {', '.join(both)}")
