"""The training pipeline: export -> images -> dataset -> fine-tune -> publish.

Each run works in its own directory ``<cache_dir>/runs/<project_id>/<run_id>``; only the
final ``Registry.publish`` changes what is served, so a crash at any stage leaves the current
version in place.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis
import structlog

from service.settings import Settings
from workers.changes import ChangeLog
from workers.dataset import build_project_dataset
from workers.labels import TrainSpec
from workers.ledger import annotations_in_export
from workers.notify import serve_when_warm
from workers.params import load as load_params
from workers.promotion import decide_promotion
from workers.registry import ModelVersion, Registry
from workers.training import run_training_process

log = structlog.get_logger(__name__)


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)


def yolo_config_dir(settings: Settings) -> Path:
    """Where ultralytics keeps its settings and fonts for labelloop's processes."""
    return Path(settings.cache_dir).absolute() / "ultralytics"


def run_training(
    settings: Settings,
    project_id: int,
    run_id: str,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> ModelVersion:
    """Train a new version of a project's model from its current annotations and publish it.

    Stages and their wall seconds go into the manifest's ``timings``: ``export`` (label
    config + JSON export), ``download`` (images), ``build`` (dataset files), ``train``
    (ultralytics, in a child process, including its final validation) and ``publish``.

    Returns:
        the published version: promoted when it passed the promotion gate (candidate and
        incumbent scored on the same validation split), else kept with status "rejected".

    Raises:
        DatasetError: Label Studio is not configured or too little data is usable.
        TrainingError: ultralytics failed.
    """
    registry = Registry(settings.models_dir)
    params = load_params(settings.models_dir, project_id).effective(settings)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    run_dir = Path(settings.cache_dir).absolute() / "runs" / str(project_id) / run_id

    built = build_project_dataset(settings, project_id, changes=ChangeLog(_redis(settings)))
    spec, report = built.spec, built.report
    timings["export"] = report.seconds.get("export", 0.0)
    timings["download"] = report.seconds.get("download", 0.0)
    timings["build"] = report.seconds.get("select", 0.0) + report.seconds.get("build", 0.0)
    log.info(
        "dataset_built",
        task=spec.task,
        sync=report.sync.get("mode"),
        train=report.images["train"],
        val=report.images["val"],
        skipped=len(report.skipped),
        downloaded=report.images_downloaded,
        export_s=round(timings["export"], 3),
        download_s=round(timings["download"], 3),
        build_s=round(timings["build"], 3),
    )

    parent = registry.current(project_id)
    # Fine-tune the served version when it was trained for the same task (and keypoints); with
    # a class added since, Ultralytics keeps every layer whose shape still fits and starts the
    # class outputs afresh. The promotion gate compares with it only when the classes are the
    # same (otherwise their scores are not comparable). A new task starts from its base model.
    same_task = parent is not None and _same_task(parent.manifest, spec)
    same_kind = parent is not None and same_task and _same_names(parent.manifest, built.names)
    weights = (
        str(parent.weights) if parent is not None and same_task else base_model_for(params["base_model"], spec.task)
    )
    train_args = {
        "weights": weights,
        "epochs": params["epochs"],
        "imgsz": params["imgsz"],
        "batch": params["batch"],
        "device": settings.device,
        "workers": settings.dataloader_workers,
        "seed": settings.seed,
    }
    t0 = time.perf_counter()
    result = run_training_process(
        {
            **train_args,
            "data": str(built.data),
            "task": spec.task,
            "config_dir": str(yolo_config_dir(settings)),
            "incumbent": str(parent.weights) if parent is not None and same_kind else None,
        },
        run_dir / "train",
        timeout_s=settings.train_time_limit_s,
        on_progress=on_progress,
        should_cancel=should_cancel,
        heartbeat=heartbeat,
    )
    timings["train"] = time.perf_counter() - t0 - result.get("val_seconds", 0.0)
    timings["validate"] = result.get("val_seconds", 0.0)
    log.info("training_finished", seconds=round(timings["train"], 3), **result["metrics"])
    metric = params["promotion_metric"] if spec.task != "classify" else "accuracy_top1"
    decision = decide_promotion(result["metrics"], result.get("incumbent_metrics"), metric, params["promotion_margin"])

    timings["total"] = time.perf_counter() - t_start
    manifest = {
        "task": spec.task,
        "classes": list(spec.labels),
        "names": {str(k): v for k, v in built.names.items()},
        "spec": asdict(spec),
        "from_name": spec.from_name,
        "to_name": spec.to_name,
        "metrics": result["metrics"],
        "incumbent": {"version": parent.name, "metrics": result.get("incumbent_metrics")} if parent else None,
        "promotion": {
            "metric": metric,
            "margin": params["promotion_margin"],
            "promoted": decision.promote,
            "reason": decision.reason,
        },
        "dataset": report.to_dict(),
        "dataset_size": {"train": report.images["train"], "val": report.images["val"]},
        "train_args": {**train_args, "device": result["device"]},
        "run_id": run_id,
        "timings": timings,
        # What this version was trained on: reconciliation's baseline when Redis lost its ledger.
        "annotations": {str(k): v for k, v in annotations_in_export(built.tasks).items()},
    }
    version = registry.publish(project_id, Path(result["best"]), manifest, promote=decision.promote, move_current=False)
    if decision.promote:
        serve_when_warm(_redis(settings), registry, project_id, version.name, reason="promoted")
    log.info(
        "version_published" if decision.promote else "candidate_rejected",
        version=version.name,
        reason=decision.reason,
        **{f"{k}_s": round(v, 3) for k, v in timings.items()},
    )
    shutil.rmtree(run_dir, ignore_errors=True)
    return version


# Model YAMLs per task for a detection base model YAML (``yolov8n.yaml`` -> ``yolov8n-seg.yaml``).
_TASK_SUFFIX = {"detect": "", "obb": "-obb", "segment": "-seg", "pose": "-pose", "classify": "-cls"}


def base_model_for(base_model: str, task: str) -> str:
    """The base model to start a ``task`` from: a detection model YAML such as ``yolov8n.yaml``
    becomes the task's YAML (``yolov8n-seg.yaml``, ``-obb``, ``-pose``, ``-cls``); a .pt file
    or a YAML already naming a task is used as given."""
    path = Path(base_model)
    if not re.fullmatch(r"yolo(v?\d+)[nslmx]?\.ya?ml", base_model):
        return base_model
    return f"{path.stem}{_TASK_SUFFIX[task]}{path.suffix}"


def _same_task(manifest: dict[str, Any], spec: TrainSpec) -> bool:
    """Whether a version was trained for the same task, control tag and keypoints."""
    old_spec = manifest.get("spec") or {}
    return (
        manifest.get("task", "detect") == spec.task
        and manifest.get("from_name", spec.from_name) == spec.from_name
        and tuple(old_spec.get("keypoint_labels") or ()) == spec.keypoint_labels
    )


def _same_names(manifest: dict[str, Any], names: dict[int, str]) -> bool:
    """Whether a version was trained with the same class ids."""
    old = manifest.get("names") or dict(enumerate(manifest.get("classes") or []))
    return {int(k): v for k, v in old.items()} == names
