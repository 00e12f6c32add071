"""Display thresholds on held-out images: how many edits each rule leaves, against the best possible.

    .venv/bin/python -m bench.learning --order both --seeds 3 --no-peers --keep ...   # a kept run
    .venv/bin/python -m bench.thresholds RUN_FOLDER LEARNING_JSON [--fresh N] [--out thresholds.json]

Reads a ``bench.learning`` run kept with ``--keep``: every version in its registry (``models/<project
id>/versions/v<N>``), each project's seed and order from its Label Studio title (``bench.learning.project_title``,
read back in the run's SQLite database), the held-out images regenerated from the seed
(``bench.learning.SeedData``, the upright copies of EXIF-rotated ones, as labelloop's image cache
holds them). Each version predicts the held-out images at ``SWEEP_CONF`` (0.01) at the imgsz it
trained at, and the edits per image (``labelloop.training.scoring.edits``: missed objects plus wrong
regions) are counted with the regions shown at:

  own       the version's display threshold (``show_conf.value`` in its manifest: its validation
            split's optimum shrunk toward the prior it was trained with, ``labelloop.training.threshold``);
  prior 0.5 that optimum shrunk toward 0.5 instead (labelloop's ``PRIOR`` since this bench measured it);
  raw       its validation split's optimum, not shrunk;
  0.25      Ultralytics' default predict conf (labelloop's ``predict_conf``, the prior before);
  0.5       a fixed higher one;
  best      the threshold with the fewest edits on these held-out images themselves: a bound
            that no rule choosing before it sees them can beat.

With ``--fresh N`` the versions are scored on N new images per seed (generated from seed +
``FRESH_SEED``) instead of the held-out tasks: images no version trained on and no rule was read off.

Also the held-out mAP50 of every box from 0.01 (as Ultralytics' val ranks them), beside
``bench.learning``'s mAP50 of the regions Label Studio stores (those at or above the display
threshold). Rows per version, then the mean per annotation count and order, as % of the boxes per
image (what drawing everything by hand costs).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.learning import TITLE, SeedData, truth_dets
from labelloop.training.scoring import Det, edits, score
from labelloop.training.threshold import SWEEP_CONF, optimum, shown, shrink

RULES = ("own", "prior 0.5", "raw", "0.25", "0.5", "best")
FRESH_SEED = 1000  # --fresh images come from seed + FRESH_SEED


def version_row(preds: Sequence[Det], truths: Sequence[Det], images: int, show_conf: dict[str, Any]) -> dict[str, Any]:
    """Edits per image under each rule in ``RULES`` and the mAP50 of every box (pure).

    Args:
        preds: the version's predictions on the held-out images at ``SWEEP_CONF``, labels as names.
        truths: the held-out objects, same image keys and labels.
        images: held-out images (those without objects included).
        show_conf: the version's manifest ``show_conf`` (``value``, ``raw``, ``objects``; missing: the
            rules that need them are None).

    Returns:
        ``{"boxes", "map50", "thresholds": {rule: t}, "edits": {rule: edits per image}}``.
    """
    best, _ = optimum(preds, truths)
    raw = show_conf.get("raw")
    thresholds = {
        "own": show_conf.get("value"),
        "prior 0.5": None if raw is None else shrink(raw, 0.5, int(show_conf.get("objects") or 0)),
        "raw": raw,
        "0.25": 0.25,
        "0.5": 0.5,
        "best": best,
    }
    per_image = {
        rule: None if t is None else round(edits(shown(preds, t), truths)["edits"] / images, 4)
        for rule, t in thresholds.items()
    }
    return {
        "boxes": round(len(truths) / images, 4),
        "map50": round(score(preds, truths)["map50"], 4),
        "thresholds": thresholds,
        "edits": per_image,
    }


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (annotations, order), in that order: versions, mean boxes per image, mean mAP50 of every
    box, and per rule the mean edits per image and their share of the boxes (rules a version
    lacks are left out of that rule's mean)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["annotations"], row["order"]), []).append(row)
    out = []
    for (count, order), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "random")):
        boxes = statistics.mean(r["boxes"] for r in group)
        line: dict[str, Any] = {
            "annotations": count,
            "order": order,
            "versions": len(group),
            "boxes": round(boxes, 2),
            "map50": round(statistics.mean(r["map50"] for r in group), 3),
        }
        for rule in RULES:
            values = [r["edits"][rule] for r in group if r["edits"][rule] is not None]
            if values:
                mean = statistics.mean(values)
                line[rule] = {"edits": round(mean, 2), "share": round(mean / boxes, 3) if boxes else None}
        out.append(line)
    return out


def projects(run: Path) -> dict[int, tuple[int, str]]:
    """Project id -> (seed, order), from the project titles in the run's Label Studio database."""
    db = sqlite3.connect(str(run / "label-studio" / "label_studio.sqlite3"))
    try:
        found = {}
        for pid, title in db.execute("select id, title from project"):
            if m := TITLE.fullmatch(str(title)):
                found[int(pid)] = (int(m.group(1)), m.group(2))
        return found
    finally:
        db.close()


