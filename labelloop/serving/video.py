"""Predictions of video tasks: the served detect model run with Ultralytics' tracker over the
video, one VideoRectangle region per object's track (``labelloop.task_types.video``).

Ultralytics tracking (https://docs.ultralytics.com/modes/track/): ``model.track(source, tracker=
"bytetrack.yaml" | "botsort.yaml", stream=True)`` yields one ``Results`` per decoded frame with
``boxes.id`` (the track id; None on a frame without tracked boxes). Decoded frame ``i`` (0-based)
is Label Studio's frame ``i + 1``. The tracker's ids are first made one per object
(``labelloop.serving.tracks``: split and duplicate tracks merged, flicker dropped, short gaps
filled). A track's label is the class most of its boxes had, its score
the mean confidence of its boxes; a video's score is that of its least certain track (the one to
check first). ``framesCount`` and ``duration`` are the decoded frame count and ``frames / fps``:
what Label Studio computes when the Video tag's ``frameRate`` is the file's frame rate (Label
Studio's advice for constant-frame-rate MP4s).

A long video is kept off the interactive ``/predict`` path: with ``budget_s`` set, tracking stops
when it runs out and the task gets no regions (logged as ``predict_video_deferred`` with the reason);
the pre-annotation queue, which calls with no budget, tracks the whole video.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from labelloop.labelstudio.media import CachedImage, MediaConfig
from labelloop.labelstudio.video_media import VideoCache, probe_video
from labelloop.ls_json import Prediction, Region, Task
from labelloop.serving.tracks import MAX_GAP_FRAMES, MIN_TRACK_FRAMES, TrackedVideo, clean_tracks, fill_gaps
from labelloop.task_types import video_task_type
from labelloop.task_types.spec import TrainSpec, xyxy_to_rectangle
from labelloop.task_types.video import VideoClip

if TYPE_CHECKING:
    from labelloop.settings import Settings

log = structlog.get_logger(__name__)

#: Frames of the centred moving average a track's boxes get before keyframe reduction: a detector's
#: box jitters by a pixel or two from frame to frame, which would cost keyframes and show no motion
#: (bench/video.py: 0.215 -> 0.150 keyframes per frame at 1 % tolerance, held-out mAP50 unchanged;
#: with bridged tracks and the optimal reduction, 1 frame: 0.150, 3: 0.105, 5: 0.093, 9: 0.092).
SMOOTH_FRAMES = 5


@dataclass(frozen=True)
class VideoOptions:
    """How video tasks are predicted.

    Attributes:
        tracker: Ultralytics tracker config (``LABELLOOP_VIDEO_TRACKER``).
        tolerance: keyframe reduction tolerance, percent of the frame (``LABELLOOP_VIDEO_KEYFRAME_TOLERANCE``).
        max_bytes, timeout_s: video download limits (``LABELLOOP_MEDIA_VIDEO_*``).
        budget_s: seconds of tracking an interactive ``/predict`` spends per call (half the predict
            deadline); None tracks whole videos (the pre-annotation queue).
    """

    tracker: str = "bytetrack.yaml"
    tolerance: float = 1.0
    max_bytes: int = 2 * 1024**3
    timeout_s: float = 600.0
    budget_s: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> VideoOptions:
        """The options of labelloop's ``Settings``, with the interactive budget."""
        return cls(
            tracker=settings.video_tracker,
            tolerance=settings.video_keyframe_tolerance,
            max_bytes=settings.media_video_max_bytes,
            timeout_s=settings.media_video_timeout_s,
            budget_s=settings.predict_deadline_s / 2,
        )


def track_video(
    model: Any,
    path: Path,
    tracker: str,
    conf: float,
    imgsz: int,
    budget_s: float | None = None,
    device: Any = None,
) -> TrackedVideo:
    """Run ``model.track`` over a video's frames and collect its tracks (see ``TrackedVideo``).

    The frames are decoded here with OpenCV, in order, as the dataset extracts them, and given to
    ``model.track`` one at a time (``persist=False`` on the first: fresh tracker state per video).
    (Ultralytics picks its loader by file extension, and the cache keeps videos as ``.video``.)
    """
    import cv2

    info = probe_video(path)
    out = TrackedVideo(info.width, info.height)
    t0 = time.monotonic()
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                break
            out.frames += 1
            frame = out.frames
            kwargs = {"conf": conf, "imgsz": imgsz, "verbose": False, "device": device}
            [res] = model.track(image, tracker=tracker, persist=frame > 1, **kwargs)
            boxes = getattr(res, "boxes", None)
            if boxes is not None and boxes.id is not None:
                ids = boxes.id.int().tolist()
                xyxy, cls, confs = boxes.xyxy.tolist(), boxes.cls.int().tolist(), boxes.conf.tolist()
                for k, tid in enumerate(ids):
                    rect = xyxy_to_rectangle(tuple(xyxy[k]), info.width, info.height)
                    out.boxes.setdefault(tid, {})[frame] = rect
                    out.classes.setdefault(tid, Counter())[cls[k]] += 1
                    out.confs.setdefault(tid, []).append(float(confs[k]))
            if budget_s is not None and time.monotonic() - t0 > budget_s and frame < info.frames:
                out.finished = False
                break
    finally:
        cap.release()
    return out


