"""A training run's states (``labelloop.jobs.lifecycle``) on real Redis and a real registry, with the
RUNNING state's work replaced by one that publishes a version or meets an injected fault."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from labelloop import keys
from labelloop.jobs import lifecycle
from labelloop.jobs.jobs import Jobs
from labelloop.jobs.lease import RunRecords
from labelloop.jobs.lifecycle import TrainingReport
from labelloop.jobs.progress import ProgressStore
from labelloop.names import QUEUE_PREANNOTATE, QUEUE_TRAIN, TASK_PREANNOTATE, TASK_TRAIN
from labelloop.registry.store import ModelVersion, Registry
from labelloop.settings import Settings
from tests.factories import make_settings, publish_version

Sent = list[tuple[str, list[Any], str]]


def make_jobs(redis_url: str, tmp_path: Path, sent: Sent, work: lifecycle.Work) -> Jobs:
    settings = make_settings(tmp_path, redis_url=redis_url, train_every_n=2, train_lock_ttl_s=3)
    jobs = Jobs(settings, lambda name, args, queue: sent.append((name, args, queue)))
    jobs.runs.work = work
    return jobs


def publishing(tmp_path: Path, on_run: Callable[[], None] = lambda: None) -> lifecycle.Work:
    """A RUNNING state that reports one epoch and publishes a promoted version of real (tiny) weights."""
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights")

    def work(
        settings: Settings,
        project_id: int,
        run_id: str,
        on_progress: Callable[[dict[str, object]], None],
        should_cancel: Callable[[], bool],
    ) -> ModelVersion:
        on_progress({"epoch": 1, "epochs": 1, "metrics": {"metrics/mAP50-95(B)": 0.5}, "losses": {}})
        on_run()
        return publish_version(Registry(settings.models_dir), project_id, weights, metrics={"map50_95": 0.5})

    return work


def test_a_published_run_finishes_sends_the_preannotation_and_its_follow_up(redis_url: str, tmp_path: Path) -> None:
    """QUEUED -> CLAIMED -> RUNNING -> FINISHED: the outcome names the promoted version, each epoch is
    reported, the run is marked finished, the pre-annotation is queued, and the annotations that
    arrived while it ran (train_every_n of them) start exactly one follow-up run."""
    sent: Sent = []
    reports: list[TrainingReport] = []
    jobs: Jobs

    def annotate_meanwhile() -> None:
        answers = [jobs.handle_event(3, "ANNOTATION_CREATED", [(i, f"2026-12-06T10:00:0{i}Z")]) for i in (1, 2)]
        assert answers == ["counted", "coalesced"]

    jobs = make_jobs(redis_url, tmp_path, sent, publishing(tmp_path, annotate_meanwhile))
    assert jobs.handle_event(3, "START_TRAINING", []) == "started"
    [(_, [_, run_id], _)] = sent
    outcome = jobs.train(3, run_id, "task-1", reports.append)
    assert (outcome["project_id"], outcome["run_id"], outcome["status"], outcome["version"]) == (
        3,
        run_id,
        "promoted",
        "v1",
    )
    assert reports[-1]["epoch"] == 1 and reports[-1]["run_id"] == run_id
    assert RunRecords(jobs.redis).finished(3, run_id) and ProgressStore(jobs.redis).get(3) is None
    assert (TASK_PREANNOTATE, [3, "v1"], QUEUE_PREANNOTATE) in sent
    followups = [args for name, args, queue in sent[1:] if name == TASK_TRAIN and queue == QUEUE_TRAIN]
    assert len(followups) == 1 and followups[0][1] != run_id
    assert jobs.redis.get(keys.training_lock(3)) == followups[0][1].encode()


@pytest.mark.parametrize("fault", [SystemExit(0), redis.ConnectionError("injected")])
def test_a_shutdown_or_a_transient_error_requeues_the_run(redis_url: str, tmp_path: Path, fault: BaseException) -> None:
    """RUNNING -> REQUEUED: a worker shutting down (SystemExit) or a transient error with retries left
    hands the lock back to the queued run (no owner, the queued TTL), does not count the delivery
    as one that died, and raises; the next delivery claims the run and finishes it."""
    sent: Sent = []

    def failing(*_: Any) -> ModelVersion:
        raise fault

    jobs = make_jobs(redis_url, tmp_path, sent, failing)
    assert jobs.handle_event(4, "START_TRAINING", []) == "started"
    run_id = sent[0][1][1]
    with pytest.raises(type(fault)):
        jobs.train(4, run_id, None, lambda meta: None, retry_transient=True)
    client = jobs.redis
    assert client.get(keys.training_lock(4)) == run_id.encode() and client.ttl(keys.training_lock(4)) > 3600
    assert not client.exists(keys.training_owner(4))
    assert client.hget(keys.run(4, run_id), "started") == b"0" and not RunRecords(client).finished(4, run_id)
    jobs.runs.work = publishing(tmp_path)
    assert jobs.train(4, run_id, None, lambda meta: None)["status"] == "promoted"
    assert not client.exists(keys.training_lock(4))


def test_a_transient_error_on_the_last_retry_fails_the_run(redis_url: str, tmp_path: Path) -> None:
    """RUNNING -> FINISHED (failed): a transient error with no retry left is the run's outcome; the
    project is released."""
    sent: Sent = []

    def failing(*_: Any) -> ModelVersion:
        raise redis.TimeoutError("injected")

    jobs = make_jobs(redis_url, tmp_path, sent, failing)
    assert jobs.handle_event(5, "START_TRAINING", []) == "started"
    run_id = sent[0][1][1]
    outcome = jobs.train(5, run_id, None, lambda meta: None, retry_transient=False)
    assert outcome["status"] == "failed" and "injected" in outcome["error"]
    assert not jobs.redis.exists(keys.training_lock(5)) and RunRecords(jobs.redis).finished(5, run_id)


def test_every_state_of_the_diagram_has_its_row() -> None:
    """The module docstring's table names the code behind every state the diagram draws."""
    doc = lifecycle.__doc__ or ""
    diagram, table = doc.split("=================  ", 1)
    for state in ("QUEUED", "UNSENT", "CLAIMED", "DUPLICATE", "SUPERSEDED", "GIVEN UP", "RUNNING", "REQUEUED", "LOST"):
        assert state in diagram and f"\n{state} " in table, state
    assert "FINISHED" in diagram and "\nFINISHED " in table
