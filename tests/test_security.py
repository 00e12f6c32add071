"""Safe by default: credentials guard every state-changing route, unauthenticated bodies are never
read, memory and Redis stay bounded, and nothing from Label Studio's input runs code.

Against the real receiver (in-process and under uvicorn), a real Redis and real Ultralytics.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.testclient import TestClient

from service.app import create_app
from service.events import DEDUP_TTL_S, EVENT_STREAM
from service.settings import Settings
from service.stack import Stack, free_port
from tests.conftest import connect, fixture
from workers.changes import seq_key, stream_key
from workers.training import run_training_process

SECRET = {"X-Labelloop-Secret": "s3cret"}


def _app(redis_url: str, tmp_path: Path, **settings: Any) -> TestClient:
    s = Settings(redis_url=redis_url, models_dir=tmp_path / "models", cache_dir=tmp_path / "cache", **settings)
    return TestClient(create_app(s), raise_server_exceptions=False)


def _queued(redis_url: str) -> int:
    return int(redis.Redis.from_url(redis_url).llen("events"))


# --- which credential each route needs -------------------------------------------------------


def test_secret_alone_guards_start_training_and_setup(redis_url: str, tmp_path: Path) -> None:
    """With only the webhook secret set, START_TRAINING and /setup without it are 401 and change
    nothing; with it they pass (no route is open while a credential is configured)."""
    with _app(redis_url, tmp_path, webhook_secret="s3cret") as client:
        setup = fixture("ml_setup_request.json")
        assert client.post("/setup", json={**setup, "extra_params": {"epochs": 3}}).status_code == 401
        assert not (tmp_path / "models" / "1").exists(), "no extra params stored"
        train = fixture("ml_webhook_START_TRAINING.json")
        assert client.post("/webhook", json=train).status_code == 401
        assert _queued(redis_url) == 0 and redis.Redis.from_url(redis_url).xlen(EVENT_STREAM) == 0
        connect(client, headers=SECRET)
        assert client.post("/webhook", json=train, headers=SECRET).status_code == 201
        assert client.post("/projects/1/rollback").status_code == 401


def test_basic_alone_guards_annotation_webhooks(redis_url: str, tmp_path: Path) -> None:
    """With only Basic auth set, annotation webhooks need it too (a project webhook can send an
    Authorization header); without it 401 and nothing recorded."""
    with _app(redis_url, tmp_path, basic_auth_user="ls", basic_auth_pass="pw") as client:
        connect(client, auth=("ls", "pw"))
        created = fixture("webhook_ANNOTATION_CREATED.json")
        assert client.post("/webhook", json=created).status_code == 401
        assert _queued(redis_url) == 0
        assert client.post("/webhook", json=created, auth=("ls", "pw")).status_code == 201


def test_auth_failure_metric_is_labelled_by_route_not_path(redis_url: str, tmp_path: Path) -> None:
    """The auth-failure counter uses the route's template: paths a client makes up add no series."""
    with _app(redis_url, tmp_path, basic_auth_user="ls", basic_auth_pass="pw") as client:
        for pid in (1, 22, 333):
            assert client.post(f"/projects/{pid}/rollback").status_code == 401
        text = client.get("/metrics").text
    assert 'labelloop_auth_failures_total{kind="basic",route="/projects/{project_id}/rollback"} 3.0' in text
    assert "/projects/22/" not in text


# --- bodies ------------------------------------------------------------------------------------


@pytest.fixture
def uvicorn_receiver(tmp_path: Path, redis_url: str) -> Iterator[tuple[Stack, str]]:
    stack = Stack(
        tmp_path,
        {
            "LABELLOOP_REDIS_URL": redis_url,
            "LABELLOOP_MODELS_DIR": str(tmp_path / "models"),
            "LABELLOOP_WEBHOOK_SECRET": "s3cret",
            "BASIC_AUTH_USER": "ls",
            "BASIC_AUTH_PASS": "pw",
        },
    )
    url = stack.start_receiver(free_port())
    yield stack, url
    stack.stop_all()


def test_unauthenticated_body_is_refused_before_it_is_sent(uvicorn_receiver: tuple[Stack, str]) -> None:
    """A webhook without credentials announcing a body is answered 401 from its headers alone: the
    receiver does not wait for (or read) a byte of it."""
    _stack, url = uvicorn_receiver
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
        )
        sock.settimeout(2)
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 401"), head[:100]


