"""The task-type registry: one module per Ultralytics task behind one interface, and README's
"What it trains" naming that module for each row."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from labelloop.task_types import TASK_TYPES, TaskType, task_type

ROOT = Path(__file__).resolve().parents[2]


def test_every_ultralytics_task_has_its_module_and_unknown_ones_are_errors() -> None:
    """detect, obb, segment, pose and classify each resolve to a TaskType of their own module;
    an unknown task is a ValueError naming the known ones."""
    assert sorted(TASK_TYPES) == ["classify", "detect", "obb", "pose", "segment"]
    for name, kind in TASK_TYPES.items():
        assert isinstance(kind, TaskType) and kind.name == name
        assert type(kind).__module__ == f"labelloop.task_types.{name}"
        assert kind.control_tags
    with pytest.raises(ValueError, match="labelloop trains detect"):
        task_type("depth")


def test_layouts_and_metrics_follow_the_task() -> None:
    """Only classify uses class folders and top-1 accuracy; pose adds kpt_shape to data.yaml."""
    assert [n for n, k in TASK_TYPES.items() if not k.label_files] == ["classify"]
    assert {n: k.promotion_metric for n, k in TASK_TYPES.items() if k.promotion_metric} == {"classify": "accuracy_top1"}
    assert task_type("segment").metrics_attr == "seg" and task_type("pose").metrics_attr == "pose"


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


def test_class_metrics_name_each_validated_class() -> None:
    """Per-class metrics come from Ultralytics' own DetMetrics, keyed by class name, for the classes
    the validation split has: a class found every time scores high, one never found scores 0."""
    from ultralytics.utils.metrics import DetMetrics

    metrics = DetMetrics(names={0: "cat", 1: "dog", 2: "bird"})
    # Two images: each cat found at high confidence (tp at every IoU threshold); the dog missed
    # and a false dog predicted instead. "bird" is in no image.
    for image in range(2):
        metrics.update_stats(
            {
                "tp": np.array([[True] * 10, [False] * 10]),
                "conf": np.array([0.9, 0.8]),
                "pred_cls": np.array([0.0, 1.0]),
                "target_cls": np.array([0.0, 1.0]),
                "target_img": np.array([0.0, 1.0]),
                "im_name": f"img{image}.jpg",
            }
        )
    metrics.process()
    per_class = task_type("detect").class_metrics(metrics)
    assert set(per_class) == {"cat", "dog"}
    assert per_class["cat"]["ap50"] > 0.9 and per_class["cat"]["precision"] > 0.9 and per_class["cat"]["recall"] == 1
    assert per_class["dog"] == {"ap50": 0.0, "map50_95": 0.0, "precision": 0.0, "recall": 0.0}
    assert task_type("classify").class_metrics(object()) == {}
