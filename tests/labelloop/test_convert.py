"""Label Studio region <-> YOLO label line and prediction conversion across the task types
(labelloop.task_types.convert): round trips, malformed lines, rotation, display thresholds.
Each task type's own conversions are tested in its module (test_detect.py, test_obb.py, ...)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from labelloop.task_types.convert import (
    annotation_to_yolo,
    has_rotation,
    predictions_to_regions,
    results_to_regions,
    yolo_to_regions,
)
from labelloop.task_types.labels import TrainSpec
from tests.labelloop.ls_regions import (
    BRUSH,
    CLASS_IDS,
    CLASSIFY,
    DETECT,
    MODEL_NAMES,
    NAMES,
    OBB,
    POLY,
    POSE,
    H,
    W,
    blank_image,
    brush,
    iou,
    keypoint,
    numbers,
    poly,
    rect,
    results_class,
    two_blobs,
)


@pytest.fixture(scope="module")
def Results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return results_class(tmp_path_factory)


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


def test_results_show_conf_hides_regions_but_not_from_the_score(Results: Any) -> None:
    """Regions scoring under ``show_conf`` are left out while the task's score counts exactly the boxes at or above
    ``score_conf`` (predict_conf), with their class scores, whether the threshold is above or below it; keypoints and
    masks go with their boxes; classify shows its top-1 whatever the threshold."""
    import torch

    boxes = torch.tensor([[20.0, 10, 60, 40, 0.9, 0], [100, 20, 150, 90, 0.5, 1], [0, 0, 50, 50, 0.2, 0]])
    rows = np.array([[0.9, 0.05, 0.0], [0.3, 0.5, 0.0], [0.2, 0.1, 0.0]])

    def res(n: int) -> Any:
        r = Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes[:n])
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
    pose = Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes[:2], keypoints=kpts)
    regions, score = results_to_regions(pose, POSE, MODEL_NAMES, show_conf=0.6, score_conf=0.3)
    assert [r["type"] for r in regions] == ["rectanglelabels"] + ["keypointlabels"] * 3
    assert score == pytest.approx(0.5)

    masks = torch.zeros(2, H, W)
    masks[0, 10:40, 20:60] = 1
    masks[1, 20:90, 100:150] = 1
    seg = Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes[:2], masks=masks)
    (polygon,), _ = results_to_regions(seg, POLY, MODEL_NAMES, show_conf=0.6, score_conf=0.3)
    assert polygon["value"]["polygonlabels"] == ["cat"]

    probs = Results(blank_image(), "a.png", MODEL_NAMES, probs=torch.tensor([0.2, 0.1, 0.7]))
    (choice,), _ = results_to_regions(probs, CLASSIFY, MODEL_NAMES, show_conf=0.9, score_conf=0.3)
    assert choice["value"] == {"choices": ["cat"]}


def _label_config(spec: TrainSpec) -> str:
    """A label config with ``spec``'s control tags over one Image ``image`` (``LABELS`` as labels)."""
    tags = {
        "rectanglelabels": ("RectangleLabels", "Label"),
        "polygonlabels": ("PolygonLabels", "Label"),
        "brushlabels": ("BrushLabels", "Label"),
        "choices": ("Choices", "Choice"),
    }
    tag, item = tags[spec.region_type]
    labels = "".join(f'<{item} value="{n}"/>' for n in spec.labels)
    control = f'<{tag} name="{spec.from_name}" toName="image">{labels}</{tag}>'
    if spec.keypoint_from_name:
        points = "".join(f'<Label value="{n}"/>' for n in spec.keypoint_labels)
        control += f'<KeyPointLabels name="{spec.keypoint_from_name}" toName="image">{points}</KeyPointLabels>'
    return f'<View><Image name="image" value="$image"/>{control}</View>'


def test_every_task_type_s_predicted_regions_pass_label_studio_s_region_check(Results: Any) -> None:
    """What each task type predicts (boxes, rotated boxes, keypoints with their box, polygons and
    brush masks from masks, a choice) is what label-studio-sdk's validation accepts for a matching
    label config: the region check every pre-annotation runs before writing drops none of it."""
    import torch

    from labelloop.labelstudio.region_check import RegionCheck

    boxes = torch.tensor([[20.0, 10, 60, 40, 0.9, 0], [100, 20, 150, 90, 0.8, 1]])
    masks = torch.zeros(2, H, W)
    masks[0, 10:40, 20:60] = 1
    masks[1, 20:90, 100:150] = 1
    kpts = torch.tensor(
        [[[30.0, 30, 0.9], [40, 40, 0.9], [50, 35, 0.9]], [[130, 30, 0.9], [120, 50, 0.9], [140, 60, 0.9]]]
    )
    obb = torch.tensor([[100.0, 50, 40, 20, 0.5, 0.9, 2], [40, 60, 30, 10, -0.3, 0.8, 0]])
    cases = [
        (DETECT, Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes)),
        (OBB, Results(blank_image(), "a.png", MODEL_NAMES, obb=obb)),
        (POSE, Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes, keypoints=kpts)),
        (POLY, Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes, masks=masks)),
        (BRUSH, Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes, masks=masks)),
        (CLASSIFY, Results(blank_image(), "a.png", MODEL_NAMES, probs=torch.tensor([0.2, 0.1, 0.7]))),
    ]
    for spec, result in cases:
        regions, _ = results_to_regions(result, spec, MODEL_NAMES, show_conf=0.1, score_conf=0.1)
        assert regions, spec.task
        check = RegionCheck(_label_config(spec))
        assert check(regions) == (regions, []), spec
        # and the check is live for that config: a label it does not have is refused
        unknown = {**regions[0], "value": {**regions[0]["value"], spec.region_type: ["zebra"]}}
        kept, errors = check([unknown])
        assert kept == [] and len(errors) == 1, spec
