"""bench.faults_extra's pure helpers: kind selection, the seeded rotation, the big selection, queued
Celery messages and latency summaries."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from bench.faults import KINDS, main
from bench.faults_extra import (
    EXTRA_KINDS,
    big_selection,
    latency_summary,
    queued_task_ids,
    rotation,
    select_kinds,
    selection_predictions,
    train_outcome,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", KINDS),
        ("  ", KINDS),
        ("webhook", ("webhook disabled",)),
        ("IDLE, /predict", ("200 idle sockets", "1000-task /predict")),
        ("redis", ("Redis restart", "Redis paused > lock TTL")),  # a part may name several kinds
        ("predict,worker-predict", ("kill -9 worker-predict", "SIGTERM worker-predict", "1000-task /predict")),
        ("paused,revoked,publish,idle,cache,1000,webhook", EXTRA_KINDS),  # the new kinds, in KINDS' order
    ],
)
def test_select_kinds_matches_parts_of_names_in_order(spec: str, expected: tuple[str, ...]) -> None:
    """--kinds selects every kind a comma-separated part names (case-insensitive), once each, in KINDS' order."""
    assert select_kinds(KINDS, spec) == expected


def test_select_kinds_refuses_a_part_that_names_nothing() -> None:
    """A part of --kinds that names no kind is an error listing the kinds, not a silent empty run."""
    with pytest.raises(ValueError, match="'bogus' matches no fault kind; kinds: kill -9 worker-events"):
        select_kinds(KINDS, "webhook,bogus")


def test_main_refuses_an_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """bench.faults --kinds with an unknown kind exits 2 with the reason before starting anything."""
    with pytest.raises(SystemExit) as exc:
        main(["--kinds", "bogus"])
    assert exc.value.code == 2
    assert "'bogus' matches no fault kind" in capsys.readouterr().err


@pytest.mark.parametrize(("n_kinds", "n"), [(17, 20), (7, 7), (3, 10), (10, 2), (1, 5)])
def test_rotation_uses_every_kind_as_often_as_the_count_allows(n_kinds: int, n: int) -> None:
    """n faults cover the kinds evenly: counts differ by at most one, and no kind is left out when n allows."""
    kinds = [f"k{i}" for i in range(n_kinds)]
    plan = rotation(kinds, n, random.Random(1))
    counts = Counter(plan)
    assert len(plan) == n
    assert set(plan) <= set(kinds)
    assert len(counts) == min(n, n_kinds)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_rotation_is_seeded() -> None:
    """The same seed gives the same order of faults; another seed another order."""
    assert rotation(EXTRA_KINDS, 7, random.Random(1)) == rotation(EXTRA_KINDS, 7, random.Random(1))
    assert rotation(EXTRA_KINDS, 7, random.Random(1)) != rotation(EXTRA_KINDS, 7, random.Random(2))
    assert rotation([], 5, random.Random(1)) == []


def test_big_selection_cycles_through_the_tasks() -> None:
    """A 1,000-task selection repeats the project's tasks in order with their id and data only."""
    tasks = [{"id": 7, "data": {"image": "a"}, "annotations": []}, {"id": 9, "data": {"image": "b"}}]
    selection = big_selection(tasks, 1000)
    assert len(selection) == 1000
    assert selection[:3] == [{"id": 7, "data": {"image": "a"}}, {"id": 9, "data": {"image": "b"}}, selection[0]]
    assert Counter(t["id"] for t in selection) == {7: 500, 9: 500}
    with pytest.raises(ValueError, match="no tasks"):
        big_selection([], 3)


def message(task: str, task_id: str) -> dict[str, object]:
    """A Celery protocol-2 message as kombu's Redis transport stores it (body elided)."""
    return {"body": "W10=", "headers": {"task": task, "id": task_id, "lang": "py"}, "properties": {}}


def test_queued_task_ids_reads_the_queue_list_and_the_unacked_hash() -> None:
    """Ids of the named task come from list items and from unacked [message, exchange, routing_key]
    values; other tasks and unreadable items are skipped."""
    raw = [
        json.dumps(message("labelloop.train", "a1")).encode(),
        json.dumps([message("labelloop.train", "b2"), "", "train"]),
        json.dumps(message("labelloop.predict", "c3")),
        b"{cut by a kill",
        json.dumps({"headers": {"task": "labelloop.train"}}),  # no id
        json.dumps([]),
    ]
    assert queued_task_ids(raw, "labelloop.train") == ["a1", "b2"]


def test_latency_summary_counts_statuses() -> None:
    """The summary gives calls, 200s, median / max seconds and the other statuses (0: no answer)."""
    calls = [(200, 0.1), (200, 0.3), (503, 2.0), (0, 2.0), (503, 1.0)]
    assert latency_summary(calls) == "5 calls, 2 answered 200, 1.00 / 2.00 s, no answer x1, 503 x2"
    assert latency_summary([]) == "0 calls"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([{"event": "training_waiting_quiet"}, {"event": "training_finished", "run_id": "r1"}], "training_finished"),
        ([{"event": "training_failed", "error_type": "DatasetError"}], "training_failed (DatasetError)"),
        (
            [{"event": "Task labelloop.train[d8] raised unexpected: FileNotFoundError(2, 'No such file')"}],
            "raised FileNotFoundError",
        ),
        ([{"event": "Task labelloop.predict[d8] raised unexpected: OSError()"}], None),  # not a training
        ([{"event": "training_progress"}], None),
        ([], None),
    ],
)
def test_train_outcome_finds_the_first_end_of_a_training(lines: list[dict[str, str]], expected: str | None) -> None:
    """A training's end is a labelloop outcome event or a labelloop.train task that raised out of Celery."""
    log = "\n".join(["celery banner", '{"event": "cut by a k', *(json.dumps(e) for e in lines)])
    assert train_outcome(log) == expected


def test_a_selection_counts_tasks_holding_the_served_version_or_newer_and_doubles() -> None:
    """A task counts as written when it holds a prediction of the served version or a newer one
    (a promotion may come between the /predict and its job); the base model and first picks never
    count; a task with two predictions of one version is a double, whatever the version."""
    held = {1: ["v2"], 2: ["v3", "v2"], 3: ["v1"], 4: ["base"], 5: ["labelloop-first-picks"], 6: ["v2", "v2"]}
    assert selection_predictions(held, "v2") == (3, 1)
    assert selection_predictions({1: ["base"]}, "base") == (0, 0)
