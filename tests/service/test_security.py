"""Safe by default: credentials guard every state-changing route, unauthenticated bodies are never
read, memory and Redis stay bounded, and nothing from Label Studio's input runs code.

Against the real receiver (in-process and under uvicorn), a real Redis and real Ultralytics.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
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

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.dev.synthetic import LABEL_CONFIG
from labelloop.events.changes import seq_key, stream_key
from labelloop.registry.base_models import is_asset_name
from labelloop.registry.params import ProjectParams
from labelloop.registry.params import load as load_params
from labelloop.training.process import run_training_process
from service.app import create_app
from service.events import DEDUP_TTL_S, EVENT_STREAM
from service.protocol import ACCEPTED_ACTIONS
from tests.conftest import connect, fixture
from tests.factories import make_settings, settings_env

SECRET = {"X-Labelloop-Secret": "s3cret"}


def _app(redis_url: str, tmp_path: Path, **settings: Any) -> TestClient:
    s = make_settings(tmp_path, redis_url=redis_url, **settings)
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
        settings_env(
            tmp_path, redis_url=redis_url, LABELLOOP_WEBHOOK_SECRET="s3cret", BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="pw"
        ),
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
            b"POST /webhook HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
        )
        sock.settimeout(2)
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 401"), head[:100]


@pytest.mark.slow
def test_crafted_bodies_keep_the_receiver_memory_bounded(tmp_path: Path, redis_url: str) -> None:
    """Concurrent webhooks at the body limit made of tiny JSON objects (the costliest to parse)
    leave the receiver's peak memory within a few hundred MiB; bodies over the limit are 413."""
    stack = Stack(tmp_path, settings_env(tmp_path, redis_url=redis_url))
    url = stack.start_receiver(free_port())
    try:
        pid = stack.procs["receiver"].pid

        def hwm_mib() -> float:
            line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
            return int(line.split()[1]) / 1024

        limit = make_settings(tmp_path).max_body_bytes
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

    def written() -> set[bytes]:
        # Predict processes of other tests in this session may still beat their heartbeat keys.
        return {k for k in client.keys("*") if not k.startswith(b"labelloop:predict:alive:")}

    with _app(redis_url, tmp_path) as app:
        keys_before = written()
        for pid in range(1000, 1300):
            body = fixture("webhook_ANNOTATION_CREATED.json")
            body["project"]["id"] = pid
            resp = app.post("/webhook", json=body)
            assert resp.status_code == 404 and "ML backend" in resp.json()["error"]
        assert written() == keys_before
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


@pytest.mark.slow
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


# --- extra params come only from the project's own ML backend connection --------------------------


@pytest.mark.labelstudio
def test_only_the_projects_connection_sets_its_extra_params(label_studio: tuple[str, str], tmp_path: Path) -> None:
    """Label Studio's own /setup (its project creator's token) stores the connection's extra
    params; a /setup with valid Basic credentials but a token that cannot read the project is 403
    and the stored params stay as they were."""
    ls_url, token = label_studio
    stack = Stack(
        tmp_path,
        {
            "LABELLOOP_REDIS_URL": "redis://127.0.0.1:1/0",  # /setup needs no Redis
            "LABELLOOP_MODELS_DIR": str(tmp_path / "models"),
            "LABEL_STUDIO_URL": ls_url,
            "LABEL_STUDIO_API_KEY": token,
            "BASIC_AUTH_USER": "ls",
            "BASIC_AUTH_PASS": "pw",
        },
    )
    url = stack.start_receiver(free_port())
    try:
        api = LabelStudioAPI(ls_url, token)
        pid = api.create_project("extra params owner")
        api.connect_backend(pid, url, basic_auth=("ls", "pw"), extra_params={"epochs": 7})
        assert load_params(tmp_path / "models", pid).epochs == 7
        forged = {
            **fixture("ml_setup_request.json"),
            "project": f"{pid}.1",
            "schema": LABEL_CONFIG,
            "extra_params": {"epochs": 99, "base_model": "yolo11x.pt"},
        }
        with httpx.Client(base_url=url, auth=("ls", "pw"), timeout=10) as http:
            for access_token in ("0" * 40, None):
                resp = http.post("/setup", json={**forged, "access_token": access_token})
                assert resp.status_code == 403 and "cannot read project" in resp.json()["error"]
            same = http.post("/setup", json={**forged, "extra_params": {"epochs": 7}, "access_token": None})
            assert same.status_code == 200, "params that do not change need no token"
        assert load_params(tmp_path / "models", pid).epochs == 7
    finally:
        stack.stop_all()


