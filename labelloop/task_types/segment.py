"""``segment``: PolygonLabels and BrushLabels as polygons (``cls x1 y1 x2 y2 ...``; a brush mask
gives one line per connected part); predictions are polygons or brush masks, as the label
config draws them (``spec.region_type``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from labelloop.task_types.base import Rows, Score, TaskType
from labelloop.task_types.geometry import (
    MIN_BRUSH_AREA_PX,
    MIN_POLYGON_AREA_PX,
    PREDICTION_POLYGON_EPSILON_PX,
    _fmt,
    _np,
    _segment_region,
    _unletterbox,
    _where,
    brush_to_mask,
    clip_polygon,
    mask_to_polygons,
    polygon_area,
    polygons_to_mask,
)
from labelloop.task_types.spec import TrainSpec


class Segment(TaskType):
    name = "segment"
    control_tags = ("PolygonLabels", "BrushLabels")
    region_types: ClassVar[tuple[str, ...]] = ("polygonlabels", "brushlabels")
    metrics_attr: ClassVar[str] = "seg"

    def region_lines(
        self,
        region: dict[str, Any],
        rtype: str,
        cls: int,
        width: int,
        height: int,
        lines: list[str],
        dropped: list[str],
    ) -> None:
        where = _where(region)
        value = region["value"]
        if rtype == "polygonlabels":
            points = _np(value["points"]).reshape(-1, 2) / 100
            if len(points) < 3:
                dropped.append(f"{where}: degenerate polygon ({len(points)} points)")
                return
            clipped = clip_polygon(points)
            if len(clipped) < 3 or polygon_area(clipped, width, height) < MIN_POLYGON_AREA_PX:
                dropped.append(
                    f"{where}: degenerate polygon (under 3 distinct points or {MIN_POLYGON_AREA_PX:g} px^2 "
                    "after clipping to the image)"
                )
                return
            lines.append(f"{cls} {_fmt(clipped.ravel())}")
            return
        lines_before = len(lines)
        W0, H0 = int(region["original_width"]), int(region["original_height"])
        mask = brush_to_mask(value, W0, H0)
        min_px = MIN_BRUSH_AREA_PX * (W0 * H0) / max(1.0, float(width) * float(height))
        polygons, specks = mask_to_polygons(mask, min_area_px=min_px)
        thin = 0
        for poly in polygons:
            if len(poly) < 3 or polygon_area(poly, width, height) < MIN_POLYGON_AREA_PX:
                thin += 1
                continue
            lines.append(f"{cls} {_fmt(np.clip(poly, 0.0, 1.0).ravel())}")
        if specks or thin:
            dropped.append(
                f"{where}: {specks + thin} brush part(s) dropped ({specks} under {MIN_BRUSH_AREA_PX:g} px, "
                f"{thin} without area)"
            )
        if len(lines) == lines_before and not (specks or thin):
            dropped.append(f"{where}: empty brush mask")

    def line_to_regions(
        self, nums: npt.NDArray[np.float64], label: str, spec: TrainSpec, width: int, height: int, line: str
    ) -> list[dict[str, Any]]:
        if len(nums) < 6 or len(nums) % 2:
            raise ValueError(f"a segment line needs at least 3 points: {line!r}")
        return [_segment_region(spec, label, [nums.reshape(-1, 2)], None, width, height, None)]

    def predictions_to_regions(
        self,
        spec: TrainSpec,
        names: Mapping[int, str],
        width: int,
        height: int,
        cls: npt.NDArray[np.int_],
        score: Score,
        rows: Rows,
        arrays: dict[str, Any],
    ) -> list[dict[str, Any]]:
        masks, polygons_xyn = arrays.get("masks"), arrays.get("polygons_xyn")
        n = len(cls)
        if masks is None and polygons_xyn is None:
            raise ValueError("segment predictions need masks or polygons_xyn")
        m = None if masks is None else _np(masks, np.float32)
        if m is not None:
            m = m.reshape(-1, *m.shape[-2:])
            if len(m) != n:
                raise ValueError(f"{len(m)} masks for {n} classes")
        if polygons_xyn is not None and len(polygons_xyn) != n:
            raise ValueError(f"{len(polygons_xyn)} polygons for {n} classes")
        regions: list[dict[str, Any]] = []
        for i in range(n):
            label = names.get(int(cls[i]))
            if label is None or label not in spec.labels:
                continue
            mask = None if m is None else _unletterbox(m[i], width, height)
            if spec.region_type == "brushlabels":
                if mask is None:
                    assert polygons_xyn is not None
                    mask = polygons_to_mask([polygons_xyn[i]], width, height)
                if mask.any():
                    regions.append(_segment_region(spec, label, [], mask, width, height, score(i)))
                continue
            if polygons_xyn is not None:
                polys = [clip_polygon(polygons_xyn[i])]
            else:
                assert mask is not None
                polys = mask_to_polygons(mask, MIN_BRUSH_AREA_PX, PREDICTION_POLYGON_EPSILON_PX)[0]
            for poly in polys:
                if len(poly) >= 3 and polygon_area(poly, width, height) > 0:
                    regions.append(_segment_region(spec, label, [poly], None, width, height, score(i)))
        return regions

    def results_arrays(self, res: Any, spec: TrainSpec) -> dict[str, Any] | None:
        arrays = super().results_arrays(res, spec)
        if arrays is None or getattr(res, "masks", None) is None:
            return None
        arrays["masks"] = res.masks.data
        return arrays
