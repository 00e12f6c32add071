"""The learning curve's peers: Ultralytics trained by hand on the same annotated tasks, in a child process each.

Trained from the base model labelloop started from (round 1's ``train_args.weights``) on a YOLO
dataset built from the same annotated tasks (``labelloop.dataset.images.build_dataset``, same task
ids, val fraction 0.2, so the same split), for the wall time labelloop's training took that
round (manifest ``timings.train``, as Ultralytics' ``time=`` in hours):

- (a) Ultralytics defaults: ``YOLO(base).train(data, time)`` plus what offline CPU needs
  (device, amp=False, workers=2, plots=False, an absolute project dir);
- (b) Ultralytics tuned by hand for small data: (a) with batch=4, nbs=4 and imgsz the largest
  image side rounded up to a multiple of 32.

Each peer predicts the held-out images (upright: EXIF applied) at conf 0.25, labelloop's default
threshold. The child is ``python -m bench.learning_peers SPEC.json``; it writes ``result.json``
next to the spec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.learning_report import Round
from bench.shapes import ShapeImage
from labelloop.training.process import _die_with_parent
from labelloop.training.scoring import Det, score

ROOT = Path(__file__).resolve().parent.parent
CONF = 0.25  # labelloop's default predict_conf; the peers predict with the same threshold
VAL_FRACTION = 0.2  # labelloop's default val_fraction
MIN_VAL = 1  # labelloop's default min_val_images
WORKERS = 2  # labelloop's default dataloader_workers


def peer_main(spec_path: Path) -> int:
    """The peer child: train with ultralytics as the spec says, then predict the held-out images."""
    spec = json.loads(spec_path.read_text())
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(Path(spec["config_dir"]))
    from PIL import Image, ImageOps
    from ultralytics import YOLO

    t0 = time.perf_counter()
    model = YOLO(spec["weights"])
    model.train(data=spec["data"], **spec["train"])
    train_s = time.perf_counter() - t0
    trainer = model.trainer
    best = Path(trainer.best) if Path(trainer.best).exists() else Path(trainer.last)
    imgsz = int(trainer.args.imgsz)
    t1 = time.perf_counter()
    predictor = YOLO(str(best))
    predictions: dict[str, list[list[Any]]] = {}
    for task_id, path in spec["images"]:
        with Image.open(path) as raw:
            im = ImageOps.exif_transpose(raw).convert("RGB")  # the displayed frame
        res = predictor.predict(im, conf=spec["conf"], imgsz=imgsz, device=spec["train"]["device"], verbose=False)[0]
        names = res.names
        boxes = res.boxes
        predictions[str(task_id)] = [
            [str(names[int(c)]), float(s), *(float(v) for v in xyxy)]
            for xyxy, c, s in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), strict=True)
        ]
    result = {
        "train_seconds": train_s,
        "predict_seconds": time.perf_counter() - t1,
        "epochs": int(trainer.epoch) + 1,
        "imgsz": imgsz,
        "batch": int(trainer.args.batch),
        "nbs": int(trainer.args.nbs),
        "best": str(best),
        "predictions": predictions,
    }
    tmp = spec_path.with_name("result.json.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, spec_path.with_name("result.json"))
    return 0


def run_peer(spec: dict[str, Any], run_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``peer_main`` in a child process (output in ``<run_dir>/peer.log``); returns its result."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    with open(run_dir / "peer.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.learning_peers", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "YOLO_VERBOSE": "True"},  # ultralytics' log in peer.log
            preexec_fn=_die_with_parent,
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    result_path = run_dir / "result.json"
    if code != 0 or not result_path.exists():
        tail = (run_dir / "peer.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"peer exited with {code}:\n{tail}")
    return dict(json.loads(result_path.read_text()))


def peer_dets(result: dict[str, Any]) -> list[Det]:
    return [
        Det(int(task_id), label, conf, (x1, y1, x2, y2))
        for task_id, rows in result["predictions"].items()
        for label, conf, x1, y1, x2, y2 in rows
    ]


def run_peers(
    rnd: Round,
    annotated: list[ShapeImage],
    held: list[ShapeImage],
    task_of: dict[str, int],
    truths: list[Det],
    files: Path,
    work: Path,
    base_model: str,
    device: str,
    imgsz_tuned: int,
    say: Callable[[str], None],
) -> None:
    """Train and score peers (a) and (b) for one round; results (or an error each) go to ``rnd.peers``.

    Args:
        files: the uploaded images, with ``<stem>-upright.jpg`` copies of the EXIF-rotated ones.
        work: the run folder; the peers work under ``<work>/peers/r<annotations>``.
    """
    from bench.shapes import LABEL_CONFIG
    from labelloop.dataset.images import build_dataset, local_images
    from labelloop.task_types.labels import parse_detection_config

    tasks = [
        {
            "id": task_of[im.name],
            "data": {"image": im.name},
            "annotations": [{"id": k + 1, "result": im.ls_result(), "was_cancelled": False}],
        }
        for k, im in enumerate(annotated)
    ]
    fetch = local_images({task_of[im.name]: files / im.upright_name for im in annotated})
    root = work / "peers" / f"r{rnd.annotations}"
    built = build_dataset(tasks, parse_detection_config(LABEL_CONFIG), root / "ds", fetch, VAL_FRACTION, MIN_VAL)
    common = {
        "time": max(rnd.train_s, 1.0) / 3600,
        "device": device,
        "amp": device != "cpu",
        "workers": WORKERS,
        "exist_ok": True,
        "plots": False,
        "name": "train",
    }
    for name, extra in (("a", {}), ("b", {"batch": 4, "nbs": 4, "imgsz": imgsz_tuned})):
        run_dir = root / name
        spec = {
            "weights": base_model,
            "data": str(built.data),
            "train": {**common, **extra, "project": str(run_dir / "runs")},
            "images": [[task_of[im.name], str(files / im.name)] for im in held],
            "conf": CONF,
            "config_dir": str(work / "peers" / "ultralytics"),
        }
        say(
            f"  peer ({name}): training {rnd.train_s:.0f} s on {len(annotated)} tasks, "
            f"{extra or 'ultralytics defaults'}"
        )
        try:
            result = run_peer(spec, run_dir, timeout_s=rnd.train_s * 3 + 900)
        except Exception as exc:  # a failing peer is reported, the run goes on
            rnd.peers[name] = {"error": f"{type(exc).__name__}: {exc}"[-3000:]}
            say(f"  peer ({name}) failed: {str(exc).splitlines()[0][:300]}")
            continue
        result["score"] = score(peer_dets(result), truths)
        result.pop("predictions")
        rnd.peers[name] = result
        say(
            f"  peer ({name}): mAP50 {result['score']['map50']:.3f} ({result['epochs']} epochs, "
            f"trained {result['train_seconds']:.0f} s)"
        )


if __name__ == "__main__":
    sys.exit(peer_main(Path(sys.argv[1])))
