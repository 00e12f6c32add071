"""Generated images with known boxes, for the demo project, tests and benchmarks.

Each image is uniform noise with 1-3 filled shapes: red squares ("square") and blue discs
("disc"). Nothing is downloaded.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

LABELS = ("square", "disc")


def rectangle_config(labels: tuple[str, ...]) -> str:
    """A Label Studio label config: ``RectangleLabels`` ``label`` with ``labels`` on ``Image`` ``image``."""
    return (
        '<View><Image name="image" value="$image"/>'
        '<RectangleLabels name="label" toName="image">'
        + "".join(f'<Label value="{name}"/>' for name in labels)
        + "</RectangleLabels></View>"
    )


LABEL_CONFIG = rectangle_config(LABELS)


@dataclass(frozen=True)
class Sample:
    """One generated image.

    Attributes:
        png: the PNG bytes.
        width, height: image size in pixels.
        boxes: ``(label, x, y, w, h)`` in pixels, top-left origin.
    """

    png: bytes
    width: int
    height: int
    boxes: tuple[tuple[str, int, int, int, int], ...]

    def ls_result(self, from_name: str = "label", to_name: str = "image") -> list[dict[str, object]]:
        """The boxes as a Label Studio annotation ``result`` (percent coordinates)."""
        return [
            {
                "id": f"r{i}",
                "from_name": from_name,
                "to_name": to_name,
                "type": "rectanglelabels",
                "original_width": self.width,
                "original_height": self.height,
                "image_rotation": 0,
                "value": {
                    "x": x / self.width * 100,
                    "y": y / self.height * 100,
                    "width": w / self.width * 100,
                    "height": h / self.height * 100,
                    "rotation": 0,
                    "rectanglelabels": [label],
                },
            }
            for i, (label, x, y, w, h) in enumerate(self.boxes)
        ]


def make_sample(seed: int, width: int = 256, height: int = 192) -> Sample:
    """Generate one image deterministically from ``seed``."""
    rng = random.Random(seed)
    noise = bytes(rng.randrange(256) for _ in range(width * height * 3))
    im = Image.frombytes("RGB", (width, height), noise)
    boxes = draw_shapes(im, rng)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return Sample(buf.getvalue(), width, height, boxes)


def draw_shapes(im: Image.Image, rng: random.Random) -> tuple[tuple[str, int, int, int, int], ...]:
    """Draw 1-3 red squares / blue discs onto ``im``; returns ``(label, x, y, w, h)`` in pixels."""
    width, height = im.size
    draw = ImageDraw.Draw(im)
    boxes: list[tuple[str, int, int, int, int]] = []
    for _ in range(rng.randint(1, 3)):
        label = rng.choice(LABELS)
        size = rng.randint(min(width, height) // 5, min(width, height) // 2)
        x = rng.randint(0, width - size)
        y = rng.randint(0, height - size)
        if label == "square":
            draw.rectangle([x, y, x + size - 1, y + size - 1], fill=(230, 30, 30))
        else:
            draw.ellipse([x, y, x + size - 1, y + size - 1], fill=(30, 60, 230))
        boxes.append((label, x, y, size, size))
    return tuple(boxes)
