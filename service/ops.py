"""Operator commands behind ``labelloop``: dataset build, train, models, status, cancel, doctor.

Each takes the settings and plain arguments, prints for a person, and returns an exit code
(0 fine, 1 something is wrong). The exposure checks the process commands run at start
(``open_warning``, ``placeholder_credentials``) live here too, beside the doctor check that
says the same (``credential_check``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from kombu.utils.url import maybe_sanitize_url

from labelloop import keys
from labelloop.errors import LabelloopError, UnavailableError
from labelloop.events import project_webhook, retired_projects
from labelloop.events.ledger import Ledger
from labelloop.jobs import locks
from labelloop.jobs.lease import RunRecords
from labelloop.jobs.progress import ProgressStore
from labelloop.names import (
    QUEUE_EVENTS,
    QUEUE_PREANNOTATE,
    QUEUE_PREDICT,
    QUEUE_TRAIN,
    TASK_HANDLE_EVENT,
    TASK_PREANNOTATE,
)
from labelloop.registry.curve import text_learning_curve
from labelloop.registry.notify import serve_when_warm
from labelloop.registry.params import preannotates
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from service.auth import any_configured, basic_configured, placeholder_credentials, secret_configured
from service.page import project_view
from workers.celery_app import create_celery

QUEUES = (QUEUE_EVENTS, QUEUE_TRAIN, QUEUE_PREDICT, QUEUE_PREANNOTATE)

# The values the shipped examples (deploy/k8s/config.yaml) hold; no process starts with one.


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)


def dataset_build(settings: Settings, project_id: int, out: Path | None, progress: bool = True) -> int:
    """Read a project from Label Studio and write its Ultralytics dataset without training.

    Builds into ``out`` (updated in place when an earlier build wrote it), or into the
    project's own dataset folder (the one training uses) when ``out`` is None; prints where
    it went and the report's counts.
    """
    from tqdm import tqdm

    from labelloop.dataset.images import build_project_dataset

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
        _redis(settings).ping()
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
    store = ProgressStore(_redis(settings))
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


def models_list(settings: Settings, project_id: int) -> int:
    registry = Registry(settings.models_dir)
    current = registry.current_name(project_id)
    versions = registry.summaries(project_id)
    if not versions:
        print(f"project {project_id} has no model versions")
        return 0
    print(f"{'':2}{'version':<8} {'created':<21} {'parent':<7} {'train/val':<10} {'mAP50-95':>8}")
    for v in versions:
        size = v.get("dataset_size") or {}
        mark = "* " if v["version"] == current else "  "
        map_ = (v.get("metrics") or {}).get("map50_95")
        print(
            f"{mark}{v['version']:<8} {v.get('created_at') or '':<21} {v.get('parent') or '-':<7} "
            f"{size.get('train', 0)}/{size.get('val', 0):<8} {map_ if map_ is None else f'{map_:.4f}':>8}"
        )
    view = project_view(registry, project_id)
    print("\nlearning curve (annotations trained on; bar: '=' mAP50-95, '-' on to mAP50, full width 1.0):")
    for line in text_learning_curve(view.points):
        print("  " + line)
    return 0


def models_promote(settings: Settings, project_id: int, version: str) -> int:
    registry = Registry(settings.models_dir)
    serve_when_warm(_redis(settings), registry, project_id, version, reason="promoted by operator")
    print(f"project {project_id} now serves {version}")
    _preannotate(settings, project_id, version)
    return 0


def models_rollback(settings: Settings, project_id: int) -> int:
    registry = Registry(settings.models_dir)
    version = registry.rollback_target(project_id)
    serve_when_warm(_redis(settings), registry, project_id, version, reason="rollback")
    print(f"project {project_id} rolled back to {version}")
    _preannotate(settings, project_id, version)
    return 0


def _preannotate(settings: Settings, project_id: int, version: str) -> None:
    """Queue the served version's pre-annotation of the project (superseding a running one)."""
    if preannotates(settings, project_id):
        create_celery(settings).send_task(TASK_PREANNOTATE, args=[project_id, version], queue=QUEUE_PREANNOTATE)
        print(f"pre-annotation of project {project_id} with {version} queued")


def sampling_restore(settings: Settings, project_id: int) -> int:
    """Put back the task sampling the project had before labelloop set "Uncertainty sampling"."""
    from labelloop.labelstudio import client as labelstudio
    from labelloop.labelstudio.sampling import restore

    with labelstudio.calling(settings.label_studio_url, f"restoring the sampling of project {project_id}"):
        previous = restore(
            labelstudio.client(settings.label_studio_url, settings.api_key), settings.models_dir, project_id
        )
    if previous is None:
        print(f"project {project_id}: labelloop has not changed its sampling (nothing to restore)")
        return 1
    print(f"project {project_id}: sampling restored to {previous!r}")
    return 0


