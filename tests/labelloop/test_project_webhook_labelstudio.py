"""The project webhook's health against a real Label Studio 1.23.2, a real receiver and real Redis:
reconciliation finds a webhook a person switched off or deleted, reports it and re-arms it; one it
may not re-arm, or that is failing, is reported (status, log, doctor) and reconciliation goes on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import redis
import structlog.testing
from label_studio_sdk import LabelStudio

from labelloop import keys
from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.dev.synthetic import Sample, make_sample
from labelloop.events import project_webhook
from labelloop.events.ledger import PROJECTS_KEY
from labelloop.jobs.jobs import Jobs
from labelloop.labelstudio import client as labelstudio
from labelloop.redis_client import client as redis_client
from labelloop.settings import Settings
from service.ops_doctor import doctor
from service.ops_status import status
from tests.factories import connect_backend, image_project, make_settings, settings_env

BASIC_AUTH = ("labelstudio", "ml-backend-password")
SECRET = "webhook-secret-for-tests"


def _hooks(api: LabelStudioAPI, project_id: int, url: str) -> list[Any]:
    return [h for h in api.sdk.webhooks.list(project=str(project_id)) if h.url == url]


class RestrictedToken(httpx.HTTPTransport):
    """The real Label Studio, with what Community 1.23.2 cannot produce: webhook writes refused
    with 403, as a server with roles answers a token without ``webhooks.change`` (1.23.2 grants every
    permission to any member: ``core/permissions.py``, ``rules.is_authenticated``), and, while
    ``failures`` is set, each webhook listed with ``consecutive_failures`` as newer servers list it."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: int | None = None
        self.refused: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/webhooks") and request.method != "GET":
            self.refused.append(f"{request.method} {request.url.path}")
            return httpx.Response(403, json={"detail": "You do not have permission to perform this action."})
        response = super().handle_request(request)
        if self.failures is None or request.method != "GET" or request.url.path != "/api/webhooks/":
            return response
        response.read()
        return httpx.Response(200, json=[{**h, "consecutive_failures": self.failures} for h in response.json()])


class Connected(NamedTuple):
    """A Label Studio project connected to a running receiver, known to labelloop."""

    api: LabelStudioAPI
    receiver: str  # the receiver's base URL
    url: str  # the project webhook's URL (``<receiver>/webhook``)
    pid: int
    ids: list[int]  # the project's task ids
    hook: Any  # the webhook Label Studio created when the backend was connected
    store: redis.Redis
    settings: Settings


@contextmanager
def connected(
    label_studio: tuple[str, str],
    redis_url: str,
    tmp_path: Path,
    title: str,
    samples: list[Sample],
    secret: str | None = None,
) -> Iterator[Connected]:
    """A receiver (Basic auth, and the webhook ``secret`` when given) and a Label Studio project of
    ``samples`` connected to it as its ML backend, in labelloop's known projects; the receiver is
    stopped after."""
    extra = {"LABELLOOP_WEBHOOK_SECRET": secret} if secret else {}
    env = settings_env(
        tmp_path,
        redis_url=redis_url,
        label_studio=label_studio,
        BASIC_AUTH_USER=BASIC_AUTH[0],
        BASIC_AUTH_PASS=BASIC_AUTH[1],
        **extra,
    )
    stack = Stack(tmp_path / "stack", env)
    receiver = stack.start_receiver(free_port())
    try:
        api = LabelStudioAPI(*label_studio)
        pid, ids = image_project(api, title, samples)
        connect_backend(api, pid, receiver, basic_auth=BASIC_AUTH, webhook_secret=secret)
        url = receiver + "/webhook"
        (hook,) = _hooks(api, pid, url)
        store = redis_client(redis_url, "cli")
        store.sadd(PROJECTS_KEY, pid)
        settings = make_settings(
            tmp_path,
            redis_url=redis_url,
            label_studio=label_studio,
            basic_auth_user=BASIC_AUTH[0],
            basic_auth_pass=BASIC_AUTH[1],
            webhook_secret=secret,
        )
        yield Connected(api, receiver, url, pid, ids, hook, store, settings)
    finally:
        stack.stop_all()


