"""The project webhook's ``failing`` state, from the webhook JSON Label Studio Enterprise and newer
servers send (label-studio-sdk 2.1's ``Webhook.consecutive_failures``). Label Studio Community 1.23.2
has no such field (``label_studio/webhooks/models.py``), so its API is played by
``httpx.MockTransport``; the rest of the webhook's health runs against a real Label Studio
(``test_project_webhook_labelstudio.py``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from label_studio_sdk import LabelStudio

from labelloop.events import project_webhook

BACKEND = "http://labelloop:9090"
URL = BACKEND + "/webhook"


def _webhook(**fields: Any) -> dict[str, Any]:
    """A webhook as ``GET /api/webhooks/`` lists it on a server with delivery failure counts."""
    return {
        "id": 7,
        "organization": 1,
        "project": 3,
        "url": URL,
        "send_payload": True,
        "send_for_all_actions": True,
        "headers": {},
        "is_active": True,
        "actions": [],
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        **fields,
    }


def _label_studio(hooks: list[dict[str, Any]], writes: list[str]) -> LabelStudio:
    """An SDK client whose server lists one ML backend at ``BACKEND`` and ``hooks``; writes are
    recorded and answered as Label Studio answers them."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path == "/api/ml/":
            return httpx.Response(200, json=[{"id": 1, "url": BACKEND, "project": 3, "state": "CO"}])
        if request.method == "GET" and path == "/api/webhooks/":
            return httpx.Response(200, json=hooks)
        writes.append(f"{request.method} {path}")
        return httpx.Response(200, json={**hooks[0], **json.loads(request.content)})

    return LabelStudio(
        base_url="http://ls.test", api_key="token", httpx_client=httpx.Client(transport=httpx.MockTransport(handler))
    )


@pytest.mark.parametrize(
    ("fields", "state", "ok", "detail"),
    [
        ({}, "ok", True, ""),  # Community 1.23.2: no such field
        ({"consecutive_failures": None}, "ok", True, ""),
        ({"consecutive_failures": 0}, "ok", True, ""),
        ({"consecutive_failures": 4}, "failing", False, "4 deliveries in a row failed"),
        # Switched off after its failures (as those servers do): switched on again.
        (
            {"consecutive_failures": 9, "is_active": False},
            "inactive",
            True,
            "switched off: labelloop switched it on again",
        ),
    ],
)
def test_a_webhook_with_failed_deliveries_is_failing(fields: dict[str, Any], state: str, ok: bool, detail: str) -> None:
    """A webhook whose ``consecutive_failures`` is above 0 is ``failing`` (not ok: the gauge and
    doctor say so) and left as it is; absent, null or 0 it is ok; switched off, it is switched on."""
    writes: list[str] = []
    found = project_webhook.check(_label_studio([_webhook(**fields)], writes), 3)
    assert (found.state, found.ok, found.detail, found.url) == (state, ok, detail, URL)
    assert writes == (["PATCH /api/webhooks/7/"] if state == "inactive" else [])
