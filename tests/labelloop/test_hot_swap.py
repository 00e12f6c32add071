"""Zero-failure hot-swap: /predict keeps answering while versions are promoted and rolled back."""

from __future__ import annotations

import gc
import json
import signal
import threading
import time
import weakref
from pathlib import Path

import httpx
import redis

from labelloop import keys
from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.dev.synthetic import LABEL_CONFIG
from labelloop.labelstudio.media import MediaConfig
from labelloop.registry.store import Registry
from labelloop.serving.listener import LISTENER_NAME
from labelloop.serving.predictor import Predictor
from labelloop.task_types.labels import parse_detection_config
from tests.factories import publish_version

PROJECT = 11
SPEC = parse_detection_config(LABEL_CONFIG)


def test_promote_and_rollback_under_load(trained: dict, image_server: tuple[str, Path], tmp_path: Path) -> None:
    """While two clients call /predict without pause, three promotions and rollbacks: no request
    fails, every answer carries a version that was being served, and within 1 s of each swap every
    answer carries the new version."""
    base_url, _ = image_server
    models = tmp_path / "models"
    registry = Registry(models)
    for _ in ("v1", "v2"):
        publish_version(registry, PROJECT, trained["result"]["best"], classes=["square", "disc"])
    registry.set_current(PROJECT, "v1")
    stack = Stack(
        tmp_path,
        {
            "LABELLOOP_MODELS_DIR": str(models),
            "LABELLOOP_CACHE_DIR": str(tmp_path / "cache"),
            "LABELLOOP_IMGSZ": "160",
            "LABELLOOP_MEDIA_ALLOW_HOSTS": "127.0.0.1",  # images served on loopback
            "LABELLOOP_LOG_JSON": "true",
        },
    )
    try:
        stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port())
        url = stack.start_receiver(free_port())
        stack.start_worker("predict", concurrency=2)
        body = {
            "tasks": [{"id": 1, "data": {"image": f"{base_url}/img1.png"}}],
            "project": f"{PROJECT}.1",
            "label_config": LABEL_CONFIG,
        }
        answers: list[tuple[float, float, int, str]] = []  # (sent, received, status, version)
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    t0 = time.monotonic()
                    resp = http.post(f"{url}/predict", json=body)
                    version = resp.json()["results"][0]["model_version"] if resp.status_code == 200 else ""
                    answers.append((t0, time.monotonic(), resp.status_code, version))

        # Both worker processes have v1 loaded before the swaps start.
        with httpx.Client(timeout=60) as http:
            for _ in range(6):
                assert http.post(f"{url}/predict", json=body).json()["results"][0]["model_version"] == "v1"
        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        swaps: list[tuple[float, float, str]] = []  # (call started, call answered, version)
        with httpx.Client(timeout=10) as http:
            for action in ("promote", "rollback", "promote", "rollback", "promote", "rollback"):
                time.sleep(2.0)
                started = time.monotonic()
                if action == "promote":
                    resp = http.post(f"{url}/projects/{PROJECT}/promote", json={"version": "v2"})
                else:
                    resp = http.post(f"{url}/projects/{PROJECT}/rollback")
                swaps.append((started, time.monotonic(), resp.json()["model_version"]))
            time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join()
    finally:
        stack.stop_all()

    assert [v for *_, v in swaps] == ["v2", "v1"] * 3
    assert len(answers) > 50
    assert all(status == 200 for _, _, status, _ in answers), {s for _, _, s, _ in answers}
    assert {v for *_, v in answers} == {"v1", "v2"}
    # Requests sent from 1 s after a swap was answered, and answered before the next swap was asked
    # for, carry only the new version.
    for (_, at, version), nxt in zip(swaps, [*swaps[1:], (float("inf"), 0.0, "")], strict=True):
        window = [(sent, v) for sent, got, _, v in answers if at + 1.0 <= sent and got < nxt[0]]
        stale = [(round(sent - at, 3), v) for sent, v in window if v != version]
        assert window and not stale, (version, stale)


def _serving_stack(trained: dict, image_server: tuple[str, Path], tmp_path: Path) -> tuple[Stack, str, dict]:
    """Redis, the receiver and one predict worker serving v1 of PROJECT (v2 published, not served)."""
    base_url, _ = image_server
    models = tmp_path / "models"
    registry = Registry(models)
    for _ in ("v1", "v2"):
        publish_version(registry, PROJECT, trained["result"]["best"], classes=["square", "disc"])
    registry.set_current(PROJECT, "v1")
    stack = Stack(
        tmp_path,
        {
            "LABELLOOP_MODELS_DIR": str(models),
            "LABELLOOP_CACHE_DIR": str(tmp_path / "cache"),
            "LABELLOOP_IMGSZ": "160",
            "LABELLOOP_MEDIA_ALLOW_HOSTS": "127.0.0.1",
            "LABELLOOP_LOG_JSON": "true",
        },
    )
    stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port())
    url = stack.start_receiver(free_port())
    stack.start_worker("predict")
    body = {
        "tasks": [{"id": 1, "data": {"image": f"{base_url}/img1.png"}}],
        "project": f"{PROJECT}.1",
        "label_config": LABEL_CONFIG,
    }
    assert _predict(url, body) == "v1"
    return stack, url, body


def _predict(url: str, body: dict) -> str:
    resp = httpx.post(f"{url}/predict", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["results"][0]["model_version"])


