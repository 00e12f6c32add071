"""``labelloop doctor``: every dependency checked, with what is wrong and how to fix it; and the
exposure checks the process commands run at start (``open_warning``, ``is_loopback``), beside
the doctor's check that says the same (``credential_check``)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import redis
from kombu.utils.url import maybe_sanitize_url

from labelloop import redis_client
from labelloop.events import project_webhook
from labelloop.events.ledger import Ledger
from labelloop.jobs import locks
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from service.auth import any_configured, basic_configured, placeholder_credentials, secret_configured
from service.ops_status import describe_orphan


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


def _webhook_fix(found: project_webhook.Check) -> str:
    """The doctor's fix for a project webhook found not working: a failing one exists and is on,
    so it is Label Studio's deliveries that fail, not the webhook that needs re-arming."""
    if found.state == project_webhook.FAILING:
        return (
            f"Label Studio could not deliver to {found.url}: check that Label Studio reaches the receiver there "
            "(network, LABELLOOP_ALLOWED_HOSTS, the webhook secret header) and the receiver's auth_failed and "
            "request_rejected logs"
        )
    return (
        f"in Label Studio's project Settings > Webhooks, add or switch on the webhook to {found.url}, "
        "or give labelloop's token a role that may manage webhooks"
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
        client = redis_client.client(settings.redis_url, "cli")
        client.ping()
        report(True, f"Redis answers at {maybe_sanitize_url(settings.redis_url)}")
        projects = Ledger(client).projects() | set(Registry(settings.models_dir).projects())
        for lock in locks.without_owner(client, projects, settings.train_lock_orphan_s):
            report(
                False,
                f"project {lock.project_id}: {describe_orphan(lock)}",
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
        store = redis_client.client(settings.redis_url, "cli")
        for p in sorted(Ledger(store).projects()):
            found = project_webhook.last(store, p)
            if found is not None and found.ok is False:
                report(
                    False, f"project {p}: Label Studio webhook {project_webhook.describe(found)}", _webhook_fix(found)
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

    from labelloop.registry.base_models import for_task, resolve

    try:
        base = resolve(settings.base_model, "detect", settings.paths.weights_dir, settings.offline)
        where = {"disk": "on disk", "download": "Ultralytics downloads it on first training", "yaml": "from scratch"}
        if base.source == "offline-yaml":
            print(
                f"[info] base model: {base.note}; put {for_task(base.requested, 'detect')} into "
                f"{settings.paths.weights_dir} for pretrained weights"
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
