"""Real train workers (``labelloop worker --queues train``) under real faults: the whole worker
SIGKILLed mid-run and a new one started, the same training delivered twice, a dataset build
that overruns the time limit. Label Studio is an address that accepts connections and never
answers, so every run stays in its dataset build for as long as the test needs."""

from __future__ import annotations

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
from labelloop.names import QUEUE_TRAIN, TASK_TRAIN
from labelloop.redis_client import client as redis_client
from tests.factories import make_settings, settings_env
from workers.celery_app import create_celery


class Workers:
    """Train workers as processes, and a ``Jobs`` in the test that enqueues through Celery."""

    def __init__(self, tmp_path: Path, redis_url: str, ls_url: str, env: dict[str, str]) -> None:
        label_studio = (ls_url, "not-a-real-token")
        self.env = settings_env(
            tmp_path, redis_url=redis_url, label_studio=label_studio, LABELLOOP_LOG_JSON="true", **env
        )
        self.stack = Stack(tmp_path, self.env)
        self.settings = make_settings(tmp_path, redis_url=redis_url, train_every_n=100)
        self.app = create_celery(self.settings)
        self.jobs = Jobs(self.settings, lambda name, args, queue: self.app.send_task(name, args=args, queue=queue))
        self.redis = redis_client(redis_url, "cli")
        self.progress = ProgressStore(self.redis)

    def start_run(self, project_id: int) -> str:
        """START_TRAINING for a project; returns the enqueued run id."""
        assert self.jobs.handle_event(project_id, "START_TRAINING", []) == "started"
        return bytes(self.redis.get(keys.training_lock(project_id)) or b"").decode()

    def building(self, project_id: int, run_id: str) -> dict[str, Any]:
        """Wait until a delivery of ``run_id`` is in its dataset build; its progress record (``pid``)."""
        record: dict[str, Any] = {}

        def started() -> bool:
            nonlocal record
            record = self.progress.get(project_id) or {}
            return record.get("run_id") == run_id and bool(record.get("pid"))

        wait_until(started, 90, f"a delivery of {run_id}", 0.1)
        return record

    def events(self, name: str, event: str) -> list[dict[str, Any]]:
        """The worker's JSON log lines of one event."""
        return [r for r in self.stack.events(name) if r.get("event") == event]


@pytest.fixture
def workers(
    tmp_path: Path, redis_url: str, hanging_label_studio: str, request: pytest.FixtureRequest
) -> Iterator[Workers]:
    env: dict[str, str] = getattr(request, "param", {})
    w = Workers(tmp_path, redis_url, hanging_label_studio, env)
    try:
        yield w
    finally:
        w.stack.stop_all()