# --- generated input at the boundary -----------------------------------------------------------

_HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "/etc/passwd",
            "../../../../etc/passwd",
            "file:///etc/passwd",
            "http://169.254.169.254/latest/meta-data/",
            "https://example.com/x.pt",
            "yolo26n.pt/../../x.pt",
            "C:\\weights\\x.pt",
            "~/.ssh/id_rsa",
            "yolov8n.yaml\n",
            "!!python/object/apply:os.system ['id']",
            "yolo11n.pt",
        ]
    ),
)
_VALUES = st.one_of(_HOSTILE_TEXT, st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none())
_PARAM_KEYS = st.one_of(st.sampled_from(sorted(ProjectParams.model_fields)), st.text(max_size=12))


def test_generated_extra_params_never_name_a_file_and_never_500(redis_url: str, tmp_path: Path) -> None:
    """Generated /setup extra params (paths, URLs, YAML tags, huge numbers, unknown keys) are
    stored only when valid, a stored base model is always a bare Ultralytics asset name, and no
    answer is a 5xx."""
    with _app(redis_url, tmp_path) as client:

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(extra=st.one_of(st.dictionaries(_PARAM_KEYS, _VALUES, max_size=4), _VALUES))
        def run(extra: Any) -> None:
            body = json.dumps({**fixture("ml_setup_request.json"), "extra_params": extra})  # NaN, Infinity too
            resp = client.post("/setup", content=body, headers={"content-type": "application/json"})
            assert resp.status_code in (200, 400, 422), resp.text
            stored = load_params(tmp_path / "models", 1)
            assert stored.base_model is None or is_asset_name(stored.base_model)

        run()


def test_generated_webhooks_without_credentials_record_nothing(redis_url: str, tmp_path: Path) -> None:
    """Generated webhook headers and bodies without the right credential are 401 with nothing
    recorded; with it, never a 5xx."""
    client = redis.Redis.from_url(redis_url)
    bodies = st.fixed_dictionaries(
        {"action": st.one_of(st.sampled_from(sorted(ACCEPTED_ACTIONS)), st.text(max_size=10)), "project": _VALUES},
        optional={"annotation": st.dictionaries(st.text(max_size=5), _VALUES, max_size=3), "task": _VALUES},
    )
    headers = st.dictionaries(
        st.sampled_from(["authorization", "x-labelloop-secret", "x-other", "content-type"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
        max_size=3,
    )
    with _app(redis_url, tmp_path, webhook_secret="s3cret", basic_auth_user="ls", basic_auth_pass="pw") as app:
        connect(app, auth=("ls", "pw"))

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(body=bodies, extra=headers, authorised=st.booleans())
        def run(body: dict[str, Any], extra: dict[str, str], authorised: bool) -> None:
            sent = {**extra, **(SECRET if authorised else {})}
            if authorised:
                sent.pop("authorization", None)
            before = client.xlen(EVENT_STREAM)
            resp = app.post("/webhook", content=json.dumps(body), headers={"content-type": "application/json", **sent})
            assert resp.status_code < 500, resp.text
            if not authorised and extra.get("x-labelloop-secret") != "s3cret":
                assert resp.status_code in (401, 415), resp.text
                assert client.xlen(EVENT_STREAM) == before

        run()


def test_requests_beyond_the_concurrency_bound_get_503(tmp_path: Path, redis_url: str) -> None:
    """With LABELLOOP_MAX_CONCURRENT_REQUESTS requests in flight (slow senders), the next one is a
    503 at once instead of one more body held in memory; the slots free up when they finish."""
    stack = Stack(
        tmp_path,
        settings_env(tmp_path, redis_url=redis_url, LABELLOOP_MAX_CONCURRENT_REQUESTS="3"),
    )
    url = stack.start_receiver(free_port())
    port = int(url.rsplit(":", 1)[1])
    slow = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(
                b"POST /webhook HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            slow.append(sock)
        with httpx.Client(base_url=url, timeout=5) as http:
            assert http.post("/webhook", json={}).status_code == 503
            for sock in slow:
                sock.close()
            slow.clear()
            wait_until(lambda: http.post("/webhook", json={}).status_code == 422, 10, "slots freed")
    finally:
        for sock in slow:
            sock.close()
        stack.stop_all()
