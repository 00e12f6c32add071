"""The trigger policy's state in Redis (``labelloop.jobs.policy`` decides; this applies its
decisions atomically) and the project's training lock.

The lock is taken for a run when it is enqueued (with ``queued_ttl_s``, long enough for any
queue wait) and claimed by the delivery that runs it (``claim``: the run's id plus an owner
token per delivery, both with the short ``run_ttl_s`` that ``labelloop.jobs.lease`` renews for the
whole run). So a queued run keeps its project, a second delivery of a running run does not
start a second training, and a dead worker's lock is free ``run_ttl_s`` after it died.

When only the owner's key expired (Redis paused or unreachable for longer than ``run_ttl_s``
while the delivery went on), the delivery takes its run back on its next renewal, absorb or
requeue: the lock still names its run and no other delivery claimed it. A lock that lost its
queued message (revoked, purged, never sent) is found and reaped by ``labelloop.jobs.locks`` and
``labelloop.jobs.reconcile``; a run that could not be sent hands its project back with the follow-up
flag set (``unsent``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

import redis
import structlog
from redis.typing import EncodableT, FieldT

from labelloop import keys
from labelloop.jobs.policy import Event, TriggerState, Waiting, decide

log = structlog.get_logger(__name__)

Claim = Literal["claimed", "busy", "superseded"]


@dataclass(frozen=True)
class Decision:
    """What the trigger store decided for one event."""

    start: bool
    run_id: str | None
    state: TriggerState


class TriggerStore:
    """The trigger state of every project in Redis, updated atomically (WATCH/MULTI).

    Keys: ``labelloop:project:<id>:trigger`` (hash: pending, followup; and for the quiet-period
    wait ``last_annotation_at``, ``due_at`` and ``urgent``, times in Redis server seconds),
    ``labelloop:project:<id>:training`` (the lock: the queued or running run id) and
    ``labelloop:project:<id>:training:owner`` (the token of the delivery running it).

    Args:
        client: Redis.
        lock_ttl_s: TTL of the lock of an enqueued run (seconds; its longest queue wait).
        run_ttl_s: TTL of the owner of a claimed lock (seconds), renewed while the run runs.
    """

    def __init__(self, client: redis.Redis, lock_ttl_s: int, run_ttl_s: int = 30) -> None:
        self.redis = client
        self.lock_ttl_s = int(lock_ttl_s)
        self.run_ttl_s = int(run_ttl_s)

    @staticmethod
    def _keys(project_id: int) -> tuple[str, str]:
        return keys.trigger(project_id), keys.training_lock(project_id)

    def state(self, project_id: int) -> TriggerState:
        """Read the current state (not atomic with later updates; for status displays)."""
        hkey, lkey = self._keys(project_id)
        h = self.redis.hgetall(hkey)
        return TriggerState(
            pending=int(h.get(b"pending", 0)),
            training=bool(self.redis.exists(lkey)),
            followup=h.get(b"followup", b"0") == b"1",
        )

    def claim(self, project_id: int, run_id: str, owner: str) -> Claim:
        """Take the project's lock for one delivery of ``run_id`` (token ``owner``).

        Returns:
            "claimed" (the owner now expires ``run_ttl_s`` from now unless renewed; the lock keeps
            ``lock_ttl_s``, so when this delivery dies the project stays the run's and its
            redelivery claims it, rather than a new run starting and the redelivery finding
            itself superseded),
            "busy" (another delivery of this run holds it and is alive) or "superseded"
            (another run holds the project: this one must not train).
        """
        _, lkey = self._keys(project_id)
        okey = keys.training_owner(project_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(lkey, okey)
                    holder, current = pipe.get(lkey), pipe.get(okey)
                    if holder is not None and holder != run_id.encode():
                        pipe.unwatch()
                        return "superseded"
                    if current is not None and current != owner.encode():
                        pipe.unwatch()
                        return "busy"
                    pipe.multi()
                    # The lock stays the run's (queued TTL) if this delivery dies: only the
                    # owner expires, so the redelivery of the same run claims it again.
                    pipe.set(lkey, run_id, ex=self.lock_ttl_s)
                    pipe.set(okey, owner, ex=self.run_ttl_s)
                    pipe.execute()
                    return "claimed"
                except redis.WatchError:
                    continue

    def renew(self, project_id: int, run_id: str, owner: str) -> bool:
        """Extend a claim: the owner by ``run_ttl_s``, the lock by ``lock_ttl_s``; returns whether
        ``run_id``/``owner`` still hold it.

        When the owner's key expired while the lock still names ``run_id`` (Redis was paused or
        unreachable longer than ``run_ttl_s``) and no other delivery claimed it meanwhile, the
        claim is taken back (event ``training_lock_taken_back``) and this returns True."""
        _, lkey = self._keys(project_id)
        okey = keys.training_owner(project_id)
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(lkey, okey)
                current = pipe.get(okey)
                if pipe.get(lkey) != run_id.encode() or current not in (None, owner.encode()):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.expire(lkey, self.lock_ttl_s)
                pipe.set(okey, owner, ex=self.run_ttl_s)
                pipe.execute()
            except redis.WatchError:
                return False
        if current is None:
            log.warning("training_lock_taken_back", project_id=project_id, run_id=run_id)
        return True

    def _holds(self, pipe: redis.client.Pipeline, project_id: int, run_id: str, owner: str) -> bool:
        """Inside WATCH: whether ``run_id`` holds the lock and ``owner`` is its delivery, or no
        delivery is (the owner's key expired: the caller takes it back)."""
        current = pipe.get(keys.training_owner(project_id))
        return pipe.get(keys.training_lock(project_id)) == run_id.encode() and current in (None, owner.encode())

    def requeue(self, project_id: int, run_id: str, owner: str) -> bool:
        """Hand a claimed lock back to the queued run (a retry will claim it again): the lock
        gets ``lock_ttl_s`` and the owner goes. Returns whether ``owner`` still held it (or its
        expired key was not replaced by another delivery's)."""
        _, lkey = self._keys(project_id)
        okey = keys.training_owner(project_id)
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(lkey, okey)
                if not self._holds(pipe, project_id, run_id, owner):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.set(lkey, run_id, ex=self.lock_ttl_s)
                pipe.delete(okey)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def apply(
        self, project_id: int, event: Event, n: int, count: int = 1, run_id: str | None = None, owner: str | None = None
    ) -> Decision:
        """Apply an event atomically; on "finished", only the lock holder ``run_id`` (and, when
        given, its delivery ``owner``) releases.

        Returns:
            the decision; when ``start`` is True the caller owns the lock under ``run_id``
            and must enqueue the training.
        """
        hkey, lkey = self._keys(project_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    okey = keys.training_owner(project_id)
                    pipe.watch(hkey, lkey, okey)
                    h = pipe.hgetall(hkey)
                    holder, current = pipe.get(lkey), pipe.get(okey)
                    state = TriggerState(
                        pending=int(h.get(b"pending", 0)),
                        training=holder is not None,
                        followup=h.get(b"followup", b"0") == b"1",
                    )
                    stale_owner = owner is not None and current is not None and current != owner.encode()
                    if (
                        event == "finished"
                        and holder is not None
                        and (holder != (run_id or "").encode() or stale_owner)
                    ):
                        # A stale finish (the lock expired and another run or delivery took it) changes nothing.
                        pipe.unwatch()
                        return Decision(False, None, state)
                    new, start = decide(state, event, n, count)
                    new_run = uuid.uuid4().hex[:12] if start else None
                    now = _seconds(pipe.time())
                    fields: dict[FieldT, EncodableT] = {"pending": new.pending, "followup": int(new.followup)}
                    if event == "annotation":
                        fields["last_annotation_at"] = now
                    if event == "start_training":
                        fields["urgent"] = 1  # this run, or the running one's follow-up, must not wait
                    elif new_run is not None and event == "annotation":
                        fields["urgent"] = 0
                    if new_run is not None:
                        fields["due_at"] = now
                    pipe.multi()
                    pipe.hset(hkey, mapping=fields)
                    if new_run is not None:
                        pipe.set(lkey, new_run, ex=self.lock_ttl_s)
                        pipe.delete(okey)
                    elif not new.training:
                        pipe.delete(lkey, okey)
                    pipe.execute()
                    return Decision(start, new_run, new)
                except redis.WatchError:
                    continue

    def unsent(self, project_id: int, run_id: str) -> bool:
        """Hand back the project of a run whose message could not be sent: the lock goes (only
        while ``run_id`` holds it and no delivery claimed it) and the follow-up flag is set, so
        the reconciliation (``labelloop.jobs.reconcile``) or the next event starts the training again.
        Returns whether the lock was released."""
        hkey, lkey = self._keys(project_id)
        okey = keys.training_owner(project_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(lkey, okey)
                    if pipe.get(lkey) != run_id.encode() or pipe.exists(okey):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(hkey, "followup", 1)
                    pipe.delete(lkey)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def waiting(self, project_id: int) -> Waiting:
        """The times ``quiet_wait`` decides on, with Redis' clock as ``now`` (one clock for every host)."""
        hkey, _ = self._keys(project_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(hkey, ["due_at", "last_annotation_at", "urgent"])
            pipe.time()
            (due_at, last, urgent), now = pipe.execute()
        return Waiting(
            now=_seconds(now),
            due_at=float(due_at) if due_at is not None else None,
            last_annotation_at=float(last) if last is not None else None,
            urgent=urgent == b"1",
        )

    def absorb(self, project_id: int, run_id: str, owner: str) -> TriggerState | None:
        """A run that is about to read the data takes over what is pending: ``pending``, the
        follow-up flag and ``urgent`` reset in one transaction, only while ``run_id``/``owner``
        hold the lock.

        Why nothing is lost: the receiver records an annotation webhook (in the change log, and
        Label Studio saved it before sending) before the events worker applies it here, so every
        event counted before this reset is in the data the run reads after it. An event applied
        after the reset counts towards the next training whether or not the build saw it: at
        worst the few events applied between this reset and the build's read are counted once
        more (a next training a little early), never a follow-up lost for data the build missed.
        Call it before the build reads anything.

        Returns:
            the state absorbed (``pending``, ``followup`` before the reset), or None when this
            delivery no longer holds the lock (nothing changed).
        """
        hkey, lkey = self._keys(project_id)
        okey = keys.training_owner(project_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(hkey, lkey, okey)
                    if not self._holds(pipe, project_id, run_id, owner):
                        pipe.unwatch()
                        return None
                    h = pipe.hgetall(hkey)
                    absorbed = TriggerState(
                        pending=int(h.get(b"pending", 0)), training=True, followup=h.get(b"followup", b"0") == b"1"
                    )
                    pipe.multi()
                    pipe.hset(hkey, mapping={"pending": 0, "followup": 0, "urgent": 0})
                    pipe.set(okey, owner, ex=self.run_ttl_s)
                    pipe.execute()
                    return absorbed
                except redis.WatchError:
                    continue


def _seconds(reply: tuple[int, int]) -> float:
    """Redis ``TIME`` (seconds, microseconds) as float seconds."""
    return reply[0] + reply[1] / 1e6
