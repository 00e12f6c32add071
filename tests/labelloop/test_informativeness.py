"""labelloop.task_types.informativeness: the strategies, the aggregation over boxes and the score's direction."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from labelloop.registry.params import ProjectParams
from labelloop.settings import Settings
from labelloop.task_types.informativeness import (
    NO_DETECTION,
    STRATEGIES,
    box_distribution,
    classification_informativeness,
    detection_informativeness,
    most_informative_first,
    prediction_score,
    uncertainty,
)

# (strategy, box confidences, class scores per box or None, expected informativeness)
DETECTION = [
    # no candidate box: uncertain, not certain, whatever the strategy
    ("least_confidence", [], None, 1.0),
    ("margin", [], None, 1.0),
    ("entropy", [], None, 1.0),
    # least confidence: 1 - the best class score, the most uncertain box counts
    ("least_confidence", [0.9], None, 0.1),
    ("least_confidence", [0.9, 0.4], None, 0.6),
    ("least_confidence", [0.9, 0.4], [[0.9, 0.1], [0.4, 0.35]], 0.6),
    # margin between the two largest entries of (class scores, rest)
    ("margin", [0.9], [[0.9, 0.05]], 0.15),  # d = (0.9, 0.05, 0.05)
    ("margin", [0.5], [[0.5, 0.45]], 0.95),  # two classes nearly tied: d = (0.5, 0.45, 0.05)
    ("margin", [0.9], None, 0.2),  # only the kept class known: d = (0.9, 0.1)
    ("margin", [0.9, 0.5], [[0.9, 0.05], [0.5, 0.45]], 0.95),
    ("margin", [0.6], [[0.6, 0.6]], 1.0),  # scores sum above 1: renormalised, a tie
    # entropy of (class scores, rest), normalised by log(len)
    ("entropy", [1.0], None, 0.0),
    ("entropy", [0.5], None, 1.0),
    ("entropy", [1 / 3], [[1 / 3, 1 / 3]], 1.0),
    ("entropy", [0.9], [[0.9, 0.0]], float(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(3))),
]


@pytest.mark.parametrize(("strategy", "confs", "class_scores", "want"), DETECTION)
def test_detection_informativeness(strategy: str, confs: list[float], class_scores: list | None, want: float) -> None:
    """Each strategy scores a box as documented and an image as its most uncertain box; no box is most uncertain."""
    cs = None if class_scores is None else np.asarray(class_scores)
    got = detection_informativeness(confs, cs, strategy)  # type: ignore[arg-type]
    assert got == pytest.approx(want, abs=1e-9)


# (strategy, probs of the label config's classes, expected informativeness)
CLASSIFICATION = [
    ("least_confidence", [0.7, 0.2, 0.1], 0.3),
    ("margin", [0.5, 0.4, 0.1], 0.9),
    ("margin", [0.2, 0.1], 0.5),  # 0.7 went to a class the config dropped: it is the best competitor
    ("entropy", [1.0, 0.0, 0.0], 0.0),
    ("entropy", [0.5, 0.5], float(np.log(2) / np.log(3))),  # (0.5, 0.5, rest 0) over log(3)
    ("least_confidence", [], 1.0),
]


@pytest.mark.parametrize(("strategy", "probs", "want"), CLASSIFICATION)
def test_classification_informativeness(strategy: str, probs: list[float], want: float) -> None:
    """A classified image's informativeness follows the strategy on its probabilities (none known: most uncertain)."""
    assert classification_informativeness(probs, strategy) == pytest.approx(want, abs=1e-9)  # type: ignore[arg-type]


def test_score_is_low_for_the_most_informative() -> None:
    """The written score is 1 - informativeness, so ascending score order puts the most informative task first."""
    confs = {1: [0.95], 2: [], 3: [0.9, 0.3], 4: [0.6]}
    scores = {t: prediction_score(detection_informativeness(c, None, "least_confidence")) for t, c in confs.items()}
    assert scores[2] == 0.0 and prediction_score(NO_DETECTION) == 0.0
    assert most_informative_first(scores) == [2, 3, 4, 1]


def test_box_distribution_sums_to_one() -> None:
    """A box's distribution is its class scores plus the rest, summing to 1; only the kept class known: (p, 1 - p)."""
    np.testing.assert_allclose(box_distribution(0.7, [0.7, 0.2]), [0.7, 0.2, 0.1])
    np.testing.assert_allclose(box_distribution(0.7), [0.7, 0.3])
    np.testing.assert_allclose(box_distribution(0.8, [0.8, 0.8]), [0.5, 0.5, 0.0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: uncertainty([0.5, 0.5], "random"), "unknown score strategy"),  # type: ignore[arg-type]
        (lambda: box_distribution(1.5), "in \\[0, 1\\]"),
        (lambda: box_distribution(0.5, [0.5, float("nan")]), "in \\[0, 1\\]"),
        (lambda: detection_informativeness([0.5, 0.6], np.ones((3, 2)) / 2, "margin"), "3 class score rows"),
        (lambda: uncertainty([], "margin"), "empty"),
    ],
)
def test_bad_input_is_refused(call: object, match: str) -> None:
    """An unknown strategy, a score outside [0, 1] and class scores that do not match the boxes raise ValueError."""
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def test_setting_and_extra_param_take_the_strategies() -> None:
    """LABELLOOP_SCORE_STRATEGY and the extra param score_strategy accept exactly the module's strategies."""
    setting = Settings.model_fields["score_strategy"].annotation
    param = ProjectParams.model_fields["score_strategy"].annotation
    assert set(get_args(setting)) == set(STRATEGIES)
    assert {a for arg in get_args(param) for a in get_args(arg)} == set(STRATEGIES)
    assert Settings.model_fields["score_strategy"].default == "least_confidence"
