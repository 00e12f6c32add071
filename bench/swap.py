"""Hot-swap: promotion-to-serving latency and /predict latency before, during and after swaps.

    .venv/bin/python -m bench.swap [--swaps 6] [--clients 2] [--device 0]

Real receiver, Redis and one predict worker with two processes. Clients call ``/predict``
without pause through three phases: steady state, promote/rollback every 2 s, steady state.
Both processes have served v1 before the steady phase starts (warm-up until each reported the
model loaded), so the steady phase compares serving with serving. Swap latency is measured from
the promote/rollback call until the last response carrying the old version. Targets: swap
<= 1 s, p99 during swaps <= 2x steady state, 0 errors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.common import SPEC, percentiles, predict_stack, serve_dir, small_model, warm_predict, write_images
from labelloop.dev.stack import free_port
from labelloop.dev.synthetic import LABEL_CONFIG
from labelloop.registry.store import Registry

ROOT = Path(__file__).resolve().parent.parent
PROJECT = 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--phase-s", type=float, default=6.0)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench-swap")
    parser.add_argument("--device", default=os.environ.get("LABELLOOP_DEVICE", ""), help="the predict workers' device")
    args = parser.parse_args()
    work = args.workdir.absolute()
    weights = small_model(work)
    write_images(work / "images", 4)
    models = work / "models"
    shutil.rmtree(models, ignore_errors=True)
    registry = Registry(models)
    for _ in range(2):
        registry.publish(PROJECT, weights, {"classes": list(SPEC.labels)})
    registry.set_current(PROJECT, "v1")
    stack = predict_stack(work, models, args.imgsz, args.device)
    answers: list[tuple[float, float, int, str]] = []
    swaps: list[tuple[float, float, str]] = []
    marks: dict[str, float] = {}
    warmup = 0
    try:
        with serve_dir(work / "images") as base:
            stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port())
            url = stack.start_receiver(free_port())
            stack.start_worker("predict", concurrency=2)
            body = {
                "tasks": [{"id": 1, "data": {"image": f"{base}/img1.png"}}],
                "project": f"{PROJECT}.1",
                "label_config": LABEL_CONFIG,
            }
            # Both processes load v1 before the steady phase: it then measures serving, not a first load.
            warmup = warm_predict(url, body, stack.env["LABELLOOP_REDIS_URL"], PROJECT, processes=2)
            stop = threading.Event()

            def client() -> None:
                with httpx.Client(timeout=60) as http:
                    while not stop.is_set():
                        t0 = time.monotonic()
                        try:
                            resp = http.post(f"{url}/predict", json=body)
                            ok = resp.status_code
                            version = resp.json()["results"][0]["model_version"] if ok == 200 else ""
                        except httpx.HTTPError:
                            ok, version = 0, ""
                        answers.append((t0, time.monotonic(), ok, version))

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for t in threads:
                t.start()
            marks["steady"] = time.monotonic()
            time.sleep(args.phase_s)
            marks["during"] = time.monotonic()
            with httpx.Client(timeout=10) as http:
                for i in range(args.swaps):
                    started = time.monotonic()
                    if i % 2 == 0:
                        resp = http.post(f"{url}/projects/{PROJECT}/promote", json={"version": "v2"})
                    else:
                        resp = http.post(f"{url}/projects/{PROJECT}/rollback")
                    swaps.append((started, time.monotonic(), resp.json()["model_version"]))
                    time.sleep(2.0)
            marks["after"] = time.monotonic()
            time.sleep(args.phase_s)
            marks["end"] = time.monotonic()
            stop.set()
            for t in threads:
                t.join()
    finally:
        stack.stop_all()

    latencies = []
    for (started, _, version), nxt in zip(swaps, [*swaps[1:], (float("inf"), 0.0, "")], strict=True):
        old = [got for sent, got, _, v in answers if sent >= started and got < nxt[0] and v != version]
        latencies.append((max(old) if old else started) - started)
    errors = sum(1 for *_, status, _ in answers if status != 200)
    print(
        f"\nhot-swap: {args.swaps} promote/rollback swaps, {args.clients} clients, 2 predict processes, "
        f"imgsz {args.imgsz}, device {args.device or 'auto'}; warm-up {warmup} requests until both processes served v1"
    )
    print(
        f"swap latency (call -> last old-version answer): max {max(latencies):.3f} s, "
        f"mean {sum(latencies) / len(latencies):.3f} s   (target <= 1 s)"
    )
    p99 = {}
    for phase, start, end in (
        ("steady", marks["steady"], marks["during"]),
        ("during", marks["during"], marks["after"]),
        ("after", marks["after"], marks["end"]),
    ):
        lat = [(got - sent) * 1000 for sent, got, status, _ in answers if start <= sent < end and status == 200]
        p50, p99[phase] = percentiles(lat)
        print(f"{phase:>7}: {len(lat):4d} requests, p50 {p50:7.1f} ms, p99 {p99[phase]:7.1f} ms")
    print(f"p99 during / steady: {p99['during'] / p99['steady']:.2f}x   (target <= 2x); errors: {errors}   (target 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
