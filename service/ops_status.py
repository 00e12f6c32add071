"""``labelloop status``: queues, workers, running trainings, training locks without owner,
served versions and each project's Label Studio webhook, read from Redis and the registry."""

from __future__ import annotations

import time
from typing import Any

import redis
from kombu.utils.url import maybe_sanitize_url

from labelloop import keys, redis_client
from labelloop.events import project_webhook, retired_projects
from labelloop.events.ledger import Ledger
from labelloop.jobs import locks
from labelloop.jobs.lease import RunRecords
from labelloop.jobs.progress import ProgressStore
from labelloop.names import QUEUE_EVENTS, QUEUE_PREANNOTATE, QUEUE_PREDICT, QUEUE_TRAIN
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from workers.celery_app import create_celery

QUEUES = (QUEUE_EVENTS, QUEUE_TRAIN, QUEUE_PREDICT, QUEUE_PREANNOTATE)


def status(settings: Settings) -> int:
    """Queues, workers, running trainings, training locks without owner and served versions."""
    registry = Registry(settings.models_dir)
    client = redis_client.client(settings.redis_url, "cli")
    try:
        depths = {q: int(client.llen(q)) for q in QUEUES}
        projects = sorted(Ledger(client).projects() | set(registry.projects()))
        store = ProgressStore(client)
        running = {p: r for p in projects if (r := store.get(p))}
        last_event = client.xrevrange(keys.EVENTS, count=1)
    except redis.RedisError as exc:
        print(f"Redis at {maybe_sanitize_url(settings.redis_url)} is unreachable: {exc}")
        return 1
    print("queues:   " + ", ".join(f"{q} {n}" for q, n in depths.items()))
    print("webhooks: " + _last_webhook(last_event))
    replies = create_celery(settings).control.ping(timeout=1.0) or []
    workers = sorted(name for reply in replies for name in reply)
    print("workers:  " + (", ".join(workers) if workers else "none answered"))
    print("trainings:" + ("" if running else " none running"))
    for p, r in running.items():
        epoch = f"epoch {r.get('epoch', 0)}/{r.get('epochs', '?')}" if r.get("epoch") else ""
        metrics = r.get("metrics") or {}
        map_ = metrics.get("metrics/mAP50-95(B)")
        extra = f", mAP50-95 {map_:.4f}" if isinstance(map_, float) else ""
        print(f"  project {p}: run {r['run_id']} {r.get('stage', '')} {epoch}{extra}")
    try:
        orphans = locks.without_owner(client, projects, settings.train_lock_orphan_s)
    except redis.RedisError as exc:
        print(f"  locks unreadable: {exc}")
        orphans = []
    for lock in orphans:
        print(f"  project {lock.project_id}: {describe_orphan(lock)}")
    runs = RunRecords(client)
    for p in projects:
        gone = runs.given_up(p)
        if gone:
            ago = max(0, int(time.time() - float(gone["at"])))
            print(f"  project {p}: run {gone['run_id']} given up: {gone['reason']} ({ago} s ago)")
    for p in projects:
        pre = store.preannotation(p)
        if pre:
            print(f"  project {p}: pre-annotating with {pre['version']}: {pre['done']}/{pre['total']} tasks")
    print("served:")
    for p in projects:
        print(f"  project {p}: {registry.current_name(p) or 'untrained'}")
    print("Label Studio webhooks:")
    retired = retired_projects.retired(client)
    for p in projects:
        if p in retired:
            print(f"  project {p}: retired: {retired[p].get('reason')} (no reconciliation, training or pre-annotation)")
        else:
            print(f"  project {p}: {project_webhook.describe(project_webhook.last(client, p))}")
    return 0


def describe_orphan(lock: locks.LockView) -> str:
    """One line on a training lock without owner (``labelloop.jobs.locks``)."""
    due = "for an unknown time" if lock.due_s is None else f"{lock.due_s:.0f} s after its run became due"
    return (
        f"training lock of run {lock.run_id} held without owner {due} (no delivery runs it, no message of it "
        "waits): trainings only set a follow-up flag until the reconciliation reaps it"
    )


def _last_webhook(rows: Any) -> str:
    """The newest entry of the receiver's event stream as "<action> for project <id>, <n> s ago"."""
    if not rows:
        return "none received yet (is the project's webhook pointing at the receiver?)"
    _id, fields = rows[0]
    f = {k.decode(): v.decode() for k, v in fields.items()}
    age = time.time() - float(f.get("received_at") or 0)
    return f"last {f.get('action')} for project {f.get('project_id')}, {age:.0f} s ago"