def test_crafted_bodies_keep_the_receiver_memory_bounded(tmp_path: Path, redis_url: str) -> None:
    """Concurrent webhooks at the body limit made of tiny JSON objects (the costliest to parse)
    leave the receiver's peak memory within a few hundred MiB; bodies over the limit are 413."""
    stack = Stack(tmp_path, {"LABELLOOP_REDIS_URL": redis_url, "LABELLOOP_MODELS_DIR": str(tmp_path / "models")})
    url = stack.start_receiver(free_port())
    try:
        pid = stack.procs["receiver"].pid

        def hwm_mib() -> float:
            line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
            return int(line.split()[1]) / 1024

        limit = Settings().max_body_bytes
        head = b'{"action":"ANNOTATION_CREATED","project":1,"x":['
        body = head + b"{}," * ((limit - len(head) - 10) // 3) + b"{}]}"
        assert len(body) <= limit
        before = hwm_mib()
        with httpx.Client(base_url=url, timeout=60) as http, concurrent.futures.ThreadPoolExecutor(16) as pool:
            sent = headers = {"content-type": "application/json"}
            codes = list(pool.map(lambda _: http.post("/webhook", content=body, headers=sent).status_code, range(32)))
            over = http.post("/webhook", content=body + b" " * limit, headers=headers)
        assert set(codes) == {400}, codes  # no annotation object: refused after parsing
        assert over.status_code == 413
        grown = hwm_mib() - before
        print(f"peak memory grew {grown:.0f} MiB")
        assert grown < 400, f"peak memory grew {grown:.0f} MiB"
    finally:
        stack.stop_all()


# --- Redis stays bounded -----------------------------------------------------------------------


def test_webhooks_for_unknown_projects_write_nothing(redis_url: str, tmp_path: Path) -> None:
    """Webhooks for project ids labelloop does not know (no /setup, no versions, no Label Studio
    token that reads them) are 404 with the fix and leave Redis as it was."""
    client = redis.Redis.from_url(redis_url)
    with _app(redis_url, tmp_path) as app:
        keys_before = set(client.keys("*"))
        for pid in range(1000, 1300):
            body = fixture("webhook_ANNOTATION_CREATED.json")
            body["project"]["id"] = pid
            resp = app.post("/webhook", json=body)
            assert resp.status_code == 404 and "ML backend" in resp.json()["error"]
        assert set(client.keys("*")) == keys_before
        assert client.xlen(EVENT_STREAM) == 0


def test_every_key_a_webhook_writes_is_bounded(redis_url: str, tmp_path: Path) -> None:
    """After an accepted webhook, the dedup key and the change log expire, the event stream is
    capped, and the entry holds no label config text or token."""
    client = redis.Redis.from_url(redis_url)
    with _app(redis_url, tmp_path) as app:
        connect(app)
        body = fixture("webhook_ANNOTATION_CREATED.json")
        assert app.post("/webhook", json=body).status_code == 201
    dedup = client.keys("labelloop:delivery:*")
    assert len(dedup) == 1 and 0 < client.ttl(dedup[0]) <= DEDUP_TTL_S <= 86400
    assert client.ttl(stream_key(1)) > 0 and client.ttl(seq_key(1)) > 0
    [(_id, fields)] = client.xrange(stream_key(1))
    assert b"<View" not in fields[b"entry"] and body["project"]["token"].encode() not in fields[b"entry"]


def test_oversized_entry_makes_a_gap_instead_of_filling_redis(redis_url: str, tmp_path: Path) -> None:
    """An annotation too large to keep in the change log is recorded and enqueued, but its entry
    is a gap (the rebuild reads Label Studio), not a copy of the body."""
    client = redis.Redis.from_url(redis_url)
    with _app(redis_url, tmp_path) as app:
        connect(app)
        body = fixture("webhook_ANNOTATION_CREATED.json")
        body["annotation"]["result"] = [{"value": {"points": [[1.5, 2.5]] * 60_000}}]
        assert app.post("/webhook", json=body).status_code == 201
    assert client.xlen(stream_key(1)) == 0 and int(client.get(seq_key(1)) or 0) == 1
    assert _queued(redis_url) == 1


def test_metrics_expose_redis_memory_against_its_limit(redis_url: str, tmp_path: Path) -> None:
    """/metrics shows Redis' used memory and its maxmemory, to alert on before it refuses writes."""
    with _app(redis_url, tmp_path) as app:
        text = app.get("/metrics").text
    used = next(x for x in text.splitlines() if x.startswith("labelloop_redis_used_memory_bytes "))
    assert float(used.split()[1]) > 0
    assert "labelloop_redis_maxmemory_bytes " in text


# --- weights labelloop did not write run no code -------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_payload_as_base_model_runs_nothing(tmp_path: Path) -> None:
    """A .pt that unpickles into code (an operator's file, a tampered download) is refused by
    Ultralytics' safe loading in the training process; the payload never runs."""
    import torch

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil)
    spec = {
        "data": str(tmp_path / "data.yaml"),
        "weights": str(evil),
        "epochs": 1,
        "imgsz": 64,
        "batch": 2,
        "device": "cpu",
        "workers": 0,
        "config_dir": str(tmp_path / "yolo"),
    }
    t0 = time.monotonic()
    with pytest.raises(Exception, match="supported Ultralytics checkpoint"):
        run_training_process(spec, tmp_path / "run", timeout_s=120)
    assert not marker.exists()
    assert time.monotonic() - t0 < 120
