"""Build Ultralytics datasets from Label Studio annotations, for every image task type, incrementally.

Layouts (https://docs.ultralytics.com/datasets/):

* detect / obb / segment / pose::

    <out>/images/{train,val}/<task_id>.<ext>
    <out>/labels/{train,val}/<task_id>.txt   one line per region (format per task, see labelloop.task_types.convert)
    <out>/data.yaml                           path, train, val, names (+ kpt_shape for pose)

* classify (folder per class; folders are the stable class ids, names in ``.ndjson.yaml``,
  which Ultralytics reads for id-named class folders)::

    <out>/{train,val}/<class_id>/<task_id>.<ext>
    <out>/.ndjson.yaml                        names

Every build also writes ``<out>/report.json`` (counts per class and split, skipped tasks and
dropped regions with reasons, images downloaded vs cached, seconds per stage) and
``<out>/.labelloop-state.json``: what each task contributed, so the next build into the same
folder rewrites only the tasks that changed (a rebuild after one new annotation touches one
image and one label file).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import yaml
from PIL import Image

from labelloop.dataset import long_side_p90
from labelloop.errors import DatasetError
from labelloop.events.changes import ChangeLog
from labelloop.files import fsync_files, write_atomic
from labelloop.labelstudio.export import select_annotation
from labelloop.registry.store import ProjectFiles
from labelloop.settings import Settings
from labelloop.task_types import task_type
from labelloop.task_types.labels import TrainSpec

if TYPE_CHECKING:
    from labelloop.labelstudio.media import MediaConfig

_HASH_SPACE = float(2**64)
STATE_FILE = ".labelloop-state.json"
STATE_VERSION = 2


class ImageRef(Protocol):
    """A task image ready for the dataset (``labelloop.labelstudio.media.CachedImage`` is one).

    Attributes:
        path: the image file, EXIF orientation already applied.
        width, height: its size in pixels.
        downloaded: whether it was fetched for this build (False: from the cache).
    """

    path: Path
    width: int
    height: int
    downloaded: bool


@dataclass(frozen=True)
class LocalImage:
    """An upright image file that is already on disk (tests, benches, shared folders)."""

    path: str | Path
    width: int
    height: int
    downloaded: bool = False


def local_images(files: Mapping[int, Path]) -> Callable[[list[tuple[int, str]]], dict[int, Any]]:
    """A ``fetch`` for ``build_dataset`` that serves upright local files by task id.

    Returns:
        ``[(task_id, url)] -> {task_id: LocalImage or the exception reading it raised}``;
        a task id without a file gets a ``FileNotFoundError``.
    """

    def fetch(items: list[tuple[int, str]]) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for task_id, _url in items:
            path = files.get(task_id)
            try:
                if path is None:
                    raise FileNotFoundError(f"no image for task {task_id}")
                with Image.open(path) as im:
                    out[task_id] = LocalImage(Path(path), im.width, im.height)
            except (OSError, ValueError) as exc:
                out[task_id] = exc
        return out

    return fetch


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


# ---------------------------------------------------------------------------------------------
# Stable class ids


def stable_names(previous: Mapping[int, str] | None, labels: tuple[str, ...]) -> dict[int, str]:
    """Class ids for a project's labels that never change meaning.

    Args:
        previous: the ids used so far (id -> label), e.g. from the last build or version.
        labels: the label config's labels, in config order.

    Returns:
        id -> label: every previous id keeps its label (a label removed from the config keeps
        its id reserved), and labels seen for the first time get the next ids in config order.
    """
    names = {int(k): str(v) for k, v in (previous or {}).items()}
    known = set(names.values())
    next_id = max(names, default=-1) + 1
    for label in labels:
        if label not in known:
            names[next_id] = label
            known.add(label)
            next_id += 1
    return dict(sorted(names.items()))


CLASSES_FILE = "classes.json"


def load_class_names(models_dir: Path, project_id: int, from_name: str) -> dict[int, str] | None:
    """The class ids stored for a project's control tag (``classes.json``, ``ProjectFiles``)."""
    try:
        stored = json.loads(ProjectFiles(models_dir).read(project_id, CLASSES_FILE) or "{}")
        return {int(k): str(v) for k, v in stored[from_name].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def store_class_names(models_dir: Path, project_id: int, from_name: str, names: Mapping[int, str]) -> None:
    """Persist a control tag's class ids with the project's model versions (atomic write)."""
    files = ProjectFiles(models_dir)
    try:
        stored = json.loads(files.read(project_id, CLASSES_FILE) or "{}")
        if not isinstance(stored, dict):
            stored = {}
    except ValueError:
        stored = {}
    stored[from_name] = {str(k): v for k, v in sorted(names.items())}
    files.write(project_id, CLASSES_FILE, json.dumps(stored, indent=1))


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class DatasetReport:
    """What a build produced and skipped; written to ``report.json`` and the version's manifest.

    Attributes:
        task: the Ultralytics task built (detect, obb, segment, pose, classify).
        tasks_exported: annotated tasks Label Studio returned.
        images: images per split.
        instances_per_class: split -> label -> regions (classify: images).
        background_images: images with a completed annotation and no region (empty label file).
        skipped: ``{"task", "reason"}`` per task left out; ``skipped_counts`` groups them.
        dropped_regions: ``{"task", "reason"}`` per region left out of a used task.
        unknown_labels: labels found in annotations that the label config lacks -> count.
        images_downloaded, images_cached: how the images were obtained.
        seconds: wall seconds per stage (``export``, ``download``, ``build``).
        sync: how the tasks were read (``{"mode": "full"|"incremental", ...}``).
        fingerprint: a hash of the files written (same data -> same fingerprint).
        long_side_p90: 90th percentile of the used images' longer sides, pixels (for imgsz).
    """

    task: str = "detect"
    tasks_exported: int = 0
    images: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    instances_per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    background_images: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    skipped_counts: dict[str, int] = field(default_factory=dict)
    dropped_regions: list[dict[str, Any]] = field(default_factory=list)
    unknown_labels: dict[str, int] = field(default_factory=dict)
    images_downloaded: int = 0
    images_cached: int = 0
    files_written: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    sync: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    long_side_p90: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def skip(self, task_id: int, kind: str, detail: str = "") -> None:
        self.skipped.append({"task": task_id, "reason": f"{kind}: {detail}" if detail else kind})
        self.skipped_counts[kind] = self.skipped_counts.get(kind, 0) + 1


@dataclass
class BuildResult:
    """A built dataset.

    Attributes:
        data: what to pass as ``data=`` to Ultralytics: data.yaml, or the folder for classify.
        spec: the control tags and task trained (``detect`` becomes ``obb`` when regions are rotated).
        names: class id -> label (stable for the project).
        report: see ``DatasetReport``.
        tasks: the annotated tasks it was built from (JSON export format).
    """

    data: Path
    spec: TrainSpec
    names: dict[int, str]
    report: DatasetReport
    tasks: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Build


def _unknown_labels(result: list[dict[str, Any]], spec: TrainSpec, known: set[str]) -> list[str]:
    found = []
    for region in result:
        if region.get("from_name") not in spec.control_tags:
            continue
        value = region.get("value") or {}
        for key in (spec.region_type, "keypointlabels", "choices"):
            for label in value.get(key) or ():
                if isinstance(label, str) and label not in known:
                    found.append(label)
    return found


def _image_ext(path: str | Path) -> str:
    ext = os.path.splitext(path)[1].lower()
    return ext if ext in {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"} else ".png"


def _link(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def build_dataset(
    tasks: list[dict[str, Any]],
    spec: TrainSpec,
    out_dir: Path,
    fetch: Callable[[list[tuple[int, str]]], Mapping[int, Any]],
    val_fraction: float = 0.2,
    min_val: int = 1,
    names: Mapping[int, str] | None = None,
    report: DatasetReport | None = None,
) -> BuildResult:
    """Write (or update) an Ultralytics dataset for the tasks' chosen annotations.

    Annotation choice: completed, not cancelled; ground truth first, else the most recently
    updated (``labelloop.labelstudio.export.select_annotation``). A completed annotation without regions is
    a background image. A RectangleLabels project trains ``obb`` when any chosen region is
    rotated (or ``spec.task`` already says ``obb``).

    Args:
        tasks: Label Studio tasks in the JSON export format (with ``annotations``).
        spec: what to train (``labelloop.task_types.labels.parse_label_config``).
        out_dir: the dataset folder; a folder written by an earlier build for the same spec is
            updated in place (only changed tasks are rewritten), anything else is replaced.
        fetch: ``[(task_id, url)] -> {task_id: ImageRef or exception}`` (``labelloop.labelstudio.media``).
        val_fraction, min_val: see ``assign_splits``.
        names: stable class ids (id -> label, see ``stable_names``); default: config order.
        report: a report to complete (e.g. holding the export's seconds and sync mode); default
            a new one. It is written to ``report.json`` once the build is done.

    Returns:
        the built dataset (see ``BuildResult``).

    Raises:
        DatasetError: too little usable data (fewer than one train and one val image); the
            message gives the counts. The folder is left as it was.
    """
    out_dir = Path(out_dir).absolute()
    names = dict(names) if names is not None else dict(enumerate(spec.labels))
    report = report if report is not None else DatasetReport()
    report.task, report.tasks_exported = spec.task, len(tasks)

    t0 = time.perf_counter()
    chosen, spec = _choose(tasks, spec, report)
    report.seconds["select"] = time.perf_counter() - t0
    old_state = _read_state(out_dir / STATE_FILE, spec)
    old_tasks: dict[str, dict[str, Any]] = (old_state or {}).get("tasks", {})

    t0 = time.perf_counter()
    images, reused = _images(chosen, old_tasks, fetch, out_dir)
    report.seconds["download"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    wanted = plan_files(chosen, images, reused, old_tasks, spec, names, val_fraction, min_val, report)
    usable_n = report.images["train"] + report.images["val"]
    if report.images["train"] < 1 or report.images["val"] < 1:
        raise DatasetError(
            f"too little data to train: {usable_n} usable images (train {report.images['train']}, "
            f"val {report.images['val']}) of {len(tasks)} annotated tasks; skipped: "
            + (", ".join(f"{n} {k}" for k, n in report.skipped_counts.items()) or "none")
            + "".join(f"\n  task {s['task']}: {s['reason']}" for s in report.skipped[:3])
        )
    data = apply_files(out_dir, spec, names, old_state, old_tasks, wanted, report)
    report.seconds["build"] = time.perf_counter() - t0
    write_atomic(out_dir / "report.json", json.dumps(report.to_dict(), indent=1))
    return BuildResult(data, spec, names, report)


def _choose(
    tasks: list[dict[str, Any]], spec: TrainSpec, report: DatasetReport
) -> tuple[list[tuple[int, str, dict[str, Any]]], TrainSpec]:
    """The ``(task id, image URL, annotation)`` to train on, and the spec (``detect`` becomes
    ``obb`` when a chosen rectangle is rotated); skipped tasks and unknown labels go into ``report``."""
    from labelloop.task_types import convert

    chosen: list[tuple[int, str, dict[str, Any]]] = []
    known = set(spec.labels) | set(spec.keypoint_labels)
    unknown: Counter[str] = Counter()
    for task in tasks:
        task_id = int(task["id"])
        annotation = select_annotation(task)
        if annotation is None:
            cancelled = any(a.get("was_cancelled") for a in task.get("annotations") or [])
            report.skip(task_id, "skipped by annotator" if cancelled else "no completed annotation")
            continue
        url = (task.get("data") or {}).get(spec.value_key)
        if not isinstance(url, str) or not url:
            report.skip(task_id, "no image", f"task data has no '{spec.value_key}'")
            continue
        unknown.update(_unknown_labels(annotation.get("result") or [], spec, known))
        chosen.append((task_id, url, annotation))
    report.unknown_labels = dict(unknown)
    if spec.task == "detect" and any(convert.has_rotation(a.get("result") or [], spec) for _, _, a in chosen):
        spec = spec.with_task("obb")
    report.task = spec.task
    return chosen, spec


def _read_state(state_path: Path, spec: TrainSpec) -> dict[str, Any] | None:
    """The last build's state when it was written for the same layout (else None: rebuild)."""
    try:
        state: dict[str, Any] = orjson.loads(state_path.read_bytes())
    except (OSError, ValueError):
        return None
    if state.get("version") != STATE_VERSION or state.get("layout") != _layout(spec):
        return None
    return state


def _images(
    chosen: list[tuple[int, str, dict[str, Any]]],
    old_tasks: dict[str, dict[str, Any]],
    fetch: Callable[[list[tuple[int, str]]], Mapping[int, Any]],
    out_dir: Path,
) -> tuple[dict[int, Any], dict[int, dict[str, Any]]]:
    """Each task's image (or the exception fetching it), and the last build's entries reused:
    an image the last build used for the same URL is taken from its source file or, when the
    image cache evicted that, from the dataset's own link to it (same modification time: the same
    file); only new or changed ones are fetched."""
    images: dict[int, Any] = {}
    reused: dict[int, dict[str, Any]] = {}
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


def _kept_source(prev: Mapping[str, Any], out_dir: Path) -> str | None:
    """The last build's image of a task, if still on disk: its source, or the dataset's link to it."""
    for path in (prev["src"], str(out_dir / prev["image"])):
        if prev.get("src_mtime") and _mtime(path) == prev["src_mtime"]:
            return path
    return None


def plan_files(
    chosen: list[tuple[int, str, dict[str, Any]]],
    images: Mapping[int, Any],
    reused: Mapping[int, dict[str, Any]],
    old_tasks: Mapping[str, dict[str, Any]],
    spec: TrainSpec,
    names: Mapping[int, str],
    val_fraction: float,
    min_val: int,
    report: DatasetReport,
) -> dict[str, dict[str, Any]]:
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
    usable: list[tuple[int, Any, dict[str, Any], str]] = []
    for task_id, url, annotation in chosen:
        image = images.get(task_id)
        if image is None or isinstance(image, BaseException):
            report.skip(task_id, "image unavailable", str(image)[:300])
            continue
        usable.append((task_id, image, annotation, url))
    splits = assign_splits([t for t, _, _, _ in usable], val_fraction, min_val)
    wanted: dict[str, dict[str, Any]] = {}
    per_class: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
    for task_id, image, annotation, url in usable:
        key = f"{annotation.get('id')}:{annotation.get('updated_at')}:{image.width}x{image.height}:{names_key}"
        prev = old_tasks.get(str(task_id))
        if prev is not None and prev.get("key") == key:
            label, dropped = prev["label"], prev.get("dropped", [])
        else:
            result = annotation.get("result") or []
            if not kind.label_files:
                label, dropped = convert.annotation_to_class(result, spec, class_ids)
            else:
                lines, dropped = convert.annotation_to_yolo(result, spec, class_ids, image.width, image.height)
                label = "".join(line + "\n" for line in lines)
        for reason in dropped:
            report.dropped_regions.append({"task": task_id, "reason": reason})
        if not kind.label_files and label is None:
            report.skip(task_id, "no choice", "; ".join(dropped))
            continue
        split = splits[task_id]
        kept = reused.get(task_id)
        if kept is not None:
            src, src_mtime = os.path.abspath(image.path), kept["src_mtime"]
        else:
            src = os.path.abspath(image.path)
            src_mtime = _mtime(src)
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
    return wanted


def apply_files(
    out_dir: Path,
    spec: TrainSpec,
    names: Mapping[int, str],
    old_state: dict[str, Any] | None,
    old_tasks: Mapping[str, dict[str, Any]],
    wanted: Mapping[str, dict[str, Any]],
    report: DatasetReport,
) -> Path:
    """Bring ``out_dir`` to the planned state, touching only what changed, and write its
    ``data.yaml`` (or classify's ``.ndjson.yaml``) and state; returns what to pass as ``data=``."""
    kind = task_type(spec)
    if old_state is None and out_dir.exists():
        shutil.rmtree(out_dir)
    for split in ("train", "val"):
        if not kind.label_files:
            for class_id in names:
                (out_dir / split / str(class_id)).mkdir(parents=True, exist_ok=True)
        else:
            (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
            (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
    # What is on disk, from one listing per folder (not a stat per file).
    present = {
        f"{folder}/{name}"
        for folder in {os.path.dirname(e[k]) for e in wanted.values() for k in ("image", "labels") if e[k]}
        for name in os.listdir(out_dir / folder)
    }
    written = 0
    labels_written: list[Path] = []
    fp = hashlib.sha256()
    # New links first, old ones removed after: a kept image moving to another split or class
    # folder may have the dataset's old link as its only source (the cache evicted it).
    for task_key in sorted(wanted, key=int):
        new = wanted[task_key]
        prev = old_tasks.get(task_key) or {}
        if (
            prev.get("image") != new["image"]
            or prev.get("src_mtime") != new["src_mtime"]
            or prev.get("url") != new["url"]
            or new["image"] not in present
        ) and os.path.abspath(new["src"]) != str(out_dir / new["image"]):
            _link(Path(new["src"]), out_dir / new["image"])
            written += 1
        if new["labels"] is not None:
            if prev.get("labels") != new["labels"] or prev.get("label") != new["label"] or new["labels"] not in present:
                write_atomic(out_dir / new["labels"], new["label"], sync=False)  # synced together below
                labels_written.append(out_dir / new["labels"])
                written += 1
        fp.update(f"{new['image']}:{new['url']}:{new['width']}x{new['height']}:{new['label']}\n".encode())
    for task_key, old in old_tasks.items():
        now = wanted.get(task_key)
        if now is None or now["image"] != old["image"]:
            (out_dir / old["image"]).unlink(missing_ok=True)
        if old.get("labels") and (now is None or now["labels"] != old["labels"]):
            (out_dir / old["labels"]).unlink(missing_ok=True)
    report.files_written = written
    if written or any(k not in wanted for k in old_tasks):
        # Ultralytics' label caches hash file names and sizes, not contents: drop them on any change.
        for cache in (out_dir / "labels").glob("*.cache"):
            cache.unlink(missing_ok=True)
    report.fingerprint = fp.hexdigest()[:16]

    if not kind.label_files:
        data = out_dir
        write_atomic(out_dir / ".ndjson.yaml", yaml.safe_dump({"names": dict(names)}, sort_keys=False))
    else:
        data = out_dir / "data.yaml"
        content: dict[str, Any] = {
            "path": str(out_dir),
            "train": "images/train",
            "val": "images/val",
            "names": dict(names),
        }
        content.update(kind.data_yaml_extra())
        write_atomic(data, yaml.safe_dump(content, sort_keys=False))
    fsync_files(labels_written)  # on disk before the state says they are
    state = {"version": STATE_VERSION, "layout": _layout(spec), "names": dict(names), "tasks": dict(wanted)}
    write_atomic(out_dir / STATE_FILE, orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS))
    return data


def _layout(spec: TrainSpec) -> str:
    """Builds of the same layout can update each other's folder in place."""
    return f"{spec.task}:{spec.from_name}:{spec.keypoint_from_name or ''}"


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def cached_fetch(
    stack: contextlib.ExitStack[Any],
    cache_dir: Path,
    config: MediaConfig,
    on_done: Callable[[], None] | None = None,
) -> Callable[[list[tuple[int, str]]], Mapping[int, Any]]:
    """A ``fetch`` for ``build_dataset`` through the image cache in ``cache_dir``, opened on first use
    (a build that needs no new image opens none) and closed with ``stack``."""
    from labelloop.labelstudio.media import ImageCache

    def fetch(items: list[tuple[int, str]]) -> Mapping[int, Any]:
        cache = stack.enter_context(ImageCache(cache_dir, config))
        stack.enter_context(cache.pinned())
        return cache.get_many(items, on_done=on_done)

    return fetch


def project_dataset_dir(settings: Settings, project_id: int) -> Path:
    """Where a project's dataset is kept between builds (updated in place by each build)."""
    return Path(settings.cache_dir).absolute() / "datasets" / str(int(project_id))


def build_project_dataset(
    settings: Settings,
    project_id: int,
    out_dir: Path | None = None,
    on_image: Callable[[], None] | None = None,
    changes: ChangeLog | None = None,
) -> BuildResult:
    """Read a project from Label Studio and build (or update) its Ultralytics dataset.

    Stages (seconds in the report): ``export`` (label config and tasks, incremental after the
    first build, from the recorded webhooks when ``changes`` is given and can stand in for
    Label Studio, see ``labelloop.labelstudio.export.sync_tasks``), ``download`` (images through
    ``labelloop.labelstudio.media.ImageCache``: cached by task id and URL, so a rebuild downloads only new
    images), ``build`` (files, updated in place). The control tag and task come from the
    project's label config and extra params (``control_tag``, ``obb``); class ids are stable
    for the project (``stable_names``) and stored in ``<models_dir>/<project>/classes.json``.

    Args:
        out_dir: the dataset folder; default ``<cache_dir>/datasets/<project>/yolo``.
        on_image: called once per image fetched or looked up in the image cache (progress
            bars); images unchanged since the last build into the same folder are not.

    Raises:
        DatasetError: Label Studio is not configured, or too little data is usable.
        LabelStudioUnavailable, LabelStudioError: Label Studio cannot be read (``labelloop.labelstudio.client``).
        LabelConfigError: the label config has nothing trainable, or is ambiguous.
    """
    from labelloop.events.changes import label_config_digest
    from labelloop.labelstudio import client as labelstudio
    from labelloop.labelstudio.export import sync_tasks
    from labelloop.labelstudio.media import MediaConfig
    from labelloop.registry.params import load as load_params
    from labelloop.registry.params import train_spec

    client = labelstudio.client(settings.label_studio_url, settings.api_key)
    params = load_params(settings.models_dir, project_id)
    effective = params.effective(settings)
    home = project_dataset_dir(settings, project_id)
    with labelstudio.calling(settings.label_studio_url, f"reading project {project_id}"):
        label_config, tasks, sync = sync_tasks(
            client, project_id, home / "tasks.json", changes=changes, verify_every_s=settings.dataset_verify_s
        )
    spec = train_spec(label_config, params)
    sync["label_config_sha1"] = label_config_digest(label_config)  # in the manifest: the model card's digest
    names = stable_names(load_class_names(settings.models_dir, project_id, spec.from_name), spec.labels)
    if spec.region_type == "videorectangle":  # frames of videos: labelloop.dataset.video
        from labelloop.dataset.video import build_video_dataset
        from labelloop.labelstudio.video_media import cached_video_fetch, video_config

        report = DatasetReport(
            task=spec.task, tasks_exported=len(tasks), seconds={"export": sync.pop("seconds")}, sync=sync
        )
        with contextlib.ExitStack() as stack:
            fetch = cached_video_fetch(stack, Path(settings.cache_dir).absolute() / "videos", video_config(settings))
            splits = functools.partial(assign_splits, val_fraction=effective["val_fraction"], min_val=1)
            out = Path(out_dir) if out_dir is not None else home / "yolo"
            data = build_video_dataset(tasks, spec, out, fetch, splits, names, report, settings.video_frame_stride)
        store_class_names(settings.models_dir, project_id, spec.from_name, names)
        return BuildResult(data, spec, names, report, tasks)
    with contextlib.ExitStack() as stack:
        result = build_dataset(
            tasks,
            spec,
            Path(out_dir) if out_dir is not None else home / "yolo",
            cached_fetch(
                stack, Path(settings.cache_dir).absolute() / "images", MediaConfig.from_settings(settings), on_image
            ),
            effective["val_fraction"],
            settings.min_val_images,
            names,
            DatasetReport(seconds={"export": sync.pop("seconds")}, sync=sync),
        )
    store_class_names(settings.models_dir, project_id, spec.from_name, names)
    result.tasks = tasks
    return result
