"""The training child's spec.json read back as typed records (labelloop.training.job): the same
file ``TrainingJob.to_dict`` and ``run_training_process`` write, nothing lost on the way."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from labelloop.dataset.pseudo.job import PseudoJob
from labelloop.manifest import TrainingJob
from labelloop.training.job import ChildRun, read_job

JOB = TrainingJob(
    weights="/models/7/versions/v3/best.pt",
    data="/cache/7/ds/data.yaml",
    task="segment",
    config_dir="/cache/yolo",
    epochs=30,
    imgsz=320,
    batch=8,
    device="cpu",
    workers=2,
    seed=5,
    incumbent="/models/7/versions/v2/best.pt",
    incumbent_imgsz=384,
    fallback_weights="yolo26n-seg.yaml",
    show_prior=0.3,
    extra={"nbs": 8, "time_s": 120.0, "mosaic": 0.5, "close_mosaic": 3, "freeze": 10, "checkpoint": "last"},
    pseudo=PseudoJob("/v3.pt", "/run/pseudo", {"0": 0}, 4, 16, [(1, "/a.png")], 0.8, 0.25, 0.5, "v3"),
)


def test_a_job_reads_back_as_it_was_written() -> None:
    """``read_job`` is the inverse of ``TrainingJob.to_dict``: every field, and the recipe's
    Ultralytics arguments back in ``extra``, through the JSON text the child reads."""
    assert read_job(json.loads(json.dumps(JOB.to_dict()))) == JOB


def test_a_hand_written_job_gets_the_defaults_and_keeps_unknown_keys_as_extra() -> None:
    """A job written by hand (tests, bench) may leave out the task and the defaulted fields; a key
    that is no field (an experiment's ``lr0``) is an Ultralytics argument in ``extra``."""
    job = read_job(
        {
            "data": "d.yaml",
            "weights": "yolov8n.yaml",
            "epochs": 2,
            "imgsz": 64,
            "batch": 2,
            "config_dir": "y",
            "lr0": 0.01,
        }
    )
    assert (job.task, job.device, job.workers, job.seed, job.show_prior) == ("", "", 0, 0, 0.5)
    assert (job.incumbent, job.fallback_weights, job.pseudo, job.extra) == (None, None, None, {"lr0": 0.01})
    assert job.incumbent_imgsz is None
    with pytest.raises(KeyError, match="epochs"):
        read_job({"data": "d.yaml", "weights": "w.pt", "imgsz": 64, "batch": 2, "config_dir": "y"})


def test_the_run_keys_are_the_runs_not_the_jobs(tmp_path: Path) -> None:
    """``run_dir`` in spec.json describes the run and ``validate_only`` the job (score these weights
    instead of training): neither is passed to Ultralytics through ``extra``; without ``run_dir``
    the run is the spec's folder."""
    spec = tmp_path / "spec.json"
    checking = replace(JOB, validate_only="/v1.pt")
    spec.write_text(json.dumps({**checking.to_dict(), "run_dir": str(tmp_path / "run")}))
    run = ChildRun.read(spec)
    assert (run.job, run.run_dir, run.validate_only) == (checking, tmp_path / "run", "/v1.pt")
    assert "validate_only" not in run.job.extra and "run_dir" not in run.job.extra
    spec.write_text(json.dumps(JOB.to_dict()))
    assert ChildRun.read(spec) == ChildRun(JOB, tmp_path) and ChildRun.read(spec).validate_only is None
