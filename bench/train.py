"""Training wall time: labelloop's training step vs ``yolo train`` with the same dataset and args.

    .venv/bin/python -m bench.train [--epochs 3] [--imgsz 320] [--images 48] [--device 0]

labelloop trains in a child process (``labelloop.training.child``: offline setup, progress callback,
then validation of the candidate); ``yolo train`` is ultralytics' own CLI. Both start from
``yolov8n.yaml`` with the same data, epochs, imgsz, batch, workers and seed, one after the
other in one run. The ratio compares the training part (labelloop's extra validation pass for
the promotion gate is reported separately). Target <= 1.05x on GPU; CPU figures always.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import dataset
from labelloop.training.child import pick_device
from labelloop.training.process import run_training_process

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench-train")
    parser.add_argument(
        "--device",
        default=os.environ.get("LABELLOOP_DEVICE", ""),
        help="Ultralytics device for both sides ('': CUDA when available, else cpu; default $LABELLOOP_DEVICE)",
    )
    args = parser.parse_args()
    work = args.workdir.absolute()
    shutil.rmtree(work / "runs", ignore_errors=True)
    data = dataset(work, n=args.images)
    device = pick_device(args.device)
    common = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch, "workers": args.workers, "seed": 0}

    t0 = time.perf_counter()
    result = run_training_process(
        {**common, "data": str(data), "weights": "yolov8n.yaml", "device": device, "config_dir": str(work / "yolo")},
        work / "runs" / "labelloop",
        timeout_s=7200,
    )
    labelloop_total = time.perf_counter() - t0
    labelloop_train = labelloop_total - result["val_seconds"]

    yolo = Path(sys.executable).parent / "yolo"
    env = {**os.environ, "YOLO_CONFIG_DIR": str(work / "yolo"), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
    argv = [
        str(yolo),
        "train",
        "model=yolov8n.yaml",
        f"data={data}",
        f"device={device}",
        f"project={work / 'runs'}",
        "name=yolo",
        "exist_ok=True",
        "plots=False",
        f"amp={device != 'cpu'}",
        *(f"{k}={v}" for k, v in common.items()),
    ]
    # The CLI needs torchvision's NMS too: the same shim, applied before ultralytics imports it.
    shim = "from labelloop.yolo_env import ensure_torchvision_ops; ensure_torchvision_ops(); "
    # ultralytics reads sys.argv when ultralytics.cfg is imported, so argv is set first.
    code = (
        shim + "import sys; sys.argv = " + json.dumps(argv) + "; from ultralytics.cfg import entrypoint; entrypoint()"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    yolo_total = time.perf_counter() - t0
    if out.returncode != 0 or not (work / "runs" / "yolo" / "weights" / "last.pt").exists():
        print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
        raise SystemExit("yolo train did not train")

    print(
        f"\ntraining: yolov8n.yaml, {args.images} images, epochs {args.epochs}, imgsz {args.imgsz}, "
        f"batch {args.batch}, workers {args.workers}, device {device}"
    )
    print(
        f"labelloop training step: {labelloop_train:.1f} s (+ {result['val_seconds']:.1f} s promotion-gate validation)"
    )
    print(f"yolo train:              {yolo_total:.1f} s")
    print(f"ratio labelloop / yolo train: {labelloop_train / yolo_total:.3f}x   (target <= 1.05x on GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