def measure(run: Path, config: dict[str, Any], fresh: int = 0) -> list[dict[str, Any]]:
    """One row per version of every project of the run (predicts with Ultralytics); with ``fresh``,
    scored on that many images generated from seed + ``FRESH_SEED`` instead of the held-out tasks."""
    import tempfile

    from labelloop.training.threshold import result_dets
    from labelloop.yolo_env import ensure_torchvision_ops

    ensure_torchvision_ops()
    from ultralytics import YOLO

    rows = []
    held: dict[int, tuple[list[str], list[Det]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-thresholds-") as scratch:
        for pid, (seed, order) in sorted(projects(run).items()):
            if seed not in held:
                data = (
                    SeedData.make(seed + FRESH_SEED, 0, fresh, Path(scratch))
                    if fresh
                    else SeedData.make(seed, config["pool"], config["held_out"], Path(scratch))
                )
                paths, truths = [], []
                for i, im in enumerate(data.held):
                    paths.append(str(data.files / im.upright_name))
                    truths.extend(truth_dets(i, im))
                held[seed] = (paths, truths)
            paths, truths = held[seed]
            for folder in sorted((run / "models" / str(pid) / "versions").glob("v*"), key=lambda p: int(p.name[1:])):
                manifest = json.loads((folder / "manifest.json").read_text())
                names = manifest.get("names") or {str(i): c for i, c in enumerate(manifest.get("classes") or [])}
                model = YOLO(str(folder / "weights.pt"))
                imgsz = (manifest.get("train_args") or {}).get("imgsz") or 640
                preds = []
                for i, path in enumerate(paths):
                    result = model.predict(path, imgsz=imgsz, conf=SWEEP_CONF, verbose=False)[0]
                    preds += [Det(d.image, names[d.label], d.score, d.box) for d in result_dets(result, i)]
                size = manifest.get("dataset_size") or {}
                row = {
                    "seed": seed,
                    "order": order,
                    "version": folder.name,
                    "annotations": int(size.get("train", 0)) + int(size.get("val", 0)),
                    "status": manifest.get("status"),
                }
                row |= version_row(preds, truths, len(paths), manifest.get("show_conf") or {})
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a bench.learning run folder kept with --keep (run-*)")
    parser.add_argument("learning_json", type=Path, help="that run's learning.json (its config: pool, held_out)")
    parser.add_argument("--out", type=Path, help="write {rows, summary} here as JSON")
    parser.add_argument(
        "--fresh",
        type=int,
        default=0,
        help=f"score on this many new images (seed + {FRESH_SEED}): no version trained on them or chose by them",
    )
    args = parser.parse_args(argv)
    config = json.loads(args.learning_json.read_text())["config"]
    rows = measure(args.run, config, args.fresh)
    table = summarise(rows)
    print("\nedits per held-out image (% of the boxes per image), mean over versions:")
    print(f"{'annots':>6} {'order':>9} {'n':>2} {'mAP50 all':>9} " + " ".join(f"{r:>12}" for r in RULES))
    for line in table:
        cells = [f"{line[r]['edits']:.2f} ({100 * line[r]['share']:.0f}%)" if r in line else "-" for r in RULES]
        print(
            f"{line['annotations']:>6} {line['order']:>9} {line['versions']:>2} {line['map50']:>9.3f} "
            + " ".join(f"{c:>12}" for c in cells)
        )
    if args.out:
        out = {"config": config | {"fresh_images": args.fresh}, "rows": rows, "summary": table}
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
