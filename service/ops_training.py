"""``labelloop dataset build``, ``train`` and ``cancel``: a project's dataset and trainings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis
from kombu.utils.url import maybe_sanitize_url

from labelloop import redis_client
from labelloop.errors import UnavailableError
from labelloop.jobs.progress import ProgressStore
from labelloop.names import QUEUE_EVENTS, TASK_HANDLE_EVENT
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from workers.celery_app import create_celery


def dataset_build(settings: Settings, project_id: int, out: Path | None, progress: bool = True) -> int:
    """Read a project from Label Studio and write its Ultralytics dataset without training.

    Builds into ``out`` (updated in place when an earlier build wrote it), or into the
    project's own dataset folder (the one training uses) when ``out`` is None; prints where
    it went and the report's counts.
    """
    from tqdm import tqdm

    from labelloop.jobs.datasets import build_project_dataset

    with tqdm(desc="images", unit="img", disable=not progress) as bar:
        built = build_project_dataset(settings, project_id, out, on_image=lambda: bar.update(1))
    report = built.report
    print(f"dataset ({report.task}): {built.data}")
    print(
        f"images: train {report.images['train']}, val {report.images['val']}; "
        f"downloaded {report.images_downloaded}, cached {report.images_cached}; "
        f"tasks read: {report.sync.get('mode')} ({report.sync.get('tasks_fetched')})"
    )
    print(f"instances per class: {json.dumps(report.instances_per_class)}")
    if report.skipped_counts:
        print(f"skipped tasks: {json.dumps(report.skipped_counts)}")
    if report.dropped_regions:
        print(f"dropped regions: {len(report.dropped_regions)} (reasons in report.json)")
    if report.unknown_labels:
        print(f"labels not in the label config (skipped): {json.dumps(report.unknown_labels)}")
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in report.seconds.items()))
    return 0


def train(settings: Settings, project_id: int, wait: bool, timeout_s: float = 24 * 3600) -> int:
    """Request a training now (as Label Studio's "Start Training" does); optionally wait for it."""
    from tqdm import tqdm

    registry = Registry(settings.models_dir)
    before = registry.current_name(project_id)
    try:
        redis_client.client(settings.redis_url, "cli").ping()
    except redis.RedisError as exc:
        raise UnavailableError(
            f"Redis at {maybe_sanitize_url(settings.redis_url)} is unreachable ({type(exc).__name__}: {exc}): "
            "start it, or set LABELLOOP_REDIS_URL to where it runs"
        ) from None
    app = create_celery(settings)
    app.send_task(TASK_HANDLE_EVENT, args=[project_id, "START_TRAINING", []], queue=QUEUE_EVENTS)
    print(f"training requested for project {project_id} (served now: {before or 'untrained'})")
    if not wait:
        return 0
    store = ProgressStore(redis_client.client(settings.redis_url, "cli"))
    bar = tqdm(total=settings.epochs or 0, desc="epochs", unit="epoch")
    deadline = time.monotonic() + timeout_s
    seen_run = False
    while time.monotonic() < deadline:
        current = registry.current_name(project_id)
        if current != before:
            bar.close()
            print(f"project {project_id} now serves {current}")
            return 0
        p = store.get(project_id)
        if p:
            seen_run = True
            bar.total = int(p.get("epochs") or bar.total)
            bar.n = int(p.get("epoch") or 0)
            bar.set_postfix_str(str(p.get("stage", "")))
            bar.refresh()
        elif seen_run:
            bar.close()
            print("the training ended without a new version; see the train worker's log")
            return 1
        time.sleep(1.0)
    bar.close()
    print("timed out waiting for the training")
    return 1


def cancel(settings: Settings, project_id: int) -> int:
    run = ProgressStore(redis_client.client(settings.redis_url, "cli")).request_cancel(project_id)
    print(f"cancelling run {run} of project {project_id}" if run else f"project {project_id} has no running training")
    return 0 if run else 1
