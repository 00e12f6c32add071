"""A label added to the label config: the candidate still goes through the promotion gate."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pytest

from labelloop.dataset.images import build_dataset, local_images
from labelloop.dev.synthetic import LABELS, make_sample, rectangle_config
from labelloop.jobs.gate import Candidate, gate_and_publish
from labelloop.jobs.plan import plan_training
from labelloop.manifest import TrainingResult
from labelloop.registry.promotion import comparable, decide_promotion
from labelloop.registry.store import Registry
from labelloop.task_types.labels import parse_detection_config
from labelloop.training.process import run_training_process
from tests.conftest import served_images_dataset
from tests.factories import make_settings, publish_version

SQUARE = {"ap50": 0.9, "map50_95": 0.6, "precision": 0.8, "recall": 0.7}
DISC = {"ap50": 0.7, "map50_95": 0.4, "precision": 0.6, "recall": 0.5}
BROKEN = {"ap50": 0.1, "map50_95": 0.05, "precision": 0.1, "recall": 0.1}
STAR = {"ap50": 0.9, "map50_95": 0.9, "precision": 0.9, "recall": 0.9}


@pytest.mark.parametrize(
    ("candidate_classes", "shared", "metric", "promote", "note"),
    [
        # The same classes: compared as measured (overall metrics).
        ({"square": SQUARE, "disc": DISC}, None, "map50_95", True, ""),
        # A label added, the known classes kept: compared on them, promoted.
        ({"square": SQUARE, "disc": DISC, "star": STAR}, {"square": 400, "disc": 400}, "map50_95", True, "shared"),
        # A label added and the known classes broken: a good score on the new class does not hide it.
        ({"square": BROKEN, "disc": BROKEN, "star": STAR}, {"square": 400, "disc": 400}, "map50_95", False, "shared"),
        ({"square": BROKEN, "disc": BROKEN, "star": STAR}, {"square": 400, "disc": 400}, "map50", False, "shared"),
        # No shared class has validation objects on both sides: overall scores, said so.
        ({"star": STAR}, {"square": 400, "disc": 400}, "map50_95", True, "overall"),
    ],
)
def test_a_candidate_with_changed_classes_is_gated_on_the_classes_both_know(
    candidate_classes: dict, shared: dict | None, metric: str, promote: bool, note: str
) -> None:
    """With classes changed since the served version, the gate compares the mean per-class metric over the
    classes both know (with their validation objects as noise), never skips: a candidate whose known classes
    collapsed is rejected however well it does on the added label."""
    incumbent_classes = {"square": SQUARE, "disc": DISC}
    overall = {"map50_95": 0.5, "map50": 0.8, "precision": 0.7, "recall": 0.6}
    candidate = {"map50_95": 0.6, "map50": 0.85, "precision": 0.75, "recall": 0.65}
    compared = comparable(metric, candidate, candidate_classes, overall, incumbent_classes, shared, 800)
    decision = compared.decide(metric, 0.01)
    assert decision.promote is promote, decision.reason
    assert decision == replace(
        decide_promotion(compared.candidate, compared.incumbent, metric, 0.01, compared.n_val), reason=decision.reason
    )
    assert compared.note in decision.reason
    assert compared.incumbent is not None
    assert (note in compared.note) if note else compared.note == ""


def test_a_label_added_to_the_config_still_goes_through_the_gate(
    trained: dict, image_server: tuple[str, Path], tmp_path: Path, redis_url: str
) -> None:
    """A project whose label config gained a label since v1: the training fine-tunes v1, validates v1 on the
    candidate's split too, and the gate compares them on the labels both know (not "no incumbent")."""
    _, root = image_server
    served = served_images_dataset(root, tmp_path / "ds-v1")
    registry = Registry(tmp_path / "models")
    known = {str(k): v for k, v in served.names.items()}
    publish_version(
        registry, 1, trained["result"]["best"], from_name=served.spec.from_name, names=known, spec=asdict(served.spec)
    )
    parent = registry.current(1)
    assert parent is not None

    # The same 12 annotated images, now under a label config with one more label (stable ids: appended).
    spec = parse_detection_config(rectangle_config((*LABELS, "star")))
    tasks = [
        {
            "id": i + 1,
            "data": {"image": f"img{i}.png"},
            "annotations": [{"id": i + 1, "result": make_sample(i, 160, 120).ls_result(), "was_cancelled": False}],
        }
        for i in range(12)
    ]
    names = {**served.names, len(served.names): "star"}
    images = local_images({i + 1: root / f"img{i}.png" for i in range(12)})
    built = build_dataset(tasks, spec, tmp_path / "ds-v2", images, 0.25, 2, names=names)
    assert built.names == names
    settings = make_settings(
        tmp_path, redis_url=redis_url, imgsz=160, epochs=1, batch=4, dataloader_workers=0, offline=True
    )
    # One epoch at 160 (the recipe's own epochs and time budget are not what this test is about).
    params = {"base_model": "yolov8n.yaml", "epochs": 1, "imgsz": 160, "batch": 4}
    plan = plan_training(settings, built, parent, True, params)
    assert plan.job.weights == str(parent.weights)  # fine-tuned from v1
    assert plan.job.incumbent == str(parent.weights)  # and v1 validated on the same split
    result = TrainingResult.from_dict(run_training_process(plan.job.to_dict(), tmp_path / "run", timeout_s=600))
    assert result.incumbent_metrics is not None and result.incumbent_class_metrics is not None
    version = gate_and_publish(settings, registry, 1, Candidate(built, parent, plan, result, "run-1", {}))

    promotion = version.record.promotion
    assert promotion.reason is not None and " vs " in promotion.reason, promotion.reason
    shared = sorted(set(result.incumbent_class_metrics) & set(result.class_metrics or {}) & set(LABELS))
    assert shared and f"on shared classes {', '.join(shared)}" in promotion.reason
    val = built.report.instances_per_class["val"]
    assert promotion.val_objects == sum(val[c] for c in shared)
    assert version.record.incumbent is not None and version.record.incumbent.version == "v1"
