"""What to label next: a per-task informativeness score from the model's class scores.

Active learning by uncertainty sampling (Settles, "Active Learning Literature Survey", 2009,
section 3.1): the task whose prediction the model is least sure of is the one whose annotation
teaches it most. Each strategy gives every candidate box (every region the model predicted
above ``predict_conf``; for classify the image itself) an uncertainty in [0, 1]:

=================== ===================================================================
``least_confidence`` ``1 - p1``: p1 the box's best class score (its confidence)
``margin``           ``1 - (d1 - d2)``: the two largest entries of the box's distribution
``entropy``          ``H(d) / log(len(d))``: the distribution's normalised entropy
=================== ===================================================================

A box's distribution ``d`` (``box_distribution``): a detector scores every class with its own
sigmoid, so ``d`` is the class scores plus the rest, ``max(0, 1 - sum)``, "no object of these
classes" (renormalised when the scores sum above 1); when only the kept class's score is known
(end-to-end heads such as yolo26's, obb, segment, pose) it is ``(p1, 1 - p1)``; classify has
the softmax ``probs`` of the label config's classes plus the rest (a class the config dropped).

An image is as informative as its most uncertain box (``max`` over its boxes): one doubtful
object is worth an annotation however many sure ones sit next to it. An image with no
candidate box at all is **uncertain, not certain** (``NO_DETECTION`` = 1.0): the model found
nothing it believes in, which is the case annotations teach most about (a missed object, or a
true negative it cannot yet tell), never one to skip.

The prediction's ``score`` written to Label Studio is ``certainty = 1 - informativeness``, so
Label Studio's Data Manager sorted by "Prediction score" **ascending** (and Label Studio
Enterprise's uncertainty sampling, which serves low scores first) puts the most informative
task first. Pure functions of numpy arrays; no model is imported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

Strategy = Literal["least_confidence", "margin", "entropy"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
DEFAULT_STRATEGY: Strategy = "least_confidence"
NO_DETECTION = 1.0  # informativeness of an image without a candidate box: most uncertain

FloatArray = npt.NDArray[np.float64]


def box_distribution(conf: float, class_scores: Sequence[float] | FloatArray | None = None) -> FloatArray:
    """A candidate box's distribution over its outcomes, summing to 1.

    Args:
        conf: the box's confidence (its best class score), in [0, 1].
        class_scores: every class's score for the box (shape ``(nc,)``, independent sigmoids as
            Ultralytics' detect head gives them before NMS), or None when only ``conf`` is known.

    Returns:
        ``(nc + 1,)`` float64: the class scores and the rest (``max(0, 1 - sum)``), renormalised
        when they sum above 1; ``(2,)`` ``(conf, 1 - conf)`` without ``class_scores``.

    Raises:
        ValueError: a score outside [0, 1] or not finite.
    """
    if class_scores is None:
        p = np.asarray([conf], dtype=np.float64)
    else:
        p = np.asarray(class_scores, dtype=np.float64).ravel()
        if p.size == 0:
            p = np.asarray([conf], dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"scores must be in [0, 1]: {p.tolist()}")
    d = np.append(p, max(0.0, 1.0 - float(p.sum())))
    return d / d.sum() if d.sum() > 0 else np.full(len(d), 1.0 / len(d))


def uncertainty(d: Sequence[float] | FloatArray, strategy: Strategy, conf: float | None = None) -> float:
    """One box's (or one classified image's) uncertainty in [0, 1] under ``strategy``.

    Args:
        d: the distribution (``box_distribution``, or classify's softmax ``probs``), shape ``(k,)``.
        strategy: see the module docstring.
        conf: the box's confidence for ``least_confidence`` (default: ``max(d)``).

    Raises:
        ValueError: an unknown strategy or an empty distribution.
    """
    a = np.asarray(d, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("empty distribution")
    if strategy == "least_confidence":
        return _clip(1.0 - (float(a.max()) if conf is None else float(conf)))
    if strategy == "margin":
        top = np.sort(a)[::-1]
        second = float(top[1]) if top.size > 1 else 0.0
        return _clip(1.0 - (float(top[0]) - second))
    if strategy == "entropy":
        if a.size < 2:
            return 0.0
        q = a[a > 0] / a.sum()
        return _clip(float(-(q * np.log(q)).sum()) / math.log(a.size))
    raise ValueError(f"unknown score strategy {strategy!r}; one of {', '.join(STRATEGIES)}")


def detection_informativeness(
    confs: Sequence[float] | FloatArray,
    class_scores: FloatArray | None,
    strategy: Strategy,
) -> float:
    """An image's informativeness from its candidate boxes: the most uncertain box's, in [0, 1].

    Args:
        confs: ``(n,)`` the boxes' confidences (Ultralytics ``Results.boxes.conf`` and the like).
        class_scores: ``(n, nc)`` every class's score per box, or None (see ``box_distribution``).
        strategy: see the module docstring.

    Returns:
        ``NO_DETECTION`` (1.0) when ``n == 0``, else ``max`` over the boxes' uncertainties.

    Raises:
        ValueError: ``class_scores`` rows do not match ``confs``; a score outside [0, 1].
    """
    c = np.asarray(confs, dtype=np.float64).ravel()
    if c.size == 0:
        return NO_DETECTION
    rows: list[FloatArray | None] = [None] * c.size
    if class_scores is not None:
        cs = np.asarray(class_scores, dtype=np.float64)
        if cs.ndim != 2 or len(cs) != c.size:
            raise ValueError(f"{len(cs)} class score rows for {c.size} boxes")
        rows = list(cs)
    return max(
        uncertainty(box_distribution(float(p), row), strategy, conf=float(p)) for p, row in zip(c, rows, strict=True)
    )


def classification_informativeness(probs: Sequence[float] | FloatArray, strategy: Strategy) -> float:
    """A classified image's informativeness in [0, 1] from the softmax ``probs`` of the label
    config's classes (``(k,)``; a model class the config no longer has is left out, its mass
    becomes the rest, as for a box); 1.0 (``NO_DETECTION``) when ``k == 0``."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size == 0:
        return NO_DETECTION
    return uncertainty(box_distribution(float(p.max()), p), strategy, conf=float(p.max()))


def prediction_score(informativeness: float) -> float:
    """The prediction ``score`` written to Label Studio: ``1 - informativeness`` (low first = most
    informative first)."""
    return round(_clip(1.0 - informativeness), 6)


def most_informative_first(scores: dict[int, float]) -> list[int]:
    """Task ids by ascending prediction score (the Data Manager tab's order), ties by task id."""
    return sorted(scores, key=lambda t: (scores[t], t))


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v))
