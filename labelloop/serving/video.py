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

import numpy as np
import structlog

from labelloop.labelstudio.media import CachedImage, MediaConfig
from labelloop.labelstudio.video_media import VideoCache, probe_video
from labelloop.ls_json import Prediction, Region, Task
from labelloop.serving.tracks import MAX_GAP_FRAMES, MIN_TRACK_FRAMES, TrackedVideo, clean_tracks, fill_gaps
from labelloop.task_types import video_task_type
from labelloop.task_types.keyframes import BOX_PROPS
from labelloop.task_types.spec import TrainSpec, xyxy_to_rectangle
from labelloop.task_types.video import VideoClip

if TYPE_CHECKING:
    from labelloop.settings import Settings

log = structlog.get_logger(__name__)

#: Seconds of a track each box's position (``x``, ``y``) is fitted over before keyframe reduction
#: (``smooth_track``): a detector's box jitters from frame to frame, which costs keyframes and shows
#: no motion. The fit is a local line, so steady motion passes unchanged, at a track's ends too;
#: only a change of velocity within the window is rounded. Half a second is short against how long
#: a walking person or a car keeps its velocity, and 13 frames at 24 fps cut white jitter to a third
#: (standard deviation x0.32 mid-track, x0.73 at an end, where the fit is one-sided).
#: bench/video.py, round 10 (170 s CPU model): 0.116 -> 0.097 keyframes per frame at 1 %, held-out
#: mAP50 0.707 -> 0.710, against the 5-frame centred mean this replaces.
SMOOTH_S = 0.5
#: Seconds each box's size (``width``, ``height``) is fitted over: a rigid object's apparent size
#: changes only as its distance does (or linearly, as the frame's border clips it), slower than it
#: moves, and a detector's size jitters more than its centre (bench/video.py's held-out tracks, 170 s
#: model: 1-6 % of the frame against 0.1-3 %), so twice the position's window (x0.23 mid-track).
SIZE_SMOOTH_S = 1.0
#: ``smooth_track``'s default position window: ``SMOOTH_S`` in frames at 24 fps.
SMOOTH_FRAMES = 13


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


def window_frames(seconds: float, rate: float) -> int:
    """An odd number of frames, at least 1, spanning about ``seconds`` at ``rate`` frames per second."""
    return 2 * max(0, round(seconds * rate / 2)) + 1


