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
from labelloop.task_types.spec import in_frame

#: The box properties Label Studio interpolates (``VideoRectangleRegion.props``).
PROPS = ("x", "y", "width", "height", "rotation")

Box = dict[str, float]

#: The properties of a tracked box (not rotated): what ``reduce_track`` keeps within its tolerance,
#: and what ``labelloop.serving.tracks`` and ``labelloop.serving.video`` merge and smooth.
BOX_PROPS = ("x", "y", "width", "height")


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


def _clip(poly: list[tuple[float, float]], t: float, bound: float, sign: float) -> list[tuple[float, float]]:
    """The convex polygon ``poly`` of ``(y, s)`` points cut to ``sign * (y + s * t) <= sign * bound``."""
    out: list[tuple[float, float]] = []
    eps = 1e-9
    for k, p in enumerate(poly):
        q = poly[(k + 1) % len(poly)]
        gp = sign * (p[0] + p[1] * t - bound)
        gq = sign * (q[0] + q[1] * t - bound)
        if gp <= eps:
            out.append(p)
        if (gp < -eps < eps < gq) or (gq < -eps < eps < gp):
            r = gp / (gp - gq)
            out.append((p[0] + (q[0] - p[0]) * r, p[1] + (q[1] - p[1]) * r))
    return out


def _fit_free(values: Sequence[Sequence[float]], tolerance: float) -> tuple[list[int], list[list[float]]]:
    """Keyframes of a run whose values are chosen, not copied: indices of kept points (first and
    last included) and a value per kept point and coordinate such that linear interpolation between
    them is within ``tolerance`` of every point.

    Greedy, per keyframe: the values it may take form an interval per coordinate (the first: its
    point +- ``tolerance``); the lines leaving it that stay within ``tolerance`` of the points after
    it form a convex polygon of (value, slope) per coordinate, cut by two half-planes per point;
    the next keyframe is the farthest point for which every coordinate's polygon is not empty, and
    the values it may take are where those lines get to. Values are then picked from the last
    keyframe back, each the one nearest its own point among those the segment after it allows.
    O(points x polygon corners).
    """
    v = [list(map(float, row)) for row in values]
    n, dims = len(v), len(v[0]) if v else 0
    if n <= 2:
        return list(range(n)), [list(row) for row in v]
    span = max(max(r[c] for r in v) - min(r[c] for r in v) for c in range(dims)) + 2 * tolerance + 1.0
    kept, intervals, polys = [0], [[(v[0][c] - tolerance, v[0][c] + tolerance) for c in range(dims)]], []
    while kept[-1] < n - 1:
        a = kept[-1]
        cur = [[(lo, -span), (hi, -span), (hi, span), (lo, span)] for lo, hi in intervals[-1]]
        b = a
        while b + 1 < n:
            t = float(b + 1 - a)
            nxt = []
            for c in range(dims):
                cut = _clip(_clip(cur[c], t, v[b + 1][c] + tolerance, 1.0), t, v[b + 1][c] - tolerance, -1.0)
                if not cut:
                    break
                nxt.append(cut)
            if len(nxt) < dims:
                break
            cur, b = nxt, b + 1
        length = float(b - a)
        intervals.append([(min(y + s * length for y, s in pg), max(y + s * length for y, s in pg)) for pg in cur])
        polys.append(cur)
        kept.append(b)
    # Values from the last keyframe back: each nearest its own point within what the next allows.
    fitted = [[0.0] * dims for _ in kept]
    fitted[-1] = [min(max(v[n - 1][c], lo), hi) for c, (lo, hi) in enumerate(intervals[-1])]
    for j in range(len(kept) - 2, -1, -1):
        a, b = kept[j], kept[j + 1]
        length = float(b - a)
        for c in range(dims):
            z = fitted[j + 1][c]
            poly = polys[j][c]
            ys: list[float] = []
            for k, p in enumerate(poly):
                q = poly[(k + 1) % len(poly)]
                gp, gq = p[0] + p[1] * length - z, q[0] + q[1] * length - z
                if abs(gp) <= 1e-9:
                    ys.append(p[0])
                elif gp * gq < 0:
                    ys.append(p[0] + (q[0] - p[0]) * gp / (gp - gq))
            if not ys:  # rounding: the vertex nearest the line
                ys = [min(poly, key=lambda corner: abs(corner[0] + corner[1] * length - z))[0]]
            fitted[j][c] = min(max(v[a][c], min(ys)), max(ys))
    return kept, fitted


