"""``pose`` (labelloop.task_types.pose, pose_lines): boxes with their keypoints to pose lines, and
predicted keypoints parented to their boxes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from labelloop.task_types.convert import (
    annotation_to_yolo,
    results_to_regions,
)
from tests.labelloop.ls_regions import (
    CLASS_IDS,
    MODEL_NAMES,
    POSE,
    H,
    W,
    blank_image,
    keypoint,
    numbers,
    rect,
    results_class,
)


@pytest.fixture(scope="module")
def Results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return results_class(tmp_path_factory)


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
    res = Results(blank_image(), "a.png", MODEL_NAMES, boxes=boxes, keypoints=kpts)
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
