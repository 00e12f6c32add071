"""labelloop.serving.diversity: first picks that cover the data, typical before outlier, no tie broken by id."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from labelloop.dev.synthetic import make_sample
from labelloop.serving.diversity import (
    cluster_count,
    descriptor,
    informative,
    rank,
    rank_scores,
    typicality,
    val_lower_bound,
    val_score,
)


def blobs(k: int, per: int, dim: int = 8, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` well separated clusters of ``per`` points each (centres on the axes), and each point's blob."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:k] * 3.0 + 1.0
    x = np.concatenate([c + rng.normal(0, spread, (per, dim)) for c in centres])
    return x, np.repeat(np.arange(k), per)


@pytest.mark.parametrize(("k", "per", "labelled"), [(3, 10, 0), (5, 8, 0), (4, 12, 2)])
def test_first_picks_hit_every_cluster(k: int, per: int, labelled: int) -> None:
    """On data with k obvious clusters and a budget of k, the first k picks hit k different clusters
    (labelled rows cover their own cluster: with labels in blob 0, blob 0 comes last)."""
    x, blob = blobs(k, per)
    labeled = np.zeros(len(x), dtype=bool)
    labeled[:labelled] = True  # all in blob 0
    ranking = rank(x, labeled, budget=k - (1 if labelled else 0))
    picked = [int(blob[i]) for i in ranking.order]
    want = k - (1 if labelled else 0)
    assert len(set(picked[:want])) == want
    if labelled:
        assert 0 not in picked[:want]
    assert sorted(ranking.order) == sorted(np.flatnonzero(~labeled).tolist())
    assert len({int(ranking.cluster[i]) for i in ranking.order[:want]}) == want


def test_typical_beats_outlier() -> None:
    """Within one cluster the image in the dense centre is picked before the outlier at its edge."""
    rng = np.random.default_rng(1)
    core = rng.normal(0, 0.05, (15, 4)) + np.array([1.0, 0, 0, 0])
    outlier = np.array([[1.0, 0.6, 0.0, 0.0]])
    x = np.concatenate([outlier, core])
    ranking = rank(x, np.zeros(len(x), dtype=bool), budget=1)
    assert ranking.order[0] != 0 and ranking.order[-1] == 0
    typ = typicality(x, np.zeros(len(x), dtype=np.int64))
    assert typ[0] == typ.min()


def test_permuting_task_ids_changes_no_pick() -> None:
    """The same images under shuffled task ids (and input order) give the same picks in the same order,
    including among exact duplicates and equal uncertainties: nothing is decided by id or position."""
    x, _ = blobs(4, 6)
    x = np.concatenate([x, x[:3]])  # exact duplicates: ties that only content may break
    rng = np.random.default_rng(7)
    u = np.where(np.arange(len(x)) % 2 == 0, 1.0, 0.4)  # many exact ties in uncertainty
    for uncertainty in (None, u):
        base = rank(x, np.zeros(len(x), dtype=bool), uncertainty, budget=4)
        want = [x[i].tobytes() for i in base.order]
        for _ in range(3):
            perm = rng.permutation(len(x))
            shuffled = rank(x[perm], np.zeros(len(x), dtype=bool), None if uncertainty is None else u[perm], budget=4)
            assert [x[perm][i].tobytes() for i in shuffled.order] == want


def test_uncertainty_mode_interleaves_clusters() -> None:
    """With an informative model, one cluster whose tasks are all more uncertain than every other
    task's still gives only one task per round: the first k picks hit k clusters, each cluster's most
    uncertain first, and the rounds are ordered by uncertainty."""
    x, blob = blobs(3, 6)
    u = np.where(blob == 0, 0.9, 0.1) + np.arange(len(x)) * 1e-3
    ranking = rank(x, np.zeros(len(x), dtype=bool), u, budget=3)
    picked = [int(blob[i]) for i in ranking.order]
    assert ranking.mode == "uncertainty"
    assert picked[0] == 0 and sorted(picked[:3]) == [0, 1, 2] and sorted(picked[3:6]) == [0, 1, 2]
    for b in range(3):
        mine = [i for i in ranking.order if blob[i] == b]
        assert mine == sorted(mine, key=lambda i: -u[i])


@pytest.mark.parametrize(
    ("n_items", "n_labeled", "budget", "want"),
    [(100, 0, 10, 10), (100, 5, 10, 15), (8, 0, 10, 8), (10_000, 900, 10, 500), (0, 0, 10, 1), (50, 0, 0, 1)],
)
def test_cluster_count(n_items: int, n_labeled: int, budget: int, want: int) -> None:
    """k = labelled + budget, capped by the images and MAX_CLUSTERS, at least 1."""
    assert cluster_count(n_items, n_labeled, budget) == want


@pytest.mark.parametrize(
    ("flags", "want"),
    [([], False), ([False] * 10, False), ([True] * 4 + [False] * 6, False), ([True] * 5 + [False] * 5, True)],
)
def test_informative_share(flags: list[bool], want: bool) -> None:
    """The model orders the tasks once at least half of them have a candidate box."""
    assert informative(flags) is want


@pytest.mark.parametrize(
    ("flags", "score", "count", "want"),
    [
        ([True] * 10, None, 0, True),  # no validation score: the share decides
        ([True] * 10, 0.49, 0, False),
        ([True] * 10, 0.5, 0, True),  # count unknown: the score itself
        ([False] * 10, 0.9, 100, False),
        ([True] * 10, 0.57, 2, False),  # a first version's 2 validation objects say nothing
        ([True] * 10, 0.83, 7, False),
        ([True] * 10, 0.9, 40, True),
        ([True] * 10, 0.6, 400, True),
        ([True] * 10, 0.6, 40, False),
    ],
)
def test_informative_needs_the_validation_score_too(
    flags: list[bool], score: float | None, count: int, want: bool
) -> None:
    """A version that puts a box on every task but is not above 0.5 on its own validation split with
    95% confidence orders nothing; without a known score only the share counts."""
    assert informative(flags, score, count) is want


@pytest.mark.parametrize(("score", "count"), [(0.0, 1), (0.5, 10), (0.9, 40), (1.0, 1000), (1.7, 3), (-0.2, 3)])
def test_val_lower_bound_is_below_the_shrunk_score(score: float, count: int) -> None:
    """The bound lies below the score shrunk toward 1/2 and tightens as the count grows."""
    shrunk = (min(max(score, 0.0), 1.0) * count + 1) / (count + 2)
    assert val_lower_bound(score, count) < shrunk
    assert val_lower_bound(score, count) < val_lower_bound(score, count * 4) or score <= 0.0
    assert val_lower_bound(score, 0) == score


@pytest.mark.parametrize(
    ("metrics", "want"),
    [
        ({"map50": 0.3, "map50_95": 0.1}, 0.3),
        ({"accuracy_top1": 0.8, "accuracy_top5": 1.0}, 0.8),
        ({"map50": 1}, 1.0),
        ({}, None),
        (None, None),
        ({"map50": "0.3"}, None),
        ({"map50": True}, None),
    ],
)
def test_val_score_reads_the_manifest_metrics(metrics: dict | None, want: float | None) -> None:
    """mAP50 for the box task types, top-1 accuracy for classification, None for anything else."""
    assert val_score(metrics) == want


def test_uncertainty_round_robin_counts_labelled_tasks() -> None:
    """A cluster's annotated tasks count as rounds it already had: every pick comes from a cluster
    with the fewest annotated + already picked tasks among those with tasks left, however uncertain
    the tasks of the well covered clusters are."""
    x, blob = blobs(3, 8)
    labelled = np.zeros(len(x), dtype=bool)
    labelled[np.flatnonzero(blob == 0)[:3]] = True
    labelled[np.flatnonzero(blob == 1)[:1]] = True
    u = np.where(blob == 0, 0.9, 0.1) + np.arange(len(x)) * 1e-3  # cluster 0: the most uncertain tasks
    ranking = rank(x, labelled, u, budget=3)
    assert ranking.mode == "uncertainty"
    taken = {int(c): int(np.sum(labelled & (ranking.cluster == c))) for c in set(ranking.cluster.tolist())}
    left = {c: int(np.sum(~labelled & (ranking.cluster == c))) for c in taken}
    assert max(taken.values()) >= 2  # the test has a well covered cluster to hold back
    for i in ranking.order:
        c = int(ranking.cluster[i])
        assert taken[c] == min(t for d, t in taken.items() if left[d]), (c, taken)
        taken[c] += 1
        left[c] -= 1


def test_scores_follow_the_order() -> None:
    """Scores rise with the rank from 0.0 to 1.0, all distinct; sorting by score gives the order back;
    labelled rows get none."""
    score = rank_scores([3, 0, 2], 5)
    assert score[3] == 0.0 and score[0] == 0.5 and score[2] == 1.0
    assert np.isnan(score[1]) and np.isnan(score[4])
    x, _ = blobs(3, 5)
    labeled = np.zeros(len(x), dtype=bool)
    labeled[0] = True
    ranking = rank(x, labeled, budget=3)
    assert sorted(ranking.order, key=lambda i: ranking.score[i]) == ranking.order
    assert np.isnan(ranking.score[0]) and ranking.cluster[ranking.order[0]] == 0


def test_descriptor_is_unit_and_tells_images_apart() -> None:
    """The model-free descriptor is an L2-normalised float32 vector; the same image gives the same
    vector, a different scene a different one, a flat image no NaN."""
    a = descriptor(Image.open(io.BytesIO(make_sample(1, 96, 64).png)))
    b = descriptor(Image.open(io.BytesIO(make_sample(2, 96, 64).png)))
    flat = descriptor(Image.new("L", (40, 30), 128))
    assert a.dtype == np.float32 and a.shape == (160,)
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
    assert np.array_equal(a, descriptor(Image.open(io.BytesIO(make_sample(1, 96, 64).png))))
    assert float(np.linalg.norm(a - b)) > 0.05
    assert np.isfinite(flat).all()


def test_descriptors_cluster_by_scene() -> None:
    """Descriptors of three kinds of scene (dark noise, bright stripes, coloured gradient), with the
    coverage order, put one image of each kind in the first three picks."""
    rng = np.random.default_rng(3)
    images = []
    kinds = []
    for i in range(18):
        kind = i % 3
        if kind == 0:
            arr = rng.integers(0, 60, (48, 64, 3))
        elif kind == 1:
            arr = (
                np.zeros((48, 64, 3)) + (np.arange(64)[None, :, None] // 4 % 2) * 220 + rng.integers(0, 20, (48, 64, 3))
            )
        else:
            arr = np.stack([np.linspace(0, 255, 64)[None, :].repeat(48, 0)] * 2 + [np.full((48, 64), 200.0)], -1)
            arr = arr + rng.integers(0, 20, (48, 64, 3))
        images.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
        kinds.append(kind)
    x = np.stack([descriptor(im) for im in images])
    ranking = rank(x, np.zeros(len(x), dtype=bool), budget=3)
    assert sorted(kinds[i] for i in ranking.order[:3]) == [0, 1, 2]
