"""When to train: the trigger policy, as pure functions (no I/O; ``labelloop.jobs.trigger``
keeps their state in Redis).

Rules:
- START_TRAINING trains now.
- Annotation events (created, updated, deleted) train once a project has ``n`` of them since
  the last training started.
- At most one training per project at a time (a lock key with a TTL); requests that arrive
  while one runs set a single follow-up flag, so a burst of events causes exactly one
  follow-up run.
- A follow-up flag left with no training running (the run could not be sent to the broker)
  makes the next annotation event start one.

A due training waits for a quiet period before it reads the data (``quiet_wait``): until no
annotation event arrived for ``quiet_s`` seconds, at most ``max_delay_s`` after it became due
(enqueued), and not at all when START_TRAINING asked for it. The waiting delivery has claimed the
project (its ``RunLease`` keeps the lock and the broker delivery alive), so a burst of
annotations during the wait only counts up ``pending``; when the wait ends, the run absorbs them
(``TriggerStore.absorb``: ``pending`` and the follow-up flag reset, only while the run still
holds the lock) right before it reads the data. A burst of 20 annotations with ``n`` = 10 makes
one training, not a training and a follow-up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

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
        # A follow-up flagged while no run holds the project (its run could not be sent) is due.
        want = state.pending >= n or (state.followup and not state.training)
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
class Waiting:
    """What the quiet-period wait of a due run looks at (times in Redis server seconds since the epoch).

    Attributes:
        now: the current time.
        due_at: when the run (or its predecessor's follow-up) became due; None when unknown
            (Redis lost the trigger hash).
        last_annotation_at: when the last annotation event was applied; None if none yet.
        urgent: START_TRAINING asked for the run (or, during a run, for its follow-up).
    """

    now: float
    due_at: float | None = None
    last_annotation_at: float | None = None
    urgent: bool = False


def quiet_wait(waiting: Waiting, quiet_s: float, max_delay_s: float) -> float:
    """Seconds a due training should still wait before it reads the data; 0 means build now.

    Rules: no wait when START_TRAINING asked for the run, when either setting is 0, or when the
    due time or the last annotation is unknown; else wait until ``quiet_s`` passed since the last
    annotation, but never past ``max_delay_s`` after the run became due (a continuous stream of
    annotations cannot hold a training back longer than that).

    Args:
        waiting: the run's times.
        quiet_s: the quiet period (seconds, ``LABELLOOP_TRAIN_QUIET_S``).
        max_delay_s: the longest wait from ``due_at`` (seconds, ``LABELLOOP_TRAIN_MAX_DELAY_S``).

    Returns:
        seconds, >= 0, never more than ``max_delay_s``.
    """
    if waiting.urgent or quiet_s <= 0 or max_delay_s <= 0:
        return 0.0
    if waiting.due_at is None or waiting.last_annotation_at is None:
        return 0.0
    quiet_left = waiting.last_annotation_at + quiet_s - waiting.now
    delay_left = waiting.due_at + max_delay_s - waiting.now
    return max(0.0, min(quiet_left, delay_left, max_delay_s))
