"""Label Studio region <-> YOLO label line and prediction conversion for every task type
(labelloop.task_types.convert)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from labelloop.task_types.convert import (
    annotation_to_class,
    annotation_to_yolo,
    has_rotation,
    polygon_area,
    polygons_to_mask,
    predictions_to_regions,
    rectangle_corners,
    results_to_regions,
    yolo_to_regions,
)
from labelloop.task_types.labels import TrainSpec, parse_label_config

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


# ---------------------------------------------------------------------------- detect


@pytest.mark.parametrize(
    ("region", "expected", "reason"),
    [
        # box inside: centre/size normalised, class id from class_ids (cat -> 4)
        (rect(20, 10, 40, 30), (4, [40 / W, 25 / H, 40 / W, 30 / H]), None),
        (rect(100, 50, 20, 10, label="dog"), (0, [110 / W, 55 / H, 20 / W, 10 / H]), None),
        # partly outside on the left/top: clamped to x 0..30, y 0..20
        (rect(-10, -20, 40, 40), (4, [15 / W, 10 / H, 30 / W, 20 / H]), None),
        # partly outside right/bottom: x 180..200, y 90..100
        (rect(180, 90, 50, 50), (4, [190 / W, 95 / H, 20 / W, 10 / H]), None),
        # rotated 90 degrees around (100, 50): the axis-aligned box around it, x 90..100, y 50..90
        (rect(100, 50, 40, 10, rot=90), (4, [95 / W, 70 / H, 10 / W, 40 / H]), None),
        (rect(250, 10, 20, 20), None, "degenerate box"),
        (rect(10, 10, 0.5, 20), None, "degenerate box"),
        (rect(10, 10, 20, 20, label="horse"), None, "label 'horse' has no class id"),
        (rect(10, 10, 20, 20, label=None), None, "no label"),
        ({**rect(10, 10, 20, 20), "value": {"x": 1, "rectanglelabels": ["cat"]}}, None, "malformed value"),
        ({**rect(10, 10, 20, 20), "value": {**rect(1, 1, 5, 5)["value"], "width": "wide"}}, None, "malformed value"),
    ],
)
def test_detect_region_to_line(region: dict, expected: tuple | None, reason: str | None) -> None:
    """A rectangle region becomes one ``class cx cy w h`` line normalised and clamped to the image, a rotated one its
    axis-aligned bounds; degenerate, unlabelled, unknown-label and malformed regions are dropped with reason and id."""
    lines, dropped = annotation_to_yolo([region], DETECT, CLASS_IDS, W, H)
    if expected is None:
        assert lines == []
        assert len(dropped) == 1 and str(reason) in dropped[0] and "r1" in dropped[0], dropped
    else:
        assert dropped == []
        assert len(lines) == 1
        cls, nums = numbers(lines[0])
        assert cls == expected[0]
        np.testing.assert_allclose(nums, expected[1], atol=1e-6)


def test_only_the_spec_control_tags_count() -> None:
    """Regions of another control tag (from_name) are ignored: neither converted nor reported as dropped."""
    result = [rect(10, 10, 20, 20, from_name="other"), rect(10, 10, 20, 20, rid="r2")]
    lines, dropped = annotation_to_yolo(result, DETECT, CLASS_IDS, W, H)
    assert len(lines) == 1 and dropped == []


def test_classify_task_is_not_a_label_line_task() -> None:
    """``annotation_to_yolo`` refuses a classify spec with ValueError: classification has no label lines."""
    with pytest.raises(ValueError, match="classify"):
        annotation_to_yolo([], CLASSIFY, CLASS_IDS, W, H)


# ---------------------------------------------------------------------------- obb

_S30, _C30 = math.sin(math.radians(30)), math.cos(math.radians(30))
_S45 = math.sqrt(0.5)


@pytest.mark.parametrize(
    ("rotation", "corners_px"),
    [
        # a 40 x 20 px box with its top-left corner at (100, 50), rotated clockwise on screen
        (0, [(100, 50), (140, 50), (140, 70), (100, 70)]),
        (
            30,
            [
                (100, 50),
                (100 + 40 * _C30, 50 + 40 * _S30),
                (100 + 40 * _C30 - 20 * _S30, 50 + 40 * _S30 + 20 * _C30),
                (100 - 20 * _S30, 50 + 20 * _C30),
            ],
        ),  # fmt: skip
        (90, [(100, 50), (100, 90), (80, 90), (80, 50)]),
        (180, [(100, 50), (60, 50), (60, 30), (100, 30)]),
        (270, [(100, 50), (100, 10), (120, 10), (120, 50)]),
        (
            -45,
            [
                (100, 50),
                (100 + 40 * _S45, 50 - 40 * _S45),
                (100 + 60 * _S45, 50 - 20 * _S45),
                (100 + 20 * _S45, 50 + 20 * _S45),
            ],
        ),  # fmt: skip
    ],
)
def test_obb_region_to_corners_and_back(rotation: float, corners_px: list[tuple[float, float]]) -> None:
    """A rectangle at any rotation becomes an OBB line of its four corners, normalised, from its x, y corner on; the
    line converts back to a rectanglelabels region with the same corners, rotation in [0, 360), unchanged at 0."""
    region = rect(100, 50, 40, 20, rot=rotation, label="bird")
    lines, dropped = annotation_to_yolo([region], OBB, CLASS_IDS, W, H)
    assert dropped == [] and len(lines) == 1
    cls, nums = numbers(lines[0])
    assert cls == 2
    expected = np.array(corners_px) / np.array([W, H])
    np.testing.assert_allclose(nums.reshape(4, 2), expected, atol=2e-6)

    (back,) = yolo_to_regions(lines[0], OBB, NAMES, W, H)
    assert back["type"] == "rectanglelabels" and back["value"]["rectanglelabels"] == ["bird"]
    assert 0 <= back["value"]["rotation"] < 360
    # the same rectangle (the description may start at another corner)
    got = rectangle_corners(back["value"], W, H)
    assert same_points(got, corners_px)
    # a rotation of 0 survives unchanged, values within 1e-4 percent
    if rotation == 0:
        for key in ("x", "y", "width", "height", "rotation"):
            assert back["value"][key] == pytest.approx(region["value"][key], abs=1e-4)


def test_obb_corners_are_clamped_and_degenerate_boxes_dropped() -> None:
    """OBB corners outside the image are clamped to its edges (corners inside are unchanged), and a box wholly outside
    is dropped as degenerate."""
    # rotated 30 degrees with its top-left corner at (190, 80): half of it is outside the image
    partly = rect(190, 80, 40, 20, rot=30, rid="partly")
    outside = rect(300, 10, 40, 20, rot=30, rid="outside")
    lines, dropped = annotation_to_yolo([partly, outside], OBB, CLASS_IDS, W, H)
    assert len(lines) == 1 and len(dropped) == 1 and "outside" in dropped[0] and "degenerate" in dropped[0]
    corners = numbers(lines[0])[1].reshape(4, 2)
    assert corners.min() >= 0 and corners.max() <= 1
    np.testing.assert_allclose(corners[0], [190 / W, 80 / H], atol=1e-6)  # inside: unchanged
    np.testing.assert_allclose(corners[1], [1.0, min(1.0, (80 + 40 * _S30) / H)], atol=1e-6)


@pytest.mark.parametrize(
    ("rotations", "expected"),
    [
        ([0], False),
        ([0, 360, -360, 720], False),
        ([None], False),
        ([0, 30], True),
        ([-45], True),
        ([90], True),
        ([359.5], True),
        ([359.9999999, -1e-9], False),  # float noise around a full turn
        ([], False),
    ],
)
def test_has_rotation(rotations: list[float | None], expected: bool) -> None:
    """``has_rotation`` is true only when a rectangle of the spec's control tag is turned by other than a multiple of
    360 degrees (float noise around a full turn and None count as 0); other control tags do not count."""
    result = [rect(10, 10, 20, 20, rot=r, rid=f"r{i}") for i, r in enumerate(rotations)]  # type: ignore[arg-type]
    result.append(rect(10, 10, 20, 20, rot=45, from_name="other"))  # another tag does not count
    assert has_rotation(result, DETECT) is expected


# ---------------------------------------------------------------------------- polygons


@pytest.mark.parametrize(
    ("points", "expected_px", "reason"),
    [
        ([(20, 10), (60, 10), (40, 50)], [(20, 10), (60, 10), (40, 50)], None),
        # a square half outside on the right is clipped to the image edge x = 200
        ([(180, 20), (220, 20), (220, 60), (180, 60)], [(180, 20), (200, 20), (200, 60), (180, 60)], None),
        # a triangle with a vertex far above: clipped to y >= 0 (a quadrilateral)
        ([(50, 50), (150, 50), (100, -50)], [(50, 50), (150, 50), (125, 0), (75, 0)], None),
        ([(220, 20), (260, 20), (240, 60)], None, "degenerate polygon"),
        ([(20, 10), (60, 10)], None, "degenerate polygon"),
        ([(20, 10), (40, 20), (60, 30)], None, "degenerate polygon"),  # collinear: no area
        ([(20, 10), (20, 10), (60, 30)], None, "degenerate polygon"),  # two distinct points
        ([(20, 10), (20.5, 10), (20, 10.5)], None, "degenerate polygon"),  # 0.125 px^2
    ],
)
def test_polygon_region_to_line(points: list, expected_px: list | None, reason: str | None) -> None:
    """A polygon region becomes one line of its points normalised and clipped to the image, with the clipped area;
    a polygon outside the image, under three distinct points, collinear or under 1 px² is dropped as degenerate."""
    lines, dropped = annotation_to_yolo([poly(points, label="dog")], POLY, CLASS_IDS, W, H)
    if expected_px is None:
        assert lines == [] and len(dropped) == 1 and str(reason) in dropped[0], dropped
        return
    assert dropped == [] and len(lines) == 1
    cls, nums = numbers(lines[0])
    assert cls == 0
    got = nums.reshape(-1, 2) * np.array([W, H])
    assert same_points(got, expected_px)
    assert polygon_area(nums.reshape(-1, 2), W, H) == pytest.approx(polygon_area(expected_px), rel=1e-5)


def test_polygon_label_without_class_id_is_dropped() -> None:
    """A polygon region whose label has no class id is dropped, with that reason."""
    lines, dropped = annotation_to_yolo([poly([(1, 1), (30, 1), (1, 30)], label="fish")], POLY, CLASS_IDS, W, H)
    assert lines == [] and "'fish' has no class id" in dropped[0]


# ---------------------------------------------------------------------------- brush


def test_brush_rle_with_two_blobs_becomes_two_polygon_lines() -> None:
    """A brush RLE mask with two separate blobs becomes two polygon lines of its class, each matching its blob's area
    and pixels (IoU > 0.97); a speck under 3 px is dropped and reported."""
    mask, blob_a, blob_b = two_blobs()
    mask[100, 5] = 1  # a one-pixel speck
    h, w = mask.shape
    lines, dropped = annotation_to_yolo([brush(mask)], BRUSH, CLASS_IDS, w, h)
    assert len(lines) == 2
    assert len(dropped) == 1 and "1 under 3 px" in dropped[0]
    polys = [numbers(line)[1].reshape(-1, 2) for line in lines]
    assert {numbers(line)[0] for line in lines} == {4}
    for blob in (blob_a, blob_b):
        matching = [p for p in polys if blob[int(p[:, 1].mean() * h), int(p[:, 0].mean() * w)]]
        assert len(matching) == 1
        assert polygon_area(matching[0], w, h) == pytest.approx(blob.sum(), rel=0.06)
        assert iou(polygons_to_mask(matching, w, h), blob) > 0.97


def test_brush_polygons_run_through_pixel_centres() -> None:
    """A traced mask goes through the centres of its edge pixels and fills back to the same pixels."""
    mask = np.zeros((120, 160), bool)
    mask[20:30, 30:40] = True
    (line,), _ = annotation_to_yolo([brush(mask)], BRUSH, CLASS_IDS, 160, 120)
    pts = numbers(line)[1].reshape(-1, 2)
    assert same_points(pts * [160, 120], [(30.5, 20.5), (39.5, 20.5), (39.5, 29.5), (30.5, 29.5)], atol=1e-4)
    assert (polygons_to_mask([pts], 160, 120) == mask).all()


@pytest.mark.parametrize(
    ("region", "reason"),
    [
        (brush(np.zeros((120, 160), bool)), "empty brush mask"),
        ({**brush(np.ones((10, 10), bool)), "original_width": 20}, "malformed value"),
        ({**brush(np.ones((10, 10), bool)), "value": {"format": "png", "brushlabels": ["cat"]}}, "malformed value"),
        (brush(np.ones((10, 10), bool), label="fish"), "has no class id"),
    ],
)
def test_brush_drops(region: dict, reason: str) -> None:
    """A brush region with an empty mask, an RLE that does not fit original_width x original_height, a format other
    than rle, or a label without class id is dropped with the reason."""
    lines, dropped = annotation_to_yolo([region], BRUSH, CLASS_IDS, 160, 120)
    assert lines == [] and any(reason in d for d in dropped), dropped


def test_brush_rle_whose_header_claims_gigabytes_is_dropped_before_decoding() -> None:
    """A brush RLE whose 32-bit header claims 4 GB (label-studio-sdk's decoder allocates that before
    reading on) is dropped as malformed without the allocation; so is a region claiming 100k x 100k
    pixels with a matching header."""
    import tracemalloc

    hostile = {**brush(np.ones((10, 10), bool))}
    rle = list(hostile["value"]["rle"])
    hostile["value"] = {**hostile["value"], "rle": [0xFF, 0xFF, 0xFF, 0xF0, *rle[4:]]}
    huge = {**brush(np.ones((10, 10), bool)), "original_width": 100_000, "original_height": 100_000}
    tracemalloc.start()
    try:
        for region in (hostile, huge):
            lines, dropped = annotation_to_yolo([region], BRUSH, CLASS_IDS, 160, 120)
            assert lines == [] and any("malformed value" in d for d in dropped), dropped
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB allocated"


BRUSH_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="blob"/><Label value="other"/></BrushLabels></View>'
)


@pytest.mark.labelstudio
def test_brush_annotation_exported_by_a_real_label_studio(label_studio: tuple[str, str]) -> None:
    """A brush annotation posted to Label Studio 1.23.2 and exported as JSON traces back to the drawn blobs."""
    from labelloop.dev.demo import LabelStudioAPI
    from labelloop.dev.synthetic import make_sample
    from labelloop.labelstudio.export import export_tasks, select_annotation

    api = LabelStudioAPI(*label_studio)
    project = api.create_project("convert brush", BRUSH_CONFIG)
    (task_id,) = api.import_images(project, [make_sample(1, 160, 120)])
    mask, blob_a, blob_b = two_blobs()
    region = {**brush(mask, label="blob", rid="brush1", from_name="tag")}
    api.annotate(task_id, [region])

    (task,) = export_tasks(api.sdk, project)
    annotation = select_annotation(task)
    assert annotation is not None
    (exported,) = annotation["result"]
    assert exported["type"] == "brushlabels" and exported["value"]["format"] == "rle"
    decoded = decode_rle(exported["value"]["rle"]).reshape(120, 160, 4)[:, :, 3] > 0
    assert (decoded == mask.astype(bool)).all()

    spec = parse_label_config(BRUSH_CONFIG)
    assert (spec.task, spec.region_type, spec.from_name) == ("segment", "brushlabels", "tag")
    lines, dropped = annotation_to_yolo(annotation["result"], spec, {"blob": 3}, 160, 120)
    assert dropped == [] and len(lines) == 2
    traced = polygons_to_mask([numbers(line)[1].reshape(-1, 2) for line in lines], 160, 120)
    assert iou(traced, mask.astype(bool)) > 0.97
    for blob in (blob_a, blob_b):
        assert iou(traced & blob, blob) > 0.97

    # the same client exports again what Label Studio holds now, never a remembered export
    (second_task,) = api.import_images(project, [make_sample(2, 160, 120)])
    api.annotate(second_task, [region])
    assert {t["id"] for t in export_tasks(api.sdk, project)} == {task_id, second_task}


# ---------------------------------------------------------------------------- pose


def _pose_line(box_px: tuple[float, float, float, float], kps: list[tuple[float, float] | None], cls: int) -> list:
    x, y, w, h = box_px
    out = [cls, (x + w / 2) / W, (y + h / 2) / H, w / W, h / H]
    for p in kps:
        out += [0, 0, 0] if p is None else [p[0] / W, p[1] / H, 2]
    return out


@pytest.mark.parametrize(
    ("result", "expected", "reason"),
    [
        # parentID wins over containment: the nose is inside the small box but belongs to the big one
        (
            [
                rect(10, 10, 100, 80, rid="big", from_name="box"),
                rect(20, 20, 30, 30, rid="small", label="dog", from_name="box"),
                keypoint(30, 30, "nose", "k1", parent="big"),
                keypoint(40, 40, "left", "k2"),
            ],
            [
                _pose_line((10, 10, 100, 80), [(30, 30), None, None], 4),
                _pose_line((20, 20, 30, 30), [None, (40, 40), None], 0),
            ],
            None,
        ),
        # containment: nested boxes, the smallest that contains the point; order follows keypoint_labels
        (
            [
                rect(10, 10, 100, 80, rid="big", from_name="box"),
                rect(20, 20, 30, 30, rid="small", label="dog", from_name="box"),
                keypoint(100, 80, "right", "k1"),
                keypoint(25, 25, "nose", "k2"),
                keypoint(90, 20, "left", "k3"),
            ],
            [
                _pose_line((10, 10, 100, 80), [None, (90, 20), (100, 80)], 4),
                _pose_line((20, 20, 30, 30), [(25, 25), None, None], 0),
            ],
            None,
        ),
        # a box without keypoints: all missing
        ([rect(10, 10, 20, 20, from_name="box")], [_pose_line((10, 10, 20, 20), [None, None, None], 4)], None),
        (
            [rect(10, 10, 20, 20, from_name="box"), keypoint(150, 80, "nose", "k1")],
            [_pose_line((10, 10, 20, 20), [None, None, None], 4)],
            "keypoint 'nose' is in no box",
        ),
        (
            [rect(10, 10, 20, 20, from_name="box"), keypoint(15, 15, "tail", "k1")],
            [_pose_line((10, 10, 20, 20), [None, None, None], 4)],
            "keypoint label 'tail' not in the label config",
        ),
        (
            [rect(10, 10, 20, 20, from_name="box", label="fish", rid="gone"), keypoint(15, 15, "nose", "k1", "gone")],
            [],
            "its box gone was dropped",
        ),
        (
            [
                rect(10, 10, 20, 20, from_name="box"),
                keypoint(15, 15, "nose", "k1"),
                keypoint(16, 16, "nose", "k2"),
            ],
            [_pose_line((10, 10, 20, 20), [(15, 15), None, None], 4)],
            "already has keypoint 'nose'",
        ),
    ],
)
def test_pose_regions_to_lines(result: list, expected: list, reason: str | None) -> None:
    """A pose box becomes a line with its keypoints in keypoint_labels order (missing: 0 0 0), each from its parentID
    box, else the smallest box containing it; keypoints in no box, unknown, of a dropped box or repeated are dropped."""
    lines, dropped = annotation_to_yolo(result, POSE, CLASS_IDS, W, H)
    assert len(lines) == len(expected)
    for line, want in zip(lines, expected, strict=True):
        cls, nums = numbers(line)
        assert cls == want[0]
        np.testing.assert_allclose(nums, want[1:], atol=1e-6)
    if reason is None:
        assert dropped == []
    else:
        assert any(reason in d for d in dropped), dropped


# ---------------------------------------------------------------------------- classify


def choice(*names: str, from_name: str = "choice") -> dict[str, Any]:
    value = {"choices": list(names)}
    return {"id": "c1", "from_name": from_name, "to_name": "image", "type": "choices", "value": value}


@pytest.mark.parametrize(
    ("result", "label", "reason"),
    [
        ([choice("dog")], "dog", None),
        ([choice("dog", from_name="other"), choice("bird")], "bird", None),
        ([], None, "no choice"),
        ([choice()], None, "no choice"),
        ([choice("fish")], None, "'fish' has no class id"),
        ([choice("dog", "cat")], None, "several choices"),
    ],
)
def test_annotation_to_class(result: list, label: str | None, reason: str | None) -> None:
    """A classify annotation gives its one choice of the spec's control tag; no choice, a label without class id or
    several choices give no class, with the reason."""
    got, reasons = annotation_to_class(result, CLASSIFY, CLASS_IDS)
    assert got == label
    if reason is None:
        assert reasons == []
    else:
        assert any(reason in r for r in reasons), reasons


# ---------------------------------------------------------------------------- YOLO line -> regions -> line


@pytest.mark.parametrize(
    ("spec", "result"),
    [
        (DETECT, [rect(20, 10, 40, 30, label="dog")]),
        (OBB, [rect(100, 50, 40, 20, rot=30, label="bird")]),
        (OBB, [rect(100, 50, 40, 20, rot=-10)]),
        (POLY, [poly([(20, 10), (60, 12), (70, 50), (25, 40)])]),
        (
            POSE,
            [rect(10, 10, 100, 80, from_name="box"), keypoint(30, 30, "nose", "k1"), keypoint(100, 80, "right", "k2")],
        ),
    ],
)
def test_region_to_line_and_back(spec: TrainSpec, result: list) -> None:
    """A YOLO line of each task type converts back to regions with the same from_name/to_name, type, original size and
    values (keypoints parented to their box), and those regions convert to the same line again."""
    lines, dropped = annotation_to_yolo(result, spec, CLASS_IDS, W, H)
    assert dropped == [] and len(lines) == 1
    regions = yolo_to_regions(lines[0], spec, NAMES, W, H)
    assert len(regions) == len(result)
    for got, want in zip(regions, result, strict=True):
        assert (got["from_name"], got["to_name"], got["type"]) == (want["from_name"], "image", want["type"])
        assert (got["original_width"], got["original_height"]) == (W, H)
        assert got["image_rotation"] == 0 and len(got["id"]) == 10
        for key, value in want["value"].items():
            if key == "width" and want["type"] == "keypointlabels":
                continue  # the drawn size is not part of a YOLO keypoint
            if key == "rotation":
                turn = (got["value"][key] - value) % 360
                assert min(turn, 360 - turn) == pytest.approx(0, abs=1e-4)
            elif isinstance(value, list) and value and isinstance(value[0], list):
                np.testing.assert_allclose(got["value"][key], value, atol=1e-4)
            elif isinstance(value, float | int):
                assert got["value"][key] == pytest.approx(value, abs=1e-4), key
            else:
                assert got["value"][key] == value
    if spec is POSE:
        assert all(r["parentID"] == regions[0]["id"] for r in regions[1:])
    # and the regions convert to the same line again
    again, _ = annotation_to_yolo(regions, spec, CLASS_IDS, W, H)
    np.testing.assert_allclose(numbers(again[0])[1], numbers(lines[0])[1], atol=2e-6)


def test_brush_line_round_trip() -> None:
    """Polygon lines traced from a brush mask convert back to brush RLE regions covering the mask (IoU > 0.98), which
    trace to lines with the same number of points."""
    mask, _, _ = two_blobs()
    lines, _ = annotation_to_yolo([brush(mask)], BRUSH, CLASS_IDS, 160, 120)
    regions = [r for line in lines for r in yolo_to_regions(line, BRUSH, NAMES, 160, 120)]
    assert [r["type"] for r in regions] == ["brushlabels", "brushlabels"]
    decoded = [decode_rle(r["value"]["rle"]).reshape(120, 160, 4)[:, :, 3] > 0 for r in regions]
    assert iou(decoded[0] | decoded[1], mask.astype(bool)) > 0.98
    again = [line for r in regions for line in annotation_to_yolo([r], BRUSH, CLASS_IDS, 160, 120)[0]]
    assert sorted(len(line.split()) for line in again) == sorted(len(line.split()) for line in lines)


@pytest.mark.parametrize(
    ("spec", "line", "error"),
    [
        (DETECT, "4 0.5 0.5 0.1", "needs cx cy w h"),
        (DETECT, "4 0.5 0.5 0.1 0.1 0.3", "5 fields"),
        (DETECT, "x 0.5 0.5 0.1 0.1", "does not parse"),
        (DETECT, "9 0.5 0.5 0.1 0.1", "class id 9"),
        (OBB, "4 0.1 0.1 0.2 0.1 0.2 0.2", "9 fields"),
        (POLY, "4 0.1 0.1 0.2 0.1", "at least 3 points"),
        (POSE, "4 0.5 0.5 0.2 0.2 0.1 0.1 2", "needs 11 or 14 fields"),
        (CLASSIFY, "4 0.5 0.5 0.2 0.2", "not classify"),
        (DETECT, "", "empty"),
    ],
)
def test_yolo_to_regions_rejects_malformed_lines(spec: TrainSpec, line: str, error: str) -> None:
    """``yolo_to_regions`` raises ValueError naming the fault for a line with the wrong field count for its task, an
    unparsable number, an unknown class id, a classify spec or no fields."""
    with pytest.raises(ValueError, match=error):
        yolo_to_regions(line, spec, NAMES, W, H)


def test_yolo_to_regions_skips_labels_removed_from_the_config() -> None:
    """A line whose class's label was removed from the label config gives no region; a kept label gives one."""
    spec = dataclasses.replace(DETECT, labels=("dog",))
    assert yolo_to_regions("4 0.5 0.5 0.1 0.1", spec, NAMES, W, H) == []
    assert len(yolo_to_regions("0 0.5 0.5 0.1 0.1", spec, NAMES, W, H)) == 1


