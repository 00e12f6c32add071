"""Receiver robustness: a Redis outage mid-run, and thousands of generated bodies and headers."""

from __future__ import annotations

import base64
import json
import signal
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

from labelloop.dev.stack import Stack, free_port
from labelloop.events.changes import ChangeLog, ChangeLogUnusable
from service.app import create_app
from service.events import EVENT_STREAM
from service.protocol import ACCEPTED_ACTIONS
from tests.conftest import connect, fixture
from tests.factories import make_settings


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
    with httpx.Client(base_url=url, timeout=10) as http:
        connect(http)
    yield stack, url, port
    stack.stop_all()


def test_redis_outage_gives_fast_503_then_recovers_without_duplicates(
    receiver: tuple[Stack, str, int], tmp_path: Path
) -> None:
    """While Redis is down every webhook gets 503 within 1 s; after Redis restarts the same receiver
    accepts new events, and deliveries accepted before the outage stay deduplicated. The refused
    webhooks leave a gap in the project's change log, so rebuilds read Label Studio again."""
    stack, url, port = receiver
    with httpx.Client(base_url=url, timeout=5) as http:
        empty = ChangeLog(redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])).position(1)
        for i in range(1, 21):
            assert http.post("/webhook", json=_created(i)).status_code == 201
        before = ChangeLog(redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])).read(1, empty)
        assert len(before.entries) == 20

        stack.stop("redis")
        for i in range(21, 31):
            t0 = time.perf_counter()
            resp = http.post("/webhook", json=_created(i))
            assert resp.status_code == 503, resp.text
            assert time.perf_counter() - t0 < 5.0  # not a hang (the Redis timeout is 0.3 s)
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
    with pytest.raises(ChangeLogUnusable, match="gap"):
        ChangeLog(client).read(1, before.position)


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
    app = create_app(make_settings(tmp, redis_url=url))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.slow
@settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=_body, content_type=_content_type, raw=st.booleans(), junk=st.binary(max_size=64))
def test_generated_webhooks_never_5xx_and_enqueue_only_valid_events(
    fuzz_client: TestClient, body: Any, content_type: str, raw: bool, junk: bytes
) -> None:
    """2,500 generated bodies and headers: never a 5xx, never a traceback, and every enqueued event
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


def test_webhook_under_uvicorn_streams_and_limits_chunked_bodies(receiver: tuple[Stack, str, int]) -> None:
    """Through uvicorn (uvloop, httptools): a chunked body without Content-Length is read whole,
    a chunked body over the limit is a 413, and GET /webhook is a 405."""
    _stack, url, _port = receiver
    raw = json.dumps(_created(7)).encode()

    def pieces(data: bytes, size: int) -> Iterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    with httpx.Client(base_url=url, timeout=10) as http:
        resp = http.post("/webhook", content=pieces(raw, 500), headers={"content-type": "application/json"})
        assert resp.status_code == 201, resp.text
        big = raw + b" " * (11 * 1024 * 1024)
        resp = http.post("/webhook", content=pieces(big, 1024 * 1024), headers={"content-type": "application/json"})
        assert resp.status_code == 413
        assert http.get("/webhook").status_code == 405


SECRET = "refusal-test-secret-0123456789"


def test_refused_webhooks_leave_their_gap_in_redis_across_a_killed_receiver(redis_url: str, tmp_path: Path) -> None:
    """A webhook refused with 422 (a known project named in its body) or 413 (its project not
    read) makes the change log unusable through Redis at once: killing the receiver right after
    the refusal loses nothing, and a webhook of an unknown project still writes nothing."""
    env = {
        "LABELLOOP_MODELS_DIR": str(tmp_path / "models"),
        "LABELLOOP_REDIS_URL": redis_url,
        "LABELLOOP_WEBHOOK_SECRET": SECRET,
        "LABELLOOP_MAX_BODY_BYTES": str(64 * 1024),
    }
    stack = Stack(tmp_path, env)
    port = free_port()
    url = stack.start_receiver(port)
    client = redis.Redis.from_url(redis_url)
    log = ChangeLog(client)
    auth = {"X-Labelloop-Secret": SECRET}
    invalid = _created(2)
    invalid["annotation"]["id"] = "not an id"
    big = _created(3)
    big["annotation"]["result"] = [{"value": {"text": "x" * 70_000}}]
    refusals: list[tuple[str, int, dict[str, Any], dict[str, str]]] = [
        ("gap", 422, invalid, auth),
        ("refused", 413, big, auth),
    ]
    try:
        with httpx.Client(base_url=url, timeout=10, headers=auth) as http:
            connect(http)
            unknown = _created(5)
            unknown["project"]["id"] = 4242
            unknown["annotation"]["id"] = "not an id"
            before = set(client.keys("*"))
            assert http.post("/webhook", json=unknown).status_code == 422
            assert set(client.keys("*")) == before
        for n, (reason, status, body, headers) in enumerate(refusals):
            with httpx.Client(base_url=url, timeout=10) as http:
                assert http.post("/webhook", json=_created(100 + n), headers=auth).status_code == 201
                position = log.read(1, log.position(1)).position
                assert http.post("/webhook", json=body, headers=headers).status_code == status
            stack.stop("receiver", signal.SIGKILL)  # whatever it kept in memory is gone
            url = stack.start_receiver(port)
            with pytest.raises(ChangeLogUnusable, match=reason):
                log.read(1, position)
    finally:
        stack.stop_all()


def test_a_receiver_killed_while_redis_refused_writes_still_leaves_a_gap(
    receiver: tuple[Stack, str, int],
) -> None:
    """A webhook refused with 503 while Redis refuses writes (out of memory under noeviction), by a
    receiver killed before Redis took writes again, still makes the change log unusable: the
    receiver that starts next makes one gap in every log."""
    stack, url, _port = receiver
    client = redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])
    log = ChangeLog(client)
    with httpx.Client(base_url=url, timeout=5) as http:
        assert http.post("/webhook", json=_created(1)).status_code == 201
        position = log.read(1, log.position(1)).position
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        try:
            assert http.post("/webhook", json=_created(2)).status_code == 503
        finally:
            client.config_set("maxmemory", 0)
    stack.stop("receiver", signal.SIGKILL)
    url = stack.start_receiver(int(url.rsplit(":", 1)[1]))
    with httpx.Client(base_url=url, timeout=5) as http:
        assert http.post("/webhook", json=_created(3)).status_code == 201
    with pytest.raises(ChangeLogUnusable, match="refused"):
        log.read(1, position)
