"""Label config parsing and Label Studio <-> YOLO region conversion (pure functions).

Label Studio regions use percent-of-image coordinates: ``x, y`` is the top-left corner,
``width, height`` the size, all in [0, 100] of ``original_width/original_height``, and
``rotation`` is clockwise degrees around the top-left corner
(https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks).
YOLO detection labels are ``class cx cy w h`` normalised to [0, 1]
(https://docs.ultralytics.com/datasets/detect/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from service.errors import LabelConfigError

# A box thinner than this (in pixels) after clamping is degenerate and dropped.
MIN_BOX_PX = 1.0


@dataclass(frozen=True)
class DetectionSpec:
    """What to train from a label config: one RectangleLabels control tag on one Image.

    Attributes:
        from_name: the RectangleLabels control tag's ``name``.
        to_name: the Image object tag's ``name``.
        value_key: the task data key holding the image URL (``$image`` -> ``image``).
        labels: label values in config order; the class id is the index.
    """

    from_name: str
    to_name: str
    value_key: str
    labels: tuple[str, ...]

    @property
    def task(self) -> str:
        """The Ultralytics task name."""
        return "detect"


def parse_detection_config(label_config: str) -> DetectionSpec:
    """Pick the RectangleLabels-on-Image control tag of a label config.

    Uses label-studio-sdk's ``LabelInterface``.

    Raises:
        LabelConfigError: the XML does not parse, has no RectangleLabels tag on an Image,
            several of them, or no labels.
    """
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises several XML error types
        raise LabelConfigError(f"label config does not parse: {exc}") from None
    images = {o.name: o for o in interface.objects if o.tag == "Image"}
    candidates = [c for c in interface.controls if c.tag == "RectangleLabels" and any(n in images for n in c.to_name)]
    if not candidates:
        raise LabelConfigError("label config has no RectangleLabels control tag on an Image object tag")
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise LabelConfigError(f"label config has several RectangleLabels control tags ({names}); keep one")
    control = candidates[0]
    to_name = next(n for n in control.to_name if n in images)
    labels = tuple(control.labels or ())
    if not labels:
        raise LabelConfigError(f"RectangleLabels '{control.name}' has no Label values")
    value = images[to_name].value or ""
    return DetectionSpec(control.name, to_name, value.lstrip("$"), labels)


def rectangle_to_yolo(
    value: dict[str, Any], original_width: float, original_height: float
) -> tuple[float, float, float, float] | None:
    """Convert a Label Studio rectangle to a normalised YOLO box.

    A rotated rectangle becomes the axis-aligned box around its corners. The box is clamped
    to the image.

    Args:
        value: the region's ``value`` with ``x, y, width, height`` in percent and an
            optional ``rotation`` in degrees.
        original_width, original_height: image size in pixels.

    Returns:
        ``(cx, cy, w, h)`` in [0, 1], or None when the clamped box is degenerate
        (narrower than ``MIN_BOX_PX`` pixels).
    """
    W, H = float(original_width), float(original_height)
    x = float(value["x"]) / 100 * W
    y = float(value["y"]) / 100 * H
    w = float(value["width"]) / 100 * W
    h = float(value["height"]) / 100 * H
    rotation = float(value.get("rotation") or 0.0)
    if rotation % 360:
        a = math.radians(rotation)
        cos, sin = math.cos(a), math.sin(a)
        corners = [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        xs = [c[0] for c in corners]
        ys = [c[1] for c in corners]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    else:
        x1, y1, x2, y2 = x, y, x + w, y + h
    x1, x2 = max(0.0, min(x1, W)), max(0.0, min(x2, W))
    y1, y2 = max(0.0, min(y1, H)), max(0.0, min(y2, H))
    if x2 - x1 < MIN_BOX_PX or y2 - y1 < MIN_BOX_PX:
        return None
    return ((x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H)


def xyxy_to_rectangle(
    box: tuple[float, float, float, float], original_width: float, original_height: float
) -> dict[str, float]:
    """Convert a pixel box ``(x1, y1, x2, y2)`` to Label Studio rectangle percent values.

    Returns:
        ``{"x", "y", "width", "height", "rotation"}`` in percent of the image, rotation 0.
    """
    W, H = float(original_width), float(original_height)
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = max(0.0, min(x1, W)), max(0.0, min(x2, W))
    y1, y2 = max(0.0, min(y1, H)), max(0.0, min(y2, H))
    return {
        "x": x1 / W * 100,
        "y": y1 / H * 100,
        "width": (x2 - x1) / W * 100,
        "height": (y2 - y1) / H * 100,
        "rotation": 0.0,
    }


def annotation_to_yolo_lines(
    result: list[dict[str, Any]], spec: DetectionSpec, width: int, height: int
) -> tuple[list[str], list[str]]:
    """Turn one annotation's ``result`` into YOLO label lines.

    Regions of other control tags are ignored. Sizes come from the image itself (``width``,
    ``height``); Label Studio's ``original_width/height`` only cross-check them.

    Returns:
        ``(lines, dropped)``: label lines ``"cls cx cy w h"`` and a reason per dropped region.
    """
    lines: list[str] = []
    dropped: list[str] = []
    for region in result:
        if region.get("from_name") != spec.from_name or region.get("type", "rectanglelabels") != "rectanglelabels":
            continue
        value = region.get("value") or {}
        names = value.get("rectanglelabels") or []
        if not names:
            dropped.append(f"region {region.get('id')}: no label")
            continue
        if names[0] not in spec.labels:
            dropped.append(f"region {region.get('id')}: label {names[0]!r} not in label config")
            continue
        try:
            box = rectangle_to_yolo(value, width, height)
        except (KeyError, TypeError, ValueError) as exc:
            dropped.append(f"region {region.get('id')}: malformed value ({exc})")
            continue
        if box is None:
            dropped.append(f"region {region.get('id')}: degenerate box")
            continue
        cls = spec.labels.index(names[0])
        lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in box))
    return lines, dropped