@pytest.mark.labelstudio
def test_a_switched_off_or_deleted_project_webhook_is_reported_and_rearmed(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Label Studio's webhook to the connected receiver is ok at reconciliation; switched off in
    Label Studio, the next reconciliation reports it inactive and switches it on; deleted, the next
    one reports it missing and creates it again with the webhook secret header, after which an
    annotation reaches the receiver (which takes only webhooks that carry the secret).
    A webhook found switched off and not re-armed shows in ``labelloop status``, the project page
    and ``labelloop_project_webhook_ok`` (0, then 1 once re-armed)."""
    samples = [make_sample(500 + i, 96, 64) for i in range(2)]
    with connected(label_studio, redis_url, tmp_path, "webhook health", samples, secret=SECRET) as c:
        api, receiver, url, pid, ids, hook, store, settings = c
        jobs = Jobs(settings, lambda name, args, queue: None)

        jobs.reconcile()
        first = project_webhook.last(store, pid)
        assert first is not None and (first.state, first.ok, first.url) == ("ok", True, url)

        api.sdk.webhooks.update(
            id=hook.id,
            url=url,
            is_active=False,
            actions=list(hook.actions or []),
            send_for_all_actions=hook.send_for_all_actions,
            send_payload=hook.send_payload,
        )
        # Seen without re-arming (as with a token that may not): said in status, the page and the gauge.
        project_webhook.record(store, pid, project_webhook.check(api.sdk, pid, rearm=False))
        status(settings)
        assert f"project {pid}: inactive: the webhook is switched off ({url}" in capsys.readouterr().out
        assert (
            'id="webhook" class="warn">Label Studio webhook: inactive'
            in httpx.get(f"{receiver}/projects/{pid}", auth=BASIC_AUTH).text
        )
        assert (
            f'labelloop_project_webhook_ok{{project_id="{pid}"}} 0.0'
            in httpx.get(f"{receiver}/metrics", auth=BASIC_AUTH).text
        )

        jobs.reconcile()
        found = project_webhook.last(store, pid)
        assert found is not None and (found.state, found.rearmed) == ("inactive", True), found
        assert (
            f'labelloop_project_webhook_ok{{project_id="{pid}"}} 1.0'
            in httpx.get(f"{receiver}/metrics", auth=BASIC_AUTH).text
        )
        assert [h.is_active for h in _hooks(api, pid, url)] == [True]

        api.sdk.webhooks.delete(id=hook.id)
        jobs.reconcile()
        found = project_webhook.last(store, pid)
        assert found is not None and (found.state, found.rearmed) == ("missing", True), found
        (again,) = _hooks(api, pid, url)
        assert again.is_active and again.send_payload and again.send_for_all_actions
        assert (again.headers or {}).get("X-Labelloop-Secret") == SECRET

        annotation = api.annotate(ids[0], samples[0].ls_result())

        def received() -> bool:
            rows = store.xrevrange(keys.EVENTS, count=50)
            return any(str(annotation) in f.get(b"annotation_ids", b"").decode().split(",") for _, f in rows)

        wait_until(received, 30, "the annotation's webhook at the receiver")


@pytest.mark.labelstudio
def test_a_project_webhook_labelloop_may_not_rearm_or_that_fails_is_reported_and_reconciliation_goes_on(
    label_studio: tuple[str, str],
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a token Label Studio refuses webhook writes, a deleted webhook is reported missing and a
    switched-off one inactive, each saying the token may not re-arm it (HTTP 403) in the check, the
    ``project_webhook_checked`` warning, ``labelloop status`` and a ``labelloop doctor`` FAIL, and
    the reconciliation still exports the project; a webhook with failed deliveries is reported
    failing, with a doctor fix about delivery, and is left alone."""
    samples = [make_sample(600, 96, 64)]
    with connected(label_studio, redis_url, tmp_path, "webhook not re-armed", samples) as c:
        api, receiver, url, pid, _ids, hook, store, settings = c
        transport = RestrictedToken()
        monkeypatch.setattr(
            labelstudio,
            "client",
            lambda u, key: LabelStudio(
                base_url=u, api_key=key, httpx_client=httpx.Client(transport=transport, timeout=60)
            ),
        )
        jobs = Jobs(settings, lambda name, args, queue: None)

        def reconcile_and_report(state: str, detail: str) -> str:
            """Reconcile; the project was exported and its webhook found ``state`` with ``detail``,
            not re-armed, and said so in the log, status and doctor (whose output is returned)."""
            with structlog.testing.capture_logs() as logs:
                assert str(pid) in jobs.reconcile()
            found = project_webhook.last(store, pid)
            assert found is not None and (found.state, found.ok, found.rearmed) == (state, False, False), found
            assert detail in found.detail
            (checked,) = [e for e in logs if e["event"] == "project_webhook_checked"]
            assert checked["log_level"] == "warning" and detail in checked.get("detail", ""), checked
            assert not [e for e in logs if e["event"] in ("project_webhook_check_failed", "reconcile_failed")], logs
            status(settings)
            assert f"project {pid}: {state}: {found.detail} ({url}" in capsys.readouterr().out
            assert doctor(settings) == 1
            out = capsys.readouterr().out
            assert f"[FAIL] project {pid}: Label Studio webhook {state}: {found.detail}" in out
            return out

        transport.failures = 4
        out = reconcile_and_report("failing", "4 deliveries in a row failed")
        assert f"Label Studio could not deliver to {url}" in out
        assert transport.refused == []
        assert (
            f'labelloop_project_webhook_ok{{project_id="{pid}"}} 0.0'
            in httpx.get(f"{receiver}/metrics", auth=BASIC_AUTH).text
        )

        transport.failures = None
        api.sdk.webhooks.delete(id=hook.id)
        out = reconcile_and_report("missing", "labelloop's token may not create one (HTTP 403)")
        assert f"add or switch on the webhook to {url}" in out
        assert transport.refused == ["POST /api/webhooks/"] and _hooks(api, pid, url) == []

        api.sdk.webhooks.create(url=url, project=pid, send_payload=True, send_for_all_actions=True, is_active=False)
        (off,) = _hooks(api, pid, url)
        reconcile_and_report("inactive", "labelloop's token may not switch it on (HTTP 403)")
        assert transport.refused[1:] == [f"PATCH /api/webhooks/{off.id}/"]
        assert [h.is_active for h in _hooks(api, pid, url)] == [False]
