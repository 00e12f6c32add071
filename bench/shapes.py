"""A generated detection project for ``bench.learning``: classes that differ by shape only.

Classes ``circle``, ``square`` and ``triangle`` (the rare one, about 12% of the objects), each
object in a random colour, so colour says nothing about class; unlabelled distractors (crosses,
rings, thick lines) in random colours too; object sides from 14 px to half the short image
side (log-uniform); textured backgrounds (a smooth colour field, a finer blotch layer and pixel
noise); landscape 320x240, portrait 240x320 and 288x384 images; about a quarter of them saved
as JPEGs with an EXIF Orientation tag (6 or 8), so the stored pixels are rotated and a viewer
that applies EXIF (browsers, Label Studio) shows the upright image. Boxes are tight pixel
boxes of the drawn shapes in that displayed frame. Everything is deterministic from the seed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from labelloop.dev.synthetic import rectangle_config

LABELS = ("circle", "square", "triangle")
CLASS_WEIGHTS = (0.44, 0.44, 0.12)
DISTRACTORS = ("cross", "ring", "line")
#: (width, height) of the displayed image, and how often each occurs.
SIZES = ((320, 240), (240, 320), (288, 384))
SIZE_WEIGHTS = (0.4, 0.4, 0.2)
EXIF_ROTATED = 0.25  # share of images saved with EXIF orientation 6 or 8
MIN_SIDE = 14
SUPERSAMPLE = 4
EXIF_ORIENTATION = 0x0112
#: ``ImageOps.exif_transpose`` applies these to show an image; the stored pixels get the inverse.
_STORE = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}

LABEL_CONFIG = rectangle_config(LABELS)


@dataclass(frozen=True)
class Box:
    """One labelled object: ``label`` and its pixel box ``x1, y1, x2, y2`` in the displayed frame."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class ShapeImage:
    """One generated image.

    Attributes:
        name: file name (no dash: Label Studio prefixes uploads with ``<hash>-``).
        data: the file as uploaded (JPEG, with an EXIF orientation tag when ``orientation`` != 1).
        width, height: size of the displayed (upright) image.
        orientation: EXIF orientation of the file (1, 6 or 8).
        boxes: the labelled objects.
        distractors: unlabelled objects drawn.
    """

    name: str
    data: bytes
    width: int
    height: int
    orientation: int
    boxes: tuple[Box, ...]
    distractors: tuple[str, ...]

    def upright(self) -> Image.Image:
        """The displayed image (EXIF orientation applied), RGB."""
        with Image.open(io.BytesIO(self.data)) as im:
            return ImageOps.exif_transpose(im).convert("RGB")

    @property
    def upright_name(self) -> str:
        """The file name of the displayed image: ``name`` itself, or ``<stem>-upright.jpg`` for an
        EXIF-rotated one (the copy the benches save beside the upload)."""
        return self.name if self.orientation == 1 else f"{Path(self.name).stem}-upright.jpg"

    def ls_result(self, from_name: str = "label", to_name: str = "image") -> list[dict[str, Any]]:
        """The boxes as a Label Studio annotation ``result`` (percent of the displayed image)."""
        w, h = self.width, self.height
        return [
            {
                "id": f"r{i}",
                "from_name": from_name,
                "to_name": to_name,
                "type": "rectanglelabels",
                "original_width": w,
                "original_height": h,
                "image_rotation": 0,
                "value": {
                    "x": b.x1 / w * 100,
                    "y": b.y1 / h * 100,
                    "width": (b.x2 - b.x1) / w * 100,
                    "height": (b.y2 - b.y1) / h * 100,
                    "rotation": 0,
                    "rectanglelabels": [b.label],
                },
            }
            for i, b in enumerate(self.boxes)
        ]


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured background: smooth colour field + finer blotches + pixel noise (uint8 HxWx3)."""
    gw, gh = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    coarse = Image.fromarray(rng.integers(0, 256, (gh, gw, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    fine = Image.fromarray(rng.integers(0, 256, (height // 6, width // 6, 3), dtype=np.uint8)).resize(
        (width, height), Image.BILINEAR
    )
    img = np.asarray(coarse, dtype=np.float32)
    img += (np.asarray(fine, dtype=np.float32) - 128.0) * rng.uniform(0.15, 0.35)
    img += rng.normal(0.0, rng.uniform(4.0, 14.0), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def shape_mask(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """An anti-aliased mask (float 0..1, side x side) of one shape filling its square."""
    s = side * SUPERSAMPLE
    im = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(im)
    c = s / 2
    angle = float(rng.uniform(0, 2 * math.pi))

    def poly(points: list[tuple[float, float]], a: float) -> list[tuple[float, float]]:
        ca, sa = math.cos(a), math.sin(a)
        return [(c + x * ca - y * sa, c + x * sa + y * ca) for x, y in points]

    if kind == "circle":
        d.ellipse([0, 0, s - 1, s - 1], fill=255)
    elif kind == "square":
        a = math.radians(float(rng.uniform(-25, 25)))
        half = s / 2 / (abs(math.cos(a)) + abs(math.sin(a)))
        d.polygon(poly([(-half, -half), (half, -half), (half, half), (-half, half)], a), fill=255)
    elif kind == "triangle":
        r = s / 2
        d.polygon(poly([(r * math.cos(t), r * math.sin(t)) for t in (0, 2 * math.pi / 3, 4 * math.pi / 3)], angle), 255)
    elif kind == "ring":
        t = max(SUPERSAMPLE * 2, int(s * rng.uniform(0.12, 0.22)))
        d.ellipse([0, 0, s - 1, s - 1], outline=255, width=t)
    elif kind == "cross":
        arm = s * rng.uniform(0.2, 0.3) / 2
        r = s / 2
        d.polygon(poly([(-r, -arm), (r, -arm), (r, arm), (-r, arm)], angle), fill=255)
        d.polygon(poly([(-arm, -r), (arm, -r), (arm, r), (-arm, r)], angle), fill=255)
    elif kind == "line":
        t = max(SUPERSAMPLE * 2, s * rng.uniform(0.06, 0.14)) / 2
        r = s / 2
        d.polygon(poly([(-r, -t), (r, -t), (r, t), (-r, t)], angle), fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return np.asarray(im.resize((side, side), Image.BOX), dtype=np.float32) / 255.0


def _colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the mean of ``under`` (the background below)."""
    mean = under.reshape(-1, 3).mean(axis=0)
    best, best_d = None, -1.0
    for _ in range(20):
        col = rng.integers(0, 256, 3).astype(np.float32)
        dist = float(np.abs(col - mean).sum())
        if dist >= 150:
            return col
        if dist > best_d:
            best, best_d = col, dist
    assert best is not None
    return best


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]], gap: int = 2) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + gap and b[0] < x2 + gap and y1 < b[3] + gap and b[1] < y2 + gap for b in placed)


