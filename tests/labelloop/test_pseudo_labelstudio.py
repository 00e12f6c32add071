"""Self-training against a real Label Studio and real Ultralytics trainings: the served version's
predictions on unlabeled tasks join the train split of the next training, never its val split."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from labelloop.dataset.images import val_score
from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import make_sample
from labelloop.jobs import pipeline
from labelloop.manifest import TrainingJob, TrainingResult
from tests.factories import image_project, make_settings

pytestmark = pytest.mark.labelstudio

W, H = 160, 120


def test_a_training_with_pseudo_labels_trains_on_confident_unlabeled_images_in_its_train_split_only(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting off, a training is what it was (no record, no pseudo stage). Setting on, with a served version and
    unlabeled tasks: the served version predicts them in the training process, the chosen images (at most ratio x
    the human train images, never a skipped, annotated or would-be-val task) are written as Ultralytics detect
    labels into a train folder of the run's own, the val split stays the human one, the project's dataset folder
    gets no pseudo file, and the manifest records images, regions, thresholds and the version."""
    api = LabelStudioAPI(*label_studio)
    samples = [make_sample(500 + i, W, H) for i in range(20)]
    pid, ids = image_project(api, "labelloop pseudo-labels", samples, annotate=8)
    skipped = ids[8]
    api.sdk.annotations.create(id=skipped, result=[], was_cancelled=True)
    training: dict[str, Any] = {
        "epochs": 1,
        "imgsz": 64,
        "batch": 4,
        "dataloader_workers": 0,
        "device": "cpu",
        "offline": True,
        "base_model": "yolov8n.yaml",
    }
    off = pipeline.run_training(
        make_settings(tmp_path, redis_url=redis_url, label_studio=label_studio, **training), pid, "run-1"
    )
    assert off.manifest.get("pseudo_labels") is None and "pseudo" not in off.manifest["timings"]

    # A one-epoch model from scratch is confident of nothing: thresholds this low let every image it finds
    # anything on qualify, so the test sees the files (the rule itself is unit-tested in test_pseudo.py).
    pseudo = {"pseudo_labels": True, "pseudo_conf": 0.0001, "predict_conf": 0.0001, "pseudo_ratio": 0.5}
    on = make_settings(tmp_path, redis_url=redis_url, label_studio=label_studio, **training, **pseudo)
    kept = tmp_path / "kept"
    real = pipeline.train_in_child
    out_dirs: list[str] = []

    def keep_pseudo_folder(job: TrainingJob, *args: Any, **kwargs: Any) -> TrainingResult:
        result = real(job, *args, **kwargs)
        if job.pseudo is not None and Path(job.pseudo.out_dir).exists():
            out_dirs.append(job.pseudo.out_dir)
            shutil.copytree(job.pseudo.out_dir, kept)  # the run directory goes with the run
        return result

    monkeypatch.setattr(pipeline, "train_in_child", keep_pseudo_folder)
    version = pipeline.run_training(on, pid, "run-2")

    record = version.manifest["pseudo_labels"]
    print({k: v for k, v in record.items() if k != "task_ids"})
    human_train = version.manifest["dataset_size"]["train"]
    assert record["applied"] is True and record["skipped"] is None, record
    assert record["version"] == off.name and (record["conf"], record["low_conf"], record["ratio"]) == (1e-4, 1e-4, 0.5)
    assert record["cap"] == human_train // 2 and 1 <= record["images"] == len(record["task_ids"]) <= record["cap"]
    assert record["regions"] >= record["images"] and record["predicted"] <= record["pool"]
    pseudo_ids = set(record["task_ids"])
    assert pseudo_ids <= set(ids[9:])  # never an annotated or skipped task
    assert all(val_score(t) >= 0.2 for t in pseudo_ids)  # never a task the val split would take
    dataset = on.paths.dataset_dir(pid) / "yolo"
    val_ids = {int(p.stem) for p in (dataset / "images" / "val").iterdir()}
    assert val_ids and not pseudo_ids & val_ids
    on_disk = {int(p.stem) for p in (dataset / "images").rglob("*.png")}
    assert not pseudo_ids & on_disk  # the project's dataset stays human-labelled

    data = yaml.safe_load((kept / "data.yaml").read_text())
    assert data["val"] == str(dataset / "images" / "val")
    assert data["train"] == [str(dataset / "images" / "train"), str(Path(out_dirs[0]) / "images" / "train")]
    assert {int(p.stem) for p in (kept / "images" / "train").iterdir()} == pseudo_ids
    lines = [line for f in (kept / "labels" / "train").glob("*.txt") for line in f.read_text().splitlines()]
    assert len(lines) == record["regions"]
    for line in lines:
        cls, *box = line.split()
        assert cls in {"0", "1"} and len(box) == 4 and all(0.0 <= float(v) <= 1.0 for v in box)
    assert version.manifest["promotion"]["val_objects"] >= 1  # gated on the human val split as always
    assert version.manifest["timings"]["pseudo"] > 0
