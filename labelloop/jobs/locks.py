"""Which project's training lock has a live owner, read from Redis without Celery.

A project's lock (``keys.training_lock``: the run id) lives while one of these holds it:

- a delivery runs the run: ``training:owner`` exists (``TriggerStore.claim``, renewed by
  ``labelloop.jobs.lease.RunLease`` every third of ``LABELLOOP_TRAIN_LOCK_TTL_S``);
- the run's Celery message waits: in the train queue's lists or in kombu's ``unacked`` hash
  (``labelloop.jobs.broker``) (handed to a worker: a delivery about to claim, a retry holding its
  countdown, a duplicate waiting for the running delivery).

Anything else (the message revoked in Flower, purged, never sent; a run that ended without
releasing) leaves a lock without owner: the queued lock's own TTL is a day. ``inspect`` reads
the lock, the owner and both kombu structures in one MULTI, so a message moving between the
queue and ``unacked`` (a delivery, a restore) is seen on one side; only the instant between
kombu's BRPOP and its ``unacked`` write is invisible, and ``reap`` also waits until
the run has been due ``LABELLOOP_TRAIN_LOCK_ORPHAN_S``. ``reap`` frees such a lock (the
reconciliation calls it through ``labelloop.jobs.reconcile.Reconciliation.reap_lock``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis
import structlog

from labelloop import keys
from labelloop.jobs import broker
from labelloop.jobs.lease import RunRecords
from labelloop.jobs.trigger import TriggerStore
from labelloop.names import QUEUE_TRAIN

log = structlog.get_logger(__name__)

# ``TriggerStore.apply``'s owner when no delivery releases (the reaper): a claimed lock stays.
NO_DELIVERY = ""


@dataclass(frozen=True)
class LockView:
    """One project's training lock as ``inspect`` read it.

    Attributes:
        project_id: the project.
        run_id: the run the lock names.
        owner: a delivery holds the lock (``training:owner`` exists).
        message: where the run's Celery message is: "queued", "delivered" (in ``unacked``) or None.
        due_s: seconds since the run became due (the trigger hash's ``due_at``, Redis' clock);
            None when unknown.
    """

    project_id: int
    run_id: str
    owner: bool
    message: str | None
    due_s: float | None

    def without_owner(self, grace_s: float) -> bool:
        """No delivery holds the lock and no message of its run waits, and the run has been due
        longer than ``grace_s`` seconds (or since an unknown time)."""
        if self.owner or self.message is not None:
            return False
        return self.due_s is None or self.due_s > grace_s


def inspect(client: redis.Redis, project_id: int, queue: str = QUEUE_TRAIN) -> LockView | None:
    """Read one project's training lock and who holds it; None when no lock is held.

    Reads the train queue's lists and kombu's ``unacked`` hash whole (``labelloop.jobs.broker``).

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    with client.pipeline(transaction=True) as pipe:
        pipe.get(keys.training_lock(project_id))
        pipe.exists(keys.training_owner(project_id))
        pipe.hget(keys.trigger(project_id), "due_at")
        pipe.time()
        broker.read_waiting(pipe, queue)
        holder, owner, due_at, now, *waiting = pipe.execute()
    if holder is None:
        return None
    run_id = holder.decode()
    message = broker.place(waiting, project_id, run_id)
    due_s = now[0] + now[1] / 1e6 - float(due_at) if due_at is not None else None
    return LockView(project_id, run_id, bool(owner), message, due_s)


def without_owner(client: redis.Redis, projects: Iterable[int], grace_s: float) -> list[LockView]:
    """The locks of ``projects`` that have no live owner past ``grace_s`` (``LockView.without_owner``).

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    projects = sorted(projects)
    with client.pipeline(transaction=False) as pipe:
        for p in projects:
            pipe.exists(keys.training_lock(p))
        held = [p for p, lock in zip(projects, pipe.execute(), strict=True) if lock]
    views = (inspect(client, p) for p in held)  # the queues are read only for a held lock
    return [v for v in views if v is not None and v.without_owner(grace_s)]


@dataclass(frozen=True)
class Reaped:
    """What ``reap`` did: ``what`` "reaped" (a lock without owner released; ``run_id`` its run)
    or "restarted" (a flagged follow-up made due; ``run_id`` the new run); ``start``: the run id
    the caller must send now, or None."""

    what: str
    run_id: str
    start: str | None


def reap(client: redis.Redis, trigger: TriggerStore, project_id: int, grace_s: float, n: int) -> Reaped | None:
    """Free the project's lock when nothing keeps it alive, and decide the training then due.

    A lock without owner (``LockView.without_owner(grace_s)``) is released as if its run finished
    (event ``training_lock_reaped``): the run is marked finished, so a late copy of its message
    does nothing, and recorded as given up for ``labelloop status``; a delivery that claimed it
    meanwhile keeps it (the release is then a stale finish). The trigger policy then starts the
    follow-up if one was requested. A project with no lock whose follow-up flag is set (its run
    could not be sent, ``TriggerStore.unsent``) gets that training.

    Args:
        n: the project's ``train_every_n`` (annotation events that make a training due).

    Returns:
        what was done, or None when nothing was to do.

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    view = inspect(client, project_id)
    if view is None:
        if not trigger.state(project_id).followup:
            return None
        decision = trigger.apply(project_id, "finished", n)
        if not (decision.start and decision.run_id):
            return None
        log.info("training_followup_restarted", project_id=project_id, run_id=decision.run_id)
        return Reaped("restarted", decision.run_id, decision.run_id)
    if not view.without_owner(grace_s):
        return None
    due = "an unknown time" if view.due_s is None else f"{view.due_s:.0f} s"
    reason = f"its message was lost (revoked, purged or never sent) and no delivery held it; due {due} ago"
    log.error("training_lock_reaped", project_id=project_id, run_id=view.run_id, reason=reason)
    records = RunRecords(client)
    records.finish(project_id, view.run_id)
    records.give_up(project_id, view.run_id, 0, reason)
    decision = trigger.apply(project_id, "finished", n, run_id=view.run_id, owner=NO_DELIVERY)
    return Reaped("reaped", view.run_id, decision.run_id if decision.start else None)