# The broker's visibility timeout at 20 s instead of 45 (the whole worker's SIGKILL waits for it;
# the running delivery keeps its message fresh every 10 s, a third of the lock's TTL).
@pytest.mark.parametrize(
    "workers", [{"LABELLOOP_TRAIN_MAX_DELIVERIES": "1", "LABELLOOP_TRAIN_REDELIVERY_S": "20"}], indirect=True
)
@pytest.mark.parametrize("deploy", [False, True], ids=["sigkill", "sigterm-then-sigkill"])
def test_a_killed_worker_s_training_is_redelivered_within_a_minute_and_given_up_after_max(
    workers: Workers, deploy: bool
) -> None:
    """SIGKILL of the whole train worker mid-run (or SIGTERM to all its processes, then SIGKILL
    10 s later), then a new worker: the run is delivered again within a minute of the new worker
    being ready. A delivery that died with its worker counts: past train_max_deliveries (1) the
    run is given up (log, status record, metric) and the project is free. A delivery that shut
    down cleanly (SIGTERM) does not count: the run starts again."""
    workers.stack.start_worker("train")
    run_id = workers.start_run(21)
    first = workers.building(21, run_id)
    killed_at = time.monotonic()
    # SIGTERM makes the pool child exit (its run goes back to its queue: a shutdown is no outcome).
    workers.stack.stop("worker-train", sig=signal.SIGTERM if deploy else signal.SIGKILL, timeout_s=10)
    # Celery's shutdown may put it back in the queue; a SIGKILL alone leaves it unacknowledged.
    # (Under load the requeue of a warm shutdown may land just after the process is gone: poll.)
    # Exactly one copy: none is a lost delivery, two a duplicate. (A loaded machine may take more
    # than 10 s to requeue it; the failure says what was seen.)
    seen: list[tuple[int, int]] = []

    def kept() -> bool:
        seen.append((workers.redis.hlen("unacked"), workers.redis.llen(QUEUE_TRAIN)))
        return sum(seen[-1]) == 1

    try:
        wait_until(kept, 30, "the delivery kept (unacknowledged or back in its queue)", 0.1)
    except TimeoutError:
        pytest.fail(
            f"the delivery was not kept: (unacked, queued) last seen {seen[-5:]}; Redis keys "
            f"{sorted(k.decode() for k in workers.redis.keys('*'))}\n" + workers.stack.log_tail("worker-train", 8000)
        )
    metrics_port = free_port()
    workers.stack.start_worker("train", name="worker-train-new", args=["--metrics-port", str(metrics_port)])
    ready_at = time.monotonic()
    records = RunRecords(workers.redis)

    def redelivered() -> bool:
        if deploy:
            return (workers.progress.get(21) or {}).get("pid") not in (None, first["pid"])
        return records.given_up(21) is not None

    try:
        wait_until(redelivered, 90, "the redelivered run", 0.2)
    except TimeoutError:
        pytest.fail("not redelivered\n" + workers.stack.log_tail("worker-train-new"))
    redelivered_s, since_kill_s = time.monotonic() - ready_at, time.monotonic() - killed_at
    print(f"redelivered {redelivered_s:.1f} s after the new worker was ready ({since_kill_s:.1f} s after the kill)")
    assert redelivered_s < 60
    if deploy:
        assert workers.events("worker-train-new", "training_given_up") == [] and records.given_up(21) is None
        assert (workers.progress.get(21) or {}).get("run_id") == run_id, "the same run trains again"
        return
    # The run record is given up first; its log line, the run's end and the lock's release follow.
    wait_until(lambda: not workers.jobs.trigger().state(21).training, 30, "the given-up run's lock released", 0.1)
    [given_up] = workers.events("worker-train-new", "training_given_up")
    assert given_up["run_id"] == run_id and "1 deliveries died with their worker" in given_up["reason"]
    # The given-up run's delivery is acknowledged once the task returns, just after its log line.
    wait_until(lambda: workers.redis.hlen("unacked") == 0, 10, "the given-up delivery acknowledged", 0.1)

    def counted() -> bool:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
        return "labelloop_worker_trainings_given_up_total 1.0" in text

    wait_until(counted, 30, "the given-up metric")
    assert workers.start_run(21) != run_id, "the project trains again"


def test_a_second_delivery_of_a_running_training_waits_and_takes_over_when_the_first_dies(workers: Workers) -> None:
    """With two train workers, a copy of a running training's message (a duplicate delivery) goes
    to the idle worker, which finds the run's lease alive and waits without training (and without
    acknowledging: the first might still die); when the worker running the first delivery is
    SIGKILLed, the waiting delivery takes the run over within the lease's TTL."""
    names = ("worker-train", "worker-train-2")
    workers.stack.start_worker("train", name=names[0])
    workers.stack.start_worker("train", name=names[1])
    run_id = workers.start_run(22)
    first = workers.building(22, run_id)
    workers.app.send_task(TASK_TRAIN, args=[22, run_id], queue=QUEUE_TRAIN)

    def considered() -> bool:
        second_started = (workers.progress.get(22) or {}).get("pid") != first["pid"]
        return second_started or any(workers.events(n, "training_delivery_waiting") for n in names)

    try:
        wait_until(considered, 120, "the duplicate delivery", 0.5)
    except TimeoutError:
        pytest.fail("\n".join(workers.stack.log_tail(n) for n in names))
    assert (workers.progress.get(22) or {}).get("pid") == first["pid"], "the first delivery still runs alone"
    assert workers.redis.hget(keys.run(22, run_id), "started") == b"1"
    with open(f"/proc/{first['pid']}/stat") as stat:
        parent = int(stat.read().rsplit(")", 1)[1].split()[1])
    [running] = [n for n in names if workers.stack.procs[n].pid == parent]
    workers.stack.stop(running, sig=signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: workers.redis.hget(keys.run(22, run_id), "started") == b"2", 90, "the take-over", 0.2)
    print(f"taken over {time.monotonic() - killed_at:.1f} s after the kill")
    # The new delivery records its own process in the progress record right after it starts.
    wait_until(lambda: (workers.progress.get(22) or {}).get("pid") != first["pid"], 30, "the new delivery's progress")
    assert workers.redis.get(keys.training_lock(22)) == run_id.encode()


