"""What labelloop trains (``TrainSpec``) and the rectangle conversions every box-based task
type shares (pure functions).

Label Studio regions use percent-of-image coordinates: ``x, y`` is the top-left corner,
``width, height`` the size, all in [0, 100] of ``original_width/original_height``, and
``rotation`` is clockwise degrees around the top-left corner
(https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks).
YOLO detection labels are ``class cx cy w h`` normalised to [0, 1]
(https://docs.ultralytics.com/datasets/detect/).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

# A box thinner than this (in pixels) after clamping is degenerate and dropped.
MIN_BOX_PX = 1.0


@dataclass(frozen=True)
class TrainSpec:
    """What to train from a label config: the control tag(s) on one Image and the task type.

    Attributes:
        task: the Ultralytics task: ``detect`` (RectangleLabels; becomes ``obb`` when regions
            are rotated or the project asks for it), ``segment`` (PolygonLabels, BrushLabels),
            ``pose`` (KeyPointLabels + RectangleLabels on the same Image), ``classify``
            (single-choice Choices on an Image).
        region_type: the result ``type`` of the trained control tag (``rectanglelabels``,
            ``polygonlabels``, ``brushlabels``, ``choices``); for pose the box tag's.
        from_name: the trained control tag's ``name`` (for pose: the RectangleLabels tag).
        to_name: the Image object tag's ``name``.
        value_key: the task data key holding the image URL (``$image`` -> ``image``).
        labels: label (or choice) values in config order.
        keypoint_from_name: pose only: the KeyPointLabels tag's ``name``.
        keypoint_labels: pose only: keypoint label values in config order; ``kpt_shape`` is
            ``[len(keypoint_labels), 3]``.
    """

    task: str
    region_type: str
    from_name: str
    to_name: str
    value_key: str
    labels: tuple[str, ...]
    keypoint_from_name: str | None = None
    keypoint_labels: tuple[str, ...] = ()

    def with_task(self, task: str) -> TrainSpec:
        """The same tags trained as another task (``detect`` -> ``obb``)."""
        return replace(self, task=task)

    @property
    def control_tags(self) -> tuple[str, ...]:
        """``from_name`` of every control tag this spec reads."""
        return (self.from_name,) + ((self.keypoint_from_name,) if self.keypoint_from_name else ())


def rectangle_to_yolo(
    value: Mapping[str, Any], original_width: float, original_height: float
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


def in_frame(box: Mapping[str, float]) -> dict[str, float]:
    """A box in percent (``x, y, width, height``) clipped to the frame or image (``xyxy_to_rectangle``
    over 100 x 100): Label Studio 1.23.2 refuses a region value over 100 (label-studio-sdk's
    ``RectangleValue``, ``VideoRectangleSequenceValue``), and a smoothed or fitted box can run past
    the border its object touches.

    Returns:
        ``{"x", "y", "width", "height", "rotation"}``, rotation 0.
    """
    x, y = float(box["x"]), float(box["y"])
    return xyxy_to_rectangle((x, y, x + float(box["width"]), y + float(box["height"])), 100, 100)
