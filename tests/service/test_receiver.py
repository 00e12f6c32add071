"""The receiver against real Redis: the ML backend protocol as Label Studio 1.23 sends it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog
import structlog.testing
from starlette.testclient import TestClient

from labelloop.registry.store import Registry
from labelloop.settings import Settings
from service.app import create_app
from service.events import EVENT_STREAM, CeleryMessage
from tests.conftest import connect, fixture
from tests.factories import make_settings, publish_version
from workers.celery_app import TASK_HANDLE_EVENT, create_celery


def _client(settings: Settings, **auth: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        connect(client, **auth)
        yield client


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(tmp_path, redis_url=redis_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    yield from _client(settings)


def _queued_tasks(redis_url: str, queue: str) -> list[dict]:
    """Celery messages waiting in a queue (kombu's Redis transport keeps a list per queue)."""
    raw = redis.Redis.from_url(redis_url).lrange(queue, 0, -1)
    return [json.loads(m) for m in raw]


@pytest.mark.parametrize("path", ["/", "/health"])
def test_health_is_up(client: TestClient, path: str) -> None:
    """GET / and /health answer {"status": "UP"}."""
    resp = client.get(path)
    assert resp.status_code == 200 and resp.json()["status"] == "UP"


def test_setup_returns_served_version(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    """/setup answers "untrained" before the first version and the registry's current one after."""
    body = fixture("ml_setup_request.json")
    assert client.post("/setup", json=body).json() == {"model_version": "untrained"}
    publish_version(Registry(settings.models_dir), 1)
    assert client.post("/setup", json=body).json() == {"model_version": "v1"}


def test_setup_rejects_untrainable_label_config(client: TestClient) -> None:
    """A label config without RectangleLabels is a 422 with the reason, at /setup time."""
    body = {**fixture("ml_setup_request.json"), "schema": '<View><Text name="t" value="$t"/></View>'}
    resp = client.post("/setup", json=body)
    assert resp.status_code == 422
    assert "RectangleLabels" in resp.json()["error"]


def test_setup_rejects_bad_project(client: TestClient) -> None:
    """A project that is not "<id>.<timestamp>" is a 400."""
    resp = client.post("/setup", json={**fixture("ml_setup_request.json"), "project": "abc"})
    assert resp.status_code == 400 and "project" in resp.json()["error"]


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("webhook_ANNOTATION_CREATED.json", [[1, "2026-11-21T13:36:21.835436Z"]]),
        ("webhook_ANNOTATION_UPDATED.json", [[1, "2026-11-21T13:36:22.643195Z"]]),
        ("webhook_ANNOTATIONS_DELETED.json", [[3, None]]),
        ("ml_webhook_START_TRAINING.json", []),
    ],
)
def test_webhook_records_then_enqueues(client: TestClient, redis_url: str, name: str, changes: list) -> None:
    """Each accepted action is recorded in the Redis stream and enqueued by task name on `events`."""
    body = fixture(name)
    resp = client.post("/webhook", json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"status": "accepted"}
    entries = redis.Redis.from_url(redis_url).xrange(EVENT_STREAM)
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"action"] == body["action"].encode()
    assert fields[b"project_id"] == b"1"
    assert fields[b"annotation_ids"] == ",".join(str(i) for i, _ in changes).encode()
    assert abs(float(fields[b"received_at"]) - time.time()) < 60
    queued = _queued_tasks(redis_url, "events")
    assert [m["headers"]["task"] for m in queued] == ["labelloop.handle_event"]
    assert queued[0]["headers"]["argsrepr"] == repr([1, body["action"], changes])


def test_same_delivery_twice_is_recorded_once(client: TestClient, redis_url: str) -> None:
    """Resending the same annotation update is acknowledged but neither recorded nor enqueued again."""
    body = fixture("webhook_ANNOTATION_UPDATED.json")
    assert client.post("/webhook", json=body).json() == {"status": "accepted"}
    resp = client.post("/webhook", json=body)
    assert resp.status_code == 200 and resp.json() == {"status": "duplicate"}
    assert redis.Redis.from_url(redis_url).xlen(EVENT_STREAM) == 1
    assert len(_queued_tasks(redis_url, "events")) == 1


