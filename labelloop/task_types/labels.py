"""Label config parsing: which control tag labelloop trains, and as which Ultralytics task.

The control tags each task type trains come from the task types themselves
(``labelloop.task_types``: ``TaskType.control_tags``); ``TrainSpec`` and the rectangle
conversions live in ``labelloop.task_types.spec`` (re-exported here).
"""

from __future__ import annotations

from typing import Any

from labelloop.errors import LabelConfigError
from labelloop.task_types import TASK_TYPES
from labelloop.task_types.spec import MIN_BOX_PX, TrainSpec, rectangle_to_yolo, xyxy_to_rectangle
from labelloop.task_types.video_labels import video_spec

__all__ = [
    "MIN_BOX_PX",
    "TASKS",
    "TrainSpec",
    "parse_detection_config",
    "parse_label_config",
    "rectangle_to_yolo",
    "xyxy_to_rectangle",
]

TASKS = tuple(TASK_TYPES)

# The task a control tag trains on its own (a task type that is derived from another, obb, or
# pairs two tags, pose, is chosen below), and the region ``type`` its results carry.
_TASK_OF = {tag: kind.name for kind in TASK_TYPES.values() if kind.trained_alone for tag in kind.control_tags}
_REGION_TYPE = {tag: tag.lower() for kind in TASK_TYPES.values() for tag in kind.control_tags}


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
    video = video_spec(interface, control_tag)  # VideoRectangle on a Video: labelloop.task_types.video
    if video is not None:
        return video
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
