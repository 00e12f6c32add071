"""The trigger policy: pure decisions, and the Redis-backed store under concurrency."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from labelloop.jobs.policy import TriggerState, Waiting, decide, quiet_wait
from labelloop.jobs.trigger import TriggerStore

IDLE = TriggerState()


@pytest.mark.parametrize(
    ("state", "event", "n", "expected", "start"),
    [
        (IDLE, "annotation", 3, TriggerState(pending=1), False),
        (TriggerState(followup=True), "annotation", 3, TriggerState(training=True), True),
        (TriggerState(pending=2), "annotation", 3, TriggerState(training=True), True),
        (IDLE, "start_training", 10, TriggerState(training=True), True),
        (
            TriggerState(pending=5, training=True),
            "start_training",
            10,
            TriggerState(pending=5, training=True, followup=True),
            False,
        ),
        (
            TriggerState(pending=9, training=True),
            "annotation",
            10,
            TriggerState(pending=10, training=True, followup=True),
            False,
        ),
        (TriggerState(pending=3, training=True), "finished", 10, TriggerState(pending=3), False),
        (
            TriggerState(pending=3, training=True, followup=True),
            "finished",
            10,
            TriggerState(training=True),
            True,
        ),
        (TriggerState(pending=12, training=True), "finished", 10, TriggerState(training=True), True),
    ],
)
def test_decide(state: TriggerState, event: str, n: int, expected: TriggerState, start: bool) -> None:
    """Each event moves the state as the policy says and starts training only when due and idle."""
    assert decide(state, event, n) == (expected, start)  # type: ignore[arg-type]


def test_bulk_delete_counts_each_annotation() -> None:
    """A bulk event of `count` annotations counts `count` times towards N."""
    assert decide(IDLE, "annotation", 3, count=3) == (TriggerState(training=True), True)


@pytest.mark.parametrize(
    ("waiting", "quiet_s", "max_delay_s", "expected"),
    [
        # Due at 100, last annotation at 104, now 105: 15 s of quiet leave 14 s.
        (Waiting(now=105, due_at=100, last_annotation_at=104), 15, 90, 14.0),
        # Quiet long enough: build now.
        (Waiting(now=120, due_at=100, last_annotation_at=104), 15, 90, 0.0),
        # A stream of annotations: the max delay from due_at bounds the wait (190 - 185).
        (Waiting(now=185, due_at=100, last_annotation_at=184.5), 15, 90, 5.0),
        (Waiting(now=195, due_at=100, last_annotation_at=194.5), 15, 90, 0.0),
        # START_TRAINING asked for it (or for the running one's follow-up): never waits.
        (Waiting(now=105, due_at=100, last_annotation_at=104, urgent=True), 15, 90, 0.0),
        # 0 turns the wait off.
        (Waiting(now=105, due_at=100, last_annotation_at=104), 0, 90, 0.0),
        (Waiting(now=105, due_at=100, last_annotation_at=104), 15, 0, 0.0),
        # Unknown times (Redis lost the trigger hash; no annotation ever): no wait.
        (Waiting(now=105, due_at=None, last_annotation_at=104), 15, 90, 0.0),
        (Waiting(now=105, due_at=100, last_annotation_at=None), 15, 90, 0.0),
        # A clock that moved back never makes a wait longer than the max delay.
        (Waiting(now=50, due_at=100, last_annotation_at=104), 200, 90, 90.0),
        # A run redelivered long after it became due (its worker died) waits no more.
        (Waiting(now=400, due_at=100, last_annotation_at=399), 15, 90, 0.0),
    ],
)
def test_quiet_wait(waiting: Waiting, quiet_s: float, max_delay_s: float, expected: float) -> None:
    """A due training waits for quiet_s without annotations, never past max_delay_s after it
    became due, and not at all when START_TRAINING asked for it or the wait is off."""
    assert quiet_wait(waiting, quiet_s, max_delay_s) == pytest.approx(expected)


def test_the_store_records_the_times_the_wait_decides_on(redis_url: str) -> None:
    """Annotation events stamp the last annotation and a run they start its due time (Redis'
    clock) and are not urgent; START_TRAINING, also during a run, marks the run urgent."""
    client = redis.Redis.from_url(redis_url)
    store = TriggerStore(client, lock_ttl_s=60)
    assert store.waiting(2).due_at is None and store.waiting(2).last_annotation_at is None
    store.apply(2, "annotation", n=2)
    first = store.waiting(2)
    assert first.last_annotation_at is not None and first.due_at is None
    assert abs(first.now - time.time()) < 5
    started = store.apply(2, "annotation", n=2)
    due = store.waiting(2)
    assert started.start and due.due_at is not None and due.due_at >= first.last_annotation_at and not due.urgent
    store.apply(2, "start_training", n=2)
    assert store.waiting(2).urgent and store.waiting(2).due_at == due.due_at, "coalesced: the run stays due as it was"


def test_absorb_resets_pending_only_for_the_lock_holder(redis_url: str) -> None:
    """A run about to read the data absorbs the pending count, the follow-up flag and the
    urgency, but only while its delivery holds the lock; events applied afterwards count again."""
    client = redis.Redis.from_url(redis_url)
    store = TriggerStore(client, lock_ttl_s=60)
    run = store.apply(3, "start_training", n=3)
    assert run.run_id and store.claim(3, run.run_id, "mine") == "claimed"
    for _ in range(4):
        store.apply(3, "annotation", n=3)
    assert store.state(3) == TriggerState(pending=4, training=True, followup=True)
    assert store.absorb(3, run.run_id, "another-delivery") is None
    assert store.absorb(3, "another-run", "mine") is None
    assert store.state(3).pending == 4, "a delivery that does not hold the lock changes nothing"
    absorbed = store.absorb(3, run.run_id, "mine")
    assert absorbed == TriggerState(pending=4, training=True, followup=True)
    assert store.state(3) == TriggerState(training=True) and not store.waiting(3).urgent
    store.apply(3, "annotation", n=3)
    assert store.state(3).pending == 1
    assert not store.apply(3, "finished", n=3, run_id=run.run_id, owner="mine").start, "nothing left to follow up"


def test_events_during_training_cause_exactly_one_followup(redis_url: str) -> None:
    """Fifty concurrent START_TRAINING events during a training lead to one follow-up run."""
    store = TriggerStore(redis.Redis.from_url(redis_url), lock_ttl_s=60)
    first = store.apply(7, "start_training", n=10)
    assert first.start and first.run_id
    with ThreadPoolExecutor(8) as pool:
        decisions = list(pool.map(lambda _: store.apply(7, "start_training", n=10), range(50)))
    assert not any(d.start for d in decisions)
    done = store.apply(7, "finished", n=10, run_id=first.run_id)
    assert done.start and done.run_id != first.run_id
    again = store.apply(7, "finished", n=10, run_id=done.run_id)
    assert not again.start
    assert store.state(7) == TriggerState()


def test_n_annotation_events_start_one_training(redis_url: str) -> None:
    """Exactly one of N concurrent annotation events starts the training."""
    store = TriggerStore(redis.Redis.from_url(redis_url), lock_ttl_s=60)
    with ThreadPoolExecutor(8) as pool:
        decisions = list(pool.map(lambda _: store.apply(3, "annotation", n=10), range(10)))
    assert sum(d.start for d in decisions) == 1
    assert store.state(3) == TriggerState(pending=0, training=True)


def test_stale_finish_does_not_release_another_runs_lock(redis_url: str) -> None:
    """A finish from a run that no longer holds the lock changes nothing."""
    store = TriggerStore(redis.Redis.from_url(redis_url), lock_ttl_s=60)
    run = store.apply(1, "start_training", n=10)
    stale = store.apply(1, "finished", n=10, run_id="not-the-holder")
    assert not stale.start
    assert store.state(1).training
    assert run.run_id


def test_only_the_claiming_delivery_renews_the_lock(redis_url: str) -> None:
    """The delivery that claimed a run's lock extends its TTL; another run id or another delivery
    of the same run cannot."""
    client = redis.Redis.from_url(redis_url)
    store = TriggerStore(client, lock_ttl_s=100, run_ttl_s=40)
    run = store.apply(4, "start_training", n=10)
    assert run.run_id and store.claim(4, run.run_id, "owner-a") == "claimed"
    client.expire("labelloop:project:4:training", 5)
    assert not store.renew(4, "someone-else", "owner-a")
    assert not store.renew(4, run.run_id, "owner-b")
    assert client.ttl("labelloop:project:4:training") <= 5
    assert store.renew(4, run.run_id, "owner-a")
    assert client.ttl("labelloop:project:4:training") > 30


def test_a_queued_run_keeps_its_lock_and_one_delivery_claims_it(redis_url: str) -> None:
    """An enqueued run holds its project with the long queued TTL; its first delivery claims it
    (short TTL), a second delivery of it is "busy" while the claim lives and claims it once the
    claim expired (its worker died); another run is "superseded"."""
    client = redis.Redis.from_url(redis_url)
    store = TriggerStore(client, lock_ttl_s=86400, run_ttl_s=1)
    run = store.apply(5, "start_training", n=10)
    assert run.run_id and client.ttl("labelloop:project:5:training") > 3600
    assert store.claim(5, run.run_id, "first") == "claimed"
    assert store.claim(5, run.run_id, "second") == "busy"
    assert store.claim(5, "another-run", "third") == "superseded"
    deadline = time.monotonic() + 10
    while client.exists("labelloop:project:5:training:owner") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.claim(5, run.run_id, "second") == "claimed"
    assert not store.apply(5, "finished", n=10, run_id=run.run_id, owner="first").start
    assert store.state(5).training, "a finish from a replaced delivery releases nothing"
    store.apply(5, "finished", n=10, run_id=run.run_id, owner="second")
    assert store.state(5) == TriggerState()


def test_requeue_hands_the_lock_back_to_the_queued_run(redis_url: str) -> None:
    """After a transient failure the delivery hands its claim back: the project stays held by the
    run (queued TTL) and the retry's delivery can claim it at once."""
    client = redis.Redis.from_url(redis_url)
    store = TriggerStore(client, lock_ttl_s=86400, run_ttl_s=30)
    run = store.apply(6, "start_training", n=10)
    assert run.run_id and store.claim(6, run.run_id, "first") == "claimed"
    assert not store.requeue(6, run.run_id, "not-the-owner")
    assert store.requeue(6, run.run_id, "first")
    assert client.ttl("labelloop:project:6:training") > 3600 and store.state(6).training
    assert store.claim(6, run.run_id, "retry") == "claimed"


def test_a_run_whose_delivery_died_keeps_the_project_for_its_redelivery(redis_url: str) -> None:
    """When the delivery running a training dies (its owner key expires, no more renewals), the
    project stays the run's: events meanwhile set the follow-up instead of starting another run,
    and the redelivery of the same run claims it (it is never left superseded)."""
    client = redis.Redis.from_url(redis_url)
    store = TriggerStore(client, lock_ttl_s=86400, run_ttl_s=1)
    run = store.apply(9, "start_training", n=1)
    assert run.run_id and store.claim(9, run.run_id, "dies") == "claimed"
    assert store.renew(9, run.run_id, "dies")
    deadline = time.monotonic() + 10
    while client.exists("labelloop:project:9:training:owner") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.exists("labelloop:project:9:training:owner"), "the dead delivery's claim expired"
    later = store.apply(9, "annotation", n=1)
    assert not later.start and later.state.followup
    assert store.claim(9, run.run_id, "redelivery") == "claimed"
