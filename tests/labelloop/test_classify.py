"""``classify`` (labelloop.task_types.classify): a single choice as the image's class, and class
probabilities as one choices region."""

from __future__ import annotations

from typing import Any

import pytest

from labelloop.task_types.classify import Classify
from labelloop.task_types.convert import (
    annotation_to_class,
    annotation_to_yolo,
    results_to_regions,
)
from tests.labelloop.ls_regions import (
    CLASS_IDS,
    CLASSIFY,
    MODEL_NAMES,
    H,
    W,
    blank_image,
    results_class,
)


@pytest.fixture(scope="module")
def Results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return results_class(tmp_path_factory)


def test_classify_task_is_not_a_label_line_task() -> None:
    """``annotation_to_yolo`` refuses a classify spec with ValueError: classification has no label lines."""
    with pytest.raises(ValueError, match="classify"):
        annotation_to_yolo([], CLASSIFY, CLASS_IDS, W, H)


# ---------------------------------------------------------------------------- classify


def choice(*names: str, from_name: str = "choice") -> dict[str, Any]:
    value = {"choices": list(names)}
    return {"id": "c1", "from_name": from_name, "to_name": "image", "type": "choices", "value": value}


@pytest.mark.parametrize(
    ("result", "label", "reason"),
    [
        ([choice("dog")], "dog", None),
        ([choice("dog", from_name="other"), choice("bird")], "bird", None),
        ([], None, "no choice"),
        ([choice()], None, "no choice"),
        ([choice("fish")], None, "'fish' has no class id"),
        ([choice("dog", "cat")], None, "several choices"),
    ],
)
def test_annotation_to_class(result: list, label: str | None, reason: str | None) -> None:
    """A classify annotation gives its one choice of the spec's control tag; no choice, a label without class id or
    several choices give no class, with the reason."""
    got, reasons = annotation_to_class(result, CLASSIFY, CLASS_IDS)
    assert got == label
    if reason is None:
        assert reasons == []
    else:
        assert any(reason in r for r in reasons), reasons


def test_results_classify(Results: Any) -> None:
    """Classify Results become one choices region of the most probable class in the label config (a top-1 class not in
    it is passed over), scored by that class's probability."""
    import torch

    res = Results(blank_image(), "a.png", MODEL_NAMES, probs=torch.tensor([0.2, 0.1, 0.7]))
    (region,), score = results_to_regions(res, CLASSIFY, MODEL_NAMES)  # top-1 "removed" is not in the config
    assert (region["type"], region["from_name"], region["value"]) == ("choices", "choice", {"choices": ["cat"]})
    assert score == pytest.approx(0.2) and region["score"] == pytest.approx(0.2)
    assert (region["original_width"], region["original_height"]) == (W, H)


def test_classify_has_no_per_class_metrics() -> None:
    """Ultralytics' classification metrics are top-1/top-5 only: no per-class metrics, and the
    promotion gate counts images."""
    assert Classify.class_metrics(object()) == {}
    assert Classify.validation_count(images=7, instances=0) == 7
