"""Generated MP4 videos of moving shapes with known per-frame boxes, for tests and benchmarks.

Each video is a grey noisy background with red squares ("square") and blue discs ("disc") that
move in straight lines (and may leave the frame); on request also a green triangle (``RARE_LABEL``,
for a rare class) and unlabelled distractors (hollow red squares and grey discs: near misses of the
labelled shapes that nobody annotates). Written with OpenCV (``mp4v``); nothing is downloaded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ("square", "disc")
#: The rare class ``write_video(..., rare=True)`` adds: one green triangle.
RARE_LABEL = "triangle"


def video_config(labels: tuple[str, ...] = LABELS, framerate: float | None = None) -> str:
    """Label Studio's "Video Object Tracking" label config: ``Video`` ``video`` (``$video``),
    ``VideoRectangle`` ``box`` and ``Labels`` ``videoLabels`` with ``labels``."""
    rate = f' framerate="{framerate:g}"' if framerate else ""
    return (
        f'<View><Video name="video" value="$video"{rate}/>'
        '<VideoRectangle name="box" toName="video"/>'
        '<Labels name="videoLabels" toName="video">'
        + "".join(f'<Label value="{name}"/>' for name in labels)
        + "</Labels></View>"
    )


@dataclass
class Track:
    """One moving shape: its label and, per 1-based frame it is (partly) inside the frame, its box
    ``(x, y, w, h)`` in pixels (clipped to the frame)."""

    label: str
    boxes: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)


@dataclass
class GeneratedVideo:
    """A written video: ``path``, size in pixels, ``fps``, ``frames`` and its ``tracks``."""

    path: Path
    width: int
    height: int
    fps: float
    frames: int
    tracks: list[Track]
    distractors: int = 0


def write_video(
    path: Path,
    seed: int,
    frames: int = 48,
    width: int = 160,
    height: int = 120,
    fps: float = 24.0,
    shapes: int = 2,
    rare: bool = False,
    distractors: int = 0,
) -> GeneratedVideo:
    """Write an MP4 of ``shapes`` moving shapes and return their true boxes.

    Args:
        path: the ``.mp4`` to write.
        seed: picks shapes, sizes, start positions and velocities.
        frames, width, height, fps: the video's frame count, size in pixels and frame rate.
        rare: add one moving green triangle labelled ``RARE_LABEL``.
        distractors: unlabelled moving shapes to add (hollow red squares and grey discs in turn;
            not in ``tracks``). With ``rare`` False and no distractors the video is the same as
            without these arguments (they draw from their own random stream).

    Raises:
        RuntimeError: OpenCV cannot write MP4 here.
    """
    import cv2

    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")

    def shape(kind: str, draw: random.Random) -> tuple[Track, int, float, float, float, float]:
        """A shape of ``kind``: its size, start position and velocity (pixels per frame)."""
        size = draw.randint(max(8, min(width, height) // 6), max(9, min(width, height) // 3))
        x, y = draw.uniform(0, width - size), draw.uniform(0, height - size)
        return Track(kind), size, x, y, draw.uniform(-2.5, 2.5), draw.uniform(-2.0, 2.0)

    moving = [shape(LABELS[k % len(LABELS)], rng) for k in range(shapes)]
    extra = random.Random(seed * 7919 + 1)
    kinds = ([RARE_LABEL] if rare else []) + [("hollow", "grey")[k % 2] for k in range(distractors)]
    moving += [shape(kind, extra) for kind in kinds]
    noise = np.random.default_rng(seed)
    for f in range(1, frames + 1):
        img = np.full((height, width, 3), 110, np.uint8)
        img = np.clip(img.astype(np.int16) + noise.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        for track, size, x0, y0, vx, vy in moving:
            x, y = x0 + vx * (f - 1), y0 + vy * (f - 1)
            x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(width), x + size), min(float(height), y + size)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            corner, far = (round(x), round(y)), (round(x + size) - 1, round(y + size) - 1)
            centre = (round(x + size / 2), round(y + size / 2))
            if track.label == "square":
                cv2.rectangle(img, corner, far, (40, 40, 220), -1)
            elif track.label == "disc":
                cv2.circle(img, centre, round(size / 2), (220, 60, 40), -1)
            elif track.label == RARE_LABEL:
                apex, left, right = (centre[0], corner[1]), (corner[0], far[1]), far
                cv2.fillPoly(img, [np.array([apex, left, right], np.int32)], (40, 180, 40))
            elif track.label == "hollow":
                cv2.rectangle(img, corner, far, (40, 40, 220), 2)
            else:  # grey disc
                cv2.circle(img, centre, round(size / 2), (170, 170, 170), -1)
            track.boxes[f] = (x1, y1, x2 - x1, y2 - y1)
        writer.write(img)
    writer.release()
    labelled = [t for t, *_ in moving if t.label in (*LABELS, RARE_LABEL)]
    return GeneratedVideo(path, width, height, fps, frames, labelled, distractors)


def keyframe_sequence(video: GeneratedVideo, track: Track, every: int) -> list[dict[str, float | int | bool]]:
    """What a person would save in Label Studio for a track: a keyframe every ``every`` frames (and
    on its last frame, disabled: the shape leaves or the video ends), box in percent."""
    frames = sorted(track.boxes)
    picked = frames[::every] + ([frames[-1]] if (len(frames) - 1) % every else [])
    seq: list[dict[str, float | int | bool]] = []
    for f in picked:
        x, y, w, h = track.boxes[f]
        seq.append(
            {
                "frame": f,
                "time": f / video.fps,
                "enabled": f != frames[-1],
                "x": x / video.width * 100,
                "y": y / video.height * 100,
                "width": w / video.width * 100,
                "height": h / video.height * 100,
                "rotation": 0,
            }
        )
    return seq


def video_result(
    video: GeneratedVideo, every: int, prefix: str = "t", origin: str | None = None
) -> list[dict[str, Any]]:
    """The VideoRectangle result a person saves in Label Studio for ``video``: one region per track
    (id ``<prefix><k>``) with a keyframe every ``every`` frames (``keyframe_sequence``); ``origin``
    ("manual", ...) is set when given."""
    return [
        {
            "id": f"{prefix}{k}",
            "from_name": "box",
            "to_name": "video",
            "type": "videorectangle",
            **({"origin": origin} if origin else {}),
            "value": {
                "framesCount": video.frames,
                "duration": video.frames / video.fps,
                "labels": [track.label],
                "sequence": keyframe_sequence(video, track, every),
            },
        }
        for k, track in enumerate(video.tracks)
        if track.boxes
    ]
