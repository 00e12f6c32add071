"""Training progress records and cancellation requests in Redis."""

from __future__ import annotations

import redis

from labelloop.jobs.progress import ProgressStore


def test_progress_cancel_and_clear(redis_url: str) -> None:
    """Progress merges per run; a cancel targets the running run only; clear removes both."""
    store = ProgressStore(redis.Redis.from_url(redis_url))
    assert store.request_cancel(1) is None
    store.update(1, "run-a", stage="preparing")
    store.update(1, "run-a", stage="training", epoch=2, epochs=5)
    record = store.get(1)
    assert record and (record["run_id"], record["stage"], record["epoch"], record["epochs"]) == (
        "run-a",
        "training",
        2,
        5,
    )
    assert store.request_cancel(1) == "run-a"
    assert store.cancel_requested(1, "run-a") and not store.cancel_requested(1, "run-b")
    store.clear(1, "run-a")
    assert store.get(1) is None and not store.cancel_requested(1, "run-a")
