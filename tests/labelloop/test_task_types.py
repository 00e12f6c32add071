"""The task-type registry: one module per Ultralytics task behind one interface, bound to its
spec once, and README's "What it trains" naming that module for each row. Each task type's own
behaviour is tested in its module (test_detect.py, test_obb.py, test_segment.py, test_pose.py,
test_classify.py, test_video_task_type.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labelloop.task_types import TASK_TYPES, TaskType, task_class, task_type
from labelloop.task_types.convert import annotation_to_yolo, predictions_to_regions
from labelloop.task_types.outputs import ModelOutputs
from labelloop.task_types.spec import TrainSpec
from tests.labelloop.ls_regions import CLASS_IDS, CLASSIFY, DETECT, NAMES, OBB, POLY, POSE, H, W, rect

ROOT = Path(__file__).resolve().parents[2]


def test_every_ultralytics_task_has_its_module_and_unknown_ones_are_errors() -> None:
    """detect, obb, segment, pose and classify each resolve to a TaskType class of their own module;
    an unknown task is a ValueError naming the known ones."""
    assert sorted(TASK_TYPES) == ["classify", "detect", "obb", "pose", "segment"]
    for name, kind in TASK_TYPES.items():
        assert issubclass(kind, TaskType) and kind.name == name and task_class(name) is kind
        assert kind.__module__ == f"labelloop.task_types.{name}"
        assert kind.control_tags
    with pytest.raises(ValueError, match="labelloop trains detect"):
        task_class("depth")
    with pytest.raises(ValueError, match="labelloop trains detect"):
        task_type(DETECT.with_task("depth"))


def test_layouts_and_metrics_follow_the_task() -> None:
    """Only classify uses class folders and top-1 accuracy; pose adds kpt_shape to data.yaml."""
    assert [n for n, k in TASK_TYPES.items() if not k.label_files] == ["classify"]
    assert {n: k.promotion_metric for n, k in TASK_TYPES.items() if k.promotion_metric} == {"classify": "accuracy_top1"}
    assert task_class("segment").metrics_attr == "seg" and task_class("pose").metrics_attr == "pose"
    assert task_type(POSE).data_yaml_extra() == {"kpt_shape": [3, 3]} and task_type(DETECT).data_yaml_extra() == {}


def test_readme_names_the_module_of_every_row() -> None:
    """Each row of README's "What it trains" names the task type module that implements it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### What it trains") : text.index("### Base models")]
    rows = [r for r in section.splitlines() if r.startswith("| `")]
    assert len(rows) == 7
    for row in rows:
        task = "video" if "`VideoRectangle`" in row else row.split("|")[2].strip()
        module = re.search(r"`(labelloop/task_types/\w+\.py)`", row)
        assert module and module.group(1) == f"labelloop/task_types/{task}.py", row
        assert (ROOT / module.group(1)).is_file()


def test_the_label_config_picks_task_types_from_their_control_tags() -> None:
    """Which control tag trains which task comes from the task types' ``control_tags``; obb
    (rotated rectangles) and pose (paired tags) are never picked by one tag alone."""
    from labelloop.task_types.labels import _REGION_TYPE, _TASK_OF

    assert _TASK_OF == {
        tag: name for name, kind in TASK_TYPES.items() if kind.trained_alone for tag in kind.control_tags
    }
    assert set(_TASK_OF.values()) == {"detect", "segment", "classify"}
    assert _REGION_TYPE["KeyPointLabels"] == "keypointlabels"


@pytest.mark.parametrize("spec", [DETECT, OBB, POLY, POSE, CLASSIFY])
def test_task_type_is_bound_to_its_spec(spec: TrainSpec) -> None:
    """``task_type(spec)`` is the spec's task type holding that spec: the regions it makes carry the
    spec's from_name and to_name, with no spec passed to its methods."""
    kind = task_type(spec)
    assert type(kind) is task_class(kind.spec.task) and kind.spec is spec
    assert repr(kind).startswith(f"{type(kind).__name__}(TrainSpec(task='{kind.spec.task}'")
    if kind.name == "classify":
        (region,) = kind.predictions(NAMES, W, H, ModelOutputs(probs=[0.1, 0.0, 0.3, 0.0, 0.6]))
        assert (region["from_name"], region["to_name"], region["value"]) == ("choice", "image", {"choices": ["cat"]})
        return
    line = {
        "detect": "4 0.5 0.5 0.2 0.2",
        "obb": "4 0.4 0.4 0.6 0.4 0.6 0.6 0.4 0.6",
        "segment": "4 0.4 0.4 0.6 0.4 0.6 0.6",
        "pose": "4 0.5 0.5 0.2 0.2 0 0 0 0 0 0 0 0 0",
    }[kind.name]
    (region, *_) = kind.line_regions(line, NAMES, W, H)
    assert (region["from_name"], region["to_name"]) == (kind.spec.from_name, "image")


def test_the_bound_type_and_the_convert_functions_agree() -> None:
    """``convert``'s functions (spec passed with each call) give what the bound task type gives."""
    result = [rect(20, 10, 40, 30), rect(100, 50, 20, 10, rid="r2", label="dog")]
    assert task_type(DETECT).annotation_to_lines(result, CLASS_IDS, W, H) == annotation_to_yolo(
        result, DETECT, CLASS_IDS, W, H
    )
    outputs = {"boxes_xyxy": [[20, 10, 60, 40]], "classes": [4], "scores": [0.9]}
    bound = task_type(DETECT).predictions(NAMES, W, H, ModelOutputs(**outputs))
    free = predictions_to_regions(DETECT, NAMES, W, H, **outputs)
    assert [{**r, "id": ""} for r in bound] == [{**r, "id": ""} for r in free]
