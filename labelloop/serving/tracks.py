"""Tracks as an annotator wants them: one track per object, without the flicker (pure functions).

A tracker gives one object several track ids when it loses it for a few frames (a crossing, a
missed detection) or briefly follows it twice, and short tracks of noise; every track costs at
least two keyframes in Label Studio. ``clean_tracks`` merges what is one object and drops what is
too short to be one, before ``labelloop.task_types.keyframes.reduce_track`` keeps the keyframes:

- **Duplicates**: two tracks of the same majority class whose boxes overlap with a mean IoU of at
  least ``DUPLICATE_IOU`` on the frames both have are one object. Tracks that share frames are
  merged by this rule only: where their boxes disagree, both stay (two objects, or one track
  briefly on another object; merging would drop one of the boxes).
- **Bridges**: a track that ends and another of the same majority class that starts at most
  ``MAX_GAP_FRAMES`` later, where the first track's motion, extrapolated from its last
  ``VELOCITY_FRAMES`` frames, puts a box with IoU at least ``BRIDGE_IOU`` on the second's first
  box (or the second's motion, extrapolated back, on the first's last), are one object.
- Pairs are merged best first (highest IoU), again until no pair qualifies; on a frame both have,
  the merged track keeps the box of the more confident detection.
- **Short tracks**: after merging, a track detected on fewer than ``MIN_TRACK_FRAMES`` frames is
  dropped.

``fill_gaps`` then gives a track's frames without a box, in gaps of at most ``MAX_GAP_FRAMES``, the
box interpolated linearly between the two sides: what Label Studio draws between two enabled
keyframes, so a bridged gap costs no keyframe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from labelloop.task_types.keyframes import BOX_PROPS

#: Longest gap (frames) a track may pause and still be one object; Ultralytics' ByteTrack and
#: BoT-SORT keep a lost track for ``track_buffer: 30`` frames (``cfg/trackers/bytetrack.yaml``),
#: the same judgement of how long an object may go unseen.
MAX_GAP_FRAMES = 30
#: Mean IoU on shared frames above which two tracks are the same object (the usual "same box"
#: threshold of detection scoring, mAP50's).
DUPLICATE_IOU = 0.5
#: IoU of an extrapolated box with the other track's box above which a bridge is accepted: lower
#: than ``DUPLICATE_IOU`` because a straight-line extrapolation drifts over a gap.
BRIDGE_IOU = 0.3
#: Frames at a track's end its velocity is estimated over (a detector's box jitters frame to frame).
VELOCITY_FRAMES = 5
#: Tracks detected on fewer frames than this are dropped after merging (a fifth of a second at
#: 25 fps: flicker, not an object an annotator would keep; each would cost two keyframes).
MIN_TRACK_FRAMES = 5

Box = dict[str, float]


@dataclass
class TrackedVideo:
    """What tracking one video gave: per track id, 1-based frame -> box in percent (``x, y,
    width, height``), the classes of its boxes, and their confidences in frame order (one per
    box); ``frames`` decoded, ``finished`` False when the budget ran out."""

    width: int
    height: int
    boxes: dict[int, dict[int, dict[str, float]]] = field(default_factory=dict)
    classes: dict[int, Counter[int]] = field(default_factory=dict)
    confs: dict[int, list[float]] = field(default_factory=dict)
    frames: int = 0
    finished: bool = True


@dataclass
class _Track:
    boxes: dict[int, Box]
    confs: dict[int, float]
    classes: Counter[int]
    label: int = field(init=False)
    first: int = field(init=False)
    last: int = field(init=False)

    def __post_init__(self) -> None:
        self.label = self.classes.most_common(1)[0][0]
        self.first, self.last = min(self.boxes), max(self.boxes)


def iou(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Intersection over union of two ``{"x", "y", "width", "height"}`` boxes (any one unit)."""
    iw = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    ih = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    inter = max(0.0, iw) * max(0.0, ih)
    union = a["width"] * a["height"] + b["width"] * b["height"] - inter
    return inter / union if union > 0 else 0.0


def _extrapolate(boxes: Mapping[int, Box], frames: list[int], to: int) -> Box:
    """The box at frame ``to`` moving on from ``frames[-1]`` with the mean velocity over the
    last ``VELOCITY_FRAMES`` frames of ``frames`` (a list in the direction of travel)."""
    end = frames[-1]
    ref = frames[max(0, len(frames) - 1 - VELOCITY_FRAMES)]
    steps = end - ref
    box = boxes[end]
    if steps == 0:
        return dict(box)
    return {p: box[p] + (box[p] - boxes[ref][p]) / steps * (to - end) for p in BOX_PROPS}


def _to_pixels(box: Mapping[str, float], width: int, height: int) -> Box:
    # Percent of the frame to pixels: IoU is the same either way, but sizes compare in one unit.
    sx, sy = width / 100, height / 100
    return {"x": box["x"] * sx, "y": box["y"] * sy, "width": box["width"] * sx, "height": box["height"] * sy}


