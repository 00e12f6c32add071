"""What the receiver's front door refuses, with a 4xx and a reason, never a 500: bad project ids,
cross-site posts, bodies that are not JSON, foreign Host headers; and the Redis password is never
printed. Against the real app and a real Redis (and real uvicorn for the bound address)."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import structlog
from starlette.testclient import TestClient

from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.errors import UnavailableError
from labelloop.events.changes import ChangeLog, ChangeLogUnusable
from service.app import create_app
from tests.conftest import connect, fixture
from tests.factories import make_settings, settings_env

BASIC = ("ls", "pw")
BAD_IDS = ["²", "9" * 5000, "-1", "0", "9" * 20, "1e3"]


@pytest.fixture
def client(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, redis_url=redis_url, basic_auth_user=BASIC[0], basic_auth_pass=BASIC[1])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _requests(bad: str) -> list[tuple[str, str, dict[str, Any]]]:
    setup = fixture("ml_setup_request.json")
    predict = fixture("ml_predict_request.json")
    return [
        ("GET", f"/projects/{bad}", {}),
        ("GET", f"/projects/{bad}/versions", {}),
        ("GET", f"/projects/{bad}/status", {}),
        ("POST", f"/projects/{bad}/promote", {"json": {"version": "v1"}}),
        ("POST", f"/projects/{bad}/rollback", {}),
        ("GET", "/versions", {"params": {"project": bad}}),
        ("POST", "/setup", {"json": {**setup, "project": f"{bad}.1795268180"}}),
        ("POST", "/predict", {"json": {**predict, "project": f"{bad}.1795268180"}}),
    ]


def test_bad_project_ids_answer_4xx_with_a_reason(client: TestClient) -> None:
    """Project ids that are not positive bigints ('²', 5,000 digits, negative, 0, over 2**63-1) get
    a 4xx with a reason on every route that takes one, and nothing is logged as a crash."""
    with structlog.testing.capture_logs() as logs:
        for bad in BAD_IDS:
            for method, path, kwargs in _requests(bad):
                resp = client.request(method, path, auth=BASIC, **kwargs)
                assert 400 <= resp.status_code < 500, (method, path[:40], resp.status_code, resp.text[:200])
                assert resp.json()["error"], (method, path[:40])
        predict = fixture("ml_predict_request.json")
        tasks = [{**t, "project": 10**30} for t in predict["tasks"]]
        resp = client.post("/predict", json={**predict, "project": None, "tasks": tasks}, auth=BASIC)
        assert resp.status_code == 422, resp.text
    assert not [e for e in logs if e["event"] == "request_crashed"]


POSTS = ["/setup", "/predict", "/webhook", "/projects/1/promote", "/projects/1/rollback"]


def test_every_post_refuses_a_cross_site_origin(client: TestClient) -> None:
    """A POST a browser marks as cross-site (Origin of another host, or Sec-Fetch-Site other than
    same-origin) is refused with 403 and a reason on every route, before any credential matters."""
    for path in POSTS:
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            resp = client.post(path, json={"version": "v1"}, headers=headers, auth=BASIC)
            assert resp.status_code == 403, (path, headers, resp.text)
            assert "Origin" in resp.json()["error"]


def test_json_routes_require_application_json(client: TestClient) -> None:
    """/setup, /predict, /webhook and the JSON promote answer 415 with a reason to a body that is not
    declared application/json (text/plain, or no Content-Type at all); what Label Studio 1.23.2
    sends (python-requests' ``json=``: application/json, no Origin) passes."""
    bodies = {
        "/setup": fixture("ml_setup_request.json"),
        "/predict": fixture("ml_predict_request.json"),
        "/webhook": fixture("webhook_ANNOTATION_CREATED.json"),
        "/projects/1/promote": {"version": "v1"},
    }
    import json

    for path, body in bodies.items():
        raw = json.dumps(body).encode()
        for headers in ({"Content-Type": "text/plain"}, {}):
            resp = client.post(path, content=raw, headers=headers, auth=BASIC)
            assert resp.status_code == 415, (path, headers, resp.text)
            assert "application/json" in resp.json()["error"]
    connect(client, auth=BASIC, headers={"User-Agent": "python-requests/2.32.3"})
    created = fixture("webhook_ANNOTATION_CREATED.json")
    assert client.post("/webhook", json=created, auth=BASIC).status_code == 201


def test_a_same_origin_page_post_still_passes(client: TestClient) -> None:
    """The project page's own form (Origin of the receiver's host, Sec-Fetch-Site same-origin) is
    not refused as cross-site (it gets past the origin check to the registry: 404 for no version)."""
    headers = {
        "Origin": "http://testserver",
        "Sec-Fetch-Site": "same-origin",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    resp = client.post("/projects/1/promote", content="version=v1", headers=headers, auth=BASIC)
    assert resp.status_code != 403, resp.text


@pytest.fixture
def loopback(tmp_path: Path, redis_url: str) -> Iterator[str]:
    """``labelloop serve`` bound to 127.0.0.1 with Basic auth, default Host allow-list."""
    stack = Stack(
        tmp_path,
        settings_env(tmp_path, redis_url=redis_url, BASIC_AUTH_USER=BASIC[0], BASIC_AUTH_PASS=BASIC[1]),
    )
    yield stack.start_receiver(free_port())
    stack.stop_all()


def test_loopback_receiver_answers_only_loopback_host_names(loopback: str) -> None:
    """Served on a loopback address, the receiver answers 400 with a reason to a Host header other
    than localhost, 127.0.0.1 or [::1] (DNS rebinding), and serves those three."""
    port = loopback.rsplit(":", 1)[1]
    with httpx.Client(base_url=loopback, timeout=10, auth=BASIC) as http:
        resp = http.get("/versions", headers={"Host": f"rebound.example:{port}"})
        assert resp.status_code == 400 and "Host" in resp.json()["error"], resp.text
        resp = http.post("/setup", json=fixture("ml_setup_request.json"), headers={"Host": "rebound.example"})
        assert resp.status_code == 400
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            assert http.get("/versions", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_setting_restricts_any_address(redis_url: str, tmp_path: Path) -> None:
    """LABELLOOP_ALLOWED_HOSTS names the Host headers served (on any address); others get 400, and
    a webhook refused for its Host marks the change logs (a wrong allow-list loses no annotation)."""
    settings = make_settings(tmp_path, redis_url=redis_url, allowed_hosts=["labelloop.example", "10.0.0.5"])
    log = ChangeLog(redis.Redis.from_url(redis_url))
    created = fixture("webhook_ANNOTATION_CREATED.json")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.get("/versions").status_code == 400  # Host: testserver
        assert c.get("/versions", headers={"Host": "labelloop.example:9090"}).status_code == 200
        assert c.get("/versions", headers={"Host": "10.0.0.5"}).status_code == 200
        connect(c, headers={"Host": "10.0.0.5"})
        assert c.post("/webhook", json=created, headers={"Host": "10.0.0.5"}).status_code in (200, 201)
        position = log.read(1, log.position(1)).position
        assert c.post("/webhook", json=created).status_code == 400
        with pytest.raises(ChangeLogUnusable, match="refused"):
            log.read(1, position)


def test_webhooks_refused_before_their_body_is_read_are_counted_by_reason(redis_url: str, tmp_path: Path) -> None:
    """A webhook with the secret refused before its body is read (foreign Host: 400; not JSON: 415)
    is counted in ``labelloop_webhooks_refused_unread_total{reason}``, which the
    LabelloopWebhooksRefused alert watches; the same refusals without the secret are not."""
    secret = "front-door-input-secret-0123456789"
    settings = make_settings(tmp_path, redis_url=redis_url, allowed_hosts=["10.0.0.5"], webhook_secret=secret)
    created = fixture("webhook_ANNOTATION_CREATED.json")
    ok = {"Host": "10.0.0.5", "X-Labelloop-Secret": secret}
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.post("/webhook", json=created, headers={"Host": "rebound.example"}).status_code == 400
        assert c.post("/webhook", content=b"{}", headers={"Host": "10.0.0.5"}).status_code == 415
        assert c.post("/webhook", json=created, headers={**ok, "Host": "rebound.example"}).status_code == 400
        assert c.post("/webhook", content=b"{}", headers={**ok, "content-type": "text/plain"}).status_code == 415
        assert c.post("/webhook", content=b"[1]", headers={**ok, "content-type": "application/json"}).status_code == 422
        metrics = c.get("/metrics", headers=ok).text
    assert 'labelloop_webhooks_refused_unread_total{reason="host"} 1.0' in metrics
    assert 'labelloop_webhooks_refused_unread_total{reason="body"} 2.0' in metrics


def test_the_redis_password_is_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`labelloop status`, `doctor` and `train` name the Redis URL with its password masked."""
    from service.ops_doctor import doctor
    from service.ops_status import status
    from service.ops_training import train

    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    settings = make_settings(tmp_path, redis_url=url)
    status(settings)
    doctor(settings)
    with pytest.raises(UnavailableError) as raised:
        train(settings, 1, wait=False)
    out = capsys.readouterr()
    text = out.out + out.err + str(raised.value)
    assert "hunter2-secret" not in text
    assert text.count("redis://:**@127.0.0.1") >= 3, text


def test_a_hung_file_read_in_setup_or_status_leaves_the_receiver_answering(tmp_path: Path, redis_url: str) -> None:
    """While /setup or /projects/{id}/status is stuck reading the project's files (CURRENT is a FIFO
    with no writer: a hung disk), /health still answers: file reads and label-config parsing
    run in threads, not on the event loop; the stuck request completes once the read does."""
    stack = Stack(tmp_path, settings_env(tmp_path, redis_url=redis_url))
    url = stack.start_receiver(free_port())
    project = tmp_path / "models" / "1"
    project.mkdir(parents=True)
    fifo = project / "CURRENT"
    requests = [
        ("POST", "/setup", {"json": fixture("ml_setup_request.json")}),
        ("GET", "/projects/1/status", {}),
    ]
    try:
        with httpx.Client(base_url=url, timeout=20) as http, concurrent.futures.ThreadPoolExecutor(1) as pool:
            for method, path, kwargs in requests:
                os.mkfifo(fifo)
                stuck = pool.submit(http.request, method, path, **kwargs)
                fd: list[int] = []
                wait_until(lambda fd=fd: _open_writer(fifo, fd), 10, f"{path} reading CURRENT")
                try:
                    with httpx.Client(base_url=url, timeout=2) as probe:
                        assert probe.get("/health").status_code == 200, path
                finally:
                    os.write(fd[0], b"v1\n")
                    os.close(fd[0])
                assert stuck.result(timeout=20).status_code == 200, path
                fifo.unlink()
    finally:
        stack.stop_all()


def test_a_hung_params_read_in_predict_leaves_the_receiver_answering(tmp_path: Path, redis_url: str) -> None:
    """While /predict is stuck reading the project's params.json (a FIFO with no writer: a hung
    disk), /health still answers: /predict reads the params and parses the label config in a
    thread, not on the event loop; the stuck request completes once the read does."""
    stack = Stack(tmp_path, settings_env(tmp_path, redis_url=redis_url))
    url = stack.start_receiver(free_port())
    project = tmp_path / "models" / "1"
    project.mkdir(parents=True)
    fifo = project / "params.json"
    os.mkfifo(fifo)
    body = {**fixture("ml_predict_request.json"), "tasks": []}  # answered without a predict worker
    try:
        with httpx.Client(base_url=url, timeout=20) as http, concurrent.futures.ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(http.post, "/predict", json=body)
            fd: list[int] = []
            wait_until(lambda: _open_writer(fifo, fd), 10, "/predict reading params.json")
            try:
                with httpx.Client(base_url=url, timeout=2) as probe:
                    assert probe.get("/health").status_code == 200
            finally:
                os.write(fd[0], b"{}")
                os.close(fd[0])
            resp = stuck.result(timeout=20)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"results": []}
    finally:
        stack.stop_all()


def _open_writer(fifo: Path, fds: list[int]) -> bool:
    """Open ``fifo`` for writing without blocking; succeeds only once a reader has it open."""
    try:
        fds.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True
