"""labelloop's jobs without Celery (real Redis; ``send`` records what would be enqueued), and the
Celery shell around them: task names pinned, transient errors retried with backoff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from labelloop.jobs.jobs import Jobs
from labelloop.names import QUEUE_TRAIN, ROUTES, TASK_HANDLE_EVENT, TASK_TRAIN
from tests.factories import make_settings, publish_version
from workers.celery_app import create_celery


@pytest.fixture
def sent() -> list[tuple[str, list[Any], str]]:
    return []


@pytest.fixture
def jobs(redis_url: str, tmp_path: Path, sent: list[tuple[str, list[Any], str]]) -> Jobs:
    settings = make_settings(tmp_path, redis_url=redis_url, train_every_n=3)
    return Jobs(settings, lambda name, args, queue: sent.append((name, args, queue)))


def test_every_n_annotations_enqueue_one_training(jobs: Jobs, sent: list[tuple[str, list[Any], str]]) -> None:
    """The third new annotation (train_every_n 3) enqueues one training on the train queue; three
    more while it runs make one follow-up due instead of a second training."""
    outcomes = [jobs.handle_event(7, "ANNOTATION_CREATED", [(i, f"2026-12-01T10:00:0{i}Z")]) for i in (1, 2, 3)]
    assert outcomes == ["counted", "counted", "started"]
    [(name, args, queue)] = sent
    assert (name, args[0], queue) == (TASK_TRAIN, 7, QUEUE_TRAIN) and isinstance(args[1], str)
    more = [jobs.handle_event(7, "ANNOTATION_CREATED", [(i, f"2026-12-01T10:00:0{i}Z")]) for i in (4, 5, 6)]
    assert more == ["counted", "counted", "coalesced"]
    assert len(sent) == 1


def test_a_change_already_seen_is_unchanged(jobs: Jobs, sent: list[tuple[str, list[Any], str]]) -> None:
    """The same annotation at the same updated_at twice counts once (the ledger)."""
    assert jobs.handle_event(8, "ANNOTATION_CREATED", [(1, "2026-12-01T10:00:00Z")]) == "counted"
    assert jobs.handle_event(8, "ANNOTATION_UPDATED", [(1, "2026-12-01T10:00:00Z")]) == "unchanged"
    assert sent == []


def test_start_training_starts_at_once_and_makes_the_project_known(
    jobs: Jobs, sent: list[tuple[str, list[Any], str]], redis_url: str
) -> None:
    """START_TRAINING enqueues a training without any annotation and adds the project to the set
    reconciliation walks."""
    assert jobs.handle_event(9, "START_TRAINING", []) == "started"
    assert [s[0] for s in sent] == [TASK_TRAIN]
    assert redis.Redis.from_url(redis_url).sismember("labelloop:projects", 9)


def test_a_lost_ledger_is_seeded_from_the_served_versions_annotation_file(jobs: Jobs, redis_url: str) -> None:
    """After Redis lost the ledger, ensure_ledger seeds it from the served version's annotations.json (the map
    no longer sits in the manifest), and from the map an older manifest embeds."""
    from labelloop.events.ledger import Ledger
    from labelloop.registry.store import Registry

    registry = Registry(jobs.settings.models_dir)
    publish_version(registry, 4, annotations={"11": "2026-01-01T00:00:00.000000Z"})
    jobs.ensure_ledger(4)
    assert Ledger(redis.Redis.from_url(redis_url)).seen(4) == {11: "2026-01-01T00:00:00.000000Z"}
    old = publish_version(registry, 5)
    (old.path / "annotations.json").unlink()
    (old.path / "manifest.json").write_text('{"annotations": {"12": "2026-01-02T00:00:00.000000Z"}}')
    jobs.ensure_ledger(5)
    assert Ledger(redis.Redis.from_url(redis_url)).seen(5) == {12: "2026-01-02T00:00:00.000000Z"}


def test_registered_task_names_are_pinned(redis_url: str, tmp_path: Path) -> None:
    """The workers' app registers exactly labelloop's six task names (queued messages name them),
    each routed to its queue, and the training's soft and hard limits come from the settings (the
    time limit plus the longest quiet-period wait)."""
    app = create_celery(
        make_settings(tmp_path, redis_url=redis_url, train_time_limit_s=600, train_max_delay_s=30), with_tasks=True
    )
    app.loader.import_default_modules()
    names = sorted(n for n in app.tasks if n.startswith("labelloop."))
    assert names == [
        "labelloop.first_picks",
        "labelloop.handle_event",
        "labelloop.preannotate",
        "labelloop.predict",
        "labelloop.reconcile",
        "labelloop.train",
        "labelloop.write_selection",
    ]
    assert names == sorted(ROUTES)
    assert app.conf.task_annotations[TASK_TRAIN] == {"soft_time_limit": 630, "time_limit": 750}
    assert app.tasks[TASK_TRAIN].acks_late and app.tasks[TASK_TRAIN].reject_on_worker_lost
    assert not create_celery(make_settings(tmp_path, redis_url=redis_url)).conf.include, (
        "the receiver's app includes no task code"
    )


def test_transient_errors_are_retried_with_backoff(redis_url: str, tmp_path: Path) -> None:
    """Event, reconcile, pre-annotation and training tasks retry Redis and network errors with
    exponential backoff, waiting less than the broker's visibility timeout; the interactive
    predict does not retry, nor does a selection's write (a retry would write its chunks twice)."""
    app = create_celery(make_settings(tmp_path, redis_url=redis_url), with_tasks=True)
    app.loader.import_default_modules()
    for name in (
        "labelloop.handle_event",
        "labelloop.reconcile",
        "labelloop.preannotate",
        "labelloop.first_picks",
        "labelloop.train",
    ):
        task = app.tasks[name]
        assert {redis.ConnectionError, redis.TimeoutError, httpx.TransportError} <= set(task.autoretry_for), name
        assert task.retry_backoff and task.max_retries == 5
        assert task.retry_backoff_max < app.conf.broker_transport_options["visibility_timeout"], name
    assert not getattr(app.tasks["labelloop.predict"], "autoretry_for", ())
    assert not getattr(app.tasks["labelloop.write_selection"], "autoretry_for", ())


def test_an_event_task_retries_when_redis_is_down(tmp_path: Path) -> None:
    """Run eagerly against a Redis that refuses connections, the event task is retried until its
    retries are spent, then the Redis error surfaces (nothing is silently dropped)."""
    settings = make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0")
    app = create_celery(settings, with_tasks=True)
    app.loader.import_default_modules()
    app.conf.task_always_eager = True
    task = app.tasks[TASK_HANDLE_EVENT]
    calls = 0
    original = Jobs.handle_event

    def counting(self: Jobs, *args: Any) -> str:
        nonlocal calls
        calls += 1
        return original(self, *args)

    Jobs.handle_event = counting  # type: ignore[method-assign]
    try:
        result = task.apply(args=[1, "ANNOTATION_CREATED", [[1, "2026-12-01T10:00:00Z"]]], retries=3)
    finally:
        Jobs.handle_event = original  # type: ignore[method-assign]
    assert isinstance(result.result, redis.ConnectionError)
    assert calls == 3  # started as retry 3 of 5: retries 3, 4 and 5 ran, then the error surfaced
