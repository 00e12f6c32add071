"""The recipe on a CPU: held-out mAP50 of one first training per image size and model, several seeds.

    .venv/bin/python -m bench.recipe [--imgsz 384,256] [--weights yolo26n.yaml] [--annotations 20] [--seeds 6]

Per seed: ``bench.shapes``' generated project (80 images: 50 to annotate, 30 held out), ``--annotations``
of the 50 taken in a seeded random order, a fifth of them as the validation split (as
``LABELLOOP_VAL_FRACTION``), the rest trained on with labelloop's training child and recipe from
``yolo26n.yaml`` (batch, nbs, epochs, mosaic, checkpoint as ``labelloop.training.recipe.plan_recipe``
chooses them for that data on a CPU) at each ``--imgsz``, under the CPU wall-time budget; then
Ultralytics' validation of the published weights on the 30 held-out images at the same imgsz. The
first ``--imgsz`` is the peer every other is compared with (the default: 384, what the recipe chose
for these images before its CPU cap, against 256, what it chooses now). Several ``--weights`` (model
YAMLs, each from scratch: ``yolo26n.yaml,yolo11n.yaml,yolov8n.yaml``) are each trained at each size,
the first model at the first size being the peer. Printed: per seed, the mean
and min-max over seeds, the ratio of means, and in how many seeds each size is ahead of the peer.
Trainings run one after the other: a time-capped training loses epochs to anything else running.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench.mistakes import data_shape, truths, write_dataset
from bench.shapes import make_project
from labelloop.training.child import AUGMENT_ARGS
from labelloop.training.process import run_training_process
from labelloop.training.recipe import plan_recipe
from labelloop.yolo_env import prepare_ultralytics

ROOT = Path(__file__).resolve().parent.parent
POOL, HELD_OUT = 50, 30


def run_one(
    seed: int, imgsz: int, args: Any, work: Path, weights: str = "yolo26n.yaml", augment: str = ""
) -> dict[str, Any]:
    """Train ``weights`` at ``imgsz`` on seed ``seed``'s annotations, with ``augment``'s Ultralytics
    augmentation arguments (``"flipud=0.5,mixup=0.1"``; empty: the recipe's); held-out mAP50 and the
    epochs that fit."""
    project = make_project(seed, POOL + HELD_OUT)
    chosen = random.Random(seed).sample(project[:POOL], args.annotations)
    n_val = max(1, round(0.2 * args.annotations))
    val, train = chosen[:n_val], chosen[n_val:]
    root = work / f"seed{seed}-{Path(weights).stem}-imgsz{imgsz}{'-' + augment if augment else ''}"
    augment_args = parse_augment(augment)
    data = write_dataset(root / "ds", truths(train), truths(val))
    if augment_args.get("copy_paste"):
        box_outlines(root / "ds" / "labels" / "train")
    held = write_dataset(root / "held", [], truths(project[POOL:]))
    recipe = plan_recipe(
        data_shape(truths(train), len(val)),
        device="cpu",
        warm_start=False,
        pretrained=False,
        overrides={"train_time_s": args.time_s, "imgsz": imgsz},
    )
    spec = {
        **recipe.train_args(),
        "data": str(data),
        "weights": weights,
        "device": "cpu",
        "workers": 0,
        "seed": 0,
        "config_dir": str(work / "yolo"),
        **augment_args,
    }
    t0 = time.monotonic()
    result = run_training_process(spec, root / "run", timeout_s=args.time_s * 4 + 600)
    seconds = time.monotonic() - t0
    epochs = json.loads((root / "run" / "progress.json").read_text())["epoch"]
    prepare_ultralytics(work / "yolo")
    from ultralytics import YOLO

    metrics = YOLO(result["best"]).val(
        data=str(held), imgsz=imgsz, batch=8, device="cpu", plots=False, verbose=False, workers=0
    )
    row = {
        "seed": seed,
        "weights": weights,
        "imgsz": imgsz,
        **({"augment": augment} if augment else {}),
        "train_images": len(train),
        "epochs": epochs,
        "seconds": round(seconds, 1),
        "held_out_map50": round(float(metrics.box.map50), 4),
        "held_out_map50_95": round(float(metrics.box.map), 4),
    }
    print(json.dumps(row), flush=True)
    return row


def box_outlines(labels: Path) -> None:
    """Rewrite each YOLO box line ``c x y w h`` under ``labels`` as its rectangle's outline
    ``c x1 y1 x2 y1 x2 y2 x1 y2`` (normalised): Ultralytics' copy-paste (``copy_paste``) pastes
    segments only, and reads the box of a segment line back as the same box."""
    for path in labels.glob("*.txt"):
        lines = []
        for line in path.read_text().splitlines():
            c, *xywh = line.split()
            x, y, w, h = map(float, xywh)
            x1, y1, x2, y2 = x - w / 2, y - h / 2, x + w / 2, y + h / 2
            lines.append(f"{c} {x1:.6f} {y1:.6f} {x2:.6f} {y1:.6f} {x2:.6f} {y2:.6f} {x1:.6f} {y2:.6f}")
        path.write_text("\n".join(lines) + ("\n" if lines else ""))


def parse_augment(augment: str) -> dict[str, float]:
    """``"flipud=0.5,mixup=0.1"`` -> ``{"flipud": 0.5, "mixup": 0.1}`` (keys of
    ``labelloop.training.child.AUGMENT_ARGS``).

    Raises:
        ValueError: a key that is not one, or a value that is not a number.
    """
    out: dict[str, float] = {}
    for item in filter(None, augment.split(",")):
        key, _, value = item.partition("=")
        if key not in AUGMENT_ARGS:
            raise ValueError(f"{key!r} is not an augmentation argument ({', '.join(AUGMENT_ARGS)})")
        out[key] = float(value)
    return out


def variant(row: dict[str, Any], several_weights: bool) -> str:
    """A row's variant name: its imgsz (``"256"``), prefixed by the model when several are compared
    (``"yolov8n.yaml@256"``), followed by its augmentation arguments when it has some
    (``"256+flipud=0.5"``)."""
    name = f"{row.get('weights', 'yolo26n.yaml')}@{row['imgsz']}" if several_weights else str(row["imgsz"])
    return f"{name}+{row['augment']}" if row.get("augment") else name


def summarise(rows: list[dict[str, Any]], several_weights: bool = False) -> dict[str, Any]:
    """Per variant (in the rows' order, the first one the peer): mean, min, max of held-out mAP50;
    ratio to the peer's mean; seeds ahead of the peer."""
    by: dict[str, dict[int, float]] = {}
    for r in rows:
        by.setdefault(variant(r, several_weights), {})[r["seed"]] = r["held_out_map50"]
    peer = next(iter(by.values()))
    peer_mean = statistics.fmean(peer.values())
    out: dict[str, Any] = {}
    for name, per_seed in by.items():
        values = list(per_seed.values())
        mean = statistics.fmean(values)
        out[name] = {
            "mean": round(mean, 4),
            "min": min(values),
            "max": max(values),
            "x_peer": round(mean / peer_mean, 2) if peer_mean else None,
            "seeds_ahead_of_peer": sum(v > peer[seed] for seed, v in per_seed.items()),
            "seeds": len(values),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imgsz", default="384,256", help="sizes to compare, the first one is the peer")
    parser.add_argument("--annotations", type=int, default=20, help="annotated tasks, a fifth of them validation")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=6, help="seeds --seed, --seed+1, ...")
    parser.add_argument("--time-s", type=float, default=170.0, help="wall-time cap of each training (the CPU budget)")
    parser.add_argument(
        "--weights",
        default="yolo26n.yaml",
        help="model YAMLs, from scratch as labelloop offline (yolo26n.yaml,yolov8n.yaml): each at each --imgsz",
    )
    parser.add_argument(
        "--augment",
        default="",
        help="augmentation variants separated by ';', each Ultralytics arguments 'flipud=0.5,mixup=0.1' "
        "(an empty variant: the recipe's); each at each --imgsz and model",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench-recipe")
    parser.add_argument("--out", type=Path, default=None, help="write the rows and the summary as JSON here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.imgsz.split(",")]
    models = args.weights.split(",")
    augments = args.augment.split(";")
    for augment in augments:
        parse_augment(augment)  # a typo fails before the first training, not after it
    rows = [
        run_one(seed, size, args, args.workdir.absolute(), weights, augment)
        for weights in models
        for size in sizes
        for augment in augments
        for seed in range(args.seed, args.seed + args.seeds)
    ]
    summary = summarise(rows, several_weights=len(models) > 1)
    peer = next(iter(summary))
    for name, fig in summary.items():
        print(
            f"{name if len(models) > 1 else 'imgsz ' + name}: held-out mAP50 {fig['mean']:.3f} "
            f"[{fig['min']:.3f}-{fig['max']:.3f}] over {fig['seeds']} seeds, {fig['x_peer']}x {peer}, "
            f"ahead of it in {fig['seeds_ahead_of_peer']} of {fig['seeds']}"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "config": vars(args) | {"workdir": str(args.workdir), "out": str(args.out)},
                    "rows": rows,
                    "summary": summary,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
