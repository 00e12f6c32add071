"""A training run's hold on its project (``labelloop.jobs.lease``) and what ``Jobs.train`` does with it
when deliveries are duplicated, superseded, killed or meet a transient error: real Redis, real
processes killed with SIGKILL, a Label Studio address that hangs or refuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from labelloop import keys
from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.errors import LabelStudioUnavailable
from labelloop.jobs.jobs import Jobs
from labelloop.jobs.lease import RunLease, RunRecords, renewed_lock
from labelloop.jobs.progress import ProgressStore
from labelloop.jobs.trigger import TriggerStore
from labelloop.settings import Settings
from labelloop.training.runs import runs_dir
from tests.factories import make_settings


def settings_for(redis_url: str, tmp_path: Path, ls_url: str, **extra: Any) -> Settings:
    return make_settings(
        tmp_path, redis_url=redis_url, label_studio=(ls_url, "not-a-real-token"), train_lock_ttl_s=3, **extra
    )


def test_the_lease_renews_for_the_whole_run_and_notices_a_lost_lock(redis_url: str) -> None:
    """A lease renews its claimed lock and calls keepalive on every beat; when another delivery
    takes the lock, ``lost`` is set and renewals stop."""
    client = redis.Redis.from_url(redis_url)
    store = TriggerStore(client, lock_ttl_s=86400, run_ttl_s=2)
    run = store.apply(3, "start_training", n=10)
    assert run.run_id and store.claim(3, run.run_id, "mine") == "claimed"
    beats: list[float] = []
    with RunLease(store, 3, run.run_id, "mine", 0.2, keepalive=lambda: beats.append(time.monotonic())) as lease:
        wait_until(lambda: len(beats) >= 5, 10, "five renewals")
        assert client.ttl(keys.training_lock(3)) >= 1 and not lease.lost.is_set()
        client.set(keys.training_owner(3), "someone-else", ex=30)
        assert lease.lost.wait(5)
        count = len(beats)
    assert len(beats) == count, "no keepalive after the lock was lost"


def test_a_delivery_of_a_run_another_run_holds_does_not_train(redis_url: str, tmp_path: Path) -> None:
    """A run whose project lock another run holds (its queue wait outlived the lock) stops at once
    as "superseded": it neither reads Label Studio nor touches the holder's lock."""
    jobs = Jobs(settings_for(redis_url, tmp_path, f"http://127.0.0.1:{free_port()}"), lambda *a: None)
    holder = jobs.trigger().apply(4, "start_training", n=10).run_id
    assert holder
    outcome = jobs.train(4, "an-old-run", None, lambda meta: None)
    assert outcome["status"] == "superseded"
    assert redis.Redis.from_url(redis_url).get(keys.training_lock(4)) == holder.encode()


# The child builds its Settings from the environment the test gives it (the tests' factories are not
# imported there).
TRAIN_IN_A_CHILD = """
import sys
import threading
from labelloop.jobs.jobs import Jobs
from labelloop.settings import Settings
Jobs(Settings(), lambda *a: None).train(int(sys.argv[1]), sys.argv[2], None, lambda meta: None)
"""


