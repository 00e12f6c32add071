"""``/predict`` overhead: labelloop (receiver -> Celery -> predict worker) vs raw ``model.predict``.

    .venv/bin/python -m bench.predict [--images 32] [--imgsz 640] [--device 0]

Same model (a yolov8n trained for one epoch on generated images), same images (served over
loopback HTTP to labelloop, read from disk by the raw call), same imgsz and confidence, batch
1 and batch 8, in one run. Prints seconds per image and the ratio (target <= 1.15x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import httpx

from bench.common import SPEC, percentiles, predict_stack, serve_dir, small_model, write_images
from labelloop.dev.stack import free_port
from labelloop.dev.synthetic import LABEL_CONFIG
from labelloop.registry.store import Registry
from labelloop.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROJECT = 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench-predict")
    parser.add_argument(
        "--device",
        default=os.environ.get("LABELLOOP_DEVICE", ""),
        help="Ultralytics device for both sides ('': CUDA when available, else cpu; default $LABELLOOP_DEVICE)",
    )
    args = parser.parse_args()
    work = args.workdir.absolute()
    weights = small_model(work)
    images = write_images(work / "images", args.images)
    models = work / "models"
    shutil.rmtree(models, ignore_errors=True)
    Registry(models).publish(PROJECT, weights, {"classes": list(SPEC.labels)})
    settings = Settings(models_dir=models, cache_dir=work / "cache", imgsz=args.imgsz, predict_conf=0.25)
    from labelloop.training.child import pick_device

    device = pick_device(args.device)

    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(work / "yolo")
    from ultralytics import YOLO

    raw_model = YOLO(str(weights))
    results: dict[tuple[str, int], list[float]] = {}
    stack = predict_stack(work, models, args.imgsz, device)
    try:
        with serve_dir(work / "images") as base:
            stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port())
            url = stack.start_receiver(free_port())
            stack.start_worker("predict")
            with httpx.Client(timeout=120) as http:
                for batch in (1, 8):
                    groups = [images[i : i + batch] for i in range(0, len(images), batch)]
                    body = [
                        {
                            "tasks": [{"id": i, "data": {"image": f"{base}/{p.name}"}} for i, p in enumerate(g)],
                            "project": f"{PROJECT}.1",
                            "label_config": LABEL_CONFIG,
                        }
                        for g in groups
                    ]
                    for b in body:  # warm: model loaded, images in the worker's cache
                        http.post(f"{url}/predict", json=b).raise_for_status()
                    raw_model.predict(
                        [str(p) for p in groups[0]],
                        imgsz=args.imgsz,
                        conf=settings.predict_conf,
                        device=device,
                        verbose=False,
                    )
                    for _ in range(args.rounds):
                        for g, b in zip(groups, body, strict=True):
                            t0 = time.perf_counter()
                            resp = http.post(f"{url}/predict", json=b)
                            resp.raise_for_status()
                            assert len(resp.json()["results"]) == len(g)
                            results.setdefault(("labelloop", batch), []).append((time.perf_counter() - t0) / len(g))
                            t0 = time.perf_counter()
                            raw_model.predict(
                                [str(p) for p in g],
                                imgsz=args.imgsz,
                                conf=settings.predict_conf,
                                device=device,
                                verbose=False,
                            )
                            results.setdefault(("raw", batch), []).append((time.perf_counter() - t0) / len(g))
    finally:
        stack.stop_all()

    print(
        f"\n/predict overhead: {args.images} images 640x480, imgsz {args.imgsz}, yolov8n, device {device}, "
        f"{args.rounds} rounds, 1 predict worker"
    )
    print(f"{'batch':>5} {'labelloop ms/img':>17} {'raw ms/img':>11} {'ratio':>6}   (p50 per image; target <= 1.15x)")
    for batch in (1, 8):
        ll = percentiles(results[("labelloop", batch)])[0] * 1000
        raw = percentiles(results[("raw", batch)])[0] * 1000
        print(f"{batch:>5} {ll:>17.1f} {raw:>11.1f} {ll / raw:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