@pytest.mark.parametrize(
    "workers", [{"LABELLOOP_TRAIN_TIME_LIMIT_S": "10", "LABELLOOP_TRAIN_MAX_DELAY_S": "0"}], indirect=True
)
def test_a_build_over_the_time_limit_is_stopped_and_the_followup_starts(workers: Workers) -> None:
    """A run whose dataset build outlasts train_time_limit_s (10 s; Label Studio's client would
    wait 60 s; no quiet-period wait, which Celery's limits would include) meets the soft time
    limit: it is logged as failed, its lock released and the follow-up requested meanwhile
    starts, before Celery's hard limit would have killed it."""
    workers.stack.start_worker("train")
    run_id = workers.start_run(23)
    workers.building(23, run_id)
    assert workers.jobs.handle_event(23, "START_TRAINING", []) == "coalesced"
    started_at = time.monotonic()
    try:
        wait_until(
            lambda: workers.redis.get(keys.training_lock(23)) not in (None, run_id.encode()), 50, "the follow-up", 0.2
        )
    except TimeoutError:
        pytest.fail("no follow-up\n" + workers.stack.log_tail("worker-train"))
    print(f"follow-up started {time.monotonic() - started_at:.1f} s after the run's build began")
    wait_until(lambda: bool(workers.events("worker-train", "training_failed")), 30, "the failure logged")
    [failed, *_] = workers.events("worker-train", "training_failed")
    assert failed["run_id"] == run_id and failed["error_type"] == "TimeLimit"
    assert RunRecords(workers.redis).finished(23, run_id)


@pytest.mark.parametrize(
    "workers",
    [{"LABELLOOP_TRAIN_QUIET_S": "20", "LABELLOOP_TRAIN_MAX_DELAY_S": "60", "LABELLOOP_TRAIN_REDELIVERY_S": "10"}],
    indirect=True,
)
def test_a_run_waiting_for_a_quiet_period_keeps_its_delivery(workers: Workers) -> None:
    """A run started by annotations waits for its quiet period (20 s, twice the broker's visibility
    timeout of 10 s) in a real worker holding the project: its lease keeps the delivery fresh, so
    the idle second pool process never gets it again, and the run then goes on to its build."""
    workers.stack.start_worker("train", concurrency=2)
    decision = workers.jobs.trigger().apply(24, "annotation", n=1)
    assert decision.run_id
    workers.jobs.start_training(24, decision.run_id, "ANNOTATION_CREATED")
    stage = lambda: (workers.progress.get(24) or {}).get("stage")  # noqa: E731
    wait_until(lambda: stage() == "waiting for a quiet period", 60, "the run waiting", 0.1)
    waiting_at = time.monotonic()
    try:
        wait_until(lambda: stage() == "preparing", 60, "the build after the quiet period", 0.2)
    except TimeoutError:
        pytest.fail("no build\n" + workers.stack.log_tail("worker-train"))
    print(f"built {time.monotonic() - waiting_at:.1f} s after the wait began")
    assert time.monotonic() - waiting_at >= 15
    assert workers.redis.hget(keys.run(24, decision.run_id), "started") == b"1", "delivered once"
    assert workers.events("worker-train", "training_delivery_waiting") == []
    assert (
        workers.redis.llen(QUEUE_TRAIN) == 0 and workers.redis.get(keys.training_lock(24)) == decision.run_id.encode()
    )
    [absorbed] = workers.events("worker-train", "training_absorbed_pending")
    assert absorbed["run_id"] == decision.run_id and absorbed["waited_s"] >= 15