def _same_object(a: _Track, b: _Track) -> float | None:
    """The IoU that says ``a`` and ``b`` are one object, or None when they are not."""
    if a.label != b.label or b.first - a.last > MAX_GAP_FRAMES or a.first - b.last > MAX_GAP_FRAMES:
        return None
    shared = sorted(set(a.boxes) & set(b.boxes))
    if shared:  # on the same frames: one object only where the boxes agree
        mean = sum(iou(a.boxes[f], b.boxes[f]) for f in shared) / len(shared)
        return mean if mean >= DUPLICATE_IOU else None
    first, second = (a, b) if a.first <= b.first else (b, a)
    f1, f2 = sorted(first.boxes), sorted(second.boxes)
    if f2[0] < f1[-1] or f2[0] - f1[-1] > MAX_GAP_FRAMES:
        return None
    # Bridge: the first's end carried forward to the second's start, and back.
    forward = iou(_extrapolate(first.boxes, f1, f2[0]), second.boxes[f2[0]])
    backward = iou(_extrapolate(second.boxes, f2[::-1], f1[-1]), first.boxes[f1[-1]])
    best = max(forward, backward)
    return best if best >= BRIDGE_IOU else None


def _merge(a: _Track, b: _Track) -> _Track:
    boxes, confs = dict(a.boxes), dict(a.confs)
    for f, box in b.boxes.items():
        if f not in boxes or b.confs[f] > confs[f]:
            boxes[f], confs[f] = box, b.confs[f]
    return _Track(boxes, confs, a.classes + b.classes)


def clean_tracks(tracked: TrackedVideo, min_frames: int = MIN_TRACK_FRAMES, merge: bool = True) -> TrackedVideo:
    """``tracked`` with the tracks of one object merged and short tracks dropped (see the module).

    Args:
        tracked: ``track_video``'s tracks (boxes in percent of the frame).
        min_frames: tracks detected on fewer frames than this (after merging) are dropped; 0 keeps all.
        merge: merge duplicates and bridge split tracks.

    Returns:
        a new ``TrackedVideo``: each merged track under the smallest of its ids, its boxes and
        confidences (one per frame, in frame order) and the summed class counts.
    """
    W, H = max(tracked.width, 1), max(tracked.height, 1)
    tracks: dict[int, _Track] = {}
    for tid, boxes in tracked.boxes.items():
        if not boxes:
            continue
        frames = sorted(boxes)
        confs = tracked.confs.get(tid) or []
        tracks[tid] = _Track(
            {f: _to_pixels(boxes[f], W, H) for f in frames},
            {f: float(confs[k]) if k < len(confs) else 0.0 for k, f in enumerate(frames)},
            Counter(tracked.classes.get(tid) or {0: 1}),
        )
    # Pair scores are computed once and again only for the track a merge changed: a long video's
    # hundreds of tracks stay cheap (pairs farther apart in time than a gap are refused first).
    scores: dict[tuple[int, int], float] = {}

    def consider(a: int, b: int) -> None:
        pair = (min(a, b), max(a, b))
        score = _same_object(tracks[pair[0]], tracks[pair[1]])
        if score is not None:
            scores[pair] = score

    if merge:
        ids = sorted(tracks)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                consider(a, b)
    while scores:
        a, b = max(scores, key=lambda pair: (scores[pair], -pair[0], -pair[1]))
        tracks[a] = _merge(tracks[a], tracks.pop(b))
        scores = {pair: v for pair, v in scores.items() if a not in pair and b not in pair}
        for other in tracks:
            if other != a:
                consider(a, other)
    out = TrackedVideo(tracked.width, tracked.height, frames=tracked.frames, finished=tracked.finished)
    for tid, t in sorted(tracks.items()):
        if len(t.boxes) < min_frames:
            continue
        frames = sorted(t.boxes)
        out.boxes[tid] = {
            f: {p: t.boxes[f][p] * 100 / (W if p in ("x", "width") else H) for p in BOX_PROPS} for f in frames
        }
        out.classes[tid] = t.classes
        out.confs[tid] = [t.confs[f] for f in frames]
    return out


def fill_gaps(boxes: Mapping[int, Mapping[str, float]], max_gap: int = MAX_GAP_FRAMES) -> dict[int, Box]:
    """A track's boxes with every gap of at most ``max_gap`` missing frames filled by linear
    interpolation between the boxes on either side (Label Studio's interpolation between two
    enabled keyframes); longer gaps stay (the track pauses there)."""
    out = {f: {p: float(b.get(p) or 0.0) for p in BOX_PROPS} for f, b in boxes.items()}
    frames = sorted(out)
    for a, b in zip(frames, frames[1:], strict=False):
        if 1 < b - a <= max_gap + 1:
            for f in range(a + 1, b):
                r = (f - a) / (b - a)
                out[f] = {p: out[a][p] + (out[b][p] - out[a][p]) * r for p in BOX_PROPS}
    return dict(sorted(out.items()))