def _least_squares(
    points: Sequence[Sequence[float]], kept: Sequence[int], tolerance: float, rounds: int = 30
) -> list[list[float]] | None:
    """Values at indices ``kept`` whose linear interpolation is nearest the points in least squares
    (a continuous piecewise-linear regression with knots at ``kept``) while within ``tolerance`` of
    every point: points outside get 4 times the weight, per coordinate, until none is (at most
    ``rounds`` times); None when that does not settle."""
    v = np.asarray(points, dtype=float)
    basis = np.stack([np.interp(np.arange(len(v)), kept, np.eye(len(kept))[k]) for k in range(len(kept))], 1)
    out = np.zeros((len(kept), v.shape[1]))
    for c in range(v.shape[1]):
        weight = np.ones(len(v))
        for _ in range(rounds):
            root = np.sqrt(weight)
            out[:, c] = np.linalg.lstsq(basis * root[:, None], v[:, c] * root, rcond=None)[0]
            outside = np.abs(basis @ out[:, c] - v[:, c]) > tolerance
            if not outside.any():
                break
            weight[outside] *= 4
        else:
            return None
    return [list(map(float, row)) for row in out]


def _within(
    points: Sequence[Sequence[float]], kept: Sequence[int], values: Sequence[Sequence[float]], tolerance: float
) -> bool:
    """Whether linear interpolation between ``values`` at indices ``kept`` is within ``tolerance``
    (plus rounding) of every point."""
    v = np.asarray(points, dtype=float)
    fit = np.stack([np.interp(np.arange(len(v)), kept, [row[c] for row in values]) for c in range(v.shape[1])], 1)
    return bool(np.all(np.abs(fit - v) <= tolerance + 1e-6))


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

    Per run of consecutive frames, two candidates; the one with fewer keyframes is kept (the first
    on a tie):

    - **Copied**: the run's first and last frame and the fewest frames between them, each keyframe
      the tracked box of its frame, such that Label Studio's linear interpolation between
      consecutive keyframes is within ``tolerance`` of the tracked box on every frame (a shortest
      path over the frames, optimal for copied boxes, where Ramer-Douglas-Peucker's recursive split
      can keep more).
    - **Fitted**: keyframe values chosen rather than copied, as a continuous piecewise-linear fit
      within the same band (``_fit_free``: each keyframe as far on as a line within the band
      reaches), then the values that draw the track back nearest in least squares while still
      within the band (``_least_squares``). A box jittering about a straight path then costs its
      two ends, where copying one jittered frame as a keyframe tilts the line by that frame's error.
      Its keyframes are clipped to the frame (``spec.in_frame``) and kept only while still within the
      band, so boxes inside the frame give keyframes inside it.

    A box clipped at the frame's border as its object leaves shrinks linearly while its edge stays
    put: two straight pieces, one keyframe where they meet. The last keyframe of each run is
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
        "width", "height", "rotation"}`` sorted by frame, each keyframe's box within ``tolerance``
        of the tracked box on its frame (``rotation`` copied). ``frame_boxes`` of it gives exactly
        the frames of ``boxes``, each within ``tolerance``.

    Raises:
        ValueError: a negative tolerance or a framerate that is not positive.
    """
    if tolerance < 0 or framerate <= 0:
        raise ValueError(f"tolerance must be >= 0 and framerate > 0 (got {tolerance}, {framerate})")
    full = {int(f): {p: float(b.get(p) or 0.0) for p in PROPS} for f, b in boxes.items()}
    sequence: list[Keyframe] = []
    for run in _segments(sorted(full)):
        points = [[full[f][p] for p in BOX_PROPS] for f in run]
        keep = {run[k]: full[run[k]] for k in _fewest(points, tolerance)}
        if tolerance > 0 and len(run) > 2:
            free, values = _fit_free(points, tolerance)
            if len(free) < len(keep):
                fitted = _least_squares(points, free, tolerance) or values
                values = [[in_frame(dict(zip(BOX_PROPS, v, strict=True)))[p] for p in BOX_PROPS] for v in fitted]
                if _within(points, free, values, tolerance):
                    keep = {
                        run[k]: {**full[run[k]], **dict(zip(BOX_PROPS, vals, strict=True))}
                        for k, vals in zip(free, values, strict=True)
                    }
        for f in sorted(keep):
            box = keep[f]
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
