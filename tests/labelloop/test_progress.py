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


def test_a_new_run_starts_a_new_record_and_epoch_reports_are_typed(redis_url: str) -> None:
    """Another run's update replaces the record (its fields do not leak into the new run's); an epoch
    report from the training child keeps epoch, epochs, metrics and losses, as numbers."""
    from labelloop.jobs.progress import stage_of

    store = ProgressStore(redis.Redis.from_url(redis_url))
    store.update(2, "run-a", stage="training", epoch=4, epochs=5)
    store.update(2, "run-b", stage="preparing")
    record = store.get(2)
    assert record is not None and record["run_id"] == "run-b" and "epoch" not in record
    assert record["updated_at"] >= record["started_at"]
    stage = stage_of({"epoch": "2", "epochs": 5, "metrics": {"m": 1}, "losses": {"l": "0.5"}, "other": 1})
    assert stage == {"epoch": 2, "epochs": 5, "metrics": {"m": 1.0}, "losses": {"l": 0.5}}


def test_a_preannotation_record_is_cleared_only_by_its_version(redis_url: str) -> None:
    """Clearing an older version's pre-annotation leaves a newer run's record in place."""
    store = ProgressStore(redis.Redis.from_url(redis_url))
    store.set_preannotation(3, {"project_id": 3, "version": "v2", "done": 1, "total": 4})
    store.clear_preannotation(3, "v1")
    assert store.preannotation(3) == {"project_id": 3, "version": "v2", "done": 1, "total": 4}
    store.clear_preannotation(3, "v2")
    assert store.preannotation(3) is None
