"""Label Studio result regions, read and made for one ``TrainSpec`` (pure functions).

A region is one item of an annotation's or prediction's ``result``
(https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks,
https://labelstud.io/guide/predictions): ``id``, ``from_name`` (the control tag), ``to_name`` (the
Image tag), ``type``, ``original_width``/``original_height`` in pixels and a ``value`` in percent of
the image (``labelloop.ls_json``). ``RegionBuilder`` binds the tag names once, as the label config
gives them, so the task types pass only geometry and labels.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from labelloop.ls_json import Region, RegionValue
from labelloop.task_types.brush import mask_to_brush
from labelloop.task_types.geometry import polygons_to_mask
from labelloop.task_types.spec import MIN_BOX_PX, TrainSpec, xyxy_to_rectangle

# ``value.width`` of predicted keypoint regions (percent of the image width; how big LS draws them).
KEYPOINT_WIDTH = 0.5


def region_id() -> str:
    """A new region id the way Label Studio makes them: 10 hex characters."""
    return uuid.uuid4().hex[:10]


def describe(region: Mapping[str, Any]) -> str:
    """``region <id> (<type>)``: how a dropped region's reason names it."""
    return f"region {region.get('id')} ({region.get('type')})"


def first_label(region: Mapping[str, Any], key: str) -> tuple[str | None, str | None]:
    """The first label of ``value[key]`` (e.g. ``rectanglelabels``, ``choices``) of a region read from
    Label Studio: ``(label, None)``, or ``(None, reason)`` when the value is no object, the list is
    missing or empty, or it is not a list."""
    value = region.get("value")
    if not isinstance(value, Mapping):
        return None, "malformed value (not an object)"
    names = value.get(key)
    if not names:
        return None, "no label"
    if not isinstance(names, list):
        return None, f"malformed value ({key} is not a list)"
    return str(names[0]), None


def rectangle_value(rect: Mapping[str, float]) -> RegionValue:
    """A rectangle's ``{"x", "y", "width", "height", "rotation"}`` (percent, degrees) as a region value."""
    return RegionValue(x=rect["x"], y=rect["y"], width=rect["width"], height=rect["height"], rotation=rect["rotation"])


def big_enough(rect: RegionValue, width: int, height: int) -> bool:
    """Whether a rectangle value (percent) is at least ``MIN_BOX_PX`` wide and high on a
    ``width`` x ``height`` pixel image."""
    return rect["width"] / 100 * width >= MIN_BOX_PX and rect["height"] / 100 * height >= MIN_BOX_PX


class RegionBuilder:
    """Makes the regions of one spec's control tags: ``from_name`` is ``spec.from_name`` (keypoints:
    ``spec.keypoint_from_name``), ``to_name`` is ``spec.to_name``; a segment spec's regions are
    polygons or brush masks as ``spec.region_type`` says."""

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec

    def region(
        self, rtype: str, value: RegionValue, width: int, height: int, score: float | None, from_name: str | None = None
    ) -> Region:
        """A region with a new ``id``, ``image_rotation`` 0 and ``score`` when not None."""
        region = Region(
            id=region_id(),
            from_name=from_name or self.spec.from_name,
            to_name=self.spec.to_name,
            type=rtype,
            original_width=int(width),
            original_height=int(height),
            image_rotation=0,
            value=value,
        )
        if score is not None:
            region["score"] = float(score)
        return region

    def rectangle(self, rect: RegionValue, label: str, width: int, height: int, score: float | None) -> Region:
        """A ``rectanglelabels`` region of a rectangle value (``x, y, width, height, rotation``)."""
        value = rect.copy()
        value["rectanglelabels"] = [label]
        return self.region("rectanglelabels", value, width, height, score)

    def box(self, xyxy: Any, label: str, width: int, height: int, score: float | None) -> Region | None:
        """The ``rectanglelabels`` region of a pixel box ``(x1, y1, x2, y2)`` clamped to the image, or
        None when it is under ``MIN_BOX_PX`` wide or high."""
        rect = rectangle_value(xyxy_to_rectangle(tuple(xyxy), width, height))
        return self.rectangle(rect, label, width, height, score) if big_enough(rect, width, height) else None

    def yolo_box(self, nums: npt.NDArray[np.float64], label: str, width: int, height: int) -> Region:
        """The ``rectanglelabels`` region (no score) of a YOLO ``cx cy w h`` box (normalised, the
        first four of ``nums``)."""
        W, H = float(width), float(height)
        cx, cy, w, h = nums[:4]
        xyxy = ((cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H)
        return self.rectangle(rectangle_value(xyxy_to_rectangle(xyxy, W, H)), label, int(width), int(height), None)

    def keypoint(self, x: float, y: float, k: int, parent: str, width: int, height: int, score: float | None) -> Region:
        """A ``keypointlabels`` region of keypoint ``k`` (``spec.keypoint_labels[k]``) at normalised
        ``x, y``, drawn ``KEYPOINT_WIDTH`` wide, whose ``parentID`` is its box's id."""
        value = RegionValue(
            x=float(x) * 100, y=float(y) * 100, width=KEYPOINT_WIDTH, keypointlabels=[self.spec.keypoint_labels[k]]
        )
        region = self.region("keypointlabels", value, width, height, score, from_name=self.spec.keypoint_from_name)
        region["parentID"] = parent
        return region

    def segment(
        self,
        label: str,
        polygons: list[npt.NDArray[np.float64]],
        mask: npt.NDArray[np.bool_] | None,
        width: int,
        height: int,
        score: float | None,
    ) -> Region:
        """A ``polygonlabels`` region of ``polygons[0]`` ((P, 2) normalised), or under a
        ``brushlabels`` spec a brush region of ``mask`` (or of the polygons filled)."""
        if self.spec.region_type == "brushlabels":
            if mask is None:
                mask = polygons_to_mask(polygons, width, height)
            value = mask_to_brush(mask)
            value["brushlabels"] = [label]
            return self.region("brushlabels", value, width, height, score)
        points = [[float(x) * 100, float(y) * 100] for x, y in polygons[0]]
        value = RegionValue(points=points, closed=True, polygonlabels=[label])
        return self.region("polygonlabels", value, width, height, score)
