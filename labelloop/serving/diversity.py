"""What to label first when the model cannot tell yet: picks that cover the data.

Uncertainty alone is worse than random at the start of a project: before the first version
there is no model, and the first versions find nothing on most images, so every task scores the
same and Label Studio breaks the tie by task id. This module ranks every unlabeled task from the
images themselves (Hacohen, Dekel and Weinshall, "Active Learning on a Budget: Opposite
Strategies Suit High and Low Budgets", ICML 2022, TypiClust):

1. **Embeddings**: one L2-normalised vector per image, from the served model's backbone
   (``labelloop.serving.predictor.Predictor.embed``, computed by
   ``labelloop.serving.inference.Inference.embed``) or, before the first version, ``descriptor`` (a
   small grayscale thumbnail, a colour histogram and a gradient-orientation histogram: no download,
   no model).
2. **Clusters**: k-means (scikit-learn, fixed ``random_state``) with ``k = labelled + budget``
   (``cluster_count``), labelled images included so that they count as covering their cluster.
3. **Typicality** of an image: the inverse of its mean distance to its nearest neighbours
   within its cluster (``typicality``): a dense region's centre beats an outlier.
4. **Order** (``rank``):

   - ``"coverage"`` (no model, or one that is not informative yet, see ``informative``: it finds
     nothing on most images, or its own validation mAP50 is not above ``INFORMATIVE_VAL`` with
     95% confidence):
     repeatedly the most typical remaining image of the least covered cluster (fewest labelled
     + already picked; clusters smaller than ``MIN_CLUSTER_SIZE`` after the others, ties by the
     larger cluster). The first k picks hit k different clusters.
   - ``"uncertainty"`` (the model is informative): round-robin over clusters, each round by
     each cluster's most uncertain remaining task (``labelloop.task_types.informativeness``), ties by
     typicality: one busy cluster cannot take a whole round. A cluster's labelled tasks count as
     rounds it already had, so the clusters the annotations cover least come first.

**No tie is ever broken by task id or input order**: rows are put in a canonical order of their
content (a hash of each embedding) before k-means, and every remaining tie is broken by that
content key, so permuting task ids changes nothing about which images come first.

The order becomes each task's ``score`` (``rank_scores``: the rank mapped to [0, 1], low = label
first, as Label Studio's uncertainty sampling and the Data Manager tab sort it) and its
``cluster`` (renumbered by first pick: cluster 0 holds the top task). numpy and scikit-learn (and the promotion
gate's shrinkage, ``labelloop.registry.promotion.shrunk_proportion``).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from labelloop.registry.promotion import shrunk_proportion

Mode = Literal["coverage", "uncertainty"]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

INFORMATIVE_SHARE = 0.5  # the model is informative once at least this share of tasks has a candidate box
INFORMATIVE_VAL = 0.5  # ... and its validation mAP50 (top-1 accuracy for classification) is at least this
INFORMATIVE_Z = 1.96  # ... with 95% confidence on its validation objects (see val_lower_bound)
MAX_CLUSTERS = 500  # TypiClust's cap on k
MIN_CLUSTER_SIZE = 5  # smaller clusters (outliers) are covered after the others (TypiClust)
NEIGHBOURS = 20  # nearest neighbours of the typicality (TypiClust)
MINIBATCH_ABOVE = 20_000  # k-means on more images runs as MiniBatchKMeans
RANDOM_STATE = 0
THUMB = 8  # the descriptor's grayscale thumbnail is THUMB x THUMB
COLOUR_BINS = 4  # per channel: a joint RGB histogram of COLOUR_BINS**3 bins
ORIENTATIONS = 8  # gradient-orientation bins (unsigned, 0..pi) per cell of a 2 x 2 grid
GRADIENT_SIZE = 64  # the image is resized to this square for the gradients


def descriptor(image: Any) -> npt.NDArray[np.float32]:
    """A cheap image descriptor that needs no model: (64 + 64 + 32,) float32, L2-normalised.

    Three blocks, each L2-normalised before they are joined: an 8 x 8 grayscale thumbnail
    (mean removed: layout), a joint RGB histogram of 4 x 4 x 4 bins (square-rooted: colour), and
    8 unsigned gradient-orientation bins weighted by magnitude in each cell of a 2 x 2 grid of
    the 64 x 64 grayscale image (texture and edges).

    Args:
        image: a PIL image (any mode; converted to RGB).
    """
    from PIL import Image

    rgb = image.convert("RGB")
    gray = rgb.convert("L")
    thumb = np.asarray(gray.resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    thumb -= thumb.mean()
    small = np.asarray(rgb.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.int64) * COLOUR_BINS // 256
    codes = (small[..., 0] * COLOUR_BINS + small[..., 1]) * COLOUR_BINS + small[..., 2]
    colour = np.sqrt(np.bincount(codes.ravel(), minlength=COLOUR_BINS**3).astype(np.float64))
    g = np.asarray(gray.resize((GRADIENT_SIZE, GRADIENT_SIZE), Image.Resampling.BILINEAR), dtype=np.float64)
    gy, gx = np.gradient(g)
    magnitude = np.hypot(gx, gy)
    bins = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * ORIENTATIONS).astype(np.int64), ORIENTATIONS - 1)
    half = GRADIENT_SIZE // 2
    cells = []
    for rows in (slice(0, half), slice(half, None)):
        for cols in (slice(0, half), slice(half, None)):
            cells.append(np.bincount(bins[rows, cols].ravel(), magnitude[rows, cols].ravel(), ORIENTATIONS))
    blocks = [_unit(thumb), _unit(colour), _unit(np.concatenate(cells))]
    return _unit(np.concatenate(blocks)).astype(np.float32)


def _unit(v: FloatArray) -> FloatArray:
    norm = float(np.linalg.norm(v))
    return np.asarray(v / norm if norm > 0 else v, dtype=np.float64)


def normalise(embeddings: npt.ArrayLike) -> FloatArray:
    """Rows scaled to unit L2 norm ((n, d) float64; zero rows stay zero)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (n, d), not {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: FloatArray = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return out


def informative(
    has_candidate: Sequence[bool],
    val_score: float | None = None,
    val_count: int = 0,
    share: float = INFORMATIVE_SHARE,
    min_val: float = INFORMATIVE_VAL,
) -> bool:
    """Whether a model's predictions can order the tasks: at least ``share`` of the unlabeled
    tasks have a candidate box (a region above the confidence threshold), and the model's own
    validation score ``val_score`` (mAP50, or top-1 accuracy) is at least ``min_val`` with 95%
    confidence over its ``val_count`` validation objects (images for classification):
    ``val_lower_bound(val_score, val_count) >= min_val``. ``val_score`` None: not known, only the
    share counts. False for no tasks.

    Uncertainty pays only once the model is informative (PPAL, Yang et al. 2024; Hacohen et al.
    2022): a first version that puts a box on most images but scores mAP50 0.05 on held-out images
    ranks them by noise (``bench/results/learning-order-pool80-cpu.json``: the share alone switched
    to uncertainty from the second round on, behind random in 8 of 9 seed-rounds). The bound
    matters on the tiny splits of the first versions: ``bench/results/learning-order-coverage-cpu.json``
    has a first version at validation mAP50 0.57 on 2 objects and 0.008 on 30 held-out images."""
    if not has_candidate or sum(map(bool, has_candidate)) < share * len(has_candidate):
        return False
    return val_score is None or val_lower_bound(val_score, val_count) >= min_val


def val_lower_bound(score: float, count: int, z: float = INFORMATIVE_Z) -> float:
    """A lower confidence bound of a validation score measured on ``count`` objects, read as a
    proportion: shrunk toward 1/2 as the promotion gate shrinks it
    (``labelloop.registry.promotion.shrunk_proportion``, Agresti-Coull), ``s``, minus ``z`` standard
    errors ``sqrt(s (1 - s) / n)``. ``count`` 0 (not known): ``score`` itself."""
    if count <= 0:
        return score
    s = shrunk_proportion(score, count)
    return s - z * math.sqrt(s * (1 - s) / count)


def val_score(metrics: Mapping[str, Any] | None) -> float | None:
    """The validation score ``informative`` reads from a version's manifest ``metrics``: ``map50``
    (detection, segmentation, pose, OBB), else ``accuracy_top1`` (classification), else None."""
    for key in ("map50", "accuracy_top1"):
        value = (metrics or {}).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def cluster_count(n_items: int, n_labeled: int, budget: int, max_clusters: int = MAX_CLUSTERS) -> int:
    """k of the k-means: ``labelled + budget`` (TypiClust), at most ``max_clusters`` and the number of
    images, at least 1. ``budget`` is how many tasks are picked before the model changes (the
    annotations that trigger the next training)."""
    return max(1, min(n_labeled + max(1, budget), max_clusters, n_items))


def content_keys(x: FloatArray) -> list[bytes]:
    """A key per row from its values alone (8 bytes of BLAKE2b of the float32 row): the
    tie-breaker that replaces task ids and input order."""
    rows = np.ascontiguousarray(x, dtype=np.float32)
    return [hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows]


def clusters(x: FloatArray, k: int, random_state: int = RANDOM_STATE) -> IntArray:
    """k-means cluster per row ((n,) int64), fitted on the rows in their content order so the
    result does not depend on the input order. KMeans (n_init 3) up to ``MINIBATCH_ABOVE`` rows,
    MiniBatchKMeans above."""
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    keys = content_keys(x)
    canonical = np.array(sorted(range(n), key=lambda i: keys[i]), dtype=np.int64)
    model: Any
    if n > MINIBATCH_ABOVE:
        model = MiniBatchKMeans(n_clusters=k, random_state=random_state, n_init=3, batch_size=4096)
    else:
        model = KMeans(n_clusters=k, random_state=random_state, n_init=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than k: sklearn warns, the labels are fine
        fitted = model.fit_predict(x[canonical])
    out = np.empty(n, dtype=np.int64)
    out[canonical] = fitted
    return out


def typicality(x: FloatArray, labels: IntArray, neighbours: int = NEIGHBOURS) -> FloatArray:
    """Per row, ``1 / mean distance to its nearest neighbours`` within its cluster ((n,) float64;
    ``min(neighbours, cluster size - 1)`` of them; 0.0 alone in its cluster)."""
    from sklearn.neighbors import NearestNeighbors

    out = np.zeros(len(x), dtype=np.float64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        m = min(neighbours, len(members) - 1)
        if m < 1:
            continue
        dist, _ = NearestNeighbors(n_neighbors=m + 1).fit(x[members]).kneighbors(x[members])
        out[members] = 1.0 / (dist[:, 1:].mean(axis=1) + 1e-8)
    return out


@dataclass(frozen=True)
class Ranking:
    """``rank``'s answer, aligned with its input rows.

    Attributes:
        order: indices of the unlabeled rows, the one to label first first.
        score: per row in [0, 1], low = label first (``rank_scores``); NaN for labelled rows.
        cluster: per row (labelled ones too), renumbered by first pick (0 holds the top task).
        mode: "coverage" or "uncertainty".
    """

    order: list[int]
    score: FloatArray
    cluster: IntArray
    mode: Mode


def rank_scores(order: Sequence[int], n: int) -> FloatArray:
    """Scores of an order: the r-th of m picks gets ``r / (m - 1)`` (0.0 first, 1.0 last, every
    one distinct); rows not in ``order`` get NaN."""
    score = np.full(n, np.nan)
    m = len(order)
    if m:
        score[np.asarray(order, dtype=np.int64)] = np.arange(m, dtype=np.float64) / max(1, m - 1)
    return score


def rank(
    embeddings: npt.ArrayLike,
    labeled: Sequence[bool] | npt.NDArray[np.bool_],
    uncertainty: Sequence[float] | FloatArray | None = None,
    budget: int = 10,
    random_state: int = RANDOM_STATE,
    max_clusters: int = MAX_CLUSTERS,
) -> Ranking:
    """Order every unlabeled row (see the module docstring).

    Args:
        embeddings: (n, d), one row per task, labelled ones included; normalised here.
        labeled: (n,) whether each row's task has an annotation (those are never ranked).
        uncertainty: (n,) informativeness in [0, 1] (``1 - score`` of
            ``labelloop.task_types.informativeness``), higher = more informative; None: "coverage" order.
        budget: tasks picked before the model changes (``cluster_count``).

    Returns:
        a ``Ranking`` aligned with the rows.
    """
    x = normalise(embeddings)
    n = len(x)
    is_labeled = np.asarray(labeled, dtype=bool).reshape(-1)
    if len(is_labeled) != n:
        raise ValueError(f"labeled has {len(is_labeled)} rows, embeddings {n}")
    u = None if uncertainty is None else np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    if u is not None and len(u) != n:
        raise ValueError(f"uncertainty has {len(u)} rows, embeddings {n}")
    k = cluster_count(n, int(is_labeled.sum()), budget, max_clusters)
    labels = clusters(x, k, random_state)
    typ = typicality(x, labels)
    keys = content_keys(x)
    covered = np.bincount(labels[is_labeled], minlength=len(np.bincount(labels)))  # labelled rows per cluster
    if u is None:
        order = _coverage_order(labels, typ, keys, is_labeled, covered)
    else:
        order = _uncertainty_order(labels, typ, keys, is_labeled, covered, u)
    renumber: dict[int, int] = {}
    for i in order:
        renumber.setdefault(int(labels[i]), len(renumber))
    for c in sorted(
        set(labels.tolist()) - set(renumber), key=lambda c: min(keys[i] for i in np.flatnonzero(labels == c))
    ):
        renumber[int(c)] = len(renumber)
    cluster = np.array([renumber[int(c)] for c in labels], dtype=np.int64)
    return Ranking(order, rank_scores(order, n), cluster, "coverage" if u is None else "uncertainty")


def _queues(labels: IntArray, is_labeled: npt.NDArray[np.bool_], key: Any) -> dict[int, list[int]]:
    """Each cluster's unlabeled rows sorted by ``key``, reversed: the last one is the next pick."""
    out: dict[int, list[int]] = {}
    for i in np.flatnonzero(~is_labeled):
        out.setdefault(int(labels[i]), []).append(int(i))
    for rows in out.values():
        rows.sort(key=key, reverse=True)
    return out


def _coverage_order(
    labels: IntArray, typ: FloatArray, keys: list[bytes], is_labeled: npt.NDArray[np.bool_], covered: IntArray
) -> list[int]:
    """TypiClust: the most typical remaining row of the least covered cluster, again and again."""
    sizes = np.bincount(labels)
    min_size = min(MIN_CLUSTER_SIZE, int(sizes.max()))
    queues = _queues(labels, is_labeled, lambda i: (-typ[i], keys[i]))
    heap = [(bool(sizes[c] < min_size), int(covered[c]), -int(sizes[c]), keys[q[-1]], c) for c, q in queues.items()]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        small, cov, neg_size, _, c = heapq.heappop(heap)
        queue = queues[c]
        order.append(queue.pop())
        if queue:
            heapq.heappush(heap, (small, cov + 1, neg_size, keys[queue[-1]], c))
    return order


def _uncertainty_order(
    labels: IntArray,
    typ: FloatArray,
    keys: list[bytes],
    is_labeled: npt.NDArray[np.bool_],
    covered: IntArray,
    u: FloatArray,
) -> list[int]:
    """Round-robin over clusters, each round by each cluster's most uncertain remaining row; a
    cluster's labelled rows (``covered``) count as the rounds it already had."""
    queues = _queues(labels, is_labeled, lambda i: (-u[i], -typ[i], keys[i]))

    def entry(taken: int, c: int) -> tuple[int, float, float, bytes, int]:
        head = queues[c][-1]
        return (taken, -float(u[head]), -float(typ[head]), keys[head], c)

    heap = [entry(int(covered[c]), c) for c in queues]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        taken, *_, c = heapq.heappop(heap)
        order.append(queues[c].pop())
        if queues[c]:
            heapq.heappush(heap, entry(taken + 1, c))
    return order
