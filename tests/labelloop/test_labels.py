"""Label config parsing and Label Studio <-> YOLO box conversion."""

from __future__ import annotations

import pytest

from labelloop.dev.synthetic import LABEL_CONFIG
from labelloop.errors import LabelConfigError
from labelloop.task_types.convert import annotation_to_yolo
from labelloop.task_types.labels import (
    TrainSpec,
    parse_detection_config,
    parse_label_config,
    rectangle_to_yolo,
    xyxy_to_rectangle,
)
from tests.conftest import fixture

SPEC = TrainSpec("detect", "rectanglelabels", "label", "image", "image", ("cat", "dog"))
CLASS_IDS = {"cat": 0, "dog": 1}


def test_parses_the_captured_label_config() -> None:
    """The label config Label Studio sent to /setup gives from_name, to_name, data key and labels."""
    spec = parse_detection_config(fixture("ml_setup_request.json")["schema"])
    assert spec == TrainSpec("detect", "rectanglelabels", "label", "image", "image", ("cat", "dog"))


def test_class_ids_follow_label_config_order() -> None:
    """Labels keep the order they have in the label config."""
    spec = parse_detection_config(LABEL_CONFIG)
    assert spec.labels == ("square", "disc")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("<View><Image", "does not parse"),
        (
            '<View><Image name="i" value="$i"/><Choices name="c" toName="i" choice="multiple">'
            '<Choice value="a"/></Choices></View>',
            "multiple choices",
        ),
        (
            '<View><Image name="i" value="$i"/><KeyPointLabels name="k" toName="i"><Label value="a"/></KeyPointLabels>'
            "</View>",
            "needs exactly one RectangleLabels",
        ),
        (
            '<View><Image name="i" value="$i"/><PolygonLabels name="p" toName="i"/></View>',
            "has no Label values",
        ),
        (
            '<View><Image name="i" value="$i"/><PolygonLabels name="p" toName="i"><Label value="a"/></PolygonLabels>'
            '<Choices name="c" toName="i"><Choice value="a"/></Choices></View>',
            "set the extra param control_tag",
        ),
        (
            '<View><Image name="i" value="$i"/>'
            '<RectangleLabels name="a" toName="i"><Label value="x"/></RectangleLabels>'
            '<RectangleLabels name="b" toName="i"><Label value="y"/></RectangleLabels></View>',
            "several",
        ),
        (
            '<View><Text name="t" value="$t"/><RectangleLabels name="a" toName="t"><Label value="x"/></RectangleLabels>'
            "</View>",
            "no trainable control tag",
        ),
    ],
)
def test_unsupported_label_configs_are_clear_errors(config: str, message: str) -> None:
    """Unparsable, untrainable or ambiguous label configs raise LabelConfigError with a reason."""
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(config)


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ({"x": 10, "y": 20, "width": 30, "height": 40}, (200, 100), (0.25, 0.40, 0.30, 0.40)),
        ({"x": 0, "y": 0, "width": 100, "height": 100, "rotation": 0}, (64, 48), (0.5, 0.5, 1.0, 1.0)),
        # Partly outside the image: clamped to it.
        ({"x": 90, "y": 90, "width": 20, "height": 20}, (100, 100), (0.95, 0.95, 0.10, 0.10)),
        # Rotated 90 degrees clockwise around the top-left corner (50, 0) in a square image:
        # the box spans x 30..50, y 0..10 (in pixels of a 100x100 image).
        ({"x": 50, "y": 0, "width": 10, "height": 20, "rotation": 90}, (100, 100), (0.40, 0.05, 0.20, 0.10)),
        # Rotation 360 is no rotation.
        (
            {"x": 10, "y": 10, "width": 10, "height": 10, "rotation": 360},
            (100, 100),
            (0.15, 0.15, 0.10, 0.10),
        ),
    ],
)
def test_rectangle_to_yolo(value: dict, size: tuple[int, int], expected: tuple[float, ...]) -> None:
    """Percent rectangles become normalised centre boxes; rotation gives the enclosing box."""
    got = rectangle_to_yolo(value, *size)
    assert got is not None
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value",
    [
        {"x": 10, "y": 10, "width": 0, "height": 10},
        {"x": 120, "y": 10, "width": 10, "height": 10},
        {"x": 10, "y": 10, "width": 0.5, "height": 10},
    ],
)
def test_degenerate_rectangles_are_dropped(value: dict) -> None:
    """Boxes thinner than a pixel after clamping give None."""
    assert rectangle_to_yolo(value, 100, 100) is None


def test_round_trip_pixel_box() -> None:
    """A pixel box converted to Label Studio percent and back to YOLO keeps its geometry."""
    rect = xyxy_to_rectangle((16.0, 12.0, 48.0, 36.0), 64, 48)
    assert rect == pytest.approx({"x": 25.0, "y": 25.0, "width": 50.0, "height": 50.0, "rotation": 0.0})
    assert rectangle_to_yolo(rect, 64, 48) == pytest.approx((0.5, 0.5, 0.5, 0.5))


def test_annotation_lines_from_captured_webhook() -> None:
    """The captured ANNOTATION_CREATED result becomes one YOLO line with class id 0 (cat)."""
    result = fixture("webhook_ANNOTATION_CREATED.json")["annotation"]["result"]
    lines, dropped = annotation_to_yolo(result, SPEC, CLASS_IDS, 64, 48)
    assert dropped == []
    assert lines == ["0 0.250000 0.350000 0.300000 0.400000"]


def test_unknown_labels_and_other_tags_are_reported_or_ignored() -> None:
    """A label outside the config is dropped with a reason; another control tag's region is ignored."""
    result = [
        {
            "id": "a",
            "from_name": "label",
            "type": "rectanglelabels",
            "value": {"x": 1, "y": 1, "width": 10, "height": 10, "rectanglelabels": ["horse"]},
        },
        {
            "id": "b",
            "from_name": "other",
            "type": "rectanglelabels",
            "value": {"x": 1, "y": 1, "width": 10, "height": 10, "rectanglelabels": ["cat"]},
        },
        {
            "id": "c",
            "from_name": "label",
            "type": "rectanglelabels",
            "value": {"x": 1, "y": 1, "width": 10, "height": 10, "rectanglelabels": ["dog"]},
        },
    ]
    lines, dropped = annotation_to_yolo(result, SPEC, CLASS_IDS, 100, 100)
    assert lines == ["1 0.060000 0.060000 0.100000 0.100000"]
    assert len(dropped) == 1 and "horse" in dropped[0]
