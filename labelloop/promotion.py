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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

METRICS = ("map50_95", "map50", "precision", "recall", "accuracy_top1")


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    noise: float = 0.0


def noise_margin(candidate: float, incumbent: float, n: int) -> float:
    """One standard error of ``candidate - incumbent`` for proportions measured on ``n`` items
    (0 when ``n`` is unknown, i.e. 0). Each proportion is shrunk towards 1/2 by one success and
    one failure, ``(p n + 1) / (n + 2)`` (as in the Agresti-Coull interval), so that 0/2 and 2/2
    on a tiny split do not claim zero uncertainty."""
    if n <= 0:
        return 0.0

    def shrunk(p: float) -> float:
        return (min(max(p, 0.0), 1.0) * n + 1) / (n + 2)

    c, i = shrunk(candidate), shrunk(incumbent)
    return math.sqrt((c * (1 - c) + i * (1 - i)) / n)


def decide_promotion(
    candidate: dict[str, float], incumbent: dict[str, float] | None, metric: str, margin: float, n_val: int = 0
) -> Decision:
    """Promote when there is no incumbent, or the candidate's ``metric`` is not worse than the
    incumbent's by more than ``margin`` (absolute, same units as the metric) plus
    ``noise_margin`` over ``n_val`` validation objects (images for classification).

    Both sets of metrics must come from the same validation split (see ``labelloop.training``).

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
