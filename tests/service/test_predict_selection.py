"""Big "Retrieve Predictions" selections and the /predict wait, against a real receiver, a real
Celery predict worker (``labelloop.dev.stack``), real Redis and real Ultralytics (an untrained yolov8n
saved as a base .pt: no training needed to run a real forward pass)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.dev.synthetic import LABEL_CONFIG
from tests.labelloop.test_selection import untrained_weights

BATCH = 4
MAX_TASKS = 24


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained yolov8n saved as a .pt, served as every project's base model."""
    return untrained_weights(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def serving(
    base_weights: Path, image_server: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    """Redis, the receiver and one predict worker (concurrency 1) serving the base .pt."""
    work = tmp_path_factory.mktemp("selection")
    stack = Stack(
        work,
        {
            "LABELLOOP_MODELS_DIR": str(work / "models"),
            "LABELLOOP_CACHE_DIR": str(work / "cache"),
            "LABELLOOP_BASE_MODEL": str(base_weights),
            "LABELLOOP_IMGSZ": "160",
            "LABELLOOP_MEDIA_ALLOW_HOSTS": "127.0.0.1",
            "LABELLOOP_MEDIA_TIMEOUT_S": "120",
            "LABELLOOP_PREDICT_BATCH": str(BATCH),
            "LABELLOOP_PREDICT_MAX_TASKS": str(MAX_TASKS),
            "LABELLOOP_PREDICT_TIMEOUT_S": "60",
            "LABELLOOP_MAX_CONCURRENT_REQUESTS": "40",
            "LABELLOOP_LOG_JSON": "true",
        },
    )
    try:
        stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port())
        url = stack.start_receiver(free_port())
        stack.start_worker("predict")
        yield stack, url
    finally:
        stack.stop_all()


def _body(project: int, urls: list[str]) -> dict[str, Any]:
    tasks = [{"id": i + 1, "data": {"image": u}} for i, u in enumerate(urls)]
    return {"tasks": tasks, "project": f"{project}.1", "label_config": LABEL_CONFIG}


def _events(stack: Stack, name: str, offset: int, event: str, project_id: int) -> list[dict[str, Any]]:
    out = []
    for line in stack.log_since(name, offset).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event and record.get("project_id") == project_id:
            out.append(record)
    return out


@pytest.mark.slow
def test_a_big_selection_is_predicted_in_chunks_of_predict_batch(
    serving: tuple[Stack, str], image_server: tuple[str, Path]
) -> None:
    """A /predict of 10 tasks is predicted by the worker in model calls of 4, 4 and 2 tasks, one result
    each, with a deadline shortened to the time the receiver waits (the predict task's expires)."""
    stack, url = serving
    base, _ = image_server
    offset = stack.log_size("worker-predict")
    resp = httpx.post(f"{url}/predict", json=_body(101, [f"{base}/img{i}.png" for i in range(10)]), timeout=60)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == 10 and all(r["model_version"] == "base" for r in results)
    chunks = _events(stack, "worker-predict", offset, "predict_chunk", 101)
    assert [c["tasks"] for c in chunks] == [4, 4, 2], stack.log_tail("worker-predict")
    # The receiver stops waiting after LABELLOOP_PREDICT_TIMEOUT_S (60): chunks start within 0.8 of it.
    assert all(40.0 < c["deadline_s"] <= 48.0 for c in chunks), chunks


@pytest.mark.slow
def test_a_selection_over_predict_max_tasks_is_413_at_once_and_never_queued(
    serving: tuple[Stack, str], image_server: tuple[str, Path]
) -> None:
    """Over LABELLOOP_PREDICT_MAX_TASKS, /predict answers 413 naming the setting and the pre-annotation
    queue, without queueing a predict task (the next, small /predict is the only one the worker gets)."""
    stack, url = serving
    base, _ = image_server
    offset = stack.log_size("worker-predict")
    t0 = time.monotonic()
    resp = httpx.post(f"{url}/predict", json=_body(102, [f"{base}/img0.png"] * (MAX_TASKS + 1)), timeout=60)
    assert resp.status_code == 413, resp.text
    assert time.monotonic() - t0 < 5.0
    error = resp.json()["error"]
    assert "LABELLOOP_PREDICT_MAX_TASKS (24)" in error and "pre-annotation queue" in error
    small = httpx.post(f"{url}/predict", json=_body(102, [f"{base}/img0.png"]), timeout=60)
    assert small.status_code == 200, small.text
    # The worker takes tasks in order, one at a time: a queued big one would have run before the small one.
    assert [c["tasks"] for c in _events(stack, "worker-predict", offset, "predict_chunk", 102)] == [1]


@pytest.mark.slow
def test_versions_answer_while_40_predicts_wait_on_a_stopped_worker(
    serving: tuple[Stack, str], image_server: tuple[str, Path]
) -> None:
    """With 40 /predict requests waiting on a SIGSTOPped predict worker (as many as
    LABELLOOP_MAX_CONCURRENT_REQUESTS), GET /projects/{id}/versions answers within 3 s while every
    one of them still waits: neither a thread nor an in-flight place of theirs is taken."""
    stack, url = serving
    base, _ = image_server
    worker = stack.procs["worker-predict"].pid
    queue = redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])
    os.killpg(worker, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(40) as pool, httpx.Client(timeout=120, limits=httpx.Limits(max_connections=50)) as c:
            body = _body(103, [f"{base}/img0.png"])
            waiting: list[Future[httpx.Response]] = [
                pool.submit(c.post, f"{url}/predict", json=body) for _ in range(40)
            ]
            # The stopped worker's pending BRPOP takes one of them off the list (Redis answers it anyway).
            wait_until(lambda: queue.llen("predict") >= 39, 30, "40 predict tasks queued")
            t0 = time.monotonic()
            resp = httpx.get(f"{url}/projects/103/versions", timeout=60)
            seconds = time.monotonic() - t0
            still_waiting = sum(not f.done() for f in waiting)
            assert resp.status_code == 200, resp.text
            assert seconds < 3.0 and still_waiting == 40, (seconds, still_waiting)
            os.killpg(worker, signal.SIGCONT)
            assert all(f.result().status_code == 200 for f in waiting)
    finally:
        os.killpg(worker, signal.SIGCONT)
        queue.close()


@pytest.fixture
def hanging_images() -> Iterator[tuple[str, threading.Event]]:
    """An image URL whose server accepts the connection and never answers; the event is set on accept."""
    accepted = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            accepted.set()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hang.png", accepted
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.slow
def test_a_predict_worker_killed_mid_prediction_is_503_with_a_reason(
    serving: tuple[Stack, str], hanging_images: tuple[str, threading.Event]
) -> None:
    """The predict worker's process killed (SIGKILL) while it predicts a /predict: 503 saying the
    worker died, no traceback, not a 500."""
    stack, url = serving
    image, accepted = hanging_images
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.post, f"{url}/predict", json=_body(104, [image]), timeout=120)
        assert accepted.wait(60), stack.log_tail("worker-predict")
        for child in psutil.Process(stack.procs["worker-predict"].pid).children(recursive=True):
            child.kill()
        resp = waiting.result()
    assert resp.status_code == 503, resp.text
    assert "the predict worker died" in resp.json()["error"] and "Traceback" not in resp.text
