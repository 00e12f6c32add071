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
from dataclasses import dataclass, replace
from typing import Any

from labelloop.errors import LabelConfigError

# A box thinner than this (in pixels) after clamping is degenerate and dropped.
MIN_BOX_PX = 1.0


TASKS = ("detect", "obb", "segment", "pose", "classify")

# Control tags labelloop trains, by tag name -> the region ``type`` they produce in results.
_REGION_TYPE = {
    "RectangleLabels": "rectanglelabels",
    "PolygonLabels": "polygonlabels",
    "BrushLabels": "brushlabels",
    "KeyPointLabels": "keypointlabels",
    "Choices": "choices",
}
_TASK_OF = {"RectangleLabels": "detect", "PolygonLabels": "segment", "BrushLabels": "segment", "Choices": "classify"}


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


def parse_label_config(label_config: str, control_tag: str | None = None, obb: bool = False) -> TrainSpec:
    """Choose what to train from a project's label config, with label-studio-sdk's ``LabelInterface``.

    Trainable units: each RectangleLabels (detect, or obb with ``obb=True``), PolygonLabels
    and BrushLabels (segment), single-choice Choices (classify) on an Image, and a
    KeyPointLabels with a RectangleLabels on the same Image (pose; that RectangleLabels then
    is part of the pose unit). One unit is chosen; with several, ``control_tag`` (the
    ``name`` of one of the control tags, an extra param) picks it: a KeyPointLabels name
    picks pose, its RectangleLabels name picks detect.

    Raises:
        LabelConfigError: the XML does not parse, has no trainable control tag on an Image,
            several without ``control_tag`` (the message lists them), a ``control_tag`` that
            is not trainable, a control tag without labels, a multiple-choice Choices, or a
            KeyPointLabels without a RectangleLabels on its Image.

    Long for its docstring and error messages: the choice of the trained unit is one decision read
    top to bottom.
    """
    from label_studio_sdk.label_interface.interface import LabelInterface

    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises several XML error types
        raise LabelConfigError(f"label config does not parse: {exc}") from None
    images = {o.name: o for o in interface.objects if o.tag == "Image"}

    def image_of(control: Any) -> str | None:
        return next((n for n in control.to_name or () if n in images), None)

    controls = [c for c in interface.controls if c.tag in _REGION_TYPE and image_of(c)]
    units: list[tuple[str, Any, Any]] = []  # (name, main control, keypoint control or None)
    keypoints = [c for c in controls if c.tag == "KeyPointLabels"]
    paired: set[str] = set()
    for kp in keypoints:
        boxes = [c for c in controls if c.tag == "RectangleLabels" and image_of(c) == image_of(kp)]
        if len(boxes) == 1:
            units.append((kp.name, boxes[0], kp))
            if control_tag != boxes[0].name:
                paired.add(boxes[0].name)
        elif control_tag in (None, kp.name):
            raise LabelConfigError(
                f"KeyPointLabels '{kp.name}' needs exactly one RectangleLabels on the same Image for pose "
                f"(found {len(boxes)})"
            )
    for c in controls:
        if c.tag != "KeyPointLabels" and c.name not in paired:
            units.append((c.name, c, None))
    if not units:
        raise LabelConfigError(
            "label config has no trainable control tag on an Image object tag "
            "(RectangleLabels, PolygonLabels, BrushLabels, Choices, or KeyPointLabels with RectangleLabels)"
        )
    if control_tag is not None:
        chosen = [u for u in units if u[0] == control_tag]
        if not chosen:
            names = ", ".join(sorted(u[0] for u in units))
            raise LabelConfigError(f"control_tag '{control_tag}' is not a trainable control tag (one of: {names})")
    elif len(units) > 1:
        names = ", ".join(f"{u[1].tag if u[2] is None else 'KeyPointLabels'} '{u[0]}'" for u in units)
        raise LabelConfigError(
            f"label config has several trainable control tags ({names}); "
            "set the extra param control_tag to the name of the one to train"
        )
    else:
        chosen = units
    _name, control, kp = chosen[0]
    labels = tuple(control.labels or ())
    if not labels:
        raise LabelConfigError(f"{control.tag} '{control.name}' has no Label values")
    if control.tag == "Choices" and str((control.attr or {}).get("choice", "single")).lower() == "multiple":
        raise LabelConfigError(
            f"Choices '{control.name}' allows multiple choices; Ultralytics classification needs one choice per image"
        )
    to_name = image_of(control) or ""
    value_key = (images[to_name].value or "").lstrip("$")
    if kp is not None:
        kp_labels = tuple(kp.labels or ())
        if not kp_labels:
            raise LabelConfigError(f"KeyPointLabels '{kp.name}' has no Label values")
        return TrainSpec("pose", "rectanglelabels", control.name, to_name, value_key, labels, kp.name, kp_labels)
    task = _TASK_OF[control.tag]
    if task == "detect" and obb:
        task = "obb"
    return TrainSpec(task, _REGION_TYPE[control.tag], control.name, to_name, value_key, labels)


def parse_detection_config(label_config: str) -> TrainSpec:
    """``parse_label_config`` for callers that only handle RectangleLabels (detect).

    Raises:
        LabelConfigError: as ``parse_label_config``, or the chosen tag is not RectangleLabels.
    """
    spec = parse_label_config(label_config)
    if spec.task != "detect":
        raise LabelConfigError(f"expected a RectangleLabels control tag, the config trains {spec.task}")
    return spec


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
