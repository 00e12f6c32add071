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
==========  =====================================  ============================
"""

from __future__ import annotations

from labelloop.task_types.base import TaskType
from labelloop.task_types.classify import Classify
from labelloop.task_types.detect import Detect
from labelloop.task_types.obb import Obb
from labelloop.task_types.pose import Pose
from labelloop.task_types.segment import Segment

TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (Detect(), Obb(), Segment(), Pose(), Classify())}


def task_type(name: str) -> TaskType:
    """The task type of an Ultralytics task name.

    Raises:
        ValueError: labelloop does not train that task.
    """
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (labelloop trains {', '.join(TASK_TYPES)})") from None


__all__ = ["TASK_TYPES", "TaskType", "task_type"]
