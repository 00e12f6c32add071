"""Label Studio regions and specs the task type tests share (a 200 x 100 image, stable class ids
that are not the label order), and Ultralytics' ``Results`` for the tests that feed it."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from label_studio_sdk.converter.brush import mask2rle

from labelloop.task_types.labels import TrainSpec

# A non-square image, so x/width and y/height mix-ups show.
W, H = 200, 100
LABELS = ("cat", "dog", "bird")
# Stable class ids that are deliberately not the label order.
CLASS_IDS = {"cat": 4, "dog": 0, "bird": 2}
NAMES = {v: k for k, v in CLASS_IDS.items()}

DETECT = TrainSpec("detect", "rectanglelabels", "label", "image", "image", LABELS)
OBB = DETECT.with_task("obb")
POLY = TrainSpec("segment", "polygonlabels", "poly", "image", "image", LABELS)
BRUSH = TrainSpec("segment", "brushlabels", "brush", "image", "image", LABELS)
POSE = TrainSpec("pose", "rectanglelabels", "box", "image", "image", LABELS, "kp", ("nose", "left", "right"))
CLASSIFY = TrainSpec("classify", "choices", "choice", "image", "image", LABELS)


def rect(
    x: float, y: float, w: float, h: float, rot: float = 0, label: str | None = "cat", rid: str = "r1", **extra: Any
) -> dict[str, Any]:
    """A rectangle region; x, y, w, h in pixels of the W x H image."""
    value: dict[str, Any] = {"x": x / W * 100, "y": y / H * 100, "width": w / W * 100, "height": h / H * 100}
    value["rotation"] = rot
    if label is not None:
        value["rectanglelabels"] = [label]
    return {
        "id": rid,
        "from_name": extra.pop("from_name", "label"),
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": W,
        "original_height": H,
        "value": value,
        **extra,
    }


def poly(points_px: list[tuple[float, float]], label: str = "cat", rid: str = "p1") -> dict[str, Any]:
    return {
        "id": rid,
        "from_name": "poly",
        "to_name": "image",
        "type": "polygonlabels",
        "original_width": W,
        "original_height": H,
        "value": {"points": [[x / W * 100, y / H * 100] for x, y in points_px], "polygonlabels": [label]},
    }


def brush(mask: np.ndarray, label: str = "cat", rid: str = "b1", from_name: str = "brush") -> dict[str, Any]:
    h, w = mask.shape
    return {
        "id": rid,
        "from_name": from_name,
        "to_name": "image",
        "type": "brushlabels",
        "original_width": w,
        "original_height": h,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
    }


def keypoint(x: float, y: float, label: str, rid: str, parent: str | None = None) -> dict[str, Any]:
    region: dict[str, Any] = {
        "id": rid,
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": W,
        "original_height": H,
        "value": {"x": x / W * 100, "y": y / H * 100, "width": 1.0, "keypointlabels": [label]},
    }
    if parent is not None:
        region["parentID"] = parent
    return region


def numbers(line: str) -> tuple[int, np.ndarray]:
    parts = line.split()
    return int(parts[0]), np.array([float(v) for v in parts[1:]])


def two_blobs(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A mask with a 50x30 px rectangle and a disc of radius 22 px that do not touch."""
    a = np.zeros((h, w), np.uint8)
    a[10:40, 10:60] = 1
    b = np.zeros((h, w), np.uint8)
    cv2.circle(b, (110, 75), 22, 1, thickness=-1)
    return a | b, a.astype(bool), b.astype(bool)


def same_points(got: Any, want: Any, atol: float = 1e-3) -> bool:
    """The same set of points in any order (each point of one is within atol of a point of the other)."""
    a = np.asarray(got, np.float64).reshape(-1, 2)
    b = np.asarray(want, np.float64).reshape(-1, 2)
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    return len(a) == len(b) and bool((d.min(axis=1) <= atol).all() and (d.min(axis=0) <= atol).all())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def results_class(tmp_path_factory: Any) -> Any:
    """Ultralytics' ``Results`` class, with Ultralytics' settings in a fresh folder."""
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(tmp_path_factory.mktemp("yolo"))
    from ultralytics.engine.results import Results

    return Results


def blank_image(h: int = H, w: int = W) -> np.ndarray:
    """A black ``h`` x ``w`` BGR image."""
    return np.zeros((h, w, 3), np.uint8)


MODEL_NAMES = {0: "cat", 1: "dog", 2: "removed"}
