"""``obb`` (labelloop.task_types.obb): rotated rectangles to corner lines and back, and Ultralytics
OBB results as rotated rectangle regions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from labelloop.task_types.convert import (
    annotation_to_yolo,
    rectangle_corners,
    results_to_regions,
    yolo_to_regions,
)
from tests.labelloop.ls_regions import (
    CLASS_IDS,
    MODEL_NAMES,
    NAMES,
    OBB,
    H,
    W,
    blank_image,
    numbers,
    rect,
    results_class,
    same_points,
)


@pytest.fixture(scope="module")
def Results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return results_class(tmp_path_factory)


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


@pytest.mark.parametrize("angle", [0.0, 0.4, -0.6, 1.2, math.pi / 2])
def test_results_obb(Results: Any, angle: float) -> None:
    """Ultralytics OBB Results become a rectangle with the same corners, rotated within 45 degrees of axis-aligned
    and by the OBB angle up to a multiple of 90; classes not in the label config are left out."""
    import torch

    obb = torch.tensor([[100.0, 50, 60, 20, angle, 0.8, 1], [10, 10, 5, 5, 0, 0.9, 2]])
    res = Results(blank_image(), "a.png", MODEL_NAMES, obb=obb)
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
