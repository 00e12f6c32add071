"""bench.curves: thresholds reached by interpolation, area under a curve, spread over seeds."""

from __future__ import annotations

import pytest

from bench.curves import auc, fmt_spread, mean_curve, reach, spread, value_at


@pytest.mark.parametrize(
    ("curve", "threshold", "expected"),
    [
        ([(10, 0.2), (20, 0.6)], 0.5, 17.5),
        ([(10, 0.6), (20, 0.7)], 0.5, 10.0),  # reached at the first round: nothing to interpolate from
        ([(10, 0.0), (20, 0.5)], 0.5, 20.0),  # exactly at a round
        ([(10, 0.1), (20, 0.6), (40, 0.3), (60, 0.9)], 0.5, 18.0),  # the first crossing counts
        ([(10, 0.1), (20, 0.4)], 0.5, None),
        ([], 0.5, None),
    ],
)
def test_reach_interpolates_linearly_between_rounds(curve, threshold, expected) -> None:
    """The annotations at which a threshold is first reached, linear between the rounds around it."""
    assert (
        reach(curve, threshold) == pytest.approx(expected) if expected is not None else reach(curve, threshold) is None
    )


@pytest.mark.parametrize(
    ("x", "expected"),
    [(20, 0.4), (30, 0.5), (10, 0.0), (40, 0.6), (5, None), (50, None)],
)
def test_value_at_interpolates_inside_and_never_extrapolates(x, expected) -> None:
    """A value between rounds is interpolated; outside the rounds there is none."""
    got = value_at([(10, 0.0), (20, 0.4), (40, 0.6)], x)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        ([(10, 0.0), (20, 0.4), (40, 0.6)], (5 * 0.4 + 20 * 0.5) / 30),
        ([(10, 0.5), (80, 0.5)], 0.5),  # a flat curve's area is its height
        ([(10, 0.3)], 0.3),
        ([], None),
    ],
)
def test_auc_is_the_mean_height_over_the_annotation_range(curve, expected) -> None:
    """Trapezoid area divided by the annotation range (first to last round)."""
    got = auc(curve)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_spread_counts_missing_values_apart() -> None:
    """Mean, min and max over the values present; None values (not reached) are counted as missing."""
    s = spread([0.2, None, 0.6])
    assert (s["mean"], s["min"], s["max"], s["n"], s["missing"]) == (pytest.approx(0.4), 0.2, 0.6, 2, 1)
    assert fmt_spread(s) == "0.400 [0.200-0.600] (1 of 3 missing)"
    assert fmt_spread(spread([None])) == "-"
    assert fmt_spread(spread([0.25])) == "0.250"


def test_mean_curve_averages_shared_rounds() -> None:
    """The mean curve has the rounds every seed has, each the mean of the seeds' values."""
    assert mean_curve([[(10, 0.0), (20, 0.4)], [(10, 0.2), (20, 0.6), (40, 0.9)]]) == [
        (10, pytest.approx(0.1)),
        (20, pytest.approx(0.5)),
    ]
