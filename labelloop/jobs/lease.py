"""A training run's hold on its project while it runs, and what each delivery of a run did.

``RunLease`` renews the project's lock (``TriggerStore.renew``) from a background thread for the
whole run, from the dataset build to publishing, and calls ``keepalive`` (the worker keeps its
broker delivery fresh there) on the same beat. When a renewal finds the lock taken by another
run or delivery, ``lost`` is set and the run must stop without publishing.

``renewed_lock``: a redis-py ``Lock`` with a short timeout, renewed from a daemon thread while
held, whose release never raises: a holder that loses Redis mid-way (or dies) leaves the key for
at most one timeout, not for as long as the longest job it guards could take.

``RunRecords``: per run id, how many deliveries started it (a delivery that ends, whatever its
outcome, marks the run finished; one that dies with its worker does not), so a run whose
deliveries keep killing their worker is given up after ``train_max_deliveries``, and a delivery
of a finished run does nothing.

Keys: ``labelloop:project:<id>:run:<run_id>`` (hash: ``started``, ``finished``; a day's TTL) and
``labelloop:project:<id>:given_up`` (JSON of the last given-up run; a week's TTL).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypedDict, cast

import redis
import structlog

from labelloop import keys
from labelloop.jobs.trigger import TriggerStore

log = structlog.get_logger(__name__)

RUN_TTL_S = 86400
GIVEN_UP_TTL_S = 7 * 86400


class RunLease:
    """Renew ``run_id``'s claimed lock every ``interval_s`` seconds in a daemon thread.

    Args:
        store: the trigger store holding the lock.
        project_id, run_id, owner: what ``TriggerStore.claim`` claimed.
        interval_s: seconds between renewals (a third of the lock's TTL).
        keepalive: called after each successful renewal (errors are logged, not raised).
    """

    def __init__(
        self,
        store: TriggerStore,
        project_id: int,
        run_id: str,
        owner: str,
        interval_s: float,
        keepalive: Callable[[], None] | None = None,
    ) -> None:
        self.store, self.project_id, self.run_id, self.owner = store, project_id, run_id, owner
        self.interval_s = float(interval_s)
        self.keepalive = keepalive
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id}", daemon=True)

    def __enter__(self) -> RunLease:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def beat(self) -> None:
        """Renew once; set ``lost`` when another run or delivery holds the lock."""
        try:
            held = self.store.renew(self.project_id, self.run_id, self.owner)
        except redis.RedisError as exc:  # Redis away for a moment: the lock's TTL covers it
            log.warning("training_lock_renewal_failed", error_type=type(exc).__name__, error=str(exc)[:200])
            return
        if not held:
            if not self.lost.is_set():
                log.error("training_lock_lost", project_id=self.project_id, run_id=self.run_id)
            self.lost.set()
            return
        if self.keepalive is not None:
            try:
                self.keepalive()
            except Exception as exc:  # the lock is what matters; the broker entry is best effort
                log.warning("training_keepalive_failed", error_type=type(exc).__name__, error=str(exc)[:200])

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s) and not self.lost.is_set():
            self.beat()


@contextlib.contextmanager
def renewed_lock(client: redis.Redis, name: str, timeout_s: float) -> Iterator[bool]:
    """Hold the Redis lock ``name`` (redis-py ``Lock``: SET NX PX with a token) without blocking.

    Yields True when this caller holds it (renewed to ``timeout_s`` every third of it from a daemon
    thread until the block ends), False when someone else does. Leaving the block releases it; a
    release or renewal that Redis refuses (unreachable, restarted) is logged, never raised: the key
    then lapses ``timeout_s`` seconds after its last renewal.

    Raises:
        redis.RedisError: Redis is unreachable when taking the lock.
    """
    lock = client.lock(name, timeout=timeout_s, blocking=False, thread_local=False)  # renewed from a thread
    if not lock.acquire():
        yield False
        return
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(timeout_s / 3):
            try:
                lock.reacquire()
            except (redis.RedisError, redis.exceptions.LockError) as exc:
                log.warning("lock_renewal_failed", lock=name, error_type=type(exc).__name__, error=str(exc)[:200])

    thread = threading.Thread(target=renew, name=f"lock-{name}", daemon=True)
    thread.start()
    try:
        yield True
    finally:
        stop.set()
        thread.join(timeout=5)
        try:
            lock.release()
        except (redis.RedisError, redis.exceptions.LockError) as exc:
            log.warning("lock_release_failed", lock=name, error_type=type(exc).__name__, error=str(exc)[:200])


class GivenUp(TypedDict):
    """The last given-up run of a project: its ``run_id``, the ``deliveries`` that died with their
    worker (0: it never ran: its message was lost or could not be sent), the ``reason`` shown by
    ``labelloop status`` and when (``at``, epoch seconds)."""

    run_id: str
    deliveries: int
    reason: str
    at: float


class RunRecords:
    """Deliveries and outcome of training runs, and the last given-up run of each project."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def finished(self, project_id: int, run_id: str) -> bool:
        return self.redis.hget(keys.run(project_id, run_id), "finished") == b"1"

    def started(self, project_id: int, run_id: str) -> int:
        """Count one more delivery that started ``run_id``; returns the count, this one included."""
        key = keys.run(project_id, run_id)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, "started", 1)
            pipe.expire(key, RUN_TTL_S)
            count, _ = pipe.execute()
        return int(count)

    def ended_without_outcome(self, project_id: int, run_id: str) -> None:
        """A delivery ended cleanly and hands the run to its retry: it does not count as one that died."""
        self.redis.hincrby(keys.run(project_id, run_id), "started", -1)

    def finish(self, project_id: int, run_id: str) -> None:
        key = keys.run(project_id, run_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, "finished", 1)
            pipe.expire(key, RUN_TTL_S)
            pipe.execute()

    def give_up(self, project_id: int, run_id: str, deliveries: int, reason: str) -> GivenUp:
        """Record that ``run_id`` was given up; returns the record (also ``given_up``'s)."""
        record: GivenUp = {"run_id": run_id, "deliveries": deliveries, "reason": reason, "at": time.time()}
        self.redis.set(keys.given_up(project_id), json.dumps(record), ex=GIVEN_UP_TTL_S)
        return record

    def given_up(self, project_id: int) -> GivenUp | None:
        """The project's last given-up run, or None (none in the last week)."""
        raw = self.redis.get(keys.given_up(project_id))
        return cast(GivenUp, json.loads(raw)) if raw else None
