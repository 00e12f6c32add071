"""Shared pieces of the benchmarks: generated images served over HTTP, a small trained model."""

from __future__ import annotations

import functools
import http.server
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

from labelloop import keys
from labelloop.dataset.images import build_dataset, local_images
from labelloop.dev.stack import Stack, json_lines
from labelloop.dev.synthetic import LABEL_CONFIG, make_sample
from labelloop.task_types.labels import parse_detection_config
from labelloop.training.process import run_training_process

SPEC = parse_detection_config(LABEL_CONFIG)


def write_images(root: Path, n: int, width: int = 640, height: int = 480) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"img{i}.png"
        if not path.exists():
            path.write_bytes(make_sample(i, width, height).png)
        paths.append(path)
    return paths


@contextmanager
def serve_dir(root: Path) -> Iterator[str]:
    """A loopback HTTP server for ``root``; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def dataset(work: Path, n: int = 24, width: int = 320, height: int = 240) -> Path:
    """A YOLO dataset of ``n`` generated images; returns data.yaml."""
    images = write_images(work / "src", n, width, height)
    tasks = [
        {
            "id": i + 1,
            "data": {"image": p.name},
            "annotations": [{"id": i + 1, "result": make_sample(i, width, height).ls_result()}],
        }
        for i, p in enumerate(images)
    ]
    fetch = local_images({i + 1: p for i, p in enumerate(images)})
    return build_dataset(tasks, SPEC, work / "ds", fetch, 0.25, 2).data


def small_model(work: Path) -> Path:
    """A yolov8n trained for one epoch on generated images (weights for inference benchmarks)."""
    best = work / "model" / "train" / "train" / "weights" / "best.pt"
    if best.exists():
        return best
    spec = {
        "data": str(dataset(work)),
        "weights": "yolov8n.yaml",
        "epochs": 1,
        "imgsz": 320,
        "batch": 8,
        "device": "",
        "workers": 0,
        "config_dir": str(work / "yolo"),
    }
    return Path(run_training_process(spec, work / "model" / "train", timeout_s=1800)["best"])


def percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p99) of ``values``."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    q = statistics.quantiles(values, n=100)
    return q[49], q[98]


def predict_stack(work: Path, models: Path, imgsz: int, device: str = "") -> Stack:
    """A process harness for a receiver and predict workers serving ``models`` at ``imgsz`` on
    ``device`` (``LABELLOOP_DEVICE``), with images fetched from loopback (``serve_dir``); Redis and
    the processes are started by the caller."""
    return Stack(
        work,
        {
            "LABELLOOP_MODELS_DIR": str(models),
            "LABELLOOP_CACHE_DIR": str(work / "cache"),
            "LABELLOOP_IMGSZ": str(imgsz),
            "LABELLOOP_DEVICE": device,
            "LABELLOOP_MEDIA_ALLOW_HOSTS": "127.0.0.1",  # images served on loopback
        },
    )


def warm_predict(url: str, body: dict[str, Any], redis_url: str, project_id: int, processes: int) -> int:
    """Call ``/predict`` from ``processes`` threads until every predict process has loaded the
    served model (each reports itself in the project's ``servers`` set once it has), then one
    more round per thread, so a measured phase holds no process's cold first load.

    Returns:
        the number of warm-up requests; raises TimeoutError after 300 s.
    """
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 300
    sent = 0
    lock = threading.Lock()

    def call(http: httpx.Client) -> None:
        nonlocal sent
        http.post(f"{url}/predict", json=body).raise_for_status()
        with lock:
            sent += 1

    def round_() -> None:
        with httpx.Client(timeout=120) as http:
            threads = [threading.Thread(target=call, args=(http,)) for _ in range(processes)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    while client.scard(keys.servers(project_id)) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {client.scard(keys.servers(project_id))} of {processes} processes warmed up")
        round_()
    round_()
    return sent


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log events in a process's log file, in order."""
    return json_lines(path.read_text(errors="replace"))
