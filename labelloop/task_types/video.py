"""``detect`` from video: Label Studio's "Video Object Tracking" template (``Video`` object tag,
``VideoRectangle`` and the ``Labels`` on the same Video), trained as an Ultralytics detect model on
frames and predicted as tracks.

A VideoRectangle result holds no box of its own: ``value.sequence`` has keyframes and Label Studio
draws the box between them (``labelloop.task_types.keyframes``, which says which Label Studio source it
follows). A frame's YOLO label lines are the boxes drawn on that frame; predictions are one
VideoRectangle region per track with the keyframes ``labelloop.task_types.keyframes.reduce_track`` keeps.

Frames are 1-based as in Label Studio (frame ``k`` is the ``k-1``-th decoded frame); ``framesCount``
is ``round(duration * framerate)`` (``libs/editor/src/components/VideoCanvas/VideoCanvas.tsx`` with
Label Studio 1.23.2's default feature flag ``fflag_fix_front_optic_1608_..._seek_precision_short``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from labelloop.ls_json import Region, RegionValue
from labelloop.task_types.detect import Rectangles
from labelloop.task_types.geometry import yolo_numbers
from labelloop.task_types.keyframes import reduce_track, visible
from labelloop.task_types.regions import describe
from labelloop.task_types.spec import MIN_BOX_PX, TrainSpec, in_frame, rectangle_to_yolo

#: Label Studio's ``Video`` ``frameRate`` when the tag sets none (``tags/object/Video/Video.js``).
DEFAULT_FRAMERATE = 24.0

REGION_TYPE = "videorectangle"


def framerate(attrs: Mapping[str, Any], task_data: Mapping[str, Any] | None = None) -> float:
    """The frame rate Label Studio uses for a ``Video`` tag (``Video.js`` ``afterCreate``).

    Args:
        attrs: the Video tag's attributes (``frameRate``, any case; ``$key`` reads the task data).
        task_data: the task's ``data`` for a ``$key`` frame rate.

    Returns:
        frames per second: the value, ``1 / value`` below 1, 24 when missing or not a number.
    """
    raw = next((v for k, v in attrs.items() if k.lower() == "framerate"), None)
    if isinstance(raw, str) and raw.startswith("$"):
        raw = (task_data or {}).get(raw[1:])
    try:
        rate = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_FRAMERATE
    if not rate or rate != rate:  # 0 or NaN
        return DEFAULT_FRAMERATE
    return 1 / rate if rate < 1 else rate


def frames_count(duration_s: float, rate: float) -> int:
    """``value.framesCount`` Label Studio writes for a video of ``duration_s`` seconds."""
    return round(float(duration_s) * float(rate))


def frame_count_of(result: Iterable[Mapping[str, Any]], spec: TrainSpec) -> int | None:
    """The ``framesCount`` an annotation's VideoRectangle regions carry (the largest), or None."""
    counts = [
        int(r["value"]["framesCount"])
        for r in result
        if r.get("from_name") == spec.from_name
        and isinstance(r.get("value"), Mapping)
        and isinstance(r["value"].get("framesCount"), int | float)
    ]
    return max(counts) if counts else None


@dataclass(frozen=True)
class VideoClip:
    """A video as Label Studio describes it in a VideoRectangle ``value``: ``rate`` frames per
    second, ``frames`` its frame count (``framesCount``), ``duration_s`` seconds (``duration``), and
    its frame size in pixels."""

    rate: float
    frames: int
    duration_s: float
    width: int
    height: int


class VideoRectangles(Rectangles):
    """VideoRectangle tracks trained as ``detect`` on frames (registered by region type, not by
    Ultralytics task: ``labelloop.task_types.video_task_type``)."""

    name = "detect"
    control_tags = ("VideoRectangle",)
    region_types: ClassVar[tuple[str, ...]] = (REGION_TYPE,)
    trained_alone = False

    def frame_lines(
        self, result: Sequence[Region], class_ids: Mapping[str, int], frames: Iterable[int], width: int, height: int
    ) -> tuple[dict[int, list[str]], list[str]]:
        """YOLO detect label lines per frame of one annotation's ``result``.

        Args:
            result: the annotation's regions; those of ``spec.from_name`` are read.
            class_ids: label -> class id.
            frames: 1-based frames wanted.
            width, height: the video's frame size in pixels.

        Returns:
            ``({frame: ["cls cx cy w h", ...]}, [reason per dropped region])``; every wanted frame
            has an entry (empty: nothing drawn there).
        """
        wanted = sorted(set(int(f) for f in frames))
        lines: dict[int, list[str]] = {f: [] for f in wanted}
        dropped: list[str] = []
        for region in result:
            if region.get("from_name") != self.spec.from_name:
                continue
            where = describe(region)
            value = region.get("value")
            if region.get("type") != REGION_TYPE or not isinstance(value, Mapping):
                dropped.append(f"{where}: region type {region.get('type')!r} is not trained as video detect")
                continue
            labels = value.get("labels") or value.get("videorectangle")
            if not labels or not isinstance(labels, list):
                dropped.append(f"{where}: no label")
                continue
            label = str(labels[0])
            if label not in class_ids:
                dropped.append(f"{where}: label {label!r} has no class id (not in the label config)")
                continue
            sequence = value.get("sequence")
            if not isinstance(sequence, list) or not sequence:
                dropped.append(f"{where}: no keyframes")
                continue
            try:
                for f in wanted:
                    box = visible(sequence, f)
                    if box is None:
                        continue
                    yolo = rectangle_to_yolo(box, width, height)
                    if yolo is not None:
                        lines[f].append(f"{class_ids[label]} {yolo_numbers(yolo)}")
            except (KeyError, TypeError, ValueError) as exc:
                dropped.append(f"{where}: malformed keyframes ({type(exc).__name__}: {exc})")
        return lines, dropped

    def track_region(
        self,
        label: str,
        boxes: Mapping[int, Mapping[str, float]],
        score: float | None,
        tolerance: float,
        clip: VideoClip,
    ) -> Region | None:
        """One VideoRectangle prediction region of a track.

        Args:
            label: the track's label (must be one of ``spec.labels``).
            boxes: 1-based frame -> box in percent (``x, y, width, height``) where the track is;
                each is clipped to the frame first (a smoothed track's fit can run past the
                border, and Label Studio 1.23.2 refuses a keyframe over 100: its SDK's
                ``VideoRectangleSequenceValue``; its bulk prediction import drops the whole prediction).
            score: the track's score (e.g. its least confident box), or None.
            tolerance: ``keyframes.reduce_track``'s, in percent of the frame.
            clip: the video (frame rate, ``framesCount``, ``duration``, frame size).

        Returns:
            the region, or None when the label is not trained or no box is at least
            ``MIN_BOX_PX`` wide and high.
        """
        if label not in self.spec.labels:
            return None
        W, H = clip.width, clip.height
        inside = {f: in_frame(b) for f, b in boxes.items()}
        kept = {f: b for f, b in inside.items() if min(b["width"] / 100 * W, b["height"] / 100 * H) >= MIN_BOX_PX}
        if not kept:
            return None
        value = RegionValue(
            framesCount=int(clip.frames),
            duration=float(clip.duration_s),
            sequence=reduce_track(kept, tolerance, clip.rate),
            labels=[label],
        )
        return self.make.region(REGION_TYPE, value, W, H, score)
