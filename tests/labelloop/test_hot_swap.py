"""Zero-failure hot-swap: /predict keeps answering while versions are promoted and rolled back."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx

from labelloop.registry import Registry
from labelloop.stack import Stack, free_port
from labelloop.synthetic import LABEL_CONFIG

PROJECT = 11


def test_promote_and_rollback_under_load(trained: dict, image_server: tuple[str, Path], tmp_path: Path) -> None:
    """While two clients call /predict without pause, three promotions and rollbacks: no request
    fails, every answer carries a version that was being served, and within 1 s of each swap every
    answer carries the new version."""
    base_url, _ = image_server
    models = tmp_path / "models"
    registry = Registry(models)
    for name in ("a.pt", "b.pt"):
        shutil.copyfile(trained["result"]["best"], tmp_path / name)
        registry.publish(PROJECT, tmp_path / name, {"classes": ["square", "disc"]})
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