def test_unknown_action_is_200_and_ignored(client: TestClient, redis_url: str) -> None:
    """PROJECT_UPDATED and other actions get 200 {"status": "Unknown event"} and record nothing."""
    for name in ("ml_webhook_PROJECT_UPDATED.json", "webhook_TASKS_CREATED.json"):
        resp = client.post("/webhook", json=fixture(name))
        assert resp.status_code == 200 and resp.json() == {"status": "Unknown event"}
    assert redis.Redis.from_url(redis_url).xlen(EVENT_STREAM) == 0


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid JSON"),
        (
            {"content": b"action=x", "headers": {"content-type": "application/x-www-form-urlencoded"}},
            415,
            "json",
        ),
        ({"json": {"project": {"id": 1}}}, 422, "action"),
        ({"json": [1, 2]}, 422, "action"),
        (
            {"json": {"action": "ANNOTATION_CREATED", "project": {"id": "x"}, "annotation": {"id": 1}}},
            422,
            "project.id",
        ),
        ({"json": {"action": "ANNOTATION_CREATED", "project": {"id": 1}}}, 400, "annotation"),
        (
            {"json": {"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": []}},
            400,
            "annotations",
        ),
        ({"json": {"action": "START_TRAINING"}}, 422, "project"),
    ],
)
def test_malformed_webhooks_are_4xx_with_reason(
    client: TestClient, redis_url: str, kwargs: dict, status: int, reason: str
) -> None:
    """Malformed bodies get a 4xx whose body names the problem, and nothing is recorded."""
    resp = client.post("/webhook", **kwargs)
    assert resp.status_code == status
    assert reason in resp.text
    assert "Traceback" not in resp.text
    assert redis.Redis.from_url(redis_url).xlen(EVENT_STREAM) == 0
    assert _queued_tasks(redis_url, "events") == []


def test_redis_down_is_503_within_a_second(tmp_path: Path) -> None:
    """With Redis unreachable, a webhook gets 503 quickly instead of hanging or a 500."""
    settings = make_settings(tmp_path, redis_url="redis://127.0.0.1:9/0")
    for client in _client(settings):
        t0 = time.perf_counter()
        resp = client.post("/webhook", json=fixture("webhook_ANNOTATION_CREATED.json"))
        assert resp.status_code == 503
        assert time.perf_counter() - t0 < 5.0  # not a hang (the Redis timeout is 0.3 s)
        assert "Redis" in resp.json()["error"]


def test_metrics_count_events(client: TestClient) -> None:
    """/metrics exposes webhook events by action and outcome in Prometheus format."""
    client.post("/webhook", json=fixture("webhook_ANNOTATION_CREATED.json"))
    text = client.get("/metrics").text
    assert 'labelloop_webhook_events_total{action="ANNOTATION_CREATED",outcome="accepted"} 1.0' in text


def test_refused_webhook_series_are_at_zero_before_the_first_refusal(client: TestClient) -> None:
    """Every refusal outcome an alert counts is exposed at 0 from the start, so the alert's
    ``increase()`` sees the first refusal (a series born with its first increment has no earlier
    sample to rise from); a webhook that is no event counts, and so does one that is not JSON."""
    text = client.get("/metrics").text
    for outcome in ("rejected", "unavailable", "unknown project"):
        assert f'labelloop_webhook_events_total{{action="ANNOTATION_CREATED",outcome="{outcome}"}} 0.0' in text
    assert 'labelloop_webhook_events_total{action="(none)",outcome="rejected"} 0.0' in text
    client.post("/webhook", json={"project": {"id": 1}})
    text = client.get("/metrics").text
    assert 'labelloop_webhook_events_total{action="(none)",outcome="rejected"} 1.0' in text
    bad = client.post("/webhook", content=b'{"action": ', headers={"content-type": "application/json"})
    assert bad.status_code == 400, bad.text
    text = client.get("/metrics").text
    assert 'labelloop_webhook_events_total{action="(none)",outcome="rejected"} 2.0' in text


