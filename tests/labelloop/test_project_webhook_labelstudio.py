"""The project webhook's health against a real Label Studio 1.23.2, a real receiver and real Redis:
reconciliation finds a webhook a person switched off or deleted, reports it and re-arms it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from labelloop import keys
from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.dev.synthetic import make_sample
from labelloop.events import project_webhook
from labelloop.events.ledger import PROJECTS_KEY
from labelloop.jobs.jobs import Jobs
from labelloop.redis_client import client as redis_client
from service.ops_status import status
from tests.factories import connect_backend, image_project, make_settings, settings_env

BASIC_AUTH = ("labelstudio", "ml-backend-password")
SECRET = "webhook-secret-for-tests"


def _hooks(api: LabelStudioAPI, project_id: int, url: str) -> list[Any]:
    return [h for h in api.sdk.webhooks.list(project=str(project_id)) if h.url == url]


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
    ls_url, token = label_studio
    env = settings_env(
        tmp_path,
        redis_url=redis_url,
        label_studio=label_studio,
        BASIC_AUTH_USER=BASIC_AUTH[0],
        BASIC_AUTH_PASS=BASIC_AUTH[1],
        LABELLOOP_WEBHOOK_SECRET=SECRET,
    )
    stack = Stack(tmp_path / "stack", env)
    receiver = stack.start_receiver(free_port())
    try:
        api = LabelStudioAPI(ls_url, token)
        samples = [make_sample(500 + i, 96, 64) for i in range(2)]
        pid, ids = image_project(api, "webhook health", samples)
        connect_backend(api, pid, receiver, basic_auth=BASIC_AUTH, webhook_secret=SECRET)
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
            webhook_secret=SECRET,
        )
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
    finally:
        stack.stop_all()