def make_image(seed: int, index: int) -> ShapeImage:
    """Generate image ``index`` of the project generated from ``seed``."""
    rng = np.random.default_rng([seed, index])
    width, height = SIZES[int(rng.choice(len(SIZES), p=SIZE_WEIGHTS))]
    orientation = int(rng.choice([6, 8])) if rng.random() < EXIF_ROTATED else 1
    img = background(rng, width, height).astype(np.float32)
    n_objects = int(rng.integers(1, 5))
    n_distractors = int(rng.integers(0, 3))
    kinds = [str(rng.choice(LABELS, p=CLASS_WEIGHTS)) for _ in range(n_objects)]
    kinds += [str(rng.choice(DISTRACTORS)) for _ in range(n_distractors)]
    placed: list[tuple[int, int, int, int]] = []
    boxes: list[Box] = []
    distractors: list[str] = []
    max_side = min(width, height) // 2
    for i, kind in enumerate(kinds):
        side = int(round(math.exp(rng.uniform(math.log(MIN_SIDE), math.log(max_side)))))
        spot = None
        for attempt in range(60):
            s = max(MIN_SIDE, side if attempt < 30 else int(side * 0.6))
            x, y = int(rng.integers(0, width - s + 1)), int(rng.integers(0, height - s + 1))
            if not _overlaps((x, y, x + s, y + s), placed):
                spot = (x, y, s)
                break
        if spot is None:
            if i == 0:
                raise AssertionError("the first object always fits")
            continue
        x, y, s = spot
        placed.append((x, y, x + s, y + s))
        mask = shape_mask(kind, s, rng)
        region = img[y : y + s, x : x + s]
        col = _colour(rng, region)
        region[:] = region * (1 - mask[..., None]) + col * mask[..., None]
        if kind in LABELS:
            ys, xs = np.nonzero(mask >= 0.5)
            boxes.append(
                Box(kind, float(x + xs.min()), float(y + ys.min()), float(x + xs.max() + 1), float(y + ys.max() + 1))
            )
        else:
            distractors.append(kind)
    shown = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    if orientation == 1:
        shown.save(buf, format="JPEG", quality=92)
    else:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        shown.transpose(_STORE[orientation]).save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    sample = ShapeImage(
        f"img{index:04d}.jpg", buf.getvalue(), width, height, orientation, tuple(boxes), tuple(distractors)
    )
    if sample.upright().size != (width, height):  # the EXIF round trip is part of the data's definition
        raise AssertionError(f"{sample.name}: EXIF orientation {orientation} does not show {width}x{height}")
    return sample


def make_project(seed: int, n: int) -> list[ShapeImage]:
    """``n`` images, deterministic from ``seed``."""
    return [make_image(seed, i) for i in range(n)]


def summary(images: list[ShapeImage]) -> dict[str, Any]:
    """Counts that describe a generated set: objects per class, distractors, sizes, orientations."""
    per_class = {label: sum(b.label == label for im in images for b in im.boxes) for label in LABELS}
    sides = [max(b.x2 - b.x1, b.y2 - b.y1) for im in images for b in im.boxes]
    total = sum(per_class.values())
    return {
        "images": len(images),
        "objects": total,
        "per_class": per_class,
        "share_per_class": {k: round(v / total, 3) if total else 0.0 for k, v in per_class.items()},
        "distractors": sum(len(im.distractors) for im in images),
        "exif_rotated": sum(im.orientation != 1 for im in images),
        "sizes": {f"{w}x{h}": sum((im.width, im.height) == (w, h) for im in images) for w, h in SIZES},
        "object_side_px": {"min": min(sides), "max": max(sides)} if sides else {},
    }
