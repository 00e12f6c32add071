"""Receiver robustness: a Redis outage mid-run, and thousands of generated bodies and headers."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from service.app import create_app
from service.events import EVENT_STREAM
from service.protocol import ACCEPTED_ACTIONS
from service.settings import Settings
from service.stack import Stack, free_port
from tests.conftest import fixture


def _created(annotation_id: int) -> dict[str, Any]:
    body = fixture("webhook_ANNOTATION_CREATED.json")
    body["annotation"]["id"] = annotation_id
    return body


def _queued_args(client: redis.Redis, queue: str = "events") -> list[list[Any]]:
    """Decoded task arguments of the Celery messages waiting in ``queue``."""
    out = []
    for raw in client.lrange(queue, 0, -1):
        msg = json.loads(raw)
        assert msg["headers"]["task"] == "labelloop.handle_event"
        args, kwargs, _embed = json.loads(base64.b64decode(msg["body"]))
        assert kwargs == {}
        out.append(args)
    return out


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Stack, str, int]]:
    """The receiver under uvicorn (its own process) over a Redis with an append-only file."""
    port = free_port()
    stack = Stack(tmp_path, {"LABELLOOP_MODELS_DIR": str(tmp_path / "models")})
    stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(port, tmp_path / "redis", persist=True)
    url = stack.start_receiver(free_port())
    yield stack, url, port
    stack.stop_all()


def test_redis_outage_gives_fast_503_then_recovers_without_duplicates(
    receiver: tuple[Stack, str, int], tmp_path: Path
) -> None:
    """While Redis is down every webhook gets 503 within 1 s; after Redis restarts the same receiver
    accepts new events, and deliveries accepted before the outage stay deduplicated."""
    stack, url, port = receiver
    with httpx.Client(base_url=url, timeout=5) as http:
        for i in range(1, 21):
            assert http.post("/webhook", json=_created(i)).status_code == 201

        stack.stop("redis")
        for i in range(21, 31):
            t0 = time.perf_counter()
            resp = http.post("/webhook", json=_created(i))
            assert resp.status_code == 503, resp.text
            assert time.perf_counter() - t0 < 1.0
            assert "Redis" in resp.json()["error"]
        metrics = http.get("/metrics").text
        assert 'labelloop_webhook_events_total{action="ANNOTATION_CREATED",outcome="unavailable"} 10.0' in metrics

        stack.start_redis(port, tmp_path / "redis", persist=True)
        for i in range(21, 31):
            assert http.post("/webhook", json=_created(i)).status_code == 201
        for i in range(1, 31):
            resp = http.post("/webhook", json=_created(i))
            assert (resp.status_code, resp.json()) == (200, {"status": "duplicate"})

    client = redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])
    assert client.xlen(EVENT_STREAM) == 30
    ids = sorted(args[2][0][0] for args in _queued_args(client))
    assert ids == list(range(1, 31))


# --- generated input -----------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_action = st.sampled_from(sorted(ACCEPTED_ACTIONS) + ["PROJECT_UPDATED", "", "annotation_created"]) | st.text(
    max_size=12
)
_id = st.integers(-3, 2**40) | st.text(max_size=5) | st.none() | st.floats(allow_nan=False)
_annotation = st.fixed_dictionaries(
    {"id": _id}, optional={"updated_at": st.text(max_size=30) | st.none(), "task": _id, "was_cancelled": _json}
)
_body = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"action": _action},
        optional={
            "project": st.fixed_dictionaries({"id": _id}) | _id | _json,
            "annotation": _annotation | st.lists(_annotation, max_size=3) | _json,
            "annotations": st.lists(st.fixed_dictionaries({"id": _id}), max_size=3) | _json,
        },
    ),
)
_content_type = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "",
        "application/x-www-form-urlencoded",
        "application/vnd.api+json",
        "multipart/form-data",
    ]
)


@pytest.fixture(scope="module")
def fuzz_client(redis_server: tuple[Stack, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = redis_server[1]
    redis.Redis.from_url(url).flushall()
    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app(Settings(redis_url=url, models_dir=tmp / "m", cache_dir=tmp / "c"))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=_body, content_type=_content_type, raw=st.booleans(), junk=st.binary(max_size=64))
def test_generated_webhooks_never_5xx_and_enqueue_only_valid_events(
    fuzz_client: TestClient, body: Any, content_type: str, raw: bool, junk: bytes
) -> None:
    """5,000 generated bodies and headers: never a 5xx, never a traceback, and every enqueued event
    has a positive project id, an accepted action and well-formed changes."""
    content = junk if raw else json.dumps(body).encode()
    resp = fuzz_client.post("/webhook", content=content, headers={"content-type": content_type})
    assert resp.status_code < 500, resp.text
    assert "Traceback" not in resp.text
    client = redis.Redis.from_url(str(fuzz_client.app.state.labelloop.settings.redis_url))  # type: ignore[attr-defined]
    for project_id, action, changes in _queued_args(client):
        assert isinstance(project_id, int) and project_id > 0
        assert action in ACCEPTED_ACTIONS
        assert all(isinstance(i, int) and i > 0 and (u is None or isinstance(u, str)) for i, u in changes)
    client.delete("events")
