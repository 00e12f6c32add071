"""The promotion gate (pure decisions)."""

from __future__ import annotations

import pytest

from labelloop.registry.promotion import decide_promotion

C = {"map50_95": 0.50, "map50": 0.70, "precision": 0.6, "recall": 0.5}


@pytest.mark.parametrize(
    ("incumbent", "metric", "margin", "promote"),
    [
        (None, "map50_95", 0.01, True),
        ({"map50_95": 0.40}, "map50_95", 0.0, True),
        ({"map50_95": 0.50}, "map50_95", 0.0, True),
        ({"map50_95": 0.505}, "map50_95", 0.01, True),
        ({"map50_95": 0.52}, "map50_95", 0.01, False),
        ({"map50_95": 0.30, "map50": 0.90}, "map50", 0.05, False),
        ({"map50_95": 0.30, "map50": 0.74}, "map50", 0.05, True),
    ],
)
def test_decide_promotion(incumbent: dict | None, metric: str, margin: float, promote: bool) -> None:
    """Promote without an incumbent or when the metric is not worse by more than the margin."""
    decision = decide_promotion(C, incumbent, metric, margin)
    assert decision.promote is promote
    assert metric in decision.reason or decision.reason == "no incumbent"


def test_unknown_metric_is_an_error() -> None:
    """A metric outside mAP50-95, mAP50, precision, recall is refused."""
    with pytest.raises(ValueError, match="unknown promotion metric"):
        decide_promotion(C, None, "f1", 0.0)


@pytest.mark.parametrize(
    ("candidate", "incumbent", "n_val", "promote"),
    [
        # 8 validation objects: a 0.2 drop is within one standard error (~0.25): noise, promoted.
        (0.40, 0.60, 8, True),
        # The same drop measured on 1,000 objects (~0.03) is real: rejected.
        (0.40, 0.60, 1000, False),
        # A collapse is caught even on a small split.
        (0.00, 0.90, 8, False),
        (0.58, 0.60, 1000, True),
    ],
)
def test_gate_allows_for_the_noise_of_a_small_validation_split(
    candidate: float, incumbent: float, n_val: int, promote: bool
) -> None:
    """The gate rejects only a drop larger than the margin plus one standard error of the
    difference on the split's n validation objects."""
    decision = decide_promotion({"map50": candidate}, {"map50": incumbent}, "map50", 0.01, n_val)
    assert decision.promote is promote, decision.reason
    assert f"{n_val} val objects" in decision.reason


def test_noise_is_never_zero_on_a_tiny_split() -> None:
    """2 of 2 right for both models still carries the uncertainty of 2 images (shrunk proportions),
    and the noise falls with the square root of the split's size."""
    from labelloop.registry.promotion import noise_margin

    assert noise_margin(1.0, 1.0, 2) > 0.3
    assert noise_margin(0.5, 0.5, 8) == pytest.approx(0.25)
    assert noise_margin(0.5, 0.5, 800) == pytest.approx(noise_margin(0.5, 0.5, 8) / 10, rel=0.02)
    assert noise_margin(0.5, 0.5, 0) == 0.0