def cancel(settings: Settings, project_id: int) -> int:
    run = ProgressStore(_redis(settings)).request_cancel(project_id)
    print(f"cancelling run {run} of project {project_id}" if run else f"project {project_id} has no running training")
    return 0 if run else 1


def status(settings: Settings) -> int:
    """Queues, workers, running trainings, training locks without owner and served versions."""
    registry = Registry(settings.models_dir)
    client = _redis(settings)
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
        print(f"  project {lock.project_id}: {_orphan(lock)}")
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


def _orphan(lock: locks.LockView) -> str:
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


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts local connections: 127.0.0.0/8, ::1 or localhost."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _credentials_fix(settings: Settings) -> str:
    return (
        "set BASIC_AUTH_USER and BASIC_AUTH_PASS (the same pair on the ML backend connection in Label Studio) "
        f"and LABELLOOP_WEBHOOK_SECRET (sent by the project's webhook as its {settings.webhook_secret_header} header)"
    )


def open_warning(settings: Settings, host: str) -> str | None:
    """The warning ``labelloop serve`` logs (event ``receiver_open``) when it is open to the network.

    Returns None when ``host`` is a loopback address or any credential is configured (Basic
    auth with both user and password, or the webhook secret); else a sentence naming the host
    and the environment variables that close it.
    """
    if is_loopback(host) or any_configured(settings):
        return None
    return (
        f"no credential is configured and the receiver listens on {host}: every route is open to anyone "
        f"who can reach it; {_credentials_fix(settings)}, or serve on 127.0.0.1"
    )


def credential_check(settings: Settings) -> tuple[bool, str, str]:
    """The doctor's verdict on the receiver's credentials, as ``(ok, what, fix)``.

    The doctor does not know where the receiver listens, so it fails whatever leaves a route
    open or unusable, first match wins: a placeholder value; a Basic user without a password or
    the reverse (Basic auth is then off); no credential at all (safe on loopback only); the
    webhook secret without Basic auth (Label Studio's ML backend connection can only send Basic
    auth, so /setup, /predict and Start Training could not authenticate).
    """
    fix = _credentials_fix(settings)
    if names := placeholder_credentials(settings):
        return (
            False,
            f"{', '.join(names)} still {'holds' if len(names) == 1 else 'hold'} the example's placeholder: "
            "labelloop refuses to start with it",
            "set real values (e.g. `openssl rand -hex 24`) in the environment or the labelloop-secrets Secret",
        )
    if bool(settings.basic_auth_user) != (settings.basic_auth_pass is not None):
        given, missing = (
            ("BASIC_AUTH_USER", "BASIC_AUTH_PASS")
            if settings.basic_auth_user
            else ("BASIC_AUTH_PASS", "BASIC_AUTH_USER")
        )
        return False, f"{given} is set without {missing}: HTTP Basic auth is off", f"set {missing} too"
    if not any_configured(settings):
        return (
            False,
            "no credential is configured: every route of the receiver is open, safe only when it listens "
            "on loopback (labelloop serve --host 127.0.0.1)",
            fix,
        )
    if not basic_configured(settings):
        return (
            False,
            "LABELLOOP_WEBHOOK_SECRET is set but HTTP Basic auth is not: Label Studio's ML backend connection "
            "can only send Basic auth, so its /setup, /predict and Start Training calls cannot authenticate",
            "set BASIC_AUTH_USER and BASIC_AUTH_PASS, and the same pair on the ML backend connection in Label Studio",
        )
    webhooks = (
        f"the {settings.webhook_secret_header} header"
        if secret_configured(settings)
        else "Basic auth too (no LABELLOOP_WEBHOOK_SECRET)"
    )
    return (
        True,
        f"receiver credentials: HTTP Basic auth (user {settings.basic_auth_user}); webhooks send {webhooks}",
        "",
    )


