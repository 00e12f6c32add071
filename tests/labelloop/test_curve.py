"""The learning curve's points, SVG and text (labelloop.registry.curve)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from labelloop.manifest import Manifest
from labelloop.registry.curve import CurvePoint, curve_points, svg_learning_curve, text_learning_curve

SVG = "{http://www.w3.org/2000/svg}"


def _points(svg: str, series: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [c for c in root.iter(f"{SVG}circle") if c.get("class") == "point" and c.get("data-series") == series]


def test_points_count_annotations_and_fall_back_to_images() -> None:
    """x is the number of annotations a version was trained on, or its images for older manifests."""
    new = Manifest(metrics={"map50": 0.5, "map50_95": 0.25}, annotations={"1": "t", "2": "t", "3": "t"})
    old = Manifest(metrics={"map50": 0.4}, dataset_size={"train": 8, "val": 2})
    points = curve_points([("v1", old, "promoted"), ("v2", new, "serving")])
    assert [(p.version, p.annotations, p.map50, p.map50_95) for p in points] == [
        ("v1", 10, 0.4, None),
        ("v2", 3, 0.5, 0.25),
    ]


@pytest.mark.parametrize(
    ("value", "expected"), [(0.3, 0.3), (1.5, 1.0), (-0.1, 0.0), (float("nan"), None), ("0.3", None)]
)
def test_metric_values_are_clamped_fractions(value: object, expected: float | None) -> None:
    """A metric outside [0, 1] is clamped; NaN or a non-number is no point."""
    m = Manifest.model_construct(metrics={"map50": value}, annotations={}, dataset_size={})
    assert curve_points([("v1", m, "promoted")])[0].map50 == expected


def test_svg_has_one_point_per_version_and_series_and_marks_rejected() -> None:
    """Every version with a metric is one circle per series; rejected ones are hollow and out of the line."""
    points = [
        CurvePoint("v1", 10, 0.3, 0.1, "promoted"),
        CurvePoint("v2", 20, 0.2, 0.05, "rejected"),
        CurvePoint("v3", 30, 0.6, 0.3, "serving"),
    ]
    svg = svg_learning_curve(points)
    for series in ("map50", "map50_95"):
        circles = _points(svg, series)
        assert [c.get("data-version") for c in circles] == ["v1", "v2", "v3"]
        assert [c.get("fill") for c in circles].count("#fff") == 1
        assert next(c for c in circles if c.get("data-version") == "v2").get("data-status") == "rejected"
    line = next(e for e in ET.fromstring(svg).iter(f"{SVG}polyline") if e.get("data-series") == "map50")
    assert len(line.get("points", "").split()) == 2
    # Higher metric is higher on the chart (smaller y), more annotations further right.
    v1, _, v3 = _points(svg, "map50")
    assert float(v3.get("cy", 0)) < float(v1.get("cy", 0)) and float(v3.get("cx", 0)) > float(v1.get("cx", 0))


def test_svg_escapes_version_names_and_says_when_empty() -> None:
    """Values in the SVG are escaped; without metrics the chart says so and has no point."""
    svg = svg_learning_curve([CurvePoint('v1"><script>', 1, 0.5, None, "<b>")])
    assert "<script>" not in svg and "&lt;b&gt;" in svg
    assert len(_points(svg, "map50")) == 1 and not _points(svg, "map50_95")
    empty = svg_learning_curve([])
    ET.fromstring(empty)
    assert "no model version with metrics yet" in empty and not _points(empty, "map50")


def test_text_curve_bars_scale_with_the_metrics() -> None:
    """One line per version; '=' grows with mAP50-95, '-' fills on to mAP50; served and rejected are marked."""
    lines = text_learning_curve(
        [
            CurvePoint("v1", 12, 0.5, 0.2, "promoted"),
            CurvePoint("v2", 24, 0.9, 0.6, "serving"),
            CurvePoint("v3", 36, None, None, "rejected"),
        ],
        width=20,
    )
    bars = [re.search(r"\|([=\- ]*)\|", line).group(1) for line in lines]  # type: ignore[union-attr]
    assert bars == ["====------          ", "============------  ", " " * 20]
    assert lines[1].endswith("*") and lines[2].endswith("x rejected")
    assert "12 ann" in lines[0] and "mAP50 0.900 mAP50-95 0.600" in lines[1]
