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

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from labelloop.ls_json import Region
from labelloop.task_types.base import TaskType
from labelloop.task_types.classify import Classify
from labelloop.task_types.detect import Detect
from labelloop.task_types.obb import Obb
from labelloop.task_types.pose import Pose
from labelloop.task_types.segment import Segment
from labelloop.task_types.spec import TrainSpec
from labelloop.task_types.video import REGION_TYPE as VIDEO_REGION_TYPE
from labelloop.task_types.video import VideoClip, VideoRectangles

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


class _VideoBySpec:
    """``VideoRectangles`` for callers that pass the spec with each call (``labelloop.dataset.video``,
    ``labelloop.serving.video``); new code binds once with ``video_task_type``."""

    def frame_lines(
        self,
        result: Sequence[Region],
        spec: TrainSpec,
        class_ids: Mapping[str, int],
        frames: Iterable[int],
        width: int,
        height: int,
    ) -> tuple[dict[int, list[str]], list[str]]:
        """``VideoRectangles(spec).frame_lines(...)``."""
        return VideoRectangles(spec).frame_lines(result, class_ids, frames, width, height)

    def track_region(
        self,
        spec: TrainSpec,
        label: str,
        boxes: Mapping[int, Mapping[str, float]],
        score: float | None,
        tolerance: float,
        rate: float,
        frames: int,
        duration_s: float,
        width: int,
        height: int,
    ) -> dict[str, Any] | None:
        """``VideoRectangles(spec).track_region(...)`` of a ``VideoClip(rate, frames, duration_s, width, height)``."""
        clip = VideoClip(rate, frames, duration_s, width, height)
        # Typed as the caller's region lists are (``labelloop.serving.video`` keeps plain dicts).
        return cast("dict[str, Any] | None", VideoRectangles(spec).track_region(label, boxes, score, tolerance, clip))


VIDEO = _VideoBySpec()

__all__ = ["TASK_TYPES", "VIDEO", "TaskType", "task_class", "task_type", "video_task_type"]
