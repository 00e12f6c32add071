"""The promotion gate: does a trained candidate replace the served version? (pure function)"""

from __future__ import annotations

from dataclasses import dataclass

METRICS = ("map50_95", "map50", "precision", "recall", "accuracy_top1")


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide_promotion(
    candidate: dict[str, float], incumbent: dict[str, float] | None, metric: str, margin: float
) -> Decision:
    """Promote when there is no incumbent, or the candidate's ``metric`` is not worse than the
    incumbent's by more than ``margin`` (absolute, same units as the metric).

    Both sets of metrics must come from the same validation split (see ``workers.training``).

    Raises:
        ValueError: ``metric`` is not one of ``METRICS`` or missing from the candidate.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown promotion metric {metric!r}; one of {', '.join(METRICS)}")
    if metric not in candidate:
        raise ValueError(f"candidate has no {metric}")
    if not incumbent or metric not in incumbent:
        return Decision(True, "no incumbent")
    delta = candidate[metric] - incumbent[metric]
    if delta >= -margin:
        return Decision(True, f"{metric} {candidate[metric]:.4f} vs {incumbent[metric]:.4f} (margin {margin})")
    return Decision(False, f"{metric} {candidate[metric]:.4f} < {incumbent[metric]:.4f} - {margin}")
