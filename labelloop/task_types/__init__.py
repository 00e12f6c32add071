"""The Ultralytics task types labelloop trains, one module each behind ``base.TaskType``, found
through one registry: adding a control tag is one new module here (and its tests).

==========  =====================================  ============================
task        Label Studio control tags              module
==========  =====================================  ============================
detect      RectangleLabels                        ``task_types/detect.py``
obb         RectangleLabels (rotated)              ``task_types/obb.py``
segment     PolygonLabels, BrushLabels             ``task_types/segment.py``
pose        RectangleLabels + KeyPointLabels       ``task_types/pose.py``
classify    Choices (single)                       ``task_types/classify.py``
detect      VideoRectangle + Labels on a Video     ``task_types/video.py``
==========  =====================================  ============================

``task_type(spec)`` binds a spec's task type to it once (its methods then take the data only);
``task_class(name)`` is the class, for what needs no spec (dataset layout, validation metrics).
The video type trains Ultralytics ``detect`` too, so it is found by its region type
(``video_task_type``), not in ``TASK_TYPES`` (keyed by Ultralytics task).
"""

from __future__ import annotations

from labelloop.task_types.base import TaskType
from labelloop.task_types.classify import Classify
from labelloop.task_types.detect import Detect
from labelloop.task_types.obb import Obb
from labelloop.task_types.pose import Pose
from labelloop.task_types.segment import Segment
from labelloop.task_types.spec import TrainSpec
from labelloop.task_types.video import REGION_TYPE as VIDEO_REGION_TYPE
from labelloop.task_types.video import VideoRectangles

TASK_TYPES: dict[str, type[TaskType]] = {t.name: t for t in (Detect, Obb, Segment, Pose, Classify)}


def task_class(name: str) -> type[TaskType]:
    """The task type class of an Ultralytics task name.

    Raises:
        ValueError: labelloop does not train that task.
    """
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (labelloop trains {', '.join(TASK_TYPES)})") from None


def task_type(spec: TrainSpec) -> TaskType:
    """The task type of ``spec.task``, bound to ``spec``.

    Raises:
        ValueError: labelloop does not train that task.
    """
    return task_class(spec.task)(spec)


def video_task_type(spec: TrainSpec) -> VideoRectangles | None:
    """The video task type bound to ``spec`` when it trains VideoRectangle tracks, else None."""
    return VideoRectangles(spec) if spec.region_type == VIDEO_REGION_TYPE else None


__all__ = ["TASK_TYPES", "TaskType", "task_class", "task_type", "video_task_type"]
