"""Typed records: the version manifest reads old and new manifests alike, and the training job
and result keep the JSON the training process reads and writes."""

from __future__ import annotations

from pathlib import Path

from labelloop.manifest import Manifest, Promotion, TrainingJob, TrainingResult
from labelloop.registry import Registry


def test_an_old_manifest_loads_with_defaults_and_keeps_unknown_keys(tmp_path: Path) -> None:
    """A manifest from before a field existed loads (defaults), its unknown keys survive a dump,
    and class names fall back to the ``classes`` order."""
    old = {"task": "detect", "classes": ["cat", "dog"], "metrics": {"map50_95": 0.5}, "future_key": [1, 2]}
    record = Manifest.model_validate(old)
    assert record.promotion == Promotion() and record.recipe.epochs_run is None
    assert record.class_names() == {0: "cat", 1: "dog"}
    assert record.to_json()["future_key"] == [1, 2]
    assert "status" not in record.to_json(), "registry fields are left to the registry"


def test_the_registry_completes_the_manifest_and_reads_it_typed(tmp_path: Path) -> None:
    """``publish`` adds version, parent, created_at and status; ``ModelVersion.record`` reads them typed."""
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    registry = Registry(tmp_path / "models")
    first = Manifest(task="segment", names={"0": "cell"}, metrics={"map50": 0.7}, run_id="r1")
    registry.publish(3, weights, first.to_json())
    second = registry.publish(3, weights, Manifest(task="segment").to_json(), promote=False)
    record = second.record
    assert (record.version, record.parent, record.status, record.project_id) == ("v2", "v1", "rejected", 3)
    assert registry.get(3, "v1").record.class_names() == {0: "cell"}
    assert registry.get(3, "v1").record.metrics == {"map50": 0.7}


def test_training_job_and_result_keep_the_training_process_json() -> None:
    """The job is the flat JSON ``labelloop.training.train`` reads (recipe extras merged in); the
    result ignores keys it does not know."""
    job = TrainingJob(
        weights="yolo26n.yaml",
        data="/d/data.yaml",
        task="detect",
        config_dir="/c",
        epochs=3,
        imgsz=64,
        batch=2,
        extra={"nbs": 2, "time_s": 60.0},
    )
    body = job.to_dict()
    assert body["nbs"] == 2 and body["epochs"] == 3 and "extra" not in body
    assert {"weights", "data", "task", "config_dir", "imgsz", "batch", "incumbent", "fallback_weights"} <= set(body)
    result = TrainingResult.from_dict(
        {"best": "/b.pt", "metrics": {"map50": 0.1}, "device": "cpu", "epochs_planned": 9}
    )
    assert result.best == "/b.pt" and result.incumbent_metrics is None