def test_receiver_never_imports_torch_or_ultralytics() -> None:
    """Importing and building the receiver app loads neither torch nor ultralytics."""
    # The child builds its settings by hand, from the defaults: it runs outside the tests (no factories).
    code = (
        "import sys; from service.app import create_app; from labelloop.settings import Settings; "
        "create_app(Settings()); "
        "bad = [m for m in ('torch', 'ultralytics', 'torchvision') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


@pytest.fixture
def secured(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path, redis_url=redis_url, basic_auth_user="ls", basic_auth_pass="pw", webhook_secret="s3cret"
    )
    yield from _client(settings, auth=("ls", "pw"))


@pytest.mark.parametrize(
    ("path", "body", "kwargs"),
    [
        ("/setup", "ml_setup_request.json", {}),
        ("/setup", "ml_setup_request.json", {"auth": ("ls", "wrong")}),
        ("/setup", "ml_setup_request.json", {"headers": {"authorization": "Basic !!!"}}),
        ("/predict", "ml_predict_request.json", {"auth": ("nobody", "pw")}),
        ("/webhook", "ml_webhook_START_TRAINING.json", {"headers": {"X-Labelloop-Secret": "s3cret"}}),
    ],
)
def test_basic_auth_required_on_ml_backend_routes(
    secured: TestClient, redis_url: str, path: str, body: str, kwargs: dict
) -> None:
    """/setup, /predict and START_TRAINING need HTTP Basic: 401 with WWW-Authenticate, nothing recorded."""
    resp = secured.post(path, json=fixture(body), **kwargs)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Basic")
    assert redis.Redis.from_url(redis_url).xlen(EVENT_STREAM) == 0


@pytest.mark.parametrize("headers", [{}, {"X-Labelloop-Secret": "wrong"}, {"X-Other": "s3cret"}])
def test_webhook_secret_required_on_annotation_webhooks(secured: TestClient, redis_url: str, headers: dict) -> None:
    """Annotation webhooks need the shared secret header (Basic auth does not replace it); 401, nothing recorded."""
    resp = secured.post("/webhook", json=fixture("webhook_ANNOTATION_CREATED.json"), headers=headers, auth=("ls", "pw"))
    assert resp.status_code == 401
    assert "www-authenticate" not in resp.headers
    assert redis.Redis.from_url(redis_url).xlen(EVENT_STREAM) == 0
    assert _queued_tasks(redis_url, "events") == []
    assert 'labelloop_auth_failures_total{kind="secret",route="/webhook"}' in secured.get("/metrics").text


def test_right_credentials_pass(secured: TestClient, redis_url: str) -> None:
    """With the right credentials every route works, and /health stays open by default."""
    assert secured.get("/health").status_code == 200
    assert secured.post("/setup", json=fixture("ml_setup_request.json"), auth=("ls", "pw")).status_code == 200
    created = secured.post(
        "/webhook", json=fixture("webhook_ANNOTATION_CREATED.json"), headers={"X-Labelloop-Secret": "s3cret"}
    )
    assert created.status_code == 201
    train = secured.post("/webhook", json=fixture("ml_webhook_START_TRAINING.json"), auth=("ls", "pw"))
    assert train.status_code == 201
    assert redis.Redis.from_url(redis_url).xlen(EVENT_STREAM) == 2


def test_oversized_body_is_413_before_reading(client: TestClient) -> None:
    """A Content-Length over the limit is refused with 413 from the header alone."""
    resp = client.post(
        "/webhook",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": str(11 * 1024 * 1024)},
    )
    assert resp.status_code == 413


def test_bulk_annotations_created_counts_each(client: TestClient, redis_url: str) -> None:
    """ANNOTATIONS_CREATED (bulk: `annotation` is a list) enqueues one change per annotation."""
    one = fixture("webhook_ANNOTATION_CREATED.json")
    second = {**one["annotation"], "id": 2}
    body = {**one, "action": "ANNOTATIONS_CREATED", "annotation": [one["annotation"], second]}
    assert client.post("/webhook", json=body).status_code == 201
    queued = _queued_tasks(redis_url, "events")
    assert "[1, '2026-11-21T13:36:21.835436Z'], [2, '2026-11-21T13:36:21.835436Z']" in queued[0]["headers"]["argsrepr"]


def test_versions_promote_and_rollback_endpoints(
    client: TestClient, settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    """GET /versions lists versions for Label Studio; promote and rollback move CURRENT, announce it on
    pub/sub, queue the served version's pre-annotation, and map unknown versions to 404 and
    impossible rollbacks to 409."""
    registry = Registry(settings.models_dir)
    for _ in range(3):
        publish_version(registry, 7, metrics={"map50_95": 0.5})
    pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("labelloop:versions")
    assert client.get("/versions").json() == {"versions": ["v1", "v2", "v3"]}
    assert client.get("/versions?project=7.123").json() == {"versions": ["v1", "v2", "v3"]}

    assert client.post("/projects/7/promote", json={"version": "v1"}).json() == {"model_version": "v1"}
    assert registry.current_name(7) == "v1"
    deadline = time.monotonic() + 2
    messages: list[dict] = []
    while len(messages) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)  # the subscribe confirmation reads as None
        if message:
            messages.append(json.loads(message["data"]))
    # Workers are first told to warm v1 up, then to serve it.
    assert [(m["project_id"], m["version"], m["action"]) for m in messages] == [(7, "v1", "warm"), (7, "v1", "serve")]
    assert client.post("/projects/7/rollback").json() == {"model_version": "v3"}
    # Each served version pre-annotates the project (on its own queue), superseding the last run.
    queued = _queued_tasks(redis_url, "preannotate")[::-1]  # kombu pushes on the left: newest first
    assert [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in queued] == [
        ("labelloop.preannotate", repr([7, "v1"])),
        ("labelloop.preannotate", repr([7, "v3"])),
    ]
    listed = client.get("/projects/7/versions").json()
    assert listed["current"] == "v3"
    assert [v["status"] for v in listed["versions"]] == ["rolled back", "promoted", "serving"]
    assert client.get("/projects/7/status").json()["model_version"] == "v3"

    missing = client.post("/projects/7/promote", json={"version": "v9"})
    assert missing.status_code == 404 and "v9" in missing.json()["error"]
    assert client.post("/projects/7/promote", json={}).status_code == 400
    publish_version(registry, 8)
    assert client.post("/projects/8/rollback").status_code == 409


def test_model_endpoints_need_basic_auth(secured: TestClient) -> None:
    """Version listing, promote, rollback and status are refused without Basic credentials."""
    for method, path in [
        ("get", "/versions"),
        ("post", "/projects/1/promote"),
        ("post", "/projects/1/rollback"),
        ("get", "/projects/1/status"),
        ("get", "/projects/1/versions"),
    ]:
        assert getattr(secured, method)(path).status_code == 401, path


def test_ids_beyond_64_bits_are_422_not_rounded(client: TestClient, redis_url: str) -> None:
    """Ids are database bigints: a larger one is refused with its field path, never stored rounded."""
    body = fixture("webhook_ANNOTATION_CREATED.json")
    body["annotation"]["id"] = 2**64 + 1
    resp = client.post("/webhook", json=body)
    assert resp.status_code == 422 and "annotation.AnnotationRef.id" in resp.text
    assert redis.Redis.from_url(redis_url).xlen(EVENT_STREAM) == 0


def test_webhook_other_methods_are_405(client: TestClient) -> None:
    """POST /webhook is the webhook endpoint; other methods get Starlette's 405."""
    assert client.get("/webhook").status_code == 405


def test_webhook_logging_summarises_accepted_and_logs_each_refusal(client: TestClient) -> None:
    """Accepted events are logged as a periodic `webhooks` summary (per event only at DEBUG); every
    refusal is logged on its own."""
    body = fixture("webhook_ANNOTATION_CREATED.json")
    with structlog.testing.capture_logs() as logs:
        assert client.post("/webhook", json=body).status_code == 201
        assert client.post("/webhook", json=body).status_code == 200
        body["annotation"]["id"] = 2
        assert client.post("/webhook", json=body).status_code == 201
        assert client.post("/webhook", content=b"{", headers={"content-type": "application/json"}).status_code == 400
        assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 422
        assert client.post("/webhook", json=[]).status_code == 422
    summaries = [e for e in logs if e["event"] == "webhooks"]
    assert summaries == [{"event": "webhooks", "log_level": "info", "since_s": None, "accepted": 1}]
    rejected = [(e["status"], e["log_level"]) for e in logs if e["event"] == "request_rejected"]
    assert rejected == [(400, "info"), (422, "info"), (422, "info")]


def test_celery_message_is_what_send_task_pushes(settings: Settings, redis_url: str) -> None:
    """The message built for the Lua script carries the same headers and body a real ``send_task`` pushes through
    kombu's Redis transport (ids aside), with fresh version-4 ids per message."""
    celery = create_celery(settings)
    args = [1, "ANNOTATION_CREATED", [[1, "2026-11-21T13:36:21.835436Z"], [2, None]]]
    celery.send_task(TASK_HANDLE_EVENT, args=args, queue="events")
    real = _queued_tasks(redis_url, "events")[0]
    builder = CeleryMessage(celery, TASK_HANDLE_EVENT, "events")
    ours, other = (json.loads(builder.build(args)) for _ in range(2))
    ids = ("id", "root_id")
    # send_task leaves ignore_result to the worker (None); as_task_v2 says False: same effect.
    loose = (*ids, "ignore_result")
    assert {k: v for k, v in ours["headers"].items() if k not in loose} == {
        k: v for k, v in real["headers"].items() if k not in loose
    }
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(real["body"]))
    assert ours["content-type"] == real["content-type"] and ours["content-encoding"] == real["content-encoding"]
    for msg in (ours, other):
        task_id = msg["headers"]["id"]
        assert uuid.UUID(task_id).version == 4 and str(uuid.UUID(task_id)) == task_id
        assert msg["headers"]["root_id"] == msg["properties"]["correlation_id"] == task_id
        assert msg["properties"]["delivery_info"]["routing_key"] == "events"
        assert msg["properties"]["body_encoding"] == "base64"
    assert ours["headers"]["id"] != other["headers"]["id"]
    assert ours["properties"]["delivery_tag"] != other["properties"]["delivery_tag"]


