"""An Ultralytics detect dataset from Label Studio video annotations (VideoRectangle keyframes).

Per annotated video task (the chosen annotation: ``labelloop.labelstudio.export.select_annotation``):

- the annotated span: from its earliest keyframe to the last frame a box is drawn or keyframed
  (``labelloop.task_types.keyframes.annotated_span``); frames outside it were never looked at, so
  they teach nothing (not even "nothing here");
- the frames of the span every ``stride`` frames, plus every keyframe (where the annotator placed
  the box by hand), are decoded (OpenCV, in order: frame ``k`` of Label Studio is decoded frame
  ``k - 1``) and written as JPEG images; their label files hold the boxes Label Studio draws on that
  frame (``VideoRectangles.frame_lines``), empty where no track is;
- the whole video goes to train or to val (``splits`` by task id): frames of one video are never
  on both sides, as neighbouring frames are near-copies.

Layout (https://docs.ultralytics.com/datasets/detect/): ``images/{train,val}/<task>_<frame>.jpg``,
``labels/{train,val}/<task>_<frame>.txt``, ``data.yaml``. ``video-state.json`` records per task a
hash of what its files were made from (video URL, annotation result, stride, split, class ids): a
rebuild re-extracts only the videos whose hash changed and deletes the files of tasks gone.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import structlog
import yaml

from labelloop.dataset import long_side_p90
from labelloop.dataset.plan import chosen_annotation
from labelloop.errors import DatasetError
from labelloop.files import write_atomic
from labelloop.ls_json import Annotation, Region, Task
from labelloop.task_types import video_task_type
from labelloop.task_types.keyframes import annotated_span
from labelloop.task_types.spec import TrainSpec
from labelloop.task_types.video import VideoRectangles, frame_count_of

if TYPE_CHECKING:
    from labelloop.dataset.report import DatasetReport
    from labelloop.dataset.sources import Fetch, ImageRef

log = structlog.get_logger(__name__)

STATE = "video-state.json"
STATE_VERSION = 1
JPEG_QUALITY = 95


class VideoEntry(TypedDict):
    """One video task's part of the dataset folder, as ``video-state.json`` records it.

    Attributes:
        split: ``train`` or ``val`` (the whole video).
        files: the folder's files made from it (``images/<split>/<task>_<frame>.jpg`` and the
            matching ``labels/...txt``).
        frames: frames written; ``background``: of those, frames without a box.
        instances: class id (as text) -> boxes over its frames.
        span: ``[first, last]`` annotated frame (1-based); ``size``: ``[width, height]`` pixels.
        digest: SHA-1 of what the files were made from (URL, result, stride, split, class ids).
    """

    split: str
    files: list[str]
    frames: int
    background: int
    instances: dict[str, int]
    span: list[int]
    size: list[int]
    digest: str


def wanted_frames(
    result: Sequence[Region], spec: TrainSpec, frames_count: int, stride: int
) -> tuple[list[int], list[int]]:
    """The 1-based frames of a video annotation to train on, and its annotated span.

    Returns:
        ``(frames, [first, last])``: every ``stride``-th frame of the span from its first frame,
        plus every keyframe inside it, sorted; ``([], [])`` without keyframes.
    """
    sequences = [
        r["value"]["sequence"]
        for r in result
        if r.get("from_name") == spec.from_name
        and isinstance(r.get("value"), Mapping)
        and isinstance(r["value"].get("sequence"), list)
    ]
    untyped: Any = sequences  # annotated_span reads keyframes as Label Studio sent them
    try:
        span = annotated_span(untyped, frames_count)
    except (KeyError, TypeError, ValueError):
        return [], []
    if span is None:
        return [], []
    first, last = span
    picked = set(range(first, last + 1, max(1, int(stride))))
    picked |= {int(k["frame"]) for seq in sequences for k in seq if first <= int(k["frame"]) <= last}
    return sorted(picked), [first, last]


def extract_frames(video: Path, frames: list[int], dest: Callable[[int], Path]) -> list[int]:
    """Decode ``video`` once, in order, and write the wanted 1-based ``frames`` as JPEGs at
    ``dest(frame)``; returns the frames written (a video shorter than its annotation lacks some)."""
    import cv2

    wanted = set(frames)
    last = max(wanted, default=0)
    written: list[int] = []
    cap = cv2.VideoCapture(str(video))
    try:
        for frame in range(1, last + 1):
            if not cap.grab():
                break
            if frame not in wanted:
                continue
            ok, image = cap.retrieve()
            if not ok:
                continue
            path = dest(frame)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if ok:
                write_atomic(path, buf.tobytes(), sync=False)
                written.append(frame)
    finally:
        cap.release()
    return written


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def build_video_dataset(
    tasks: Sequence[Task],
    spec: TrainSpec,
    out_dir: Path,
    fetch: Fetch,
    splits: Callable[[list[int]], dict[int, str]],
    names: Mapping[int, str],
    report: DatasetReport,
    stride: int,
) -> Path:
    """Write (or update) the detect dataset of a video project's annotated tasks.

    Args:
        tasks: Label Studio tasks in the JSON export format (``data[spec.value_key]``: the video URL).
        spec: a VideoRectangle spec (``labelloop.task_types.video_labels.video_spec``).
        out_dir: the dataset folder (updated in place, see the module docstring).
        fetch: ``[(task_id, url)] -> {task_id: ImageRef of the video file, or exception}``
            (``labelloop.labelstudio.video_media.cached_video_fetch``); called only for videos to re-extract.
        splits: task ids -> {task id: "train" or "val"} (``labelloop.dataset.splits.assign_splits``).
        names: class id -> label.
        report: filled in: frames per split (``images``), instances, background frames,
            skipped tasks, dropped regions, seconds.
        stride: ``Settings.video_frame_stride``.

    Returns:
        the ``data.yaml`` path.

    Raises:
        DatasetError: fewer than one train and one val frame (the frames extracted are kept, with
            their state, for the next build).
        ValueError: ``spec`` is not a VideoRectangle spec.
    """
    kind = _video_kind(spec)
    out_dir = Path(out_dir).absolute()
    class_ids = {label: i for i, label in names.items()}
    t0 = time.perf_counter()
    chosen = _choose(tasks, spec, report)
    split = splits(sorted(chosen))
    report.seconds["select"] = time.perf_counter() - t0
    old_tasks = _old_state(out_dir)
    digests = {
        tid: _digest(url, ann.get("result"), stride, split[tid], sorted(names.items()))
        for tid, (url, ann) in chosen.items()
    }
    redo = [tid for tid in chosen if (old := old_tasks.get(str(tid))) is None or old.get("digest") != digests[tid]]
    t0 = time.perf_counter()
    fetched = fetch([(tid, chosen[tid][0]) for tid in redo]) if redo else {}
    report.seconds["download"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = _prune(old_tasks, set(chosen) - set(redo), out_dir)
    for tid in redo:
        got = fetched.get(tid)
        if got is None or isinstance(got, BaseException):
            report.skip(tid, "video unusable", str(got) if got is not None else "not fetched")
            continue
        report.images_downloaded += int(bool(getattr(got, "downloaded", True)))
        entry = _extract_task(tid, chosen[tid][1], got, kind, class_ids, split[tid], stride, out_dir, report)
        if entry is not None:
            entry["digest"] = digests[tid]
            state[str(tid)] = entry
    _count(state, report, names)
    write_atomic(out_dir / STATE, json.dumps({"version": STATE_VERSION, "tasks": state}, indent=1))
    if report.images["train"] < 1 or report.images["val"] < 1:
        raise DatasetError(
            f"too little data to train: {report.images['train']} train and {report.images['val']} val frames "
            f"from {len(chosen)} annotated videos (a video's frames all go to one side; annotate at least two videos)"
        )
    data = out_dir / "data.yaml"
    write_atomic(
        data,
        yaml.safe_dump(
            {"path": str(out_dir), "train": "images/train", "val": "images/val", "names": dict(names)}, sort_keys=False
        ),
    )
    report.fingerprint = _digest(sorted((k, v["digest"]) for k, v in state.items()))
    report.seconds["build"] = time.perf_counter() - t0
    write_atomic(out_dir / "report.json", json.dumps(report.to_dict(), indent=1))
    log.info("video_dataset_built", videos=len(state), redone=len(redo), **report.images)
    return data


def _video_kind(spec: TrainSpec) -> VideoRectangles:
    kind = video_task_type(spec)
    if kind is None:
        raise ValueError(f"{spec.region_type} is not a VideoRectangle spec")
    return kind


def _choose(tasks: Sequence[Task], spec: TrainSpec, report: DatasetReport) -> dict[int, tuple[str, Annotation]]:
    """Task id -> (video URL, chosen annotation); the tasks left out go into ``report``."""
    chosen: dict[int, tuple[str, Annotation]] = {}
    for task in tasks:
        tid = int(task["id"])
        annotation = chosen_annotation(task)
        url = (task.get("data") or {}).get(spec.value_key)
        if annotation is None:
            report.skip(tid, "no completed annotation")
        elif not isinstance(url, str) or not url:
            report.skip(tid, "no video", f"task data has no '{spec.value_key}'")
        else:
            chosen[tid] = (url, annotation)
    return chosen


def _prune(old_tasks: Mapping[str, VideoEntry], kept: set[int], out_dir: Path) -> dict[str, VideoEntry]:
    """Delete the files of the tasks gone or to redo; the state entries of those ``kept``."""
    state: dict[str, VideoEntry] = {}
    for key, entry in old_tasks.items():
        if int(key) in kept:
            state[key] = entry
        else:
            for rel in entry.get("files", []):
                (out_dir / rel).unlink(missing_ok=True)
    return state


def _old_state(out_dir: Path) -> dict[str, VideoEntry]:
    """The last build's per-task state (empty when missing, unreadable or of another version)."""
    try:
        old = json.loads((out_dir / STATE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict) or old.get("version") != STATE_VERSION:
        return {}
    return cast("dict[str, VideoEntry]", dict(old.get("tasks", {})))


def _extract_task(
    tid: int,
    annotation: Annotation,
    video: ImageRef,
    kind: VideoRectangles,
    class_ids: Mapping[str, int],
    side: str,
    stride: int,
    out_dir: Path,
    report: DatasetReport,
) -> VideoEntry | None:
    """Frames and label files of one video; its state entry without ``digest`` (None: nothing usable)."""
    from labelloop.labelstudio.video_media import probe_video

    spec = kind.spec
    result = annotation.get("result") or []
    decoded = probe_video(Path(video.path)).frames
    count = frame_count_of(result, spec) or decoded
    if abs(count - decoded) > max(2, decoded // 50):
        # Label Studio numbers frames by the Video tag's frameRate: another rate than the file's
        # puts every box on another frame than the one decoded here.
        report.skip(
            tid,
            "frame count mismatch",
            f"Label Studio counted {count} frames, the file has {decoded}; set the Video tag's frameRate to its fps",
        )
        return None
    frames, span = wanted_frames(result, spec, count, stride)
    if not frames:
        report.skip(tid, "no keyframes")
        return None
    lines, dropped = kind.frame_lines(result, class_ids, frames, int(video.width), int(video.height))
    report.drop(tid, dropped)
    (out_dir / "images" / side).mkdir(parents=True, exist_ok=True)
    (out_dir / "labels" / side).mkdir(parents=True, exist_ok=True)
    written = extract_frames(Path(video.path), frames, lambda f: out_dir / "images" / side / f"{tid}_{f:06d}.jpg")
    files: list[str] = []
    instances: Counter[int] = Counter()
    for f in written:
        stem = f"{tid}_{f:06d}"
        write_atomic(out_dir / "labels" / side / f"{stem}.txt", "".join(f"{line}\n" for line in lines[f]), sync=False)
        files += [f"images/{side}/{stem}.jpg", f"labels/{side}/{stem}.txt"]
        instances.update(int(line.split()[0]) for line in lines[f])
    if len(written) < len(frames):
        report.skip(tid, "video shorter than its annotation", f"{len(frames) - len(written)} frames missing")
    return {
        "split": side,
        "files": files,
        "frames": len(written),
        "background": sum(1 for f in written if not lines[f]),
        "instances": {str(k): v for k, v in instances.items()},
        "span": span,
        "size": [int(video.width), int(video.height)],
        "digest": "",
    }


def _count(state: Mapping[str, VideoEntry], report: DatasetReport, names: Mapping[int, str]) -> None:
    report.images = {"train": 0, "val": 0}
    report.instances_per_class = {"train": {}, "val": {}}
    report.background_images = 0
    sides: list[tuple[int, int]] = []
    for entry in state.values():
        side = entry["split"]
        report.images[side] += int(entry["frames"])
        report.background_images += int(entry["background"])
        per = report.instances_per_class[side]
        for k, v in entry["instances"].items():
            label = names.get(int(k), k)  # a class id no longer named: counted under its id
            per[label] = per.get(label, 0) + int(v)
        sides += [(int(entry["size"][0]), int(entry["size"][1]))] * int(entry["frames"])
    report.files_written = sum(len(e["files"]) for e in state.values())
    report.long_side_p90 = long_side_p90(sides)
