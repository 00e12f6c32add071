"""Label Studio's JSON, typed: tasks, annotations, predictions and their result regions.

Follows Label Studio's JSON format of annotated tasks
(https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks) and the region
``value`` of each control tag (https://labelstud.io/tags/): positions are percent of the image
(``x``, ``y``, ``width``, ``height``, ``points``), ``rotation`` degrees clockwise about the
top-left corner, ``original_width``/``original_height`` pixels. Video regions
(``VideoRectangle``) hold ``sequence`` keyframes instead (Label Studio 1.23.2
``web/libs/editor/src/regions/VideoRectangleRegion.js``).

Everything read from Label Studio is untrusted: these types say what the fields are when
present, not that they are (``total=False``); readers check what they use.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Keyframe(TypedDict, total=False):
    """One keyframe of a ``VideoRectangle`` region's ``sequence`` (frame numbers start at 1)."""

    frame: int
    time: float
    x: float
    y: float
    width: float
    height: float
    rotation: float
    enabled: bool


class RegionValue(TypedDict, total=False):
    """A region's ``value``: the geometry of its control tag and its labels (one key per tag kind,
    e.g. ``rectanglelabels``, ``polygonlabels``, ``choices``, ``labels`` for video)."""

    x: float
    y: float
    width: float
    height: float
    rotation: float
    points: list[list[float]]
    closed: bool
    format: str
    rle: list[int]
    brushlabels: list[str]
    rectanglelabels: list[str]
    polygonlabels: list[str]
    keypointlabels: list[str]
    choices: list[str]
    labels: list[str]
    sequence: list[Keyframe]
    framesCount: int
    duration: float


class Region(TypedDict, total=False):
    """One item of an annotation's or prediction's ``result``."""

    id: str
    type: str
    from_name: str
    to_name: str
    value: RegionValue
    score: float
    origin: str
    parentID: str
    original_width: int
    original_height: int
    image_rotation: float


class Annotation(TypedDict, total=False):
    """One annotation of a task (``was_cancelled``: skipped; ``ground_truth``: marked as such)."""

    id: int
    result: list[Region]
    was_cancelled: bool
    ground_truth: bool
    created_at: str
    updated_at: str
    completed_by: int | dict[str, Any]
    lead_time: float
    task: int
    project: int


class Prediction(TypedDict, total=False):
    """One prediction of a task: what ``/predict`` answers and pre-annotation imports."""

    id: int
    result: list[Region]
    score: float
    model_version: str
    cluster: int
    task: int


class Task(TypedDict, total=False):
    """One task as Label Studio exports it or sends it to ``/predict`` (``data`` holds the object
    tags' values, e.g. ``{"image": "/data/upload/1/a.jpg"}``: user data, any JSON)."""

    id: int
    data: dict[str, Any]
    annotations: list[Annotation]
    predictions: list[Prediction]
    project: int
    updated_at: str
    created_at: str
    inner_id: int
    total_annotations: int
    cancelled_annotations: int
