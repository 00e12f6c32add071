"""The learning curve of a project: each model version's mAP50 and mAP50-95 against the number
of annotations it was trained on, drawn as SVG (the project page) or as text (``labelloop models
list``). Pure functions, no I/O.

The metrics are the ones the training's final validation recorded in the version's manifest
(``metrics.map50``, ``metrics.map50_95``; fractions in [0, 1]) on the project's deterministic
validation split (``labelloop.dataset.splits``: a task's split follows from its id). The number of
annotations is the count of annotations in the export the version was trained on
(``manifest.annotations``), or, for manifests written before that field, its images
(``dataset_size``).

The SVG is written by hand rather than with matplotlib: the receiver draws it per request
without importing a plotting stack, and every point is one ``<circle>`` with its version in
``data-version`` and a ``<title>`` tooltip, which a browser shows and a test can count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from html import escape

from labelloop.manifest import Manifest

SERIES = (("map50", "mAP50", "#1f77b4"), ("map50_95", "mAP50-95", "#d62728"))


@dataclass(frozen=True)
class CurvePoint:
    """One model version on the learning curve.

    Attributes:
        version: its name (``v3``).
        annotations: annotations it was trained on.
        map50, map50_95: its validation metrics (fractions), None when its manifest lacks them.
        status: ``Registry.status``: "serving", "promoted", "rolled back" or "rejected".
    """

    version: str
    annotations: int
    map50: float | None
    map50_95: float | None
    status: str

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"


def curve_points(
    versions: Iterable[tuple[str, Manifest, str]], annotations: Mapping[str, int] | None = None
) -> list[CurvePoint]:
    """Learning-curve points from ``(version name, manifest, status)``, in the order given
    (oldest first, as ``Registry.list_versions`` returns them).

    ``annotations``: version name -> annotations it was trained on (the registry index's
    count); a version missing there counts its manifest's embedded map, else its images.
    """
    points = []
    counts = annotations or {}
    for name, m, status in versions:
        if name in counts:
            trained_on = counts[name]
        else:
            trained_on = len(m.annotations) if m.annotations else sum(int(v) for v in m.dataset_size.values())
        points.append(
            CurvePoint(
                version=name,
                annotations=trained_on,
                map50=_fraction(m.metrics.get("map50")),
                map50_95=_fraction(m.metrics.get("map50_95")),
                status=status,
            )
        )
    return points


def _fraction(value: object) -> float | None:
    """A metric as a float in [0, 1], or None when it is missing or not a finite number."""
    if not isinstance(value, int | float) or value != value:  # NaN
        return None
    return min(1.0, max(0.0, float(value)))


def _ticks(top: int) -> list[int]:
    """Round x-axis ticks from 0 to at least ``top`` (at most about 6)."""
    step = 1
    for base in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000):
        step = base
        if top / base <= 5:
            break
    else:
        step = max(1, top // 5)
    n = -(-max(top, 1) // step)
    return [i * step for i in range(n + 1)]


def svg_learning_curve(points: list[CurvePoint], width: int = 640, height: int = 320) -> str:
    """The learning curve as a standalone SVG element (a string, every value escaped).

    x: annotations trained on, from 0; y: metric from 0 to 1. One ``<circle class="point">``
    per version and series that has the metric (``data-series`` "map50" or "map50_95",
    ``data-version``, ``data-status``); rejected candidates are hollow with a cross and left
    out of the line, which joins the other versions in version order; the served version has
    a ring. With no point at all the chart says so.
    """
    left, right, top, bottom = 48, 16, 16, 44
    pw, ph = width - left - right, height - top - bottom
    ticks = _ticks(max((p.annotations for p in points), default=0))
    xmax = ticks[-1] or 1

    def x(n: int) -> float:
        return left + pw * n / xmax

    def y(v: float) -> float:
        return top + ph * (1 - v)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="learning-curve" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="learning curve">',
        f'<rect class="plot-area" x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#888"/>',
    ]
    for i in range(5):
        v = i / 4
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.2f}</text>')
    for t in ticks:
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="11">{t}</text>')
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="12">'
        "annotations trained on</text>"
    )
    if not any(p.map50 is not None or p.map50_95 is not None for p in points):
        out.append(
            f'<text x="{left + pw / 2:.1f}" y="{top + ph / 2:.1f}" text-anchor="middle" font-size="14">'
            "no model version with metrics yet</text>"
        )
    for key, label, color in SERIES:
        kept = [(p, v) for p in points if (v := getattr(p, key)) is not None]
        line = " ".join(f"{x(p.annotations):.1f},{y(v):.1f}" for p, v in kept if not p.rejected)
        if line:
            out.append(f'<polyline class="line" data-series="{key}" points="{line}" fill="none" stroke="{color}"/>')
        for p, v in kept:
            cx, cy = x(p.annotations), y(v)
            tip = escape(f"{p.version}: {label} {v:.3f}, {p.annotations} annotations, {p.status}")
            fill = "#fff" if p.rejected else color
            attrs = f'data-series="{key}" data-version="{escape(p.version)}" data-status="{escape(p.status)}"'
            out.append(
                f'<circle class="point" {attrs} cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{fill}" '
                f'stroke="{color}" stroke-width="2"><title>{tip}</title></circle>'
            )
            if p.rejected:
                out.append(
                    f'<path d="M{cx - 3:.1f},{cy - 3:.1f}L{cx + 3:.1f},{cy + 3:.1f}M{cx - 3:.1f},{cy + 3:.1f}'
                    f'L{cx + 3:.1f},{cy - 3:.1f}" stroke="{color}"/>'
                )
            if p.status == "serving":
                out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="none" stroke="#2ca02c" stroke-width="2"/>')
    for i, (_, label, color) in enumerate(SERIES):
        lx = left + 10 + i * 110
        out.append(f'<rect x="{lx}" y="{top + 8}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="{top + 18}" font-size="12">{label}</text>')
    out.append(f'<text x="{left + 230}" y="{top + 18}" font-size="12">hollow with a cross: rejected</text>')
    out.append("</svg>")
    return "\n".join(out)


def text_learning_curve(points: list[CurvePoint], width: int = 30) -> list[str]:
    """The learning curve as text, one line per version (oldest first), e.g.::

        v2    24 ann |=========------        | mAP50 0.612 mAP50-95 0.318 *

    The bar is ``width`` characters for 1.0: ``=`` up to mAP50-95, ``-`` on to mAP50 (mAP50 is
    never below mAP50-95). ``*`` marks the served version, ``x rejected`` a rejected candidate.
    """
    lines = []
    for p in points:
        inner = round(width * (p.map50_95 or 0.0))
        outer = max(inner, round(width * (p.map50 or 0.0)))
        bar = "=" * inner + "-" * (outer - inner) + " " * (width - outer)
        m50 = "  -  " if p.map50 is None else f"{p.map50:.3f}"
        m95 = "  -  " if p.map50_95 is None else f"{p.map50_95:.3f}"
        mark = " *" if p.status == "serving" else " x rejected" if p.rejected else ""
        lines.append(f"{p.version:<5} {p.annotations:>4} ann |{bar}| mAP50 {m50} mAP50-95 {m95}{mark}")
    return lines