def test_a_run_whose_deliveries_keep_dying_is_given_up_and_releases_the_project(
    redis_url: str, tmp_path: Path, hanging_label_studio: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each delivery of a run dies with its process (SIGKILL mid-build); after
    train_max_deliveries (2) the next delivery gives the run up: ``training_given_up`` logged with
    the reason, the reason kept for ``labelloop status``, the project's lock released so the next
    training starts."""
    settings = settings_for(redis_url, tmp_path, hanging_label_studio, train_max_deliveries=2)
    jobs = Jobs(settings, lambda *a: None)
    run_id = jobs.trigger().apply(5, "start_training", n=10).run_id
    assert run_id
    records, progress = RunRecords(jobs.redis), ProgressStore(jobs.redis)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "LABELLOOP_REDIS_URL": redis_url,
        "LABELLOOP_MODELS_DIR": str(settings.models_dir),
        "LABELLOOP_CACHE_DIR": str(settings.cache_dir),
        "LABELLOOP_TRAIN_LOCK_TTL_S": "3",
        "LABELLOOP_TRAIN_MAX_DELIVERIES": "2",
        "LABEL_STUDIO_URL": hanging_label_studio,
        "LABEL_STUDIO_API_KEY": "not-a-real-token",
    }
    for delivery in (1, 2):
        child = subprocess.Popen([sys.executable, "-c", TRAIN_IN_A_CHILD, "5", run_id], env=env)
        try:

            def started(n: int = delivery, child: subprocess.Popen[bytes] = child) -> bool:
                assert child.poll() is None, "the delivery ended by itself"
                building = (progress.get(5) or {}).get("pid") == child.pid
                return building and jobs.redis.hget(keys.run(5, run_id), "started") == str(n).encode()

            wait_until(started, 60, f"delivery {delivery} building")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    with capture_logs() as logs:
        outcome = jobs.train(5, run_id, None, lambda meta: None)
    assert outcome["status"] == "given_up"
    assert "2 deliveries died with their worker (last seen: preparing)" in outcome["error"]
    [given_up] = [e for e in logs if e["event"] == "training_given_up"]
    assert given_up["deliveries"] == 2 and "preparing" in given_up["reason"]
    assert (records.given_up(5) or {})["run_id"] == run_id
    assert not jobs.trigger().state(5).training
    assert jobs.handle_event(5, "START_TRAINING", []) == "started"
    from service.ops_status import status

    status(settings)
    assert f"project 5: run {run_id} given up: 2 deliveries died" in capsys.readouterr().out


def test_a_transient_failure_keeps_the_request_for_the_retry(redis_url: str, tmp_path: Path) -> None:
    """A training that meets a transient error (Label Studio refusing connections) hands the lock
    back to its queued run and raises for the retry, so the request is not lost; the last attempt
    reports the failure and releases the project, and a later delivery of that run does nothing."""
    jobs = Jobs(settings_for(redis_url, tmp_path, f"http://127.0.0.1:{free_port()}"), lambda *a: None)
    run_id = jobs.trigger().apply(6, "start_training", n=10).run_id
    assert run_id
    with pytest.raises(LabelStudioUnavailable):
        jobs.train(6, run_id, None, lambda meta: None, retry_transient=True)
    assert jobs.redis.get(keys.training_lock(6)) == run_id.encode() and jobs.redis.ttl(keys.training_lock(6)) > 3600
    assert not RunRecords(jobs.redis).finished(6, run_id)
    assert not os.path.exists(runs_dir(tmp_path / "cache") / "6" / run_id)
    last = jobs.train(6, run_id, None, lambda meta: None, retry_transient=False)
    assert last["status"] == "failed" and "Label Studio" in last["error"]
    assert not jobs.trigger().state(6).training
    assert jobs.train(6, run_id, None, lambda meta: None)["status"] == "duplicate"


def second_delivery_while_the_first_lives(jobs: Jobs, project_id: int, first_finishes: bool) -> dict[str, Any]:
    """Deliver a run a second time while a first delivery holds its lease; the first one then
    finishes or dies (its lease stops renewing). Returns the second delivery's outcome."""
    store, records = jobs.trigger(), RunRecords(jobs.redis)
    run_id = store.apply(project_id, "start_training", n=10).run_id
    assert run_id and store.claim(project_id, run_id, "first") == "claimed"
    waits: list[float] = []
    result: dict[str, Any] = {}

    def deliver() -> None:
        result.update(jobs.train(project_id, run_id, None, lambda meta: None, keepalive=lambda: waits.append(1.0)))

    with RunLease(store, project_id, run_id, "first", 0.5):
        second = threading.Thread(target=deliver)
        second.start()
        wait_until(lambda: len(waits) >= 3, 30, "the second delivery waiting")
        assert not result and ProgressStore(jobs.redis).get(project_id) is None, "it waits, it does not train"
        if first_finishes:
            records.finish(project_id, run_id)
            store.apply(project_id, "finished", n=10, run_id=run_id, owner="first")
    second.join(60)
    assert not second.is_alive()
    return result


def test_a_second_delivery_waits_while_the_first_lives_then_skips_or_takes_over(redis_url: str, tmp_path: Path) -> None:
    """A second delivery of a run whose lease a live delivery renews waits (keeping its message
    fresh) instead of training or acknowledging: when the first one finishes, the second does
    nothing ("duplicate"); when the first one dies (its lease stops), the second takes the run over."""
    jobs = Jobs(settings_for(redis_url, tmp_path, f"http://127.0.0.1:{free_port()}"), lambda *a: None)
    assert second_delivery_while_the_first_lives(jobs, 8, first_finishes=True)["status"] == "duplicate"
    took_over = second_delivery_while_the_first_lives(jobs, 9, first_finishes=False)
    assert took_over["status"] == "failed", "it ran (and met the refusing Label Studio)"
    assert not jobs.trigger().state(9).training


def test_a_lock_whose_holder_lost_redis_lapses_after_its_short_timeout(tmp_path: Path) -> None:
    """Redis (append-only file, as in production) stopped and restarted while a reconciliation holds
    its project's lock: leaving the block logs the failed release instead of raising, the key
    survives the restart, and it lapses after the lock's short timeout instead of blocking the
    project for as long as the longest job could take; while held, renewals keep it past the
    timeout."""
    stack = Stack(tmp_path / "redis-stack", {})
    port = free_port()
    url = stack.start_redis(port, tmp_path / "aof", persist=True)
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    name = keys.reconcile_lock(5)
    try:
        with capture_logs() as logs, renewed_lock(client, name, 1.5) as held:
            assert held
            time.sleep(2.5)  # longer than the timeout: only the renewals keep the key
            assert client.exists(name), "renewed while held"
            with renewed_lock(client, name, 1.5) as other:
                assert not other, "one holder at a time"
            client.config_set("appendfsync", "always")
            stack.stop("redis")
        assert [e for e in logs if e["event"] == "lock_release_failed"]
        stack.start_redis(port, tmp_path / "aof", persist=True)
        wait_until(lambda: client.ping(), 20, "Redis back")
        wait_until(lambda: not client.exists(name), 5, "the stale lock lapsing")
        with renewed_lock(client, name, 1.5) as again:
            assert again, "the next reconciliation takes the project"
    finally:
        stack.stop_all()