def test_versions_and_rollback_survive_a_torn_history_and_an_emptied_manifest(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """After a crash tore the history's last line and emptied a manifest, the version list and
    rollback still answer (200), not 500."""
    registry = Registry(settings.models_dir)
    for _ in range(3):
        publish_version(registry, 4, metrics={"map50_95": 0.5})
    with open(Path(settings.models_dir) / "4" / "history.jsonl", "a") as fh:
        fh.write('{"version": "v4", "re')
    (Path(settings.models_dir) / "4" / "versions" / "v2" / "manifest.json").write_bytes(b"")
    listed = client.get("/projects/4/versions")
    assert listed.status_code == 200 and [v["version"] for v in listed.json()["versions"]] == ["v1", "v2", "v3"]
    assert client.post("/projects/4/rollback").json() == {"model_version": "v2"}


@pytest.mark.slow
def test_predict_without_a_worker_is_503_and_the_task_is_discarded_later(redis_url: str, tmp_path: Path) -> None:
    """With no predict worker, /predict answers 503 with a reason within its timeout, and a worker
    started afterwards discards the withdrawn task instead of running it."""
    from labelloop.dev.stack import Stack, wait_until
    from labelloop.dev.synthetic import LABEL_CONFIG

    settings = make_settings(tmp_path, redis_url=redis_url, predict_timeout_s=2)
    body = {
        "tasks": [{"id": 1, "data": {"image": "http://127.0.0.1:9/a.png"}}],
        "project": "5.1",
        "label_config": LABEL_CONFIG,
    }
    for client in _client(settings):
        t0 = time.monotonic()
        resp = client.post("/predict", json=body)
        seconds = time.monotonic() - t0
        assert resp.status_code == 503, resp.text
        assert "no predict worker answered within 2 s" in resp.json()["error"]
        assert "Traceback" not in resp.text
        assert 2.0 <= seconds < 10.0
    (message,) = _queued_tasks(redis_url, "predict")  # still queued: no worker took it
    task_id = message["headers"]["id"]
    assert message["headers"]["expires"]
    stack = Stack(tmp_path, {"LABELLOOP_REDIS_URL": redis_url, "LABELLOOP_MODELS_DIR": str(settings.models_dir)})
    try:
        stack.start_worker("predict")
        # Wait until the worker is done with the message either way: discarded, or run to an end.
        ends = (f"Discarding revoked task: labelloop.predict[{task_id}]", f"labelloop.predict[{task_id}] succeeded")
        ends += (f"labelloop.predict[{task_id}] raised",)
        wait_until(lambda: any(e in stack.log_tail("worker-predict", 1_000_000) for e in ends), 60, "the task's end")
        log = stack.log_tail("worker-predict", 1_000_000)
    finally:
        stack.stop_all()
    assert f"Discarding revoked task: labelloop.predict[{task_id}]" in log, log[-3000:]
    assert f"labelloop.predict[{task_id}] succeeded" not in log and _queued_tasks(redis_url, "predict") == []
