"""Build an Ultralytics detection dataset from exported Label Studio tasks.

Layout (https://docs.ultralytics.com/datasets/detect/)::

    <out>/images/{train,val}/<task_id>.<ext>
    <out>/labels/{train,val}/<task_id>.txt     one "cls cx cy w h" line per box
    <out>/data.yaml                             path, train, val, names
    <out>/report.json                           counts, skipped items, seconds per stage
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageOps

from service.errors import DatasetError
from workers.export import select_annotation
from workers.labels import DetectionSpec, annotation_to_yolo_lines

_HASH_SPACE = float(2**64)


def val_score(task_id: int) -> float:
    """A stable pseudo-random number in [0, 1) for a task id (first 8 bytes of its SHA-1)."""
    digest = hashlib.sha1(str(int(task_id)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SPACE


def assign_splits(task_ids: list[int], val_fraction: float, min_val: int) -> dict[int, str]:
    """Deterministic train/val split by a hash of the task id.

    A task is in val when ``val_score(id) < val_fraction``, so it stays on the same side
    across rebuilds. When fewer than ``min_val`` tasks fall in val, the train tasks with the
    smallest scores move over; at least one task always stays in train.

    Returns:
        task id -> "train" or "val".
    """
    split = {t: ("val" if val_score(t) < val_fraction else "train") for t in task_ids}
    val = [t for t, s in split.items() if s == "val"]
    want = min(min_val, max(0, len(task_ids) - 1))
    if len(val) < want:
        train_sorted = sorted((t for t, s in split.items() if s == "train"), key=val_score)
        for t in train_sorted[: want - len(val)]:
            split[t] = "val"
    if task_ids and all(s == "val" for s in split.values()):
        split[max(task_ids, key=val_score)] = "train"
    return split


@dataclass
class DatasetReport:
    """What a build produced and skipped; stored next to the dataset and in the manifest."""

    tasks_exported: int = 0
    images: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    boxes_per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    background_images: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    dropped_regions: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _place_image(src: Path, dst_stem: Path) -> tuple[Path, int, int]:
    """Copy an image into the dataset with its EXIF orientation applied once.

    Returns:
        (path written, width, height) of the corrected image.
    """
    with Image.open(src) as im:
        im.load()
        fixed = ImageOps.exif_transpose(im)
        ext = src.suffix.lower() if src.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".webp"} else ".png"
        dst = dst_stem.with_suffix(ext)
        if fixed is im:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        else:
            fixed.save(dst)
        return dst, fixed.width, fixed.height


def build_dataset(
    tasks: list[dict[str, Any]],
    spec: DetectionSpec,
    out_dir: Path,
    fetch: Callable[[list[tuple[int, str]]], dict[int, Path | Exception]],
    val_fraction: float = 0.2,
    min_val: int = 1,
) -> tuple[Path, DatasetReport]:
    """Write a YOLO detection dataset for the tasks' selected annotations.

    Args:
        tasks: exported Label Studio tasks (JSON export format).
        spec: the control tag and labels to train; class id = index in ``spec.labels``.
        out_dir: an empty or missing directory (absolute paths are written to data.yaml).
        fetch: ``[(task_id, url)] -> {task_id: local path or exception}``.
        val_fraction, min_val: see ``assign_splits``.

    Returns:
        (path of data.yaml, report).

    Raises:
        DatasetError: fewer than two usable tasks remain.
    """
    out_dir = Path(out_dir).absolute()
    report = DatasetReport(tasks_exported=len(tasks))
    t0 = time.perf_counter()
    chosen: list[tuple[int, str, dict[str, Any]]] = []
    for task in tasks:
        task_id = int(task["id"])
        annotation = select_annotation(task)
        if annotation is None:
            report.skipped.append({"task": task_id, "reason": "no completed annotation"})
            continue
        url = (task.get("data") or {}).get(spec.value_key)
        if not isinstance(url, str) or not url:
            report.skipped.append({"task": task_id, "reason": f"task data has no '{spec.value_key}'"})
            continue
        chosen.append((task_id, url, annotation))
    report.seconds["select"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    paths = fetch([(task_id, url) for task_id, url, _ in chosen])
    report.seconds["download"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    splits = assign_splits([t for t, _, _ in chosen if not isinstance(paths.get(t), Exception)], val_fraction, min_val)
    for split in ("train", "val"):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
    per_class: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
    fp = hashlib.sha256()
    for task_id, _url, annotation in sorted(chosen, key=lambda c: c[0]):
        src = paths.get(task_id)
        if src is None or isinstance(src, Exception):
            report.skipped.append({"task": task_id, "reason": f"image not fetched: {src}"})
            continue
        split = splits[task_id]
        try:
            dst, width, height = _place_image(Path(src), out_dir / "images" / split / str(task_id))
        except (OSError, Image.DecompressionBombError, ValueError) as exc:
            report.skipped.append({"task": task_id, "reason": f"image unreadable: {exc}"})
            continue
        lines, dropped = annotation_to_yolo_lines(annotation.get("result") or [], spec, width, height)
        for reason in dropped:
            report.dropped_regions.append({"task": task_id, "reason": reason})
        label_text = "\n".join(lines) + ("\n" if lines else "")
        (out_dir / "labels" / split / f"{task_id}.txt").write_text(label_text)
        report.images[split] += 1
        if not lines:
            report.background_images += 1
        for line in lines:
            per_class[split][spec.labels[int(line.split()[0])]] += 1
        fp.update(f"{task_id}:{split}:{dst.stat().st_size}:{label_text}".encode())
    report.boxes_per_class = {s: dict(c) for s, c in per_class.items()}
    report.fingerprint = fp.hexdigest()[:16]
    usable = report.images["train"] + report.images["val"]
    if usable < 2 or report.images["train"] < 1 or report.images["val"] < 1:
        raise DatasetError(
            f"too little data to train: {usable} usable images (train {report.images['train']}, "
            f"val {report.images['val']}) of {len(tasks)} exported tasks, {len(report.skipped)} skipped"
        )
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(
        yaml.safe_dump(
            {
                "path": str(out_dir),
                "train": "images/train",
                "val": "images/val",
                "names": dict(enumerate(spec.labels)),
            },
            sort_keys=False,
        )
    )
    report.seconds["build"] = time.perf_counter() - t0
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return data_yaml, report
