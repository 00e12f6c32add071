"""A project's training lock under real faults with real workers (``labelloop worker``): Redis
SIGSTOPped longer than the lock's TTL while a training runs, and a queued training revoked
(``app.control.revoke``, as Flower does) before a worker takes it. Each test runs its own
redis-server (the one it pauses); Label Studio is an address that never answers, so a run stays
in its dataset build for as long as the test needs."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from labelloop import keys
from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.jobs.jobs import Jobs
from labelloop.jobs.lease import RunRecords
from labelloop.jobs.progress import ProgressStore
from labelloop.names import QUEUE_TRAIN
from labelloop.redis_client import client as redis_client
from tests.factories import make_settings, settings_env
from workers.celery_app import create_celery


class Rig:
    """Its own Redis, workers as processes, and a ``Jobs`` in the test sending through Celery."""

    def __init__(self, tmp_path: Path, ls_url: str, env: dict[str, str]) -> None:
        self.stack = Stack(tmp_path, {})
        self.redis_url = self.stack.start_redis(free_port())
        workers_env = {"LABELLOOP_LOG_JSON": "true", "LABELLOOP_TRAIN_LOCK_ORPHAN_S": "1", **env}
        self.stack.env = {
            **self.stack.env,
            **settings_env(
                tmp_path, redis_url=self.redis_url, label_studio=(ls_url, "not-a-real-token"), **workers_env
            ),
        }
        self.settings = make_settings(
            tmp_path,
            redis_url=self.redis_url,
            label_studio=(f"http://127.0.0.1:{free_port()}", "not-a-real-token"),
            train_every_n=1,
            train_lock_orphan_s=1,
        )
        self.app = create_celery(self.settings)
        self.jobs = Jobs(self.settings, lambda name, args, queue: self.app.send_task(name, args=args, queue=queue))
        self.redis = redis_client(self.redis_url, "cli")

    def events(self, name: str, event: str) -> list[dict[str, Any]]:
        """The worker's JSON log lines of one event."""
        return [r for r in self.stack.events(name) if r.get("event") == event]


@pytest.fixture
def rig(tmp_path: Path, hanging_label_studio: str, request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(tmp_path, hanging_label_studio, getattr(request, "param", {}))
    try:
        yield r
    finally:
        r.stack.stop_all()


@pytest.mark.parametrize(
    "rig",
    [{"LABELLOOP_TRAIN_LOCK_TTL_S": "3", "LABELLOOP_TRAIN_TIME_LIMIT_S": "20", "LABELLOOP_TRAIN_MAX_DELAY_S": "0"}],
    indirect=True,
)
def test_redis_paused_longer_than_the_lock_ttl_mid_run_leaves_no_lock(rig: Rig) -> None:
    """Redis SIGSTOPped for 7 s (over twice the lock's 3 s TTL: the delivery's owner key expires)
    while a training runs in a real train worker: the run takes its lock back when Redis returns
    (training_lock_taken_back, never training_lock_lost), and when it ends (here over its time
    limit, a reported failure) the lock is released (before: the run ended "lost" and left the
    lock for a day)."""
    rig.stack.start_worker("train")
    assert rig.jobs.handle_event(31, "START_TRAINING", []) == "started"
    run_id = (rig.redis.get(keys.training_lock(31)) or b"").decode()
    progress = ProgressStore(rig.redis)
    wait_until(lambda: bool((progress.get(31) or {}).get("pid")), 90, "the run's build", 0.1)
    rig.stack.procs["redis"].send_signal(signal.SIGSTOP)
    try:
        time.sleep(7.0)  # the fault: Redis unreachable for longer than the lock's TTL
    finally:
        rig.stack.procs["redis"].send_signal(signal.SIGCONT)
    try:
        wait_until(lambda: bool(rig.events("worker-train", "training_failed")), 60, "the run's end", 0.5)
    except TimeoutError:
        pytest.fail("the run did not end\n" + rig.stack.log_tail("worker-train"))
    [failed, *_] = rig.events("worker-train", "training_failed")
    assert failed["run_id"] == run_id and failed["error_type"] == "TimeLimit"
    wait_until(lambda: RunRecords(rig.redis).finished(31, run_id), 30, "the run finished")
    assert not rig.redis.exists(keys.training_lock(31)) and not rig.redis.exists(keys.training_owner(31))
    assert rig.events("worker-train", "training_lock_lost") == []
    assert [e["run_id"] for e in rig.events("worker-train", "training_lock_taken_back")] == [run_id]


def _task_id(raw: bytes) -> str:
    """The Celery task id of a kombu message from the train queue's list."""
    message = json.loads(raw)
    assert json.loads(base64.b64decode(message["body"]))[0][0] == 32
    return str(message["headers"]["id"])


def test_a_revoked_queued_training_s_lock_is_reaped_and_a_later_annotation_trains(rig: Rig) -> None:
    """A queued training revoked in Celery (app.control.revoke, as Flower's button) is discarded
    by the worker that takes it: its project's lock has no owner, which the worker's /metrics
    shows (labelloop_project_locks_without_owner 1.0); the reconciliation reaps it (metric back to
    0) and the next annotation starts a training (before: it only set a follow-up flag)."""
    metrics_port = free_port()
    rig.stack.start_worker("events", args=["--metrics-port", str(metrics_port)])
    assert rig.jobs.handle_event(32, "START_TRAINING", []) == "started"
    run_id = (rig.redis.get(keys.training_lock(32)) or b"").decode()
    [raw] = rig.redis.lrange(QUEUE_TRAIN, 0, -1)
    task_id = _task_id(raw)
    rig.app.control.revoke(task_id)

    def revoked() -> bool:
        replies = rig.app.control.inspect(timeout=1.0).revoked() or {}
        return any(task_id in ids for ids in replies.values())

    wait_until(revoked, 30, "the worker to know the revoke")
    rig.app.control.add_consumer(QUEUE_TRAIN, reply=True)
    wait_until(lambda: rig.redis.llen(QUEUE_TRAIN) + rig.redis.hlen(keys.UNACKED) == 0, 60, "the discard", 0.2)
    assert rig.redis.get(keys.training_lock(32)) == run_id.encode(), "the revoke left the lock"

    def gauge(value: str) -> bool:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        return f"labelloop_project_locks_without_owner {value}" in text

    wait_until(lambda: gauge("1.0"), 30, "the gauge at 1", 0.5)
    wait_until(lambda: rig.jobs.reconcile() is not None and not rig.redis.exists(keys.training_lock(32)), 30, "reap")
    assert gauge("0.0")
    assert rig.jobs.handle_event(32, "ANNOTATION_CREATED", [(7, "2026-12-06T10:00:00.000000Z")]) == "started"
    assert rig.redis.get(keys.training_lock(32)) not in (None, run_id.encode())
