"""The video task type: Label Studio's "Video Object Tracking" label config is trained as detect on
frames (``labelloop.task_types.video``), with the frame rate Label Studio uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelloop.dev.synthetic_video import video_config
from labelloop.errors import LabelConfigError
from labelloop.task_types import keyframes, video_task_type
from labelloop.task_types.labels import parse_label_config
from labelloop.task_types.video import VideoClip, VideoRectangles, frame_count_of, framerate, frames_count

CAPTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures/label-studio/video_annotation.json").read_text())


def test_video_object_tracking_config_is_its_own_task_type() -> None:
    """A VideoRectangle with Labels on a Video trains detect from the Video's labels, found by its
    region type; an image config is not the video type."""
    spec = parse_label_config(CAPTURE["label_config"])
    assert (spec.task, spec.region_type, spec.from_name, spec.to_name, spec.value_key) == (
        "detect",
        "videorectangle",
        "box",
        "video",
        "video",
    )
    assert spec.labels == ("square", "disc")
    kind = video_task_type(spec)
    assert isinstance(kind, VideoRectangles) and kind.spec == spec
    image = parse_label_config(
        '<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"><Label value="a"/>'
        "</RectangleLabels></View>"
    )
    assert video_task_type(image) is None


def test_video_configs_label_studio_cannot_train_are_refused_with_reasons() -> None:
    """No Labels on the Video, or two VideoRectangles without control_tag, is a LabelConfigError
    that says why; control_tag picks one of two."""
    with pytest.raises(LabelConfigError, match="no Labels"):
        parse_label_config('<View><Video name="v" value="$v"/><VideoRectangle name="b" toName="v"/></View>')
    two = (
        '<View><Video name="v" value="$v"/><VideoRectangle name="b1" toName="v"/>'
        '<VideoRectangle name="b2" toName="v"/><Labels name="l" toName="v"><Label value="a"/></Labels></View>'
    )
    with pytest.raises(LabelConfigError, match="several trainable control tags.*b1.*b2"):
        parse_label_config(two)
    assert parse_label_config(two, control_tag="b2").from_name == "b2"
    with pytest.raises(LabelConfigError, match="no trainable control tag"):
        parse_label_config(
            '<View><Video name="v" value="$v"/><Labels name="l" toName="v"><Label value="a"/></Labels></View>'
        )


def test_framerate_follows_the_video_tag() -> None:
    """The Video tag's frameRate (any case, or ``$key`` from the task data; below 1 inverted; else
    24) and framesCount ``round(duration * framerate)``, as Label Studio's editor."""
    assert framerate({}) == 24
    assert framerate({"frameRate": "30"}) == 30
    assert framerate({"framerate": "0.5"}) == 2
    assert framerate({"frameRate": "$fps"}, {"fps": 12.5}) == 12.5
    assert framerate({"frameRate": "fast"}) == 24
    assert framerate({"frameRate": "0"}) == 24
    assert frames_count(2.0, 24) == 48 and frames_count(10.01, 29.97) == 300


def test_frame_lines_are_the_boxes_label_studio_draws_on_each_frame() -> None:
    """Each wanted frame gets a YOLO line per region drawn there (none after a disabled keyframe,
    none before the first), from the captured annotation."""
    spec = parse_label_config(CAPTURE["label_config"])
    result = CAPTURE["annotation_result"]
    frames = frame_count_of(result, spec)
    assert frames == 48
    lines, dropped = VideoRectangles(spec).frame_lines(result, {"square": 0, "disc": 1}, range(1, frames + 1), 160, 120)
    assert dropped == []
    assert set(lines) == set(range(1, 49))
    drawn = {r["id"]: keyframes.frame_boxes(r["value"]["sequence"], frames) for r in result}
    for f in range(1, 49):
        expected = sorted(("0" if rid == "trk_a" else "1") for rid, boxes in drawn.items() if f in boxes)
        assert sorted(line.split()[0] for line in lines[f]) == expected, f
    assert lines[25] == [] and sorted(line[0] for line in lines[40]) == ["0", "1"]


def test_bad_regions_are_dropped_with_a_reason() -> None:
    """A region without label, with an unknown label or without keyframes is dropped and named."""
    spec = parse_label_config(video_config())
    seq = [{"frame": 1, "x": 1, "y": 1, "width": 10, "height": 10, "enabled": True}]
    result = [
        {"id": "a", "from_name": "box", "type": "videorectangle", "value": {"sequence": seq}},
        {"id": "b", "from_name": "box", "type": "videorectangle", "value": {"sequence": seq, "labels": ["cat"]}},
        {"id": "c", "from_name": "box", "type": "videorectangle", "value": {"sequence": [], "labels": ["disc"]}},
        {
            "id": "d",
            "from_name": "box",
            "type": "videorectangle",
            "value": {"sequence": [{"x": 1}], "labels": ["disc"]},
        },
    ]
    lines, dropped = VideoRectangles(spec).frame_lines(result, {"square": 0, "disc": 1}, [1, 2], 100, 100)
    assert lines == {1: [], 2: []}
    assert [d.split(":")[0] for d in dropped] == [f"region {k} (videorectangle)" for k in "abcd"]


def test_track_region_keeps_few_keyframes_and_the_video_timing() -> None:
    """A predicted track becomes one VideoRectangle region with its label and score, framesCount
    and duration, and keyframes Label Studio draws back on exactly the track's frames."""
    spec = parse_label_config(video_config())
    boxes = {f: {"x": 2.0 + f, "y": 10.0, "width": 20.0, "height": 10.0} for f in range(5, 41)}
    video = VideoRectangles(spec)
    region = video.track_region("disc", boxes, 0.42, 0.5, VideoClip(24.0, 48, 2.0, 160, 120))
    assert region is not None
    value = region["value"]
    assert (region["type"], region["from_name"], region["to_name"], region["score"]) == (
        "videorectangle",
        "box",
        "video",
        0.42,
    )
    assert (value["labels"], value["framesCount"], value["duration"]) == (["disc"], 48, 2.0)
    assert len(value["sequence"]) == 2
    assert sorted(keyframes.frame_boxes(value["sequence"], 48)) == list(range(5, 41))
    assert video.track_region("cat", boxes, 0.4, 0.5, VideoClip(24.0, 48, 2.0, 160, 120)) is None