def smooth_track(boxes: Mapping[int, Mapping[str, float]], window: int = SMOOTH_FRAMES) -> dict[int, dict[str, float]]:
    """Each box replaced by the mean of the track's boxes on the frames within ``window // 2`` of it
    (frames where the track is absent are left out; the frames themselves do not change)."""
    half = max(0, int(window)) // 2
    out: dict[int, dict[str, float]] = {}
    for f in boxes:
        near = [boxes[g] for g in range(f - half, f + half + 1) if g in boxes]
        out[f] = {p: sum(float(b.get(p) or 0.0) for b in near) / len(near) for p in ("x", "y", "width", "height")}
    return out


def tracks_to_regions(
    tracked: TrackedVideo,
    spec: TrainSpec,
    names: Mapping[int, str],
    tolerance: float,
    rate: float,
    frames_count: int,
    duration_s: float,
    show_conf: float = 0.0,
    *,
    merge: bool = True,
    min_frames: int = MIN_TRACK_FRAMES,
    max_gap: int = MAX_GAP_FRAMES,
    smooth: int = SMOOTH_FRAMES,
) -> tuple[list[Region], float | None]:
    """VideoRectangle regions of the tracks whose score is at least ``show_conf``, and the score
    of the least certain of them (None without tracks). The keyword arguments are for
    measurements (``merge=False, min_frames=0, max_gap=0`` gives the tracker's ids as they are).

    Each object's track is first cleaned (``labelloop.serving.tracks.clean_tracks``: split and
    duplicate tracks merged when ``merge``, tracks on fewer than ``min_frames`` frames dropped), its
    gaps of at most ``max_gap`` frames filled (``fill_gaps``), its boxes smoothed over ``smooth``
    frames (``smooth_track``), then reduced to keyframes within ``tolerance``.

    Raises:
        ValueError: ``spec`` is not a VideoRectangle spec.
    """
    kind = video_task_type(spec)
    if kind is None:
        raise ValueError(f"{spec.region_type} is not a VideoRectangle spec")
    clip = VideoClip(rate, frames_count, duration_s, tracked.width, tracked.height)
    regions: list[Region] = []
    scores: list[float] = []
    cleaned = clean_tracks(tracked, min_frames, merge)
    for tid, boxes in sorted(cleaned.boxes.items()):
        score = sum(cleaned.confs[tid]) / len(cleaned.confs[tid])
        if score < show_conf:
            continue
        label = names.get(cleaned.classes[tid].most_common(1)[0][0])
        filled = fill_gaps(boxes, max_gap)
        region = kind.track_region(str(label), smooth_track(filled, smooth), score, tolerance, clip)
        if region is not None:
            regions.append(region)
            scores.append(score)
    return regions, (min(scores) if scores else None)


def predict_videos(
    model: Any,
    version: str,
    spec: TrainSpec,
    names: Mapping[int, str],
    tasks: list[Task],
    cache_dir: Path,
    media: MediaConfig,
    options: VideoOptions,
    conf: float,
    imgsz: int,
    unknown: float,
    show_conf: float,
    full: bool = False,
) -> list[Prediction]:
    """One prediction per video task: ``{"result": [VideoRectangle regions], "score", "model_version"}``.

    Args:
        media: the image media configuration (Label Studio URL and token); the video limits of
            ``options`` replace its size and time limits.
        unknown: the score of a task with nothing predicted.
        full: track whole videos (the pre-annotation queue); else within ``options.budget_s``.
    """
    out: list[Prediction] = [{"result": [], "score": unknown, "model_version": version} for _ in tasks]
    config = replace(media, max_bytes=options.max_bytes, timeout_s=options.timeout_s)
    with VideoCache(cache_dir, config) as cache:
        for i, task in enumerate(tasks):
            url = (task.get("data") or {}).get(spec.value_key)
            try:
                video = cache.get(int(task["id"]), str(url or ""))
            except Exception as exc:  # MediaError, OSError: this task gets nothing
                log.warning("predict_video_unavailable", task_id=task.get("id"), error=str(exc)[:200])
                continue
            assert isinstance(video, CachedImage)
            info = probe_video(video.path)
            budget = None if full else options.budget_s
            tracked = track_video(
                model, video.path, options.tracker, conf, imgsz, budget, getattr(model, "device", None)
            )
            if not tracked.finished:
                log.warning(
                    "predict_video_deferred",
                    task_id=task.get("id"),
                    reason=f"tracked {tracked.frames} of {info.frames} frames within {budget} s; "
                    "the pre-annotation queue predicts whole videos",
                )
                continue
            rate = info.fps if info.fps > 0 else 24.0
            regions, score = tracks_to_regions(
                tracked, spec, names, options.tolerance, rate, info.frames, info.frames / rate, show_conf
            )
            out[i]["result"] = regions
            if score is not None:
                out[i]["score"] = score
    return out
