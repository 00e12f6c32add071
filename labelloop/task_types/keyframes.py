"""Label Studio video keyframes: where a VideoRectangle region's box is on each frame, and the
keyframes a tracked box needs (pure functions).

A VideoRectangle result (Label Studio's "Video Object Tracking" template) holds
``value.sequence``: keyframes ``{"frame", "time", "x", "y", "width", "height", "rotation",
"enabled"}``, frames 1-based (frame 1 is the first frame of the video, ``time = frame /
framerate``), box in percent of the frame as for images, and ``value.framesCount`` and
``value.duration`` (seconds).

``box_at`` and ``visible`` follow Label Studio 1.23.2's frontend, read from the source map shipped
with the package (``label_studio/../web/dist/apps/labelstudio/358.js.map``):

- ``libs/editor/src/regions/VideoRectangleRegion.js`` ``getShape(frame)``: a keyframe on the frame
  gives its box; between two keyframes the box is interpolated linearly per property
  (``libs/editor/src/utils/props.ts`` ``interpolateProp``; rotation along the shorter way round,
  ``normalizeAngle``); after the last keyframe the box stays where that keyframe put it; before the
  first there is none.
- ``libs/editor/src/regions/VideoRegion.js`` ``isInLifespan(frame)`` with ``closestKeypoint``: the
  box is drawn only while the last keyframe at or before the frame is ``enabled`` (a keyframe
  without ``enabled`` counts as disabled, as JavaScript's ``undefined``), and on a disabled
  keyframe's own frame.
- ``libs/editor/src/tags/object/Video/VideoRegions.jsx``: a region is drawn on a frame when
  ``isInLifespan(frame) && getShape(frame)``.

The sequence is read in its stored order, as Label Studio does (it keeps it sorted by frame).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from labelloop.ls_json import Keyframe

#: The box properties Label Studio interpolates (``VideoRectangleRegion.props``).
PROPS = ("x", "y", "width", "height", "rotation")

Box = dict[str, float]

#: The properties ``reduce_track`` keeps within its tolerance (tracked boxes are not rotated).
_REDUCED = ("x", "y", "width", "height")


def normalize_angle(angle: float) -> float:
    """An angle in degrees projected onto (-180, 180] (``props.ts`` ``normalizeAngle``; JavaScript's
    ``%`` keeps the dividend's sign, as ``math.fmod``)."""
    a = float(angle)
    if a > 0:
        a -= 360 * math.ceil(a / 360)
    return math.fmod(a - 180, 360) + 180


def interpolate_prop(start: Mapping[str, Any], end: Mapping[str, Any], frame: float, prop: str) -> float:
    """One property between two keyframes at ``frame`` (``props.ts`` ``interpolateProp``)."""
    r = (frame - float(start["frame"])) / (float(end["frame"]) - float(start["frame"]))
    a, b = _num(start, prop), _num(end, prop)
    if prop == "rotation":
        return normalize_angle(a + normalize_angle(b - a) * r)
    return a + (b - a) * r


def _num(item: Mapping[str, Any], prop: str) -> float:
    # A sequence item without rotation (older exports, the SDK's importers) is an unrotated box.
    value = item.get(prop)
    return 0.0 if value is None and prop == "rotation" else float(value)  # type: ignore[arg-type]


def _props(item: Mapping[str, Any]) -> Box:
    return {p: _num(item, p) for p in PROPS}


def box_at(sequence: Sequence[Mapping[str, Any]], frame: int) -> Box | None:
    """The box Label Studio computes for a frame, drawn or not (``getShape``).

    Args:
        sequence: ``value.sequence`` of a VideoRectangle result.
        frame: 1-based frame number.

    Returns:
        ``{"x", "y", "width", "height", "rotation"}`` in percent of the frame and degrees, or None
        before the first keyframe.

    Raises:
        KeyError, TypeError, ValueError: a keyframe without a numeric ``frame`` or box property.
    """
    prev = nxt = None
    for item in sequence:
        if item["frame"] == frame:
            return _props(item)
        if item["frame"] > frame:
            nxt = item
            break
        prev = item
    if prev is None:
        return None
    if nxt is None:
        return _props(prev)
    return {p: interpolate_prop(prev, nxt, frame, p) for p in PROPS}


def in_lifespan(sequence: Sequence[Mapping[str, Any]], frame: int) -> bool:
    """Whether the region is alive on a frame (``isInLifespan`` with ``closestKeypoint``)."""
    before = [k for k in sequence if k["frame"] <= frame]
    closest = before[-1] if before else next((k for k in sequence if k["frame"] >= frame), None)
    if closest is None:
        return False
    enabled = bool(closest.get("enabled"))
    return True if closest["frame"] == frame and not enabled else enabled


def visible(sequence: Sequence[Mapping[str, Any]], frame: int) -> Box | None:
    """The box Label Studio draws on a frame (1-based), or None where it draws none."""
    if not in_lifespan(sequence, frame):
        return None
    return box_at(sequence, frame)


def frame_boxes(sequence: Sequence[Mapping[str, Any]], frames_count: int) -> dict[int, Box]:
    """Every frame of ``1..frames_count`` on which Label Studio draws the region, with its box.

    A region whose last keyframe is enabled stays on the frame up to ``frames_count`` (the box of
    that keyframe), as the editor shows it.
    """
    out: dict[int, Box] = {}
    for frame in range(1, int(frames_count) + 1):
        box = visible(sequence, frame)
        if box is not None:
            out[frame] = box
    return out


def annotated_span(sequences: Iterable[Sequence[Mapping[str, Any]]], frames_count: int) -> tuple[int, int] | None:
    """First and last frame (1-based, inclusive) a person looked at: from the earliest keyframe to
    the latest keyframe or drawn box of any region; None without keyframes."""
    first: int | None = None
    last: int | None = None
    for seq in sequences:
        frames = [int(k["frame"]) for k in seq]
        drawn = list(frame_boxes(seq, frames_count))
        if not frames:
            continue
        lo, hi = min(frames), max(frames + drawn)
        first = lo if first is None else min(first, lo)
        last = hi if last is None else max(last, hi)
    return None if first is None or last is None else (first, min(max(last, first), max(int(frames_count), first)))


# ---------------------------------------------------------------------------- keyframe reduction


def _fewest(values: Sequence[Sequence[float]], tolerance: float) -> list[int]:
    """Indices of the fewest points of a run (first and last included) such that linear
    interpolation between consecutive kept points is within ``tolerance`` of every point, per
    coordinate.

    A shortest path over the points: from a kept point ``i``, a later point ``j`` can be the next
    keyframe when the slope ``(v[j] - v[i]) / (j - i)`` of every coordinate lies in the slopes that
    keep each point between them within ``tolerance``; those form an interval per coordinate that
    only narrows as ``j`` moves on, so the scan from ``i`` stops once one is empty. O(n^2) per run
    at worst (a still box), done with numpy over windows that double until the interval empties.
    """
    v = np.asarray(values, dtype=float).reshape(len(values), -1)
    n = len(v)
    if n == 0:
        return []
    hops = np.full(n, n + 1, dtype=np.int64)  # fewest keyframes to reach point j (point 0 kept)
    prev = np.full(n, -1, dtype=np.int64)
    hops[0] = 1
    eps = 1e-9
    for i in range(n - 1):
        window = 32
        while True:
            stop = min(n, i + 1 + window)
            rows = v[i + 1 : stop] - v[i]
            d = np.arange(1, stop - i, dtype=float)[:, None]
            slope = rows / d
            lo = np.maximum.accumulate((rows - tolerance) / d, axis=0)
            hi = np.minimum.accumulate((rows + tolerance) / d, axis=0)
            empty = np.flatnonzero((lo > hi + eps).any(axis=1))
            if len(empty) or stop == n:
                break
            window *= 2
        # The segment i -> j is checked against the points strictly between: the bounds one row up.
        lo_before = np.vstack([np.full((1, v.shape[1]), -np.inf), lo[:-1]])
        hi_before = np.vstack([np.full((1, v.shape[1]), np.inf), hi[:-1]])
        ok = ((slope >= lo_before - eps) & (slope <= hi_before + eps)).all(axis=1)
        if len(empty):
            ok[empty[0] + 1 :] = False
        js = np.flatnonzero(ok) + i + 1
        better = js[hops[js] > hops[i] + 1]
        hops[better], prev[better] = hops[i] + 1, i
    kept = [n - 1]
    while kept[-1] > 0:
        kept.append(int(prev[kept[-1]]))
    return kept[::-1]


def _segments(frames: Sequence[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for f in frames:
        if runs and f == runs[-1][-1] + 1:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


def reduce_track(boxes: Mapping[int, Mapping[str, float]], tolerance: float, framerate: float) -> list[Keyframe]:
    """The keyframes of a tracked box that Label Studio draws back within ``tolerance``.

    Per run of consecutive frames: its first and last frame and the fewest frames between them
    such that Label Studio's linear interpolation between consecutive kept keyframes is within
    ``tolerance`` of the tracked box on every frame (a shortest path over the frames, optimal,
    where Ramer-Douglas-Peucker's recursive split can keep more). A box clipped at the frame's
    border as its object leaves shrinks linearly while its edge stays put: two straight pieces,
    one keyframe where they meet. The last keyframe of each run is
    ``enabled: false`` (the track pauses or ends there; Label Studio still draws it on that
    frame), every other ``enabled: true``.

    Args:
        boxes: 1-based frame -> ``{"x", "y", "width", "height"}`` (percent of the frame; an
            optional ``rotation``).
        tolerance: largest allowed difference of ``x``, ``y``, ``width`` or ``height`` between the
            tracked box and what Label Studio interpolates, in percent of the frame (>= 0).
        framerate: frames per second, for each keyframe's ``time = frame / framerate``.

    Returns:
        ``value.sequence`` of a VideoRectangle result: ``{"frame", "time", "enabled", "x", "y",
        "width", "height", "rotation"}`` sorted by frame. ``frame_boxes`` of it gives exactly the
        frames of ``boxes``, each within ``tolerance``.

    Raises:
        ValueError: a negative tolerance or a framerate that is not positive.
    """
    if tolerance < 0 or framerate <= 0:
        raise ValueError(f"tolerance must be >= 0 and framerate > 0 (got {tolerance}, {framerate})")
    full = {int(f): {p: float(b.get(p) or 0.0) for p in PROPS} for f, b in boxes.items()}
    sequence: list[Keyframe] = []
    for run in _segments(sorted(full)):
        keep = {run[k] for k in _fewest([[full[f][p] for p in _REDUCED] for f in run], tolerance)}
        for f in sorted(keep):
            box = full[f]
            sequence.append(
                Keyframe(
                    frame=f,
                    time=f / framerate,
                    enabled=f != run[-1],
                    x=box["x"],
                    y=box["y"],
                    width=box["width"],
                    height=box["height"],
                    rotation=box["rotation"],
                )
            )
    return sequence
