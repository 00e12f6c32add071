"""``segment``: PolygonLabels and BrushLabels as polygons (``cls x1 y1 x2 y2 ...``; a brush mask
gives one line per connected part); predictions are polygons or brush masks, as the label
config draws them (``spec.region_type``)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from labelloop.ls_json import Region
from labelloop.task_types.base import LabelLine, Lines, TaskType
from labelloop.task_types.brush import brush_to_mask
from labelloop.task_types.geometry import (
    MIN_BRUSH_AREA_PX,
    MIN_POLYGON_AREA_PX,
    PREDICTION_POLYGON_EPSILON_PX,
    as_array,
    clip_polygon,
    mask_to_polygons,
    polygon_area,
    polygons_to_mask,
    unletterbox,
    yolo_numbers,
)
from labelloop.task_types.outputs import Instances, ModelOutputs, RegionsOf
from labelloop.task_types.regions import describe


class Segment(TaskType):
    name = "segment"
    control_tags = ("PolygonLabels", "BrushLabels")
    region_types: ClassVar[tuple[str, ...]] = ("polygonlabels", "brushlabels")
    metrics_attr: ClassVar[str] = "seg"

    def region_lines(self, region: Region, cls: int, width: int, height: int) -> Lines:
        if region.get("type") == "polygonlabels":
            return self._polygon_lines(region, cls, width, height)
        return self._brush_lines(region, cls, width, height)

    def _polygon_lines(self, region: Region, cls: int, width: int, height: int) -> Lines:
        points = as_array(region["value"]["points"]).reshape(-1, 2) / 100
        if len(points) < 3:
            return [], [f"{describe(region)}: degenerate polygon ({len(points)} points)"]
        clipped = clip_polygon(points)
        if len(clipped) < 3 or polygon_area(clipped, width, height) < MIN_POLYGON_AREA_PX:
            return [], [
                f"{describe(region)}: degenerate polygon (under 3 distinct points or {MIN_POLYGON_AREA_PX:g} px^2 "
                "after clipping to the image)"
            ]
        return [f"{cls} {yolo_numbers(clipped.ravel())}"], []

    def _brush_lines(self, region: Region, cls: int, width: int, height: int) -> Lines:
        W0, H0 = int(region["original_width"]), int(region["original_height"])
        mask = brush_to_mask(region["value"], W0, H0)
        min_px = MIN_BRUSH_AREA_PX * (W0 * H0) / max(1.0, float(width) * float(height))
        polygons, specks = mask_to_polygons(mask, min_area_px=min_px)
        lines: list[str] = []
        thin = 0
        for poly in polygons:
            if len(poly) < 3 or polygon_area(poly, width, height) < MIN_POLYGON_AREA_PX:
                thin += 1
                continue
            lines.append(f"{cls} {yolo_numbers(np.clip(poly, 0.0, 1.0).ravel())}")
        if specks or thin:
            return lines, [
                f"{describe(region)}: {specks + thin} brush part(s) dropped ({specks} under "
                f"{MIN_BRUSH_AREA_PX:g} px, {thin} without area)"
            ]
        return lines, [] if lines else [f"{describe(region)}: empty brush mask"]

    def line_to_regions(self, line: LabelLine, width: int, height: int) -> list[Region]:
        if len(line.nums) < 6 or len(line.nums) % 2:
            raise ValueError(f"a segment line needs at least 3 points: {line.text!r}")
        return [self.make.segment(line.label, [line.nums.reshape(-1, 2)], None, width, height, None)]

    def instance_regions(self, found: Instances) -> RegionsOf:
        """Under a ``brushlabels`` spec one brush region per instance (its mask unletterboxed, else
        its polygon filled; none when empty); else a polygon region per polygon: ``polygons_xyn[i]``
        clipped, or each part traced from the mask."""
        masks, polygons_xyn = found.outputs.get("masks"), found.outputs.get("polygons_xyn")
        n, W, H = len(found), found.width, found.height
        if masks is None and polygons_xyn is None:
            raise ValueError("segment predictions need masks or polygons_xyn")
        m = None if masks is None else as_array(masks, np.float32)
        if m is not None:
            m = m.reshape(-1, *m.shape[-2:])
            if len(m) != n:
                raise ValueError(f"{len(m)} masks for {n} classes")
        if polygons_xyn is not None and len(polygons_xyn) != n:
            raise ValueError(f"{len(polygons_xyn)} polygons for {n} classes")

        def regions(i: int, label: str) -> list[Region]:
            mask = None if m is None else unletterbox(m[i], W, H)
            if self.spec.region_type == "brushlabels":
                if mask is None:
                    assert polygons_xyn is not None
                    mask = polygons_to_mask([polygons_xyn[i]], W, H)
                return [self.make.segment(label, [], mask, W, H, found.score(i))] if mask.any() else []
            if polygons_xyn is not None:
                polys = [clip_polygon(polygons_xyn[i])]
            else:
                assert mask is not None
                polys = mask_to_polygons(mask, MIN_BRUSH_AREA_PX, PREDICTION_POLYGON_EPSILON_PX)[0]
            return [
                self.make.segment(label, [poly], None, W, H, found.score(i))
                for poly in polys
                if len(poly) >= 3 and polygon_area(poly, W, H) > 0
            ]

        return regions

    def outputs(self, res: Any) -> ModelOutputs | None:
        outputs = super().outputs(res)
        if outputs is None or getattr(res, "masks", None) is None:
            return None
        outputs["masks"] = res.masks.data
        return outputs
