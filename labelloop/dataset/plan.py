"""The build plan: which annotation of each task is trained, which image it needs, and what the dataset
folder must hold afterwards (``PlanEntry`` per task). Nothing here writes the folder
(``labelloop.dataset.writer`` does).

Three steps, in build order:

1. ``choose``: per task the annotation to train on and its image URL (skips go into the report);
2. ``reuse_images``: an image the last build used for the same URL is taken from disk, the
   others are fetched;
3. ``plan_files``: the split of each task (``labelloop.dataset.splits``), its label text
   (``labelloop.task_types.convert``; reused when nothing it depends on changed) and its paths.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from labelloop.dataset import long_side_p90, object_sides, p10
from labelloop.dataset.report import DatasetReport
from labelloop.dataset.sources import Fetch, ImageRef, LocalImage
from labelloop.dataset.splits import assign_splits
from labelloop.dataset.state import PlanEntry
from labelloop.labelstudio.export import select_annotation
from labelloop.ls_json import Annotation, Region, Task
from labelloop.task_types import task_type
from labelloop.task_types.spec import TrainSpec

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class Chosen(NamedTuple):
    """A task to train on: its id, its image URL and the annotation chosen."""

    task_id: int
    url: str
    annotation: Annotation


def chosen_annotation(task: Task) -> Annotation | None:
    """The annotation a dataset trains on (``labelloop.labelstudio.export.select_annotation``:
    completed, not cancelled; ground truth first, else the most recently updated), or None."""
    return select_annotation(task)


def _unknown_labels(result: Sequence[Region], spec: TrainSpec, known: set[str]) -> list[str]:
    found = []
    for region in result:
        if region.get("from_name") not in spec.control_tags:
            continue
        value: Mapping[str, Any] = region.get("value") or {}
        for key in (spec.region_type, "keypointlabels", "choices"):
            for label in value.get(key) or ():
                if isinstance(label, str) and label not in known:
                    found.append(label)
    return found


def choose(tasks: Sequence[Task], spec: TrainSpec, report: DatasetReport) -> tuple[list[Chosen], TrainSpec]:
    """The tasks to train on, and the spec (``detect`` becomes ``obb`` when a chosen rectangle is
    rotated); skipped tasks and unknown labels go into ``report``."""
    from labelloop.task_types import convert

    chosen: list[Chosen] = []
    known = set(spec.labels) | set(spec.keypoint_labels)
    unknown: Counter[str] = Counter()
    for task in tasks:
        task_id = int(task["id"])
        annotation = chosen_annotation(task)
        if annotation is None:
            cancelled = any(a.get("was_cancelled") for a in task.get("annotations") or [])
            report.skip(task_id, "skipped by annotator" if cancelled else "no completed annotation")
            continue
        url = (task.get("data") or {}).get(spec.value_key)
        if not isinstance(url, str) or not url:
            report.skip(task_id, "no image", f"task data has no '{spec.value_key}'")
            continue
        unknown.update(_unknown_labels(annotation.get("result") or [], spec, known))
        chosen.append(Chosen(task_id, url, annotation))
    report.unknown_labels = dict(unknown)
    results: list[Any] = [c.annotation.get("result") or [] for c in chosen]
    if spec.task == "detect" and any(convert.has_rotation(result, spec) for result in results):
        spec = spec.with_task("obb")
    report.task = spec.task
    return chosen, spec


def mtime_ns(path: str) -> int:
    """A file's modification time in nanoseconds; 0 when it cannot be read."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _kept_source(prev: PlanEntry, out_dir: Path) -> str | None:
    """The last build's image of a task, if still on disk: its source, or the dataset's link to it."""
    for path in (prev["src"], str(out_dir / prev["image"])):
        if prev.get("src_mtime") and mtime_ns(path) == prev["src_mtime"]:
            return path
    return None


def reuse_images(
    chosen: Sequence[Chosen], old_tasks: Mapping[str, PlanEntry], fetch: Fetch, out_dir: Path
) -> tuple[dict[int, ImageRef | BaseException], dict[int, PlanEntry]]:
    """Each task's image (or the exception fetching it), and the last build's entries reused:
    an image the last build used for the same URL is taken from its source file or, when the
    image cache evicted that, from the dataset's own link to it (same modification time: the same
    file); only new or changed ones are fetched."""
    images: dict[int, ImageRef | BaseException] = {}
    reused: dict[int, PlanEntry] = {}
    to_fetch: list[tuple[int, str]] = []
    for task_id, url, _ in chosen:
        prev = old_tasks.get(str(task_id))
        src = _kept_source(prev, out_dir) if prev is not None and prev.get("url") == url else None
        if prev is not None and src is not None:
            images[task_id] = LocalImage(src, int(prev["width"]), int(prev["height"]))
            reused[task_id] = prev
        else:
            to_fetch.append((task_id, url))
    if to_fetch:
        images.update(fetch(to_fetch))
    return images, reused


