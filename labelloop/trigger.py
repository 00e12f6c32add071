"""When to train: the trigger policy, as a pure function plus its Redis-backed state.

Rules:
- START_TRAINING trains now.
- Annotation events (created, updated, deleted) train once a project has ``n`` of them since
  the last training started.
- At most one training per project at a time (a lock key with a TTL); requests that arrive
  while one runs set a single follow-up flag, so a burst of events causes exactly one
  follow-up run.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Literal

import redis

from labelloop import keys

Event = Literal["annotation", "start_training", "finished"]


@dataclass(frozen=True)
class TriggerState:
    """Per-project trigger state.

    Attributes:
        pending: annotation events since the last training started.
        training: a training run holds the project's lock.
        followup: a training was requested while one ran.
    """

    pending: int = 0
    training: bool = False
    followup: bool = False


def decide(state: TriggerState, event: Event, n: int, count: int = 1) -> tuple[TriggerState, bool]:
    """Apply one event to the trigger state.

    Args:
        state: the state before the event.
        event: "annotation" (``count`` annotation events), "start_training", or "finished"
            (the running training ended, successfully or not).
        n: annotation events that make a training due.
        count: number of annotation events (a bulk delete counts each annotation).

    Returns:
        ``(new_state, start)``; ``start`` is True when a training run must start now.
    """
    if event == "annotation":
        state = replace(state, pending=state.pending + count)
        want = state.pending >= n
    elif event == "start_training":
        want = True
    elif event == "finished":
        want = state.followup or state.pending >= n
        state = replace(state, training=False, followup=False)
    else:  # pragma: no cover - Literal guards callers
        raise ValueError(f"unknown trigger event {event!r}")
    if not want:
        return state, False
    if state.training:
        return replace(state, followup=True), False
    return TriggerState(pending=0, training=True, followup=False), True


@dataclass(frozen=True)
class Decision:
    """What the trigger store decided for one event."""

    start: bool
    run_id: str | None
    state: TriggerState


class TriggerStore:
    """The trigger state of every project in Redis, updated atomically (WATCH/MULTI).

    Keys: ``labelloop:project:<id>:trigger`` (hash: pending, followup) and
    ``labelloop:project:<id>:training`` (the lock: the running run id, with a TTL longer
    than the training time limit, so a dead worker cannot hold it forever).
    """

    def __init__(self, client: redis.Redis, lock_ttl_s: int) -> None:
        self.redis = client
        self.lock_ttl_s = int(lock_ttl_s)

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

    def refresh_lock(self, project_id: int, run_id: str) -> bool:
        """Extend the training lock's TTL if ``run_id`` still holds it; returns whether it does."""
        _, lkey = self._keys(project_id)
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(lkey)
                if pipe.get(lkey) != run_id.encode():
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.expire(lkey, self.lock_ttl_s)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def apply(self, project_id: int, event: Event, n: int, count: int = 1, run_id: str | None = None) -> Decision:
        """Apply an event atomically; on "finished", only the lock holder ``run_id`` releases.

        Returns:
            the decision; when ``start`` is True the caller owns the lock under ``run_id``
            and must enqueue the training.
        """
        hkey, lkey = self._keys(project_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(hkey, lkey)
                    h = pipe.hgetall(hkey)
                    holder = pipe.get(lkey)
                    state = TriggerState(
                        pending=int(h.get(b"pending", 0)),
                        training=holder is not None,
                        followup=h.get(b"followup", b"0") == b"1",
                    )
                    if event == "finished" and holder is not None and holder != (run_id or "").encode():
                        # A stale finish (the lock expired and another run took it) changes nothing.
                        pipe.unwatch()
                        return Decision(False, None, state)
                    new, start = decide(state, event, n, count)
                    new_run = uuid.uuid4().hex[:12] if start else None
                    pipe.multi()
                    pipe.hset(hkey, mapping={"pending": new.pending, "followup": int(new.followup)})
                    if new_run is not None:
                        pipe.set(lkey, new_run, ex=self.lock_ttl_s)
                    elif not new.training:
                        pipe.delete(lkey)
                    pipe.execute()
                    return Decision(start, new_run, new)
                except redis.WatchError:
                    continue