# ---------------------------------------------------------------------------- predictions


def test_detect_predictions_from_lists() -> None:
    """Detections given as xyxy pixel lists become scored rectanglelabels regions with distinct ids, clamped to the
    image; classes not in the label config and degenerate boxes are left out."""
    regions = predictions_to_regions(
        DETECT,
        {0: "cat", 1: "removed", 2: "dog"},
        W,
        H,
        boxes_xyxy=[[20, 10, 60, 40], [0, 0, 10, 10], [-10, 50, 30, 150], [5, 5, 5.5, 50]],
        classes=[0, 1, 2, 0],
        scores=[0.9, 0.8, 0.7, 0.6],
    )
    assert [r["value"]["rectanglelabels"] for r in regions] == [["cat"], ["dog"]]
    assert [r["score"] for r in regions] == pytest.approx([0.9, 0.7])
    v = regions[1]["value"]
    assert (v["x"], v["y"], v["width"], v["height"], v["rotation"]) == pytest.approx((0, 50, 15, 50, 0))
    assert len({r["id"] for r in regions}) == 2


def test_predictions_length_mismatch_and_missing_inputs_raise() -> None:
    """``predictions_to_regions`` raises ValueError when scores and classes differ in length or when an input the task
    needs (boxes_xyxy, probs, masks or polygons_xyn) is missing."""
    with pytest.raises(ValueError, match="2 scores for 1 classes"):
        predictions_to_regions(DETECT, NAMES, W, H, boxes_xyxy=[[0, 0, 5, 5]], classes=[0], scores=[1, 1])
    with pytest.raises(ValueError, match="need boxes_xyxy"):
        predictions_to_regions(DETECT, NAMES, W, H, classes=[0])
    with pytest.raises(ValueError, match="need probs"):
        predictions_to_regions(CLASSIFY, NAMES, W, H)
    with pytest.raises(ValueError, match="masks or polygons_xyn"):
        predictions_to_regions(POLY, NAMES, W, H, classes=[0])