def _image_ext(path: str | Path) -> str:
    ext = os.path.splitext(path)[1].lower()
    return ext if ext in IMAGE_EXTENSIONS else ".png"


def plan_files(
    chosen: Sequence[Chosen],
    images: Mapping[int, ImageRef | BaseException],
    reused: Mapping[int, PlanEntry],
    old_tasks: Mapping[str, PlanEntry],
    spec: TrainSpec,
    names: Mapping[int, str],
    val_fraction: float,
    min_val: int,
    report: DatasetReport,
) -> dict[str, PlanEntry]:
    """What each task contributes (the folder's target state, by task id as text): image and
    label paths, label text, source image; converted labels are reused when nothing changed.
    Counts, skips and dropped regions go into ``report``. No file is touched.

    Long because it is one pass over the tasks that decides every file of the folder; split, each
    part would need the whole pass's state.
    """
    from labelloop.task_types import convert

    kind = task_type(spec)
    class_ids = {label: i for i, label in names.items() if label in spec.labels}
    names_key = hashlib.sha1(json.dumps([spec.task, spec.from_name, sorted(names.items())]).encode()).hexdigest()[:12]
    usable: list[tuple[Chosen, ImageRef]] = []
    for item in chosen:
        image = images.get(item.task_id)
        if image is None or isinstance(image, BaseException):
            report.skip(item.task_id, "image unavailable", str(image)[:300])
            continue
        usable.append((item, image))
    splits = assign_splits([item.task_id for item, _ in usable], val_fraction, min_val)
    wanted: dict[str, PlanEntry] = {}
    per_class: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
    sides: list[float] = []
    for (task_id, url, annotation), image in usable:
        key = f"{annotation.get('id')}:{annotation.get('updated_at')}:{image.width}x{image.height}:{names_key}"
        prev = old_tasks.get(str(task_id))
        label: str | None
        if prev is not None and prev.get("key") == key:
            label, dropped = prev["label"], prev.get("dropped", [])
        else:
            result: Any = annotation.get("result") or []
            if not kind.label_files:
                label, dropped = convert.annotation_to_class(result, spec, class_ids)
            else:
                lines, dropped = convert.annotation_to_yolo(result, spec, class_ids, image.width, image.height)
                label = "".join(line + "\n" for line in lines)
        report.drop(task_id, dropped)
        if label is None:  # classify only: a line task's label is text, empty for a background image
            report.skip(task_id, "no choice", "; ".join(dropped))
            continue
        split = splits[task_id]
        kept = reused.get(task_id)
        src = os.path.abspath(image.path)
        src_mtime = kept["src_mtime"] if kept is not None else mtime_ns(src)
        ext = _image_ext(src)
        if not kind.label_files:
            image_rel = f"{split}/{class_ids[label]}/{task_id}{ext}"
            label_rel = None
            per_class[split][label] += 1
        else:
            image_rel = f"images/{split}/{task_id}{ext}"
            label_rel = f"labels/{split}/{task_id}.txt"
            if not label:
                report.background_images += 1
            for line in label.splitlines():
                per_class[split][names[int(line.split(" ", 1)[0])]] += 1
            sides += object_sides(label, spec.task, image.width, image.height)
        report.images[split] += 1
        if image.downloaded:
            report.images_downloaded += 1
        else:
            report.images_cached += 1
        wanted[str(task_id)] = {
            "key": key,
            "label": label,
            "dropped": dropped,
            "image": image_rel,
            "labels": label_rel,
            "src": src,
            "src_mtime": src_mtime,
            "url": url,
            "width": image.width,
            "height": image.height,
        }
    report.instances_per_class = {s: dict(sorted(c.items())) for s, c in per_class.items()}
    report.long_side_p90 = long_side_p90([(e["width"], e["height"]) for e in wanted.values()])
    report.object_side_p10 = p10(sides)
    return wanted
