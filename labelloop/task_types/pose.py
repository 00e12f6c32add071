"""``pose``: RectangleLabels boxes with KeyPointLabels keypoints (``cls cx cy w h`` then ``x y v``
per keypoint in the label config's order, ``kpt_shape [K, 3]``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from labelloop.task_types.base import Rows, Score, TaskType
from labelloop.task_types.detect import box_region
from labelloop.task_types.geometry import (
    MIN_KEYPOINT_CONF,
    _box_regions,
    _first_label,
    _fmt,
    _keypoint_region,
    _np,
    _where,
)
from labelloop.task_types.spec import MIN_BOX_PX, TrainSpec, rectangle_to_yolo


class Pose(TaskType):
    name = "pose"
    trained_alone = False
    control_tags = ("RectangleLabels", "KeyPointLabels")
    metrics_attr = "pose"

    def data_yaml_extra(self, spec: TrainSpec) -> dict[str, Any]:
        return {"kpt_shape": [len(spec.keypoint_labels), 3]}

    def annotation_to_lines(
        self, result: list[dict[str, Any]], spec: TrainSpec, class_ids: Mapping[str, int], width: int, height: int
    ) -> tuple[list[str], list[str]]:
        return pose_lines(result, spec, class_ids, width, height)

    def line_to_regions(
        self, nums: npt.NDArray[np.float64], label: str, spec: TrainSpec, width: int, height: int, line: str
    ) -> list[dict[str, Any]]:
        if len(nums) < 4:
            raise ValueError(f"a pose line needs cx cy w h: {line!r}")
        box = box_region(nums, label, spec, width, height)
        K = len(spec.keypoint_labels)
        rest = nums[4:]
        if K == 0 or len(rest) not in (2 * K, 3 * K):
            raise ValueError(f"a pose line for {K} keypoints needs {5 + 2 * K} or {5 + 3 * K} fields: {line!r}")
        regions = [box]
        for k, kp in enumerate(rest.reshape(K, -1)):
            visible = kp[2] > 0 if len(kp) == 3 else bool(kp[0] or kp[1])
            if visible:
                regions.append(_keypoint_region(spec, kp[0], kp[1], k, box["id"], width, height, None))
        return regions

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
        W, H, n = width, height, len(cls)
        if not spec.keypoint_from_name:
            raise ValueError("a pose TrainSpec needs keypoint_from_name")
        if arrays.get("boxes_xyxy") is None:
            raise ValueError("pose predictions need boxes_xyxy")
        box_regions, kept = _box_regions(spec, names, W, H, rows(arrays["boxes_xyxy"], "boxes", (4,)), cls, score)
        keypoints_xy, keypoints_conf = arrays.get("keypoints_xy"), arrays.get("keypoints_conf")
        if keypoints_xy is None:
            return box_regions
        kxy = _np(keypoints_xy)
        kxy = kxy.reshape(len(kxy), -1, 2) if kxy.size else kxy.reshape(0, 0, 2)
        if len(kxy) != n:
            raise ValueError(f"{len(kxy)} keypoint sets for {n} classes")
        kconf = None if keypoints_conf is None else _np(keypoints_conf).reshape(n, -1)
        K = min(kxy.shape[1], len(spec.keypoint_labels))
        regions: list[dict[str, Any]] = []
        for box, i in zip(box_regions, kept, strict=True):
            regions.append(box)
            for k in range(K):
                x, y = float(kxy[i, k, 0]), float(kxy[i, k, 1])
                c = None if kconf is None else float(kconf[i, k])
                if (c is not None and c < MIN_KEYPOINT_CONF) or (c is None and x == 0 and y == 0):
                    continue
                if not (0 <= x <= W and 0 <= y <= H):
                    continue
                regions.append(_keypoint_region(spec, x / W, y / H, k, box["id"], W, H, c))
        return regions

    def results_arrays(self, res: Any, spec: TrainSpec) -> dict[str, Any] | None:
        arrays = super().results_arrays(res, spec)
        if arrays is not None and getattr(res, "keypoints", None) is not None:
            arrays.update(keypoints_xy=res.keypoints.xy, keypoints_conf=res.keypoints.conf)
        return arrays


def pose_lines(
    result: list[dict[str, Any]], spec: TrainSpec, class_ids: Mapping[str, int], width: int, height: int
) -> tuple[list[str], list[str]]:
    """YOLO pose lines: rectangles of ``spec.from_name`` are instances; each keypoint of
    ``spec.keypoint_from_name`` belongs to the rectangle its ``parentID`` names, else to the smallest
    rectangle containing it; ``cls cx cy w h`` then ``x y 2`` per keypoint, ``0 0 0`` when missing.

    Long because its two passes (boxes, then the keypoints that belong to them) share the box table.
    """
    if not spec.keypoint_from_name or not spec.keypoint_labels:
        raise ValueError("a pose TrainSpec needs keypoint_from_name and keypoint_labels")
    dropped: list[str] = []
    # Kept boxes: id -> (cls, (cx, cy, w, h), (x1, y1, x2, y2) normalised, keypoints by slot)
    boxes: dict[str, tuple[int, tuple[float, float, float, float], list[tuple[float, float] | None]]] = {}
    dropped_boxes: set[str] = set()
    K = len(spec.keypoint_labels)
    for n, region in enumerate(result):
        if region.get("from_name") != spec.from_name:
            continue
        where = _where(region)
        rid = str(region.get("id", f"#{n}"))
        if region.get("type") != "rectanglelabels":
            dropped.append(f"{where}: region type {region.get('type')!r} is not a pose box")
            dropped_boxes.add(rid)
            continue
        label, reason = _first_label(region, "rectanglelabels")
        if label is None or label not in class_ids:
            dropped.append(f"{where}: {reason or f'label {label!r} has no class id (not in the label config)'}")
            dropped_boxes.add(rid)
            continue
        try:
            box = rectangle_to_yolo(region["value"], width, height)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            dropped.append(f"{where}: malformed value ({type(exc).__name__}: {exc})")
            dropped_boxes.add(rid)
            continue
        if box is None:
            dropped.append(f"{where}: degenerate box (under {MIN_BOX_PX:g} px after clamping)")
            dropped_boxes.add(rid)
            continue
        boxes[rid] = (int(class_ids[label]), box, [None] * K)

    def contains(box: tuple[float, float, float, float], x: float, y: float) -> bool:
        cx, cy, w, h = box
        eps = 1e-9
        return cx - w / 2 - eps <= x <= cx + w / 2 + eps and cy - h / 2 - eps <= y <= cy + h / 2 + eps

    for region in result:
        if region.get("from_name") != spec.keypoint_from_name:
            continue
        where = _where(region)
        if region.get("type") != "keypointlabels":
            dropped.append(f"{where}: region type {region.get('type')!r} is not a keypoint")
            continue
        label, reason = _first_label(region, "keypointlabels")
        if label is None:
            dropped.append(f"{where}: {reason}")
            continue
        if label not in spec.keypoint_labels:
            dropped.append(f"{where}: keypoint label {label!r} not in the label config")
            continue
        try:
            x = float(region["value"]["x"]) / 100
            y = float(region["value"]["y"]) / 100
        except (KeyError, TypeError, ValueError) as exc:
            dropped.append(f"{where}: malformed value ({type(exc).__name__}: {exc})")
            continue
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            dropped.append(f"{where}: keypoint outside the image")
            continue
        parent = region.get("parentID")
        owner: str | None = None
        if parent is not None and str(parent) in boxes:
            owner = str(parent)
        elif parent is not None and str(parent) in dropped_boxes:
            dropped.append(f"{where}: its box {parent} was dropped")
            continue
        else:
            inside = [rid for rid, (_, box, _) in boxes.items() if contains(box, x, y)]
            if inside:
                owner = min(inside, key=lambda rid: boxes[rid][1][2] * boxes[rid][1][3])
        if owner is None:
            dropped.append(f"{where}: keypoint {label!r} is in no box")
            continue
        slot = spec.keypoint_labels.index(label)
        slots = boxes[owner][2]
        if slots[slot] is not None:
            dropped.append(f"{where}: box {owner} already has keypoint {label!r}")
            continue
        slots[slot] = (x, y)
    lines = []
    for cls, box, slots in boxes.values():
        kpts = " ".join("0 0 0" if p is None else f"{_fmt(p)} 2" for p in slots)
        lines.append(f"{cls} {_fmt(box)} {kpts}")
    return lines, dropped