def test_polygon_predictions_become_brush_and_polygon_regions() -> None:
    """Predicted polygons_xyn become a brush RLE region filling the polygon under a brushlabels spec, and a polygon
    region clipped to the image under a polygonlabels spec."""
    square = np.array([[0.1, 0.2], [0.3, 0.2], [0.3, 0.6], [0.1, 0.6]])
    (b,) = predictions_to_regions(BRUSH, NAMES, W, H, polygons_xyn=[square], classes=[4], scores=[0.5])
    assert (b["type"], b["value"]["format"], b["value"]["brushlabels"]) == ("brushlabels", "rle", ["cat"])
    alpha = decode_rle(b["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 0
    assert 40 * 40 <= alpha.sum() <= 41 * 41  # 40 x 40 px; fillPoly may add the half-pixel rim
    assert alpha[40, 40] and not alpha[10, 10]
    (p,) = predictions_to_regions(POLY, NAMES, W, H, polygons_xyn=[square * 2 - 0.1], classes=[0], scores=[0.5])
    assert same_points(p["value"]["points"], [[10, 30], [50, 30], [50, 100], [10, 100]], atol=1e-9)  # clipped


# ---------------------------------------------------------------------------- ultralytics Results


@pytest.fixture(scope="module")
def Results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(tmp_path_factory.mktemp("yolo"))
    from ultralytics.engine.results import Results

    return Results


def _image(h: int = H, w: int = W) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


MODEL_NAMES = {0: "cat", 1: "dog", 2: "removed"}


def test_results_detect(Results: Any) -> None:
    """Ultralytics detect Results become rectanglelabels regions in percent, without classes not in the label config,
    the task scored 1 - its least confident box's uncertainty; Results without boxes give no region and score 0 (the
    most uncertain)."""
    import torch

    boxes = torch.tensor([[20.0, 10, 60, 40, 0.9, 0], [100, 20, 150, 90, 0.5, 1], [0, 0, 50, 50, 0.99, 2]])
    regions, score = results_to_regions(Results(_image(), "a.png", MODEL_NAMES, boxes=boxes), DETECT, MODEL_NAMES)
    assert [r["value"]["rectanglelabels"] for r in regions] == [["cat"], ["dog"]]
    assert score == pytest.approx(0.5)  # the dog box (0.5), not the mean and not the "removed" class (0.99)
    v = regions[0]["value"]
    assert (v["x"], v["y"], v["width"], v["height"]) == pytest.approx((10, 10, 20, 30))
    empty, score = results_to_regions(Results(_image(), "a.png", MODEL_NAMES, boxes=torch.zeros(0, 6)), DETECT, {})
    assert (empty, score) == ([], 0.0)


def test_results_score_follows_the_strategy(Results: Any) -> None:
    """With every class's score per box (``res.class_scores``), margin ranks a box torn between two classes as more
    informative than one as confident in its best class, which least confidence cannot tell apart."""
    import torch

    boxes = torch.tensor([[20.0, 10, 60, 40, 0.6, 0]])
    sure, confused = (Results(_image(), "a.png", MODEL_NAMES, boxes=boxes) for _ in range(2))
    sure.class_scores = np.array([[0.6, 0.01, 0.0]])
    confused.class_scores = np.array([[0.6, 0.55, 0.0]])
    (_, m_sure), (_, m_confused) = (results_to_regions(r, DETECT, MODEL_NAMES, "margin") for r in (sure, confused))
    assert m_confused < m_sure
    (_, lc_sure), (_, lc_confused) = (results_to_regions(r, DETECT, MODEL_NAMES) for r in (sure, confused))
    assert lc_sure == lc_confused == pytest.approx(0.6)
    assert m_confused == pytest.approx(0.05 / 1.15, abs=1e-6)  # d = (0.6, 0.55, 0) / 1.15


@pytest.mark.parametrize("angle", [0.0, 0.4, -0.6, 1.2, math.pi / 2])
def test_results_obb(Results: Any, angle: float) -> None:
    """Ultralytics OBB Results become a rectangle with the same corners, rotated within 45 degrees of axis-aligned
    and by the OBB angle up to a multiple of 90; classes not in the label config are left out."""
    import torch

    obb = torch.tensor([[100.0, 50, 60, 20, angle, 0.8, 1], [10, 10, 5, 5, 0, 0.9, 2]])
    res = Results(_image(), "a.png", MODEL_NAMES, obb=obb)
    regions, score = results_to_regions(res, OBB, MODEL_NAMES)
    assert len(regions) == 1 and score == pytest.approx(0.8)
    value = regions[0]["value"]
    assert value["rectanglelabels"] == ["dog"]
    rot = value["rotation"]
    assert min(rot, 360 - rot) <= 45 + 1e-6  # the description nearest to axis-aligned
    got = rectangle_corners(value, W, H)
    want = res.obb.xyxyxyxy[0].numpy()
    assert same_points(got, want, atol=1e-3)
    # the LS rotation is the Ultralytics angle up to the corner chosen (a multiple of 90 degrees)
    turn = (rot - math.degrees(angle)) % 90
    assert min(turn, 90 - turn) == pytest.approx(0, abs=1e-3)


def test_results_segment_with_letterboxed_masks(Results: Any) -> None:
    """Segment masks inferred letterboxed are unpadded to the image and become a brush RLE or a polygon region matching
    the object (IoU > 0.97), scored by confidence; classes not in the label config are left out."""
    import torch

    # masks of a 200 x 100 image inferred letterboxed at 200 x 112: gain 1, 6 rows of padding above and below
    masks = torch.zeros(2, 112, 200)
    masks[0, 6 + 20 : 6 + 60, 30:90] = 1  # rows 20..60, cols 30..90 of the image
    masks[1, 6 + 70 : 6 + 90, 150:190] = 1
    boxes = torch.tensor([[30.0, 20, 90, 60, 0.9, 0], [150, 70, 190, 90, 0.6, 2]])
    res = Results(_image(), "a.png", MODEL_NAMES, boxes=boxes, masks=masks)
    want = np.zeros((H, W), bool)
    want[20:60, 30:90] = True

    (b,), score = results_to_regions(res, BRUSH, MODEL_NAMES)
    assert score == pytest.approx(0.9)
    assert b["type"] == "brushlabels" and b["value"]["brushlabels"] == ["cat"]
    alpha = decode_rle(b["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 0
    assert iou(alpha, want) > 0.97

    (p,), _ = results_to_regions(res, POLY, MODEL_NAMES)
    assert p["type"] == "polygonlabels"
    pts = np.array(p["value"]["points"]) / 100
    assert iou(polygons_to_mask([pts], W, H), want) > 0.97


def test_results_segment_one_region_per_part(Results: Any) -> None:
    """An instance mask with two separate parts becomes two polygon regions, each through its part's pixel centres."""
    import torch

    masks = torch.zeros(1, H, W)
    masks[0, 10:30, 10:40] = 1
    masks[0, 60:90, 120:180] = 1
    res = Results(_image(), "a.png", MODEL_NAMES, boxes=torch.tensor([[10.0, 10, 180, 90, 0.7, 1]]), masks=masks)
    regions, _ = results_to_regions(res, POLY, MODEL_NAMES)
    areas = sorted(polygon_area(np.array(r["value"]["points"]) / 100, W, H) for r in regions)
    assert areas == pytest.approx([19 * 29, 29 * 59], rel=0.02)
    boxes = []
    for r in regions:
        pts = np.array(r["value"]["points"], dtype=np.float64) / 100 * [W, H]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        boxes.append(tuple(round(float(v), 3) for v in (lo[0], lo[1], hi[0], hi[1])))
    boxes.sort()
    assert boxes == [(10.5, 10.5, 39.5, 29.5), (120.5, 60.5, 179.5, 89.5)]  # pixel centres of the parts


def test_results_pose(Results: Any) -> None:
    """Pose Results become box regions and keypoint regions parented to their box (keypoints under MIN_KEYPOINT_CONF and
    classes not in the label config left out), which convert back to the same pose training line."""
    import torch

    boxes = torch.tensor([[10.0, 10, 110, 90, 0.9, 0], [120, 10, 190, 90, 0.7, 1], [0, 0, 5, 5, 0.9, 2]])
    kpts = torch.tensor(
        [
            [[30.0, 30, 0.9], [40, 40, 0.3], [100, 80, 0.6]],
            [[130, 20, 0.2], [150, 50, 0.95], [0, 0, 0.0]],
            [[1, 1, 0.9], [2, 2, 0.9], [3, 3, 0.9]],
        ]
    )
    res = Results(_image(), "a.png", MODEL_NAMES, boxes=boxes, keypoints=kpts)
    regions, score = results_to_regions(res, POSE, MODEL_NAMES)
    assert score == pytest.approx(0.7)  # the least confident box in the label config
    boxes_out = [r for r in regions if r["type"] == "rectanglelabels"]
    kps = [r for r in regions if r["type"] == "keypointlabels"]
    assert [b["from_name"] for b in boxes_out] == ["box", "box"]
    assert [(k["from_name"], k["value"]["keypointlabels"][0], k["parentID"]) for k in kps] == [
        ("kp", "nose", boxes_out[0]["id"]),
        ("kp", "right", boxes_out[0]["id"]),
        ("kp", "left", boxes_out[1]["id"]),
    ]
    assert (kps[1]["value"]["x"], kps[1]["value"]["y"], kps[1]["value"]["width"]) == pytest.approx((50, 80, 0.5))
    assert kps[2]["score"] == pytest.approx(0.95)
    # and back to a training line: keypoints in keypoint_labels order, missing ones 0 0 0
    lines, dropped = annotation_to_yolo(regions, POSE, {"cat": 0, "dog": 1}, W, H)
    assert dropped == []
    np.testing.assert_allclose(numbers(lines[0])[1], _pose_line((10, 10, 100, 80), [(30, 30), None, (100, 80)], 0)[1:])


def test_results_show_conf_hides_regions_but_not_from_the_score(Results: Any) -> None:
    """Regions scoring under ``show_conf`` are left out while the task's score counts exactly the boxes at or above
    ``score_conf`` (predict_conf), with their class scores, whether the threshold is above or below it; keypoints and
    masks go with their boxes; classify shows its top-1 whatever the threshold."""
    import torch

    boxes = torch.tensor([[20.0, 10, 60, 40, 0.9, 0], [100, 20, 150, 90, 0.5, 1], [0, 0, 50, 50, 0.2, 0]])
    rows = np.array([[0.9, 0.05, 0.0], [0.3, 0.5, 0.0], [0.2, 0.1, 0.0]])

    def res(n: int) -> Any:
        r = Results(_image(), "a.png", MODEL_NAMES, boxes=boxes[:n])
        r.class_scores = rows[:n]
        return r

    for strategy in ("least_confidence", "margin"):
        _, today = results_to_regions(res(2), DETECT, MODEL_NAMES, strategy)  # predicted at conf 0.3: two candidates
        high, s_high = results_to_regions(res(3), DETECT, MODEL_NAMES, strategy, show_conf=0.6, score_conf=0.3)
        low, s_low = results_to_regions(res(3), DETECT, MODEL_NAMES, strategy, show_conf=0.1, score_conf=0.3)
        assert [r["score"] for r in high] == pytest.approx([0.9])
        assert [r["score"] for r in low] == pytest.approx([0.9, 0.5, 0.2])
        assert s_high == s_low == today
    none, score = results_to_regions(res(3), DETECT, MODEL_NAMES, show_conf=0.95, score_conf=0.3)
    assert none == [] and score == pytest.approx(0.5)

    kpts = torch.tensor([[[30.0, 30, 0.9], [40, 40, 0.9], [50, 35, 0.9]], [[130, 30, 0.9], [0, 0, 0.0], [0, 0, 0.0]]])
    pose = Results(_image(), "a.png", MODEL_NAMES, boxes=boxes[:2], keypoints=kpts)
    regions, score = results_to_regions(pose, POSE, MODEL_NAMES, show_conf=0.6, score_conf=0.3)
    assert [r["type"] for r in regions] == ["rectanglelabels"] + ["keypointlabels"] * 3
    assert score == pytest.approx(0.5)

    masks = torch.zeros(2, H, W)
    masks[0, 10:40, 20:60] = 1
    masks[1, 20:90, 100:150] = 1
    seg = Results(_image(), "a.png", MODEL_NAMES, boxes=boxes[:2], masks=masks)
    (polygon,), _ = results_to_regions(seg, POLY, MODEL_NAMES, show_conf=0.6, score_conf=0.3)
    assert polygon["value"]["polygonlabels"] == ["cat"]

    probs = Results(_image(), "a.png", MODEL_NAMES, probs=torch.tensor([0.2, 0.1, 0.7]))
    (choice,), _ = results_to_regions(probs, CLASSIFY, MODEL_NAMES, show_conf=0.9, score_conf=0.3)
    assert choice["value"] == {"choices": ["cat"]}


def test_results_classify(Results: Any) -> None:
    """Classify Results become one choices region of the most probable class in the label config (a top-1 class not in
    it is passed over), scored by that class's probability."""
    import torch

    res = Results(_image(), "a.png", MODEL_NAMES, probs=torch.tensor([0.2, 0.1, 0.7]))
    (region,), score = results_to_regions(res, CLASSIFY, MODEL_NAMES)  # top-1 "removed" is not in the config
    assert (region["type"], region["from_name"], region["value"]) == ("choices", "choice", {"choices": ["cat"]})
    assert score == pytest.approx(0.2) and region["score"] == pytest.approx(0.2)
    assert (region["original_width"], region["original_height"]) == (W, H)
