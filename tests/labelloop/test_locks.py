"""A project's training lock that outlives its run's message: a queued training purged from the
broker, a training that cannot be sent (the broker's port closed, the broker stopped and started
again), and what ``labelloop status`` and ``doctor`` show meanwhile. Real Redis, real Celery
clients publishing to it, a real purge; the reaper is the reconciliation's own code
(``Jobs.reconcile``), with Label Studio a closed port (its part fails, the reaping does not)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from structlog.testing import capture_logs

from labelloop import keys
from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.jobs.jobs import Jobs
from labelloop.jobs.lease import RunRecords
from labelloop.names import QUEUE_TRAIN
from labelloop.settings import Settings
from tests.factories import make_settings
from workers.celery_app import create_celery

ANNOTATION = [(101, "2026-12-06T10:00:00.000000Z")]


def settings_for(redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        redis_url=redis_url,
        label_studio=(f"http://127.0.0.1:{free_port()}", "not-a-real-token"),
        train_every_n=1,
        train_lock_orphan_s=1,
    )


def celery_client(settings: Settings) -> Celery:
    """The workers' Celery app (``create_celery``), its result backend giving up a lost connection
    at once rather than after 20 one-second tries (the tests' broker faults last longer)."""
    app = create_celery(settings)
    quick = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}
    app.conf.result_backend_transport_options = {**app.conf.result_backend_transport_options, "retry_policy": quick}
    return app


def sender(app: Celery) -> Callable[[str, list[Any], str], None]:
    """What ``workers.tasks.jobs`` passes to ``Jobs``: ``send_task`` by name and queue."""

    def send(name: str, args: list[Any], queue: str) -> None:
        app.send_task(name, args=args, queue=queue)

    return send


def test_a_purged_training_s_lock_is_reaped_and_a_later_annotation_trains(redis_url: str, tmp_path: Path) -> None:
    """A queued training purged from the train queue (kombu's queue_purge, as `celery purge`)
    leaves its project's lock with no message and no delivery; the reconciliation reaps it once
    the run has been due train_lock_orphan_s (1 s), records why for `labelloop status`, and the
    next annotation starts a training (before: it only set a follow-up flag for a day)."""
    settings = settings_for(redis_url, tmp_path)
    app = celery_client(settings)
    jobs = Jobs(settings, sender(app))
    client = redis.Redis.from_url(redis_url)
    assert jobs.handle_event(9, "START_TRAINING", []) == "started"
    run_id = (client.get(keys.training_lock(9)) or b"").decode()
    assert client.llen(QUEUE_TRAIN) == 1
    with app.connection_for_write() as conn:
        assert conn.default_channel.queue_purge(QUEUE_TRAIN) == 1
    with capture_logs() as logs:
        wait_until(lambda: bool(jobs.reconcile() is not None and not client.exists(keys.training_lock(9))), 15, "reap")
    [reaped] = [e for e in logs if e["event"] == "training_lock_reaped"]
    assert reaped["run_id"] == run_id
    gone = RunRecords(client).given_up(9)
    assert gone is not None and gone["run_id"] == run_id and "message was lost" in gone["reason"]
    assert jobs.handle_event(9, "ANNOTATION_CREATED", ANNOTATION) == "started"
    assert client.llen(QUEUE_TRAIN) == 1 and client.get(keys.training_lock(9)) not in (None, run_id.encode())


def test_a_lock_whose_message_waits_or_whose_delivery_runs_is_not_reaped(redis_url: str, tmp_path: Path) -> None:
    """A training whose message waits in the train queue, or one a delivery has claimed (its owner
    key alive), keeps its lock through reconciliations, however long ago it became due."""
    settings = settings_for(redis_url, tmp_path)
    jobs = Jobs(settings, sender(celery_client(settings)))
    client = redis.Redis.from_url(redis_url)
    assert jobs.handle_event(10, "START_TRAINING", []) == "started"
    assert jobs.handle_event(11, "START_TRAINING", []) == "started"
    queued = client.get(keys.training_lock(10))
    running = (client.get(keys.training_lock(11)) or b"").decode()
    taken = client.lpop(QUEUE_TRAIN)  # project 11's message (the newest) goes to a delivery, which claims
    assert isinstance(taken, bytes) and running.encode() in taken
    assert jobs.trigger().claim(11, running, "a-delivery") == "claimed"
    for p in (10, 11):  # both became due 1 s (train_lock_orphan_s) ago and more
        client.hset(keys.trigger(p), "due_at", float(client.time()[0]) - 60)
    jobs.reconcile()
    assert client.get(keys.training_lock(10)) == queued and client.get(keys.training_lock(11)) == running.encode()


