"""labelloop.quality.label_quality: cleanlab's ObjectLab scores and the suspected kind of mistake, per task."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from labelloop.quality.label_quality import (
    BADLY_PLACED,
    EXTRA,
    MISSED,
    WRONG_CLASS,
    Box,
    Issue,
    boxes_from_result,
    score_tasks,
)
from labelloop.quality.mistakes import pick_versions

CLASSES = ["circle", "square"]


def box(x: float, label: str, score: float | None = None, side: float = 40) -> Box:
    return Box(x, x, x + side, x + side, label, score, 320, 240)


CLEAN = ([box(10, "circle"), box(100, "square")], [box(10, "circle", 0.9), box(100, "square", 0.9)])
CASES = [
    # (annotated, predicted, the kind expected first, the model's label)
    ([box(10, "square"), box(100, "square")], [box(10, "circle", 0.9), box(100, "square", 0.9)], WRONG_CLASS, "circle"),
    ([box(10, "circle")], [box(10, "circle", 0.9), box(100, "square", 0.9)], MISSED, None),
    (
        [box(10, "circle"), box(60, "square"), box(200, "square")],
        [box(10, "circle", 0.9), box(60, "square", 0.9)],
        EXTRA,
        None,
    ),
    ([box(10, "circle"), box(115, "square")], [box(10, "circle", 0.9), box(100, "square", 0.9)], BADLY_PLACED, None),
]


@pytest.mark.parametrize(("annotated", "predicted", "kind", "model_label"), CASES)
def test_each_kind_is_found_and_ranked_below_a_clean_task(
    annotated: list[Box], predicted: list[Box], kind: str, model_label: str | None
) -> None:
    """A task with one corrupted box scores below the clean task, and its worst issue names the corruption."""
    clean, bad = score_tasks([CLEAN, (annotated, predicted)], CLASSES)
    assert clean.issues == [] and clean.score > bad.score
    assert bad.issues[0].kind == kind and bad.issues[0].predicted == model_label


def test_issue_region_is_in_percent() -> None:
    """A missed object is reported at the predicted box, in percent of the image."""
    (q,) = score_tasks([([box(10, "circle")], [box(10, "circle", 0.9), box(160, "square", 0.9)])], CLASSES)
    assert q.issues[0].region == {"x": 50.0, "y": 66.67, "width": 12.5, "height": 16.67}
    assert q.issues[0].describe() == "missed object: square at x=50.0% y=66.7%"


def test_empty_task_scores_one() -> None:
    """A task with no annotated and no predicted box is not suspected."""
    assert score_tasks([([], [])], CLASSES)[0].score == pytest.approx(1.0)


def test_boxes_from_label_studio_regions() -> None:
    """Percent rectangles become pixel boxes; other region types and unlabeled ones are skipped."""
    result = [
        {
            "type": "rectanglelabels",
            "original_width": 200,
            "original_height": 100,
            "score": 0.4,
            "value": {"x": 10, "y": 20, "width": 50, "height": 30, "rectanglelabels": ["circle"]},
        },
        {"type": "choices", "value": {"choices": ["x"]}},
        {"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 1, "height": 1, "rectanglelabels": []}},
    ]
    (b,) = boxes_from_result(result, scored=True)
    assert (b.x1, b.y1, b.x2, b.y2, b.label, b.score) == (20.0, 20.0, 120.0, 50.0, "circle", 0.4)
    assert boxes_from_result(result)[0].score is None


@pytest.mark.parametrize(
    ("annotation", "judge"),
    [
        (1, "v3"),  # no version trained on it: the newest judges
        (2, "v2"),  # v3 trained on it: v2, the version served when it was saved
        (3, "v1"),  # v2 and v3 trained on it
        (4, None),  # every version trained on it: not scored
    ],
)
def test_the_newest_version_not_trained_on_the_annotation_judges_it(annotation: int, judge: str | None) -> None:
    """Each annotation is judged by the newest version whose training set lacks it, or by none."""
    trained = [("v1", {"4"}), ("v2", {"3", "4"}), ("v3", {"2", "3", "4"})]
    assert pick_versions({10: annotation}, trained) == {10: judge}


def test_an_issue_goes_into_the_report_as_its_fields_in_order() -> None:
    """``Issue.record`` (what mistakes.json keeps) has the issue's fields in declaration order, so the
    report's JSON is what ``dataclasses.asdict`` wrote before the records were typed."""
    issue = Issue(WRONG_CLASS, "circle", 0.12, box(10, "circle").percent(), "square")
    assert list(issue.record().items()) == list(asdict(issue).items())
    assert issue.record()["region"] == {"x": 3.12, "y": 4.17, "width": 12.5, "height": 16.67}