def doctor(settings: Settings) -> int:
    """Check every dependency; print what is wrong and how to fix it. Exit 1 on any problem.

    Long because it is a list of checks, run and printed in order.
    """
    problems = 0

    def report(ok: bool, what: str, fix: str = "") -> None:
        nonlocal problems
        problems += 0 if ok else 1
        print(f"[{'ok' if ok else 'FAIL'}] {what}" + ("" if ok or not fix else f"\n       fix: {fix}"))

    try:
        client = _redis(settings)
        client.ping()
        report(True, f"Redis answers at {maybe_sanitize_url(settings.redis_url)}")
        projects = Ledger(client).projects() | set(Registry(settings.models_dir).projects())
        for lock in locks.without_owner(client, projects, settings.train_lock_orphan_s):
            report(
                False,
                f"project {lock.project_id}: {_orphan(lock)}",
                "wait for the next reconciliation (LABELLOOP_RECONCILE_INTERVAL_S), or check the train queue",
            )
    except redis.RedisError as exc:
        report(
            False,
            f"Redis at {maybe_sanitize_url(settings.redis_url)}: {exc}",
            "start redis-server or set LABELLOOP_REDIS_URL",
        )

    if not settings.label_studio_url:
        report(False, "LABEL_STUDIO_URL is not set", "export LABEL_STUDIO_URL=http://<label-studio-host>:8080")
    else:
        try:
            health = httpx.get(settings.label_studio_url + "/health", timeout=5)
            report(health.status_code == 200, f"Label Studio answers at {settings.label_studio_url}")
        except httpx.HTTPError as exc:
            report(False, f"Label Studio at {settings.label_studio_url}: {exc}", "check the URL and that it runs")
        if not settings.api_key:
            report(False, "LABEL_STUDIO_API_KEY is not set", "Account & Settings > Access Token in Label Studio")
        else:
            try:
                from label_studio_sdk import LabelStudio

                user = LabelStudio(base_url=settings.label_studio_url, api_key=settings.api_key).users.whoami()
                report(True, f"Label Studio token is valid (user {getattr(user, 'email', '?')})")
            except Exception as exc:  # the SDK raises its own ApiError and httpx errors
                report(
                    False,
                    f"Label Studio rejects the token: {str(exc)[:200]}",
                    "use a legacy token with LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server, "
                    "or a personal access token",
                )

    report(*credential_check(settings))
    try:  # what the last reconciliation found (labelloop.events.project_webhook)
        store = _redis(settings)
        for p in sorted(Ledger(store).projects()):
            found = project_webhook.last(store, p)
            if found is not None and found.ok is False:
                report(
                    False,
                    f"project {p}: Label Studio webhook {project_webhook.describe(found)}",
                    f"in Label Studio's project Settings > Webhooks, add or switch on the webhook to {found.url}, "
                    "or give labelloop's token a role that may manage webhooks",
                )
    except redis.RedisError:
        pass  # reported above

    for name, path in (("models dir", settings.models_dir), ("cache dir", settings.cache_dir)):
        path = Path(path).absolute()
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path):
                pass
            free = shutil.disk_usage(path).free / 2**30
            report(free > 1.0, f"{name} {path} is writable ({free:.1f} GiB free)", "free disk space")
        except OSError as exc:
            report(
                False,
                f"{name} {path}: {exc}",
                f"create it and make it writable, or set LABELLOOP_{name[:-4].upper()}_DIR",
            )

    try:
        import torch

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            report(True, f"GPU: {names}")
        else:
            print("[info] no CUDA GPU: training and inference run on the CPU (slow but fine for small projects)")
    except ImportError:
        report(False, "torch is not installed in this environment", 'pip install "labelloop[ml]" (workers need it)')

    from labelloop.jobs.plan import weights_dir
    from labelloop.registry.base_models import for_task, resolve

    try:
        base = resolve(settings.base_model, "detect", weights_dir(settings), settings.offline)
        where = {"disk": "on disk", "download": "Ultralytics downloads it on first training", "yaml": "from scratch"}
        if base.source == "offline-yaml":
            print(
                f"[info] base model: {base.note}; put {for_task(base.requested, 'detect')} into "
                f"{weights_dir(settings)} for pretrained weights"
            )
        else:
            report(True, f"base model {base.requested}: {base.weights} ({where[base.source]})")
    except ValueError as exc:
        report(False, f"LABELLOOP_BASE_MODEL: {exc}", "an Ultralytics model name (yolo26n.pt), a .pt or a YAML")

    shm = shutil.disk_usage("/dev/shm").total / 2**30 if os.path.exists("/dev/shm") else 0.0
    report(
        shm >= 1.0 or settings.dataloader_workers == 0,
        f"/dev/shm is {shm:.1f} GiB (DataLoader workers: {settings.dataloader_workers})",
        "give the train worker more shared memory (compose shm_size) or LABELLOOP_DATALOADER_WORKERS=0",
    )
    print("all checks passed" if problems == 0 else f"{problems} problem(s) found")
    return 0 if problems == 0 else 1


def run(func: Any, *args: Any) -> int:
    """Run an ops command, turning labelloop's errors into one line on stderr and exit code 1."""
    try:
        return int(func(*args))
    except LabelloopError as exc:
        print(f"labelloop: error: {exc}", file=sys.stderr)
        return 1