def test_a_training_that_cannot_be_sent_is_retried_then_handed_back_and_started_later(
    redis_url: str, tmp_path: Path
) -> None:
    """With the broker's port closed, sending a training is tried again after each backoff delay
    (training_publish_retrying), then given up (training_publish_failed, a record for `labelloop
    status`): the project's lock is released with the follow-up flag set, and the next
    reconciliation, with the broker back, starts the training (before: the send's error left the
    lock held for a day)."""
    settings = settings_for(redis_url, tmp_path)
    closed = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    jobs = Jobs(settings, sender(celery_client(closed)))
    jobs.runs.publish_delays_s = (0.2, 0.4)
    client = redis.Redis.from_url(redis_url)
    with capture_logs() as logs:
        assert jobs.handle_event(12, "START_TRAINING", []) == "unsent"
    retries = [e for e in logs if e["event"] == "training_publish_retrying"]
    assert [e["delay_s"] for e in retries] == [0.2, 0.4]
    [failed] = [e for e in logs if e["event"] == "training_publish_failed"]
    assert failed["attempts"] == 3
    assert not client.exists(keys.training_lock(12)) and jobs.trigger().state(12).followup
    gone = RunRecords(client).given_up(12)
    assert gone is not None and "could not be sent to the broker" in gone["reason"]
    jobs.context.send = sender(celery_client(settings))
    jobs.reconcile()
    assert client.llen(QUEUE_TRAIN) == 1 and client.exists(keys.training_lock(12))


def test_a_send_retried_while_the_broker_restarts_goes_through(redis_url: str, tmp_path: Path) -> None:
    """The broker (its own redis-server) stopped when a training is due and started again after
    the first failed send: a retry sends it, the run keeps its lock and its message waits."""
    stack = Stack(tmp_path / "broker", {})
    port = free_port()
    broker = stack.start_redis(port)
    try:
        settings = settings_for(redis_url, tmp_path)
        app = celery_client(settings.model_copy(update={"redis_url": broker}))
        app.send_task("labelloop.nothing", queue="warm-up")  # the client is connected, as a worker's is
        stack.stop("redis")
        jobs = Jobs(settings, sender(app))
        jobs.runs.publish_delays_s = (1.0, 2.0, 4.0)
        with capture_logs() as logs:

            def restart() -> None:
                wait_until(lambda: any(e["event"] == "training_publish_retrying" for e in logs), 30, "a retry")
                stack.start_redis(port)

            restarter = threading.Thread(target=restart)
            restarter.start()
            try:
                assert jobs.handle_event(13, "START_TRAINING", []) == "started"
            finally:
                restarter.join()
        [sent] = [e for e in logs if e["event"] == "training_enqueued"]
        assert sent["attempts"] >= 2
        run_id = redis.Redis.from_url(redis_url).get(keys.training_lock(13))
        assert run_id and redis.Redis.from_url(broker).llen(QUEUE_TRAIN) == 1
    finally:
        stack.stop_all()


def test_status_and_doctor_show_a_lock_without_owner(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A project whose lock lost its message (a send that never reached the broker) is named by
    `labelloop status` and failed by `labelloop doctor`; a project whose training waits in the
    train queue is in neither."""
    from service.ops_doctor import doctor
    from service.ops_status import status

    settings = settings_for(redis_url, tmp_path)
    client = redis.Redis.from_url(redis_url)
    Jobs(settings, sender(celery_client(settings))).handle_event(14, "START_TRAINING", [])
    Jobs(settings, lambda *a: None).handle_event(15, "START_TRAINING", [])
    lost = (client.get(keys.training_lock(15)) or b"").decode()
    out = ""

    def shown() -> bool:
        nonlocal out
        assert status(settings) == 0
        out = capsys.readouterr().out
        return "without owner" in out

    wait_until(shown, 20, "the lock without owner in status")
    assert f"project 15: training lock of run {lost} held without owner" in out
    assert "project 14: training lock" not in out
    assert doctor(settings) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] project 15: training lock of run {lost} held without owner" in out
    assert "project 14: training lock" not in out


def test_a_delivery_takes_its_run_back_only_while_no_other_delivery_claimed_it(redis_url: str) -> None:
    """When a running delivery's owner key expired (Redis away longer than its TTL) and the lock
    still names its run, its next renewal takes the claim back; once another delivery of the run
    claimed the lock meanwhile, the renewal reports it lost and leaves the other's claim alone."""
    from labelloop.jobs.trigger import TriggerStore

    client = redis.Redis.from_url(redis_url)
    store = TriggerStore(client, lock_ttl_s=86400, run_ttl_s=1)
    run_id = store.apply(16, "start_training", n=10).run_id
    assert run_id and store.claim(16, run_id, "first") == "claimed"
    wait_until(lambda: not client.exists(keys.training_owner(16)), 10, "the owner key to expire")
    assert store.renew(16, run_id, "first")
    assert client.get(keys.training_owner(16)) == b"first" and client.ttl(keys.training_owner(16)) >= 0
    wait_until(lambda: not client.exists(keys.training_owner(16)), 10, "the owner key to expire again")
    assert store.claim(16, run_id, "second") == "claimed"
    assert not store.renew(16, run_id, "first")
    assert client.get(keys.training_owner(16)) == b"second"
