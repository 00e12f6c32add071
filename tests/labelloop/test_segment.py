"""``segment`` (labelloop.task_types.segment): polygons and brush masks to polygon lines and back,
and predicted masks and polygons as polygon or brush regions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from labelloop.task_types.convert import (
    annotation_to_yolo,
    polygon_area,
    polygons_to_mask,
    predictions_to_regions,
    results_to_regions,
)
from labelloop.task_types.labels import parse_label_config
from tests.labelloop.ls_regions import (
    BRUSH,
    CLASS_IDS,
    MODEL_NAMES,
    NAMES,
    POLY,
    H,
    W,
    blank_image,
    brush,
    iou,
    numbers,
    poly,
    results_class,
    same_points,
    two_blobs,
)


@pytest.fixture(scope="module")
def Results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return results_class(tmp_path_factory)


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


def test_results_segment_with_letterboxed_masks(Results: Any) -> None:
    """Segment masks inferred letterboxed are unpadded to the image and become a brush RLE or a polygon region matching
    the object (IoU > 0.97), scored by confidence; classes not in the label config are left out."""
    import torch

    # masks of a 200 x 100 image inferred letterboxed at 200 x 112: gain 1, 6 rows of padding above and below
    masks = torch.zeros(2, 112, 200)
    masks[0, 6 + 20 : 6 + 60, 30:90] = 1  # rows 20..60, cols 30..90 of the image
    masks[1, 6 + 70 : 6 + 90, 150:190] = 1
    boxes = torch.tensor([[30.0, 20, 90, 60, 0.9, 0], [150, 70, 190, 90, 0.6, 2]])
    res = Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes, masks=masks)
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
    res = Results(blank_image(), "a.png", MODEL_NAMES, boxes=torch.tensor([[10.0, 10, 180, 90, 0.7, 1]]), masks=masks)
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
