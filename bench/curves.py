"""Figures of learning curves for ``bench.learning``: pure functions on (annotations, value) points.

A curve is a list of ``(x, y)`` points in increasing ``x`` (annotations saved, a figure of the
version served after them: held-out mAP50, edits per held-out image). Between two rounds a
curve is taken as linear: that is how ``reach`` and ``value_at`` interpolate and how ``auc``
integrates (trapezoid rule). Nothing is extrapolated: before the first round and after the last
there is no value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Curve = Sequence[tuple[float, float]]


def reach(curve: Curve, threshold: float) -> float | None:
    """Annotations at which ``curve`` first reaches ``threshold``, linearly interpolated between
    the last round below it and the first round at or above it.

    Returns:
        ``x`` of the first point at or above ``threshold`` when it is the first point (nothing
        before it to interpolate from), the interpolated ``x`` otherwise, None when no point
        reaches it.

    Examples:
        >>> reach([(10, 0.2), (20, 0.6)], 0.5)
        17.5
    """
    prev: tuple[float, float] | None = None
    for x, y in curve:
        if y >= threshold:
            if prev is None or y == prev[1]:
                return float(x)
            x0, y0 = prev
            return x0 + (threshold - y0) * (x - x0) / (y - y0)
        prev = (x, y)
    return None


def value_at(curve: Curve, x: float) -> float | None:
    """``curve``'s value at ``x``, linearly interpolated between the rounds around it; None outside
    the rounds' range."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if len(curve) == 1 and curve[0][0] == x:
        return float(curve[0][1])
    return None


def auc(curve: Curve) -> float | None:
    """Area under ``curve`` (trapezoid rule) divided by its ``x`` range: the mean height of the
    curve between the first round and the last, in the units of ``y`` (for mAP50: 0 to 1). A
    single point gives its ``y``; no point gives None.

    Examples:
        >>> auc([(10, 0.0), (20, 0.4), (40, 0.6)])
        0.4
    """
    if not curve:
        return None
    if len(curve) == 1:
        return float(curve[0][1])
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False))
    width = curve[-1][0] - curve[0][0]
    return area / width if width else float(curve[0][1])


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and range (min, max) of the values present, over seeds.

    Returns:
        ``{"mean", "min", "max", "n", "missing"}``: ``n`` values present, ``missing`` values that
        were None (e.g. a threshold not reached in that seed); mean/min/max are None when ``n``
        is 0.
    """
    have = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not have:
        return {"mean": None, "min": None, "max": None, "n": 0, "missing": len(values)}
    return {
        "mean": sum(have) / len(have),
        "min": min(have),
        "max": max(have),
        "n": len(have),
        "missing": len(values) - len(have),
    }


def mean_curve(curves: Sequence[Curve]) -> list[tuple[float, float]]:
    """Point-wise mean of curves over the same rounds (a round missing from any curve is left out)."""
    if not curves:
        return []
    shared = set.intersection(*({x for x, _ in c} for c in curves))
    out = []
    for x in sorted(shared):
        ys = [y for c in curves for cx, y in c if cx == x]
        out.append((x, sum(ys) / len(ys)))
    return out


def fmt_spread(s: dict[str, Any], spec: str = ".3f", missing: str = "missing") -> str:
    """``0.412 [0.301-0.520]`` (mean [min-max]); ``0.412`` for one value; ``-`` for none; a count of
    missing values, when some are, after it: ``0.412 [0.301-0.520] (1 of 3 missing)`` (``missing``
    names them)."""
    if s["mean"] is None:
        return "-"
    text = format(s["mean"], spec)
    if s["n"] > 1:
        text += f" [{format(s['min'], spec)}-{format(s['max'], spec)}]"
    if s["missing"]:
        text += f" ({s['missing']} of {s['n'] + s['missing']} {missing})"
    return text
