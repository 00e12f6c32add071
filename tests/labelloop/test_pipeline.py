"""The end of a training: gate and publish, against the version served when it is published."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from labelloop.jobs.gate import Candidate, gate_and_publish
from labelloop.jobs.plan import plan_training
from labelloop.manifest import TrainingResult
from labelloop.registry.store import Registry
from labelloop.training.runs import runs_dir
from tests.conftest import served_images_dataset
from tests.factories import make_settings, publish_version


def test_a_training_started_before_an_operator_rollback_is_gated_again_against_the_rollback_target(
    trained: dict, image_server: tuple[str, Path], redis_url: str, tmp_path: Path
) -> None:
    """A candidate whose training started while v2 was served, published after an operator rolled back to v1
    (the real CLI, another process), is validated and gated against v1 (its real metrics on the candidate's
    split in the manifest), not promoted over the rollback as if v2 were still served; the rollback stays in
    the history and rolling back again serves v1."""
    _, root = image_server
    built = served_images_dataset(root, tmp_path / "ds")
    spec = built.spec
    settings = make_settings(
        tmp_path, redis_url=redis_url, imgsz=160, epochs=2, batch=4, dataloader_workers=0, offline=True
    )
    registry = Registry(settings.models_dir)
    names = {str(k): v for k, v in built.names.items()}
    for _ in range(2):
        publish_version(
            registry, 1, trained["result"]["best"], from_name=spec.from_name, names=names, spec=asdict(spec)
        )
    parent = registry.current(1)  # the training starts while v2 is served
    assert parent is not None and parent.name == "v2"
    plan = plan_training(settings, built, parent, True, {"base_model": "yolov8n.yaml"})

    env = {**os.environ, "LABELLOOP_MODELS_DIR": str(settings.models_dir), "LABELLOOP_REDIS_URL": redis_url}
    rollback = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "rollback", "1"], env=env, capture_output=True, text=True
    )
    assert rollback.returncode == 0, rollback.stderr
    assert registry.current_name(1) == "v1"

    result = TrainingResult.from_dict(trained["result"])  # a training that gated against nothing yet
    version = gate_and_publish(settings, registry, 1, Candidate(built, parent, plan, result, "run-1", {}))

    record = version.record
    assert record.incumbent is not None and record.incumbent.version == "v1"
    assert record.incumbent.metrics is not None and set(record.incumbent.metrics) >= {"map50_95", "map50"}
    assert record.promotion.reason is not None and " vs " in record.promotion.reason  # compared, not "no incumbent"
    assert record.parent == "v1"
    # The same weights as v1 on the same split score the same: the gate promotes it over v1, on top of the rollback.
    assert record.incumbent.metrics == pytest.approx({k: result.metrics[k] for k in record.incumbent.metrics})
    assert registry.current_name(1) == version.name == "v3"
    assert [(h["version"], h["reason"]) for h in registry.history(1)] == [
        ("v1", "promoted"),
        ("v2", "promoted"),
        ("v1", "rollback"),
        ("v3", "promoted"),
    ]
    assert registry.rollback_target(1) == "v1"
    assert not list((runs_dir(settings.cache_dir) / "1").iterdir())  # the re-gate's run directory is gone


def test_the_served_version_is_gated_at_the_imgsz_it_is_served_at(
    image_server: tuple[str, Path], redis_url: str, tmp_path: Path
) -> None:
    """The training's job scores the incumbent at the imgsz its manifest records (what /predict uses for it),
    not the candidate's; a version that recorded none is scored at the candidate's; both survive spec.json."""
    from labelloop.training.job import read_job

    _, root = image_server
    built = served_images_dataset(root, tmp_path / "ds")
    settings = make_settings(tmp_path, redis_url=redis_url, imgsz=160, dataloader_workers=0, offline=True)
    registry = Registry(settings.models_dir)
    names = {str(k): v for k, v in built.names.items()}
    common = {"from_name": built.spec.from_name, "names": names, "spec": asdict(built.spec)}
    publish_version(registry, 1, train_args={"imgsz": 128}, **common)
    parent = registry.current(1)
    assert parent is not None and parent.record.trained_imgsz() == 128
    plan = plan_training(settings, built, parent, True, {"base_model": "yolov8n.yaml"})
    assert (plan.job.incumbent, plan.job.incumbent_imgsz, plan.job.imgsz) == (str(parent.weights), 128, 160)
    assert read_job(plan.job.to_dict()).incumbent_imgsz == 128

    publish_version(registry, 1, **common)  # an older manifest: no train_args
    parent = registry.current(1)
    assert parent is not None and parent.record.trained_imgsz() is None
    plan = plan_training(settings, built, parent, True, {"base_model": "yolov8n.yaml"})
    assert (plan.job.incumbent_imgsz, plan.job.imgsz) == (None, 160)
