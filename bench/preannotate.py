"""Pre-annotation at scale: throughput into Label Studio, /predict while it runs, superseding.

    .venv/bin/python -m bench.preannotate [--tasks 300] [--batch 16] [--imgsz 320] [--ls-url URL]

A real Label Studio (its own virtual environment, ``$LABELLOOP_LS_VENV``), Redis, the receiver,
one predict worker and one preannotate worker; a yolov8n trained for one epoch on generated
images, published as v1, v2 and v3; ``--tasks`` tasks whose 640x480 images are served over
loopback HTTP. Three measurements:

1. **Throughput**: tasks pre-annotated per second by ``labelloop.serving.preannotate`` with v1, from
   sending the task until its ``preannotated`` event (listing the tasks, downloading the images,
   the model's first load in that worker and ``import_predictions`` into Label Studio included),
   vs raw ``model.predict`` on the same images from disk at the same batch and imgsz in this
   process. Target >= 0.8x.
2. **/predict while it runs**: one client calls ``/predict`` (one task) without pause, first with
   nothing else running (idle), then while v2's pre-annotation of every task runs (after v2 is
   promoted). p99 ratio target <= 1.5x.
3. **Superseding**: while v2's run is going, v3 is promoted (``serve_when_warm`` then the
   pre-annotation task, what ``Jobs.train`` does); measured from the registry serving v3 to v2's
   ``preannotate_superseded`` and to v3's ``preannotate_started`` (worker log timestamps).
   Target <= 2 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import SPEC, log_events, percentiles, serve_dir, small_model, warm_predict, write_images
from labelloop.dev.stack import LABEL_STUDIO_VERSION, Stack, free_port, label_studio_binary, wait_until
from labelloop.dev.synthetic import LABEL_CONFIG
from labelloop.labelstudio import client as labelstudio
from labelloop.names import TASK_PREANNOTATE
from labelloop.registry.notify import serve_when_warm
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from workers.celery_app import create_celery

ROOT = Path(__file__).resolve().parent.parent
LS_USER = "bench@labelloop.local"
LS_PASSWORD = "labelloop-bench"
LS_TOKEN = "be7c400000000000000000000000000000000002"


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def _find(stack: Stack, event: str, version: str) -> dict[str, Any] | None:
    for e in log_events(stack.workdir / "logs" / "worker-preannotate.log"):
        if e.get("event") == event and e.get("version") == version:
            return e
    return None


def raw_rate(weights: Path, images: list[Path], batch: int, imgsz: int, conf: float, work: Path) -> float:
    """Images per second of ``YOLO(weights).predict`` over ``images`` in batches of ``batch``."""
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(work / "yolo")
    from ultralytics import YOLO

    model = YOLO(str(weights))
    groups = [[str(p) for p in images[i : i + batch]] for i in range(0, len(images), batch)]
    model.predict(groups[0], imgsz=imgsz, conf=conf, batch=batch, verbose=False)  # warm
    t0 = time.perf_counter()
    for g in groups:
        model.predict(g, imgsz=imgsz, conf=conf, batch=batch, verbose=False)
    return len(images) / (time.perf_counter() - t0)


def main() -> int:
    """Long because it is the benchmark's script: set-up, three phases and the printed figures in order."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--idle-s", type=float, default=15.0, help="seconds of /predict with nothing else running")
    parser.add_argument("--during-s", type=float, default=15.0, help="seconds of /predict during v2's run")
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench-preannotate")
    parser.add_argument("--ls-url", help="a running Label Studio to use (default: start one)")
    parser.add_argument("--ls-token", default=LS_TOKEN, help="its legacy API token")
    args = parser.parse_args()
    work = args.workdir.absolute()
    weights = small_model(work)
    images = write_images(work / "images", args.tasks)
    conf = Settings().predict_conf
    raw = raw_rate(weights, images, args.batch, args.imgsz, conf, work)
    shutil.rmtree(work / "stack", ignore_errors=True)
    stack = Stack(
        work / "stack",
        {
            "LABELLOOP_MODELS_DIR": str(work / "stack" / "models"),
            "LABELLOOP_CACHE_DIR": str(work / "stack" / "cache"),
            "LABELLOOP_IMGSZ": str(args.imgsz),
            "LABELLOOP_MEDIA_ALLOW_HOSTS": "127.0.0.1",
            "LABELLOOP_PREANNOTATE_BATCH": str(args.batch),
            "LABELLOOP_LOG_JSON": "true",
        },
    )
    figures: dict[str, float] = {}
    idle: list[float] = []
    during: list[float] = []
    try:
        venv = Path(
            os.environ.get("LABELLOOP_LS_VENV")
            or Path.home() / ".cache" / "labelloop" / f"label-studio-{LABEL_STUDIO_VERSION}"
        )
        ls_url = args.ls_url or stack.start_label_studio(
            label_studio_binary(venv), free_port(), work / "stack" / "ls", LS_USER, LS_PASSWORD, LS_TOKEN, timeout_s=600
        )
        stack.env.update(LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY=args.ls_token)
        client = labelstudio.client(ls_url, args.ls_token)
        project_id = int(client.projects.create(title="bench preannotate", label_config=LABEL_CONFIG).id)
        registry = Registry(work / "stack" / "models")
        for _ in range(3):
            registry.publish(project_id, weights, {"classes": list(SPEC.labels)}, move_current=False)
        registry.set_current(project_id, "v1")
        with serve_dir(work / "images") as base:
            client.projects.import_tasks(
                id=project_id, request=[{"data": {"image": f"{base}/{p.name}"}} for p in images]
            )
            redis_url = stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port())
            r = redis.Redis.from_url(redis_url)
            url = stack.start_receiver(free_port())
            stack.start_worker("predict")
            stack.start_worker("preannotate")
            app = create_celery(Settings(redis_url=redis_url))
            body = {
                "tasks": [{"id": 1, "data": {"image": f"{base}/{images[0].name}"}}],
                "project": f"{project_id}.1",
                "label_config": LABEL_CONFIG,
            }
            warm_predict(url, body, redis_url, project_id, processes=1)

            # 1. Throughput of a whole run with v1.
            t0 = time.time()
            app.send_task(TASK_PREANNOTATE, args=[project_id, "v1"])
            wait_until(lambda: _find(stack, "preannotated", "v1") is not None, 1800, "v1's pre-annotation", 0.1)
            done = _find(stack, "preannotated", "v1") or {}
            figures["rate"] = int(done["imported"]) / (_at(done) - t0)
            first = _find(stack, "preannotate_batch", "v1") or {}
            figures["rate_loaded"] = (int(done["imported"]) - int(first["tasks"])) / (_at(done) - _at(first))

            # 2. /predict idle, then while v2's run goes on.
            stop = threading.Event()

            def caller(into: list[float]) -> None:
                with httpx.Client(timeout=120) as http:
                    while not stop.is_set():
                        s = time.perf_counter()
                        http.post(f"{url}/predict", json=body).raise_for_status()
                        into.append((time.perf_counter() - s) * 1000)

            thread = threading.Thread(target=caller, args=(idle,))
            thread.start()
            time.sleep(args.idle_s)
            stop.set()
            thread.join()
            stop.clear()
            serve_when_warm(r, registry, project_id, "v2", reason="bench")
            app.send_task(TASK_PREANNOTATE, args=[project_id, "v2"])
            wait_until(lambda: _find(stack, "preannotate_batch", "v2") is not None, 600, "v2's first batch", 0.1)
            thread = threading.Thread(target=caller, args=(during,))
            thread.start()
            time.sleep(args.during_s)
            stop.set()
            thread.join()
            running = _find(stack, "preannotated", "v2") is None

            # 3. Promote v3 while v2's run goes on.
            t_promote = time.time()
            serve_when_warm(r, registry, project_id, "v3", reason="bench")
            served = time.time()
            app.send_task(TASK_PREANNOTATE, args=[project_id, "v3"])
            wait_until(lambda: _find(stack, "preannotate_started", "v3") is not None, 600, "v3's start", 0.05)
            superseded = _find(stack, "preannotate_superseded", "v2")
            started = _find(stack, "preannotate_started", "v3") or {}
            figures["promote_s"] = served - t_promote
            figures["superseded_s"] = _at(superseded) - served if superseded else float("nan")
            figures["started_s"] = _at(started) - served
    finally:
        stack.stop_all()

    print(
        f"\npre-annotation: {args.tasks} tasks (640x480 PNG over loopback HTTP), batch {args.batch}, imgsz "
        f"{args.imgsz}, yolov8n, CPU ({os.cpu_count()} cores), 1 predict + 1 preannotate worker, "
        f"Label Studio {LABEL_STUDIO_VERSION}"
    )
    print(
        f"throughput: labelloop {figures['rate']:.1f} tasks/s (import into Label Studio included) vs raw "
        f"model.predict {raw:.1f} images/s: {figures['rate'] / raw:.2f}x   (target >= 0.8x); after the first "
        f"batch (the worker's first model load): {figures['rate_loaded']:.1f} tasks/s, "
        f"{figures['rate_loaded'] / raw:.2f}x"
    )
    p50_i, p99_i = percentiles(idle)
    p50_d, p99_d = percentiles(during)
    print(f"/predict idle:   {len(idle):4d} requests, p50 {p50_i:7.1f} ms, p99 {p99_i:7.1f} ms")
    print(
        f"/predict during: {len(during):4d} requests, p50 {p50_d:7.1f} ms, p99 {p99_d:7.1f} ms "
        f"(a {args.tasks}-task pre-annotation{' running' if running else ', which ENDED before the window did'})"
    )
    print(f"p99 during / idle: {p99_d / p99_i:.2f}x   (target <= 1.5x, with 2,000 tasks; here {args.tasks})")
    print(
        f"promotion of v3 during v2's run: serve_when_warm {figures['promote_s']:.3f} s; then v2 superseded after "
        f"{figures['superseded_s']:.3f} s, v3's pre-annotation started after {figures['started_s']:.3f} s   "
        "(target <= 2 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