def smooth_track(
    boxes: Mapping[int, Mapping[str, float]], window: int = SMOOTH_FRAMES, size_window: int | None = None
) -> dict[int, dict[str, float]]:
    """Each box replaced by a local line fitted to the track's boxes around it: per frame ``f`` and
    property, a straight line least-squares fitted to the track's values on the frames within
    ``window // 2`` of ``f`` (``size_window // 2`` for ``width`` and ``height``), weighted by the
    tricube kernel ``(1 - (|g - f| / (half + 1)) ** 3) ** 3``, taken at ``f`` (LOESS of degree 1,
    Cleveland 1979; a Savitzky-Golay filter of order 1 where no frame is missing).

    A box moving or growing at constant speed is returned unchanged, at a track's ends too (where a
    centred mean, one-sided there, lags). Each run of consecutive frames is fitted on its own: a
    gap that ``fill_gaps`` left is a pause Label Studio shows, after which the object may be
    elsewhere. The frames themselves do not change.

    Args:
        boxes: 1-based frame -> ``{"x", "y", "width", "height"}`` (percent of the frame).
        window: frames of the position's fit (1 or less: positions as they are).
        size_window: frames of the size's fit; None: twice ``window``'s half-width on either side
            (``SIZE_SMOOTH_S`` over ``SMOOTH_S``).

    Returns:
        frame -> smoothed ``{"x", "y", "width", "height"}``, the same frames, sorted.
    """
    if not boxes:
        return {}
    half = max(0, int(window)) // 2
    size_half = 2 * half if size_window is None else max(0, int(size_window)) // 2
    frames = np.array(sorted(boxes), dtype=np.int64)
    values = np.array([[float(boxes[int(f)].get(p) or 0.0) for p in BOX_PROPS] for f in frames])
    out = values.copy()
    # Index of the first and last frame of each frame's run of consecutive frames.
    run = np.concatenate([[0], np.cumsum(np.diff(frames) > 1)])
    starts = np.flatnonzero(np.diff(np.concatenate([[-1], run])))
    ends = np.concatenate([starts[1:] - 1, [len(frames) - 1]])
    first, last = starts[run], ends[run]
    for cols, h in ((slice(0, 2), half), (slice(2, 4), size_half)):
        if h == 0:
            continue
        lo = np.maximum(np.searchsorted(frames, frames - h, side="left"), first)
        hi = np.minimum(np.searchsorted(frames, frames + h, side="right"), last + 1)
        for i in range(len(frames)):
            d = (frames[lo[i] : hi[i]] - frames[i]).astype(float)
            w = (1 - (np.abs(d) / (h + 1)) ** 3) ** 3
            v = values[lo[i] : hi[i], cols]
            s0, s1, s2 = w.sum(), w @ d, w @ (d * d)
            t0, t1 = w @ v, (w * d) @ v
            det = s0 * s2 - s1 * s1
            # One frame (or all on one side at one offset): no slope to fit, the weighted mean.
            out[i, cols] = (s2 * t0 - s1 * t1) / det if det > 1e-9 * s0 * s0 else t0 / s0
    return {int(f): dict(zip(BOX_PROPS, map(float, out[k]), strict=True)) for k, f in enumerate(frames)}


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
    smooth: int | None = None,
) -> tuple[list[Region], float | None]:
    """VideoRectangle regions of the tracks whose score is at least ``show_conf``, and the score
    of the least certain of them (None without tracks). The keyword arguments are for
    measurements (``merge=False, min_frames=0, max_gap=0`` gives the tracker's ids as they are).

    Each object's track is first cleaned (``labelloop.serving.tracks.clean_tracks``: split and
    duplicate tracks merged when ``merge``, tracks on fewer than ``min_frames`` frames dropped), its
    gaps of at most ``max_gap`` frames filled (``fill_gaps``), its boxes smoothed (``smooth_track``:
    positions over ``SMOOTH_S``, sizes over ``SIZE_SMOOTH_S`` at ``rate``; ``smooth`` frames for
    positions and twice that for sizes when given, 1 for none), then reduced to keyframes within
    ``tolerance`` of the smoothed boxes.

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
    size_window: int | None
    if smooth is None:
        pos_window, size_window = window_frames(SMOOTH_S, rate), window_frames(SIZE_SMOOTH_S, rate)
    else:
        pos_window, size_window = smooth, None
    for tid, boxes in sorted(cleaned.boxes.items()):
        score = sum(cleaned.confs[tid]) / len(cleaned.confs[tid])
        if score < show_conf:
            continue
        label = names.get(cleaned.classes[tid].most_common(1)[0][0])
        filled = fill_gaps(boxes, max_gap)
        smoothed = smooth_track(filled, pos_window, size_window)
        region = kind.track_region(str(label), smoothed, score, tolerance, clip)
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
    until: float | None = None,
) -> list[Prediction]:
    """One prediction per video task: ``{"result": [VideoRectangle regions], "score", "model_version"}``.

    Args:
        media: the image media configuration (Label Studio URL and token); the video limits of
            ``options`` replace its size and time limits.
        unknown: the score of a task with nothing predicted.
        full: track whole videos (the pre-annotation queue); else each video within
            ``options.budget_s``, or, with ``until``, within what is left until then.
        until: ``time.monotonic()`` seconds by which the videos, in order, stop tracking: they
            share one budget, so a ``/predict`` of many long videos ends near its deadline, not one
            budget per video later. A video reached after it is not fetched; it gets no regions
            and ``predict_video_deferred``.
    """
    out: list[Prediction] = [{"result": [], "score": unknown, "model_version": version} for _ in tasks]
    config = replace(media, max_bytes=options.max_bytes, timeout_s=options.timeout_s)
    with VideoCache(cache_dir, config) as cache:
        for i, task in enumerate(tasks):
            if full or until is None:
                budget = None if full else options.budget_s
            else:
                budget = round(until - time.monotonic(), 3)
                if budget <= 0:
                    log.warning(
                        "predict_video_deferred",
                        task_id=task.get("id"),
                        reason="this /predict's tracking budget was spent before this video (loading the model, "
                        "fetching and tracking the videos before it); the pre-annotation queue predicts whole "
                        "videos",
                    )
                    continue
            url = (task.get("data") or {}).get(spec.value_key)
            try:
                video = cache.get(int(task["id"]), str(url or ""))
            except Exception as exc:  # MediaError, OSError: this task gets nothing
                log.warning("predict_video_unavailable", task_id=task.get("id"), error=str(exc)[:200])
                continue
            assert isinstance(video, CachedImage)
            info = probe_video(video.path)
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
