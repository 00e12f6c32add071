"""Typed records: the version manifest reads old and new manifests alike, and the training job
and result keep the JSON the training process reads and writes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from labelloop.manifest import Manifest, Promotion, TrainingJob, TrainingResult
from labelloop.registry.store import Registry


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
    # Registry.publish by hand (not tests.factories.publish_version): the test is about what it writes of a Manifest.
    registry.publish(3, weights, first.to_json())
    second = registry.publish(3, weights, Manifest(task="segment").to_json(), promote=False)
    record = second.record
    assert (record.version, record.parent, record.status, record.project_id) == ("v2", "v1", "rejected", 3)
    assert registry.get(3, "v1").record.class_names() == {0: "cell"}
    assert registry.get(3, "v1").record.metrics == {"map50": 0.7}


def test_training_job_and_result_keep_the_training_process_json() -> None:
    """The job is the flat JSON ``labelloop.training.child.train`` reads (recipe extras merged in); the
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
    # spec.json's keys and order as written before validate_only was a field: extras, fields, pseudo.
    assert list(body) == [
        "nbs", "time_s", "weights", "data", "task", "config_dir", "epochs", "imgsz", "batch", "device",
        "workers", "seed", "incumbent", "fallback_weights", "show_prior", "pseudo",
    ]  # fmt: skip
    assert list(replace(job, validate_only="/v.pt").to_dict())[-1] == "validate_only"
    assert replace(job, incumbent_imgsz=384).to_dict()["incumbent_imgsz"] == 384
    result = TrainingResult.from_dict(
        {"best": "/b.pt", "metrics": {"map50": 0.1}, "device": "cpu", "epochs_planned": 9}
    )
    assert result.best == "/b.pt" and result.incumbent_metrics is None


def test_a_manifest_keeps_counts_not_lists_that_grow_with_the_tasks(tmp_path: Path) -> None:
    """A version trained on 5,000 tasks with 3,000 skipped, 4,000 dropped regions and 2,500
    pseudo-labelled tasks writes a manifest of a few KiB: each of those lists keeps its first
    SAMPLE items and its length in ``<key>_total``; the counts stay whole and a reread changes nothing."""
    from labelloop.dataset.images import DatasetReport
    from labelloop.manifest import SAMPLE, PseudoLabels

    report = DatasetReport(tasks_exported=5000)
    for task in range(3000):
        report.skip(task, "no image")
    report.dropped_regions = [{"task": t, "reason": "outside the image"} for t in range(4000)]
    pseudo = {"applied": True, "images": 2500, "task_ids": list(range(2500))}
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    registry = Registry(tmp_path / "models")
    manifest = Manifest(dataset=report.to_dict(), pseudo_labels=PseudoLabels.model_validate(pseudo))
    registry.publish(1, weights, manifest.to_json())  # by hand: the test is about the Manifest it writes

    path = tmp_path / "models" / "1" / "versions" / "v1" / "manifest.json"
    assert path.stat().st_size < 8192, path.stat().st_size
    record = registry.get(1, "v1").record
    assert len(record.dataset["skipped"]) == SAMPLE and record.dataset["skipped_total"] == 3000
    assert record.dataset["skipped_counts"] == {"no image": 3000}
    assert len(record.dataset["dropped_regions"]) == SAMPLE and record.dataset["dropped_regions_total"] == 4000
    assert record.pseudo_labels is not None and record.pseudo_labels.task_ids == list(range(SAMPLE))
    assert record.pseudo_labels.task_ids_total == 2500
    assert Manifest.model_validate(record.to_json()).to_json() == record.to_json()