def _logged(stack: Stack, name: str, event: str, **fields: object) -> bool:
    """Whether process ``name`` logged ``event`` (JSON logs) with these field values."""
    for line in stack.log_tail(name, 10_000_000).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
            return True
    return False


def _wait_logged(stack: Stack, name: str, event: str, timeout_s: float = 60, **fields: object) -> None:
    """Wait until process ``name`` logged ``event`` with these fields; fail with its log tail."""
    deadline = time.monotonic() + timeout_s
    while not _logged(stack, name, event, **fields):
        assert time.monotonic() < deadline, f"no {event} {fields} in {name}:\n" + stack.log_tail(name, 6000)
        time.sleep(0.2)


def test_promotion_does_not_wait_for_a_killed_predict_worker(
    trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """After the predict worker is killed with SIGKILL and restarted, a promotion completes well
    under the 5 s warm-up timeout: the dead process left the project's servers."""
    stack, url, body = _serving_stack(trained, image_server, tmp_path)
    try:
        r = redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])
        (dead,) = r.smembers(keys.servers(PROJECT))
        stack.stop("worker-predict", signal.SIGKILL)
        stack.start_worker("predict")
        assert _predict(url, body) == "v1"
        assert dead in r.smembers(keys.servers(PROJECT)) and r.scard(keys.servers(PROJECT)) == 2
        t0 = time.monotonic()
        resp = httpx.post(f"{url}/projects/{PROJECT}/promote", json={"version": "v2"}, timeout=30)
        seconds = time.monotonic() - t0
        print(f"promotion after kill -9 of the predict worker: {seconds:.2f} s")
        assert resp.status_code == 200, resp.text
        assert seconds < 4.0
        assert dead not in r.smembers(keys.servers(PROJECT)) and r.scard(keys.servers(PROJECT)) == 1
        assert _logged(stack, "receiver", "version_served", version="v2", workers_warm=True)
        assert _predict(url, body) == "v2"
    finally:
        stack.stop_all()


def test_listener_killed_by_redis_still_picks_up_a_later_promotion(
    trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """After Redis kills the predict worker's pub/sub connection (CLIENT KILL TYPE pubsub), a later
    promotion is still warmed up before it is served and swapped in without any request."""
    stack, url, _ = _serving_stack(trained, image_server, tmp_path)
    try:
        r = redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])
        (listener,) = [c for c in r.client_list(_type="pubsub") if c["name"] == LISTENER_NAME]
        assert r.client_kill_filter(_id=listener["id"]) == 1

        def resubscribed() -> bool:
            now = [c for c in r.client_list(_type="pubsub") if c["name"] == LISTENER_NAME]
            return bool(now) and all(c["id"] != listener["id"] for c in now)

        wait_until(resubscribed, 30, "re-subscription")
        resp = httpx.post(f"{url}/projects/{PROJECT}/promote", json={"version": "v2"}, timeout=30)
        assert resp.status_code == 200, resp.text
        _wait_logged(stack, "worker-predict", "model_swapped", version="v2")
        assert _logged(stack, "receiver", "version_served", version="v2", workers_warm=True)
    finally:
        stack.stop_all()


def test_a_promotion_while_redis_was_down_is_swapped_in_once_redis_is_back(
    trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """A promotion made while redis-server was down (its announcement lost) is swapped in by the
    predict worker once Redis is restarted, without waiting for a request."""
    stack, url, _ = _serving_stack(trained, image_server, tmp_path)
    try:
        port = int(stack.env["LABELLOOP_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        stack.stop("redis", signal.SIGKILL)
        resp = httpx.post(f"{url}/projects/{PROJECT}/promote", json={"version": "v2"}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert not _logged(stack, "worker-predict", "model_swapped", version="v2")
        stack.start_redis(port)
        _wait_logged(stack, "worker-predict", "model_swapped", version="v2")
    finally:
        stack.stop_all()


def test_model_cache_is_bounded_across_projects(
    trained: dict, image_server: tuple[str, Path], tmp_path: Path, redis_url: str
) -> None:
    """With a cache of one project, two projects predicted in turn keep one model loaded: the other
    project's model is freed and its set of servers in Redis no longer names this process."""
    base_url, _ = image_server
    registry = Registry(tmp_path / "models")
    for project in (PROJECT, PROJECT + 1):
        publish_version(registry, project, trained["result"]["best"], classes=["square", "disc"])
    media = MediaConfig(None, None, allow_hosts=("127.0.0.1",))
    predictor = Predictor(
        registry, "yolov8n.yaml", trained["work"] / "yolo", tmp_path / "cache", 160, 0.0, media=media, cache_projects=1
    )
    predictor.listen(redis_url)
    r = redis.Redis.from_url(redis_url)
    tasks = [{"id": 1, "data": {"image": f"{base_url}/img1.png"}}]
    models: list[weakref.ref[object]] = []
    try:
        for _ in range(3):
            for project, other in ((PROJECT, PROJECT + 1), (PROJECT + 1, PROJECT)):
                assert predictor.predict(project, SPEC, tasks, None, None)[0]["model_version"] == "v1"
                assert predictor.loaded() == {project: ["v1"]}
                models.append(weakref.ref(predictor.model_for(project).model))  # type: ignore[union-attr]
                assert r.sismember(keys.servers(project), predictor.identity)
                assert not r.sismember(keys.servers(other), predictor.identity)
    finally:
        predictor.close()
    gc.collect()
    assert [m() is not None for m in models] == [False] * 5 + [True]
