"""``detect`` (labelloop.task_types.detect): rectangles to ``cls cx cy w h`` lines and back, and
boxes predicted by a model as rectangle regions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from labelloop.task_types import task_class
from labelloop.task_types.convert import (
    annotation_to_yolo,
    predictions_to_regions,
    results_to_regions,
)
from tests.labelloop.ls_regions import (
    CLASS_IDS,
    DETECT,
    MODEL_NAMES,
    H,
    W,
    blank_image,
    numbers,
    rect,
    results_class,
)


@pytest.fixture(scope="module")
def Results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return results_class(tmp_path_factory)


# ---------------------------------------------------------------------------- detect


@pytest.mark.parametrize(
    ("region", "expected", "reason"),
    [
        # box inside: centre/size normalised, class id from class_ids (cat -> 4)
        (rect(20, 10, 40, 30), (4, [40 / W, 25 / H, 40 / W, 30 / H]), None),
        (rect(100, 50, 20, 10, label="dog"), (0, [110 / W, 55 / H, 20 / W, 10 / H]), None),
        # partly outside on the left/top: clamped to x 0..30, y 0..20
        (rect(-10, -20, 40, 40), (4, [15 / W, 10 / H, 30 / W, 20 / H]), None),
        # partly outside right/bottom: x 180..200, y 90..100
        (rect(180, 90, 50, 50), (4, [190 / W, 95 / H, 20 / W, 10 / H]), None),
        # rotated 90 degrees around (100, 50): the axis-aligned box around it, x 90..100, y 50..90
        (rect(100, 50, 40, 10, rot=90), (4, [95 / W, 70 / H, 10 / W, 40 / H]), None),
        (rect(250, 10, 20, 20), None, "degenerate box"),
        (rect(10, 10, 0.5, 20), None, "degenerate box"),
        (rect(10, 10, 20, 20, label="horse"), None, "label 'horse' has no class id"),
        (rect(10, 10, 20, 20, label=None), None, "no label"),
        ({**rect(10, 10, 20, 20), "value": {"x": 1, "rectanglelabels": ["cat"]}}, None, "malformed value"),
        ({**rect(10, 10, 20, 20), "value": {**rect(1, 1, 5, 5)["value"], "width": "wide"}}, None, "malformed value"),
    ],
)
def test_detect_region_to_line(region: dict, expected: tuple | None, reason: str | None) -> None:
    """A rectangle region becomes one ``class cx cy w h`` line normalised and clamped to the image, a rotated one its
    axis-aligned bounds; degenerate, unlabelled, unknown-label and malformed regions are dropped with reason and id."""
    lines, dropped = annotation_to_yolo([region], DETECT, CLASS_IDS, W, H)
    if expected is None:
        assert lines == []
        assert len(dropped) == 1 and str(reason) in dropped[0] and "r1" in dropped[0], dropped
    else:
        assert dropped == []
        assert len(lines) == 1
        cls, nums = numbers(lines[0])
        assert cls == expected[0]
        np.testing.assert_allclose(nums, expected[1], atol=1e-6)


def test_only_the_spec_control_tags_count() -> None:
    """Regions of another control tag (from_name) are ignored: neither converted nor reported as dropped."""
    result = [rect(10, 10, 20, 20, from_name="other"), rect(10, 10, 20, 20, rid="r2")]
    lines, dropped = annotation_to_yolo(result, DETECT, CLASS_IDS, W, H)
    assert len(lines) == 1 and dropped == []


# ---------------------------------------------------------------------------- predictions


def test_detect_predictions_from_lists() -> None:
    """Detections given as xyxy pixel lists become scored rectanglelabels regions with distinct ids, clamped to the
    image; classes not in the label config and degenerate boxes are left out."""
    regions = predictions_to_regions(
        DETECT,
        {0: "cat", 1: "removed", 2: "dog"},
        W,
        H,
        boxes_xyxy=[[20, 10, 60, 40], [0, 0, 10, 10], [-10, 50, 30, 150], [5, 5, 5.5, 50]],
        classes=[0, 1, 2, 0],
        scores=[0.9, 0.8, 0.7, 0.6],
    )
    assert [r["value"]["rectanglelabels"] for r in regions] == [["cat"], ["dog"]]
    assert [r["score"] for r in regions] == pytest.approx([0.9, 0.7])
    v = regions[1]["value"]
    assert (v["x"], v["y"], v["width"], v["height"], v["rotation"]) == pytest.approx((0, 50, 15, 50, 0))
    assert len({r["id"] for r in regions}) == 2


def test_results_detect(Results: Any) -> None:
    """Ultralytics detect Results become rectanglelabels regions in percent, without classes not in the label config,
    the task scored 1 - its least confident box's uncertainty; Results without boxes give no region and score 0 (the
    most uncertain)."""
    import torch

    boxes = torch.tensor([[20.0, 10, 60, 40, 0.9, 0], [100, 20, 150, 90, 0.5, 1], [0, 0, 50, 50, 0.99, 2]])
    regions, score = results_to_regions(Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes), DETECT, MODEL_NAMES)
    assert [r["value"]["rectanglelabels"] for r in regions] == [["cat"], ["dog"]]
    assert score == pytest.approx(0.5)  # the dog box (0.5), not the mean and not the "removed" class (0.99)
    v = regions[0]["value"]
    assert (v["x"], v["y"], v["width"], v["height"]) == pytest.approx((10, 10, 20, 30))
    empty, score = results_to_regions(Results(blank_image(), "a.png", MODEL_NAMES, boxes=torch.zeros(0, 6)), DETECT, {})
    assert (empty, score) == ([], 0.0)


def test_results_score_follows_the_strategy(Results: Any) -> None:
    """With every class's score per box (``res.class_scores``), margin ranks a box torn between two classes as more
    informative than one as confident in its best class, which least confidence cannot tell apart."""
    import torch

    boxes = torch.tensor([[20.0, 10, 60, 40, 0.6, 0]])
    sure, confused = (Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes) for _ in range(2))
    sure.class_scores = np.array([[0.6, 0.01, 0.0]])
    confused.class_scores = np.array([[0.6, 0.55, 0.0]])
    (_, m_sure), (_, m_confused) = (results_to_regions(r, DETECT, MODEL_NAMES, "margin") for r in (sure, confused))
    assert m_confused < m_sure
    (_, lc_sure), (_, lc_confused) = (results_to_regions(r, DETECT, MODEL_NAMES) for r in (sure, confused))
    assert lc_sure == lc_confused == pytest.approx(0.6)
    assert m_confused == pytest.approx(0.05 / 1.15, abs=1e-6)  # d = (0.6, 0.55, 0) / 1.15


def test_class_metrics_name_each_validated_class() -> None:
    """Per-class metrics come from Ultralytics' own DetMetrics, keyed by class name, for the classes
    the validation split has: a class found every time scores high, one never found scores 0."""
    from ultralytics.utils.metrics import DetMetrics

    metrics = DetMetrics(names={0: "cat", 1: "dog", 2: "bird"})
    # Two images: each cat found at high confidence (tp at every IoU threshold); the dog missed
    # and a false dog predicted instead. "bird" is in no image.
    for image in range(2):
        metrics.update_stats(
            {
                "tp": np.array([[True] * 10, [False] * 10]),
                "conf": np.array([0.9, 0.8]),
                "pred_cls": np.array([0.0, 1.0]),
                "target_cls": np.array([0.0, 1.0]),
                "target_img": np.array([0.0, 1.0]),
                "im_name": f"img{image}.jpg",
            }
        )
    metrics.process()
    per_class = task_class("detect").class_metrics(metrics)
    assert set(per_class) == {"cat", "dog"}
    assert per_class["cat"]["ap50"] > 0.9 and per_class["cat"]["precision"] > 0.9 and per_class["cat"]["recall"] == 1
    assert per_class["dog"] == {"ap50": 0.0, "map50_95": 0.0, "precision": 0.0, "recall": 0.0}
