"""The training pipeline: export -> images -> dataset -> fine-tune -> publish.

Each run works in its own directory ``<cache_dir>/runs/<project_id>/<run_id>``; only the
final ``Registry.publish`` changes what is served, so a crash at any stage leaves the current
version in place.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
import structlog

from labelloop.base_models import BaseModel, family_yaml
from labelloop.base_models import resolve as resolve_base_model
from labelloop.changes import ChangeLog
from labelloop.dataset import BuildResult, build_project_dataset
from labelloop.errors import TrainingError
from labelloop.labels import TrainSpec
from labelloop.ledger import annotations_in_export
from labelloop.manifest import Incumbent, Manifest, Promotion, Recipe, TrainingJob, TrainingResult
from labelloop.notify import serve_when_warm
from labelloop.params import load as load_params
from labelloop.promotion import decide_promotion
from labelloop.recipe import OVERRIDABLE, DataShape, plan_recipe
from labelloop.registry import ModelVersion, Registry
from labelloop.settings import Settings
from labelloop.task_types import task_type
from labelloop.training import cuda_present, run_training_process

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
) -> ModelVersion:
    """Train a new version of a project's model from its current annotations and publish it.

    Stages and their wall seconds go into the manifest's ``timings``: ``export`` (label
    config + JSON export), ``download`` (images), ``build`` (dataset files), ``train``
    (ultralytics, in a child process, including its final validation) and ``publish``.

    Returns:
        the published version: promoted when it passed the promotion gate (candidate and
        incumbent scored on the same validation split), else kept with status "rejected".

    ``should_cancel`` is asked while Ultralytics runs and once more before publishing; the
    training child gets what is left of ``train_time_limit_s`` after the dataset build.

    Raises:
        DatasetError: Label Studio is not configured or too little data is usable.
        TrainingError: ultralytics failed, or the run was cancelled.
    """
    registry = Registry(settings.models_dir)
    project_params = load_params(settings.models_dir, project_id)
    params = project_params.effective(settings)
    t_start = time.perf_counter()
    run_dir = run_directory(settings, project_id, run_id)

    built = build_project_dataset(settings, project_id, changes=ChangeLog(_redis(settings)))
    timings = _log_dataset(built)
    parent = registry.current(project_id)
    plan = plan_training(settings, built, parent, project_params.base_model is None, params)
    log.info(
        "training_recipe", warm_start=plan.warm_start, **{k: v for k, v in plan.train_args.items() if k != "weights"}
    )
    t0 = time.perf_counter()
    result = TrainingResult.from_dict(
        run_training_process(
            plan.job.to_dict(),
            run_dir / "train",
            # What is left of the run's time limit after the dataset build.
            timeout_s=max(1.0, settings.train_time_limit_s - (time.perf_counter() - t_start)),
            on_progress=on_progress,
            should_cancel=should_cancel,
        )
    )
    timings["train"] = time.perf_counter() - t0 - result.val_seconds
    timings["validate"] = result.val_seconds
    log.info("training_finished", seconds=round(timings["train"], 3), **result.metrics)
    kind = task_type(built.spec.task)
    metric = kind.promotion_metric or str(params["promotion_metric"])
    report = built.report
    n_val = kind.validation_count(report.images["val"], sum(report.instances_per_class.get("val", {}).values()))
    decision = decide_promotion(result.metrics, result.incumbent_metrics, metric, params["promotion_margin"], n_val)
    timings["total"] = time.perf_counter() - t_start
    manifest = version_manifest(built, parent, plan, result, run_id, timings)
    manifest.promotion = Promotion(
        metric=metric,
        margin=params["promotion_margin"],
        promoted=decision.promote,
        reason=decision.reason,
        noise=decision.noise,
        val_objects=n_val,
    )
    if should_cancel is not None and should_cancel():
        raise TrainingError("training cancelled before publishing")
    version = registry.publish(
        project_id, Path(result.best), manifest.to_json(), promote=decision.promote, move_current=False
    )
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


def run_directory(settings: Settings, project_id: int, run_id: str) -> Path:
    """A run's working directory, ``<cache_dir>/runs/<project_id>/<run_id>`` (absolute)."""
    return Path(settings.cache_dir).absolute() / "runs" / str(int(project_id)) / run_id


def _log_dataset(built: BuildResult) -> dict[str, float]:
    """The dataset stages' wall seconds (``export``, ``download``, ``build``), logged."""
    spec, report = built.spec, built.report
    timings = {
        "export": report.seconds.get("export", 0.0),
        "download": report.seconds.get("download", 0.0),
        "build": report.seconds.get("select", 0.0) + report.seconds.get("build", 0.0),
    }
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
    return timings


@dataclass
class TrainingPlan:
    """What a training will do, decided before it starts (``plan_training``)."""

    job: TrainingJob
    train_args: dict[str, Any]
    recipe: Recipe
    warm_start: bool
    base: BaseModel | None
    same_kind: bool


def plan_training(
    settings: Settings,
    built: BuildResult,
    parent: ModelVersion | None,
    operator_base_model: bool,
    params: dict[str, Any],
) -> TrainingPlan:
    """Choose the weights to start from and the Ultralytics arguments (no I/O but resolving the
    base model on disk).

    The served version is fine-tuned when it was trained for the same task (and keypoints);
    with a class added since, Ultralytics keeps every layer whose shape still fits and starts
    the class outputs afresh. The promotion gate compares with it only when the classes are the
    same (otherwise their scores are not comparable). A new task starts from its base model.
    """
    spec, report = built.spec, built.report
    served = parent.record if parent is not None else None
    same_task = served is not None and _same_task(served, spec)
    same_kind = parent is not None and same_task and served is not None and served.class_names() == built.names
    base = None
    if parent is not None and same_task:
        weights, pretrained = str(parent.weights), True
    else:
        base = resolve_base_model(
            str(params["base_model"]),
            spec.task,
            weights_dir(settings),
            settings.offline,
            from_operator=operator_base_model,
        )
        weights, pretrained = base.weights, base.pretrained
    device = settings.device or ("0" if cuda_present() else "cpu")
    recipe = plan_recipe(
        DataShape(report.images["train"], report.images["val"], report.long_side_p90),
        device=device,
        warm_start=base is None,
        pretrained=pretrained,
        overrides={k: params.get(k) for k in OVERRIDABLE},
    )
    ultralytics_args = {k: v for k, v in recipe.to_dict().items() if k != "reasons"}
    train_args = {
        "weights": weights,
        **ultralytics_args,
        "device": settings.device,
        "workers": settings.dataloader_workers,
        "seed": settings.seed,
    }
    job = TrainingJob(
        weights=weights,
        data=str(built.data),
        task=spec.task,
        config_dir=str(yolo_config_dir(settings)),
        epochs=int(ultralytics_args.pop("epochs")),
        imgsz=int(ultralytics_args.pop("imgsz")),
        batch=int(ultralytics_args.pop("batch")),
        device=settings.device,
        workers=settings.dataloader_workers,
        seed=settings.seed,
        incumbent=str(parent.weights) if parent is not None and same_kind else None,
        fallback_weights=family_yaml(base.weights) if base and base.source == "download" else None,
        extra=ultralytics_args,
    )
    return TrainingPlan(
        job, train_args, Recipe(reasons=recipe.reasons, warm_start=base is None), base is None, base, same_kind
    )


def version_manifest(
    built: BuildResult,
    parent: ModelVersion | None,
    plan: TrainingPlan,
    result: TrainingResult,
    run_id: str,
    timings: dict[str, float],
) -> Manifest:
    """The manifest of the version a training produced (the promotion decision is set after)."""
    spec, report, base = built.spec, built.report, plan.base
    if base is not None:
        note = {"note": result.base_model_note} if result.base_model_note else {}
        base_model: dict[str, Any] = {**base.to_dict(), **note}
    else:
        base_model = {"fine_tuned_from": parent.name if parent else None}
    return Manifest(
        task=spec.task,
        classes=list(spec.labels),
        names={str(k): v for k, v in built.names.items()},
        spec=asdict(spec),
        from_name=spec.from_name,
        to_name=spec.to_name,
        metrics=result.metrics,
        incumbent=Incumbent(version=parent.name, metrics=result.incumbent_metrics) if parent else None,
        dataset=report.to_dict(),
        dataset_size={"train": report.images["train"], "val": report.images["val"]},
        train_args={**plan.train_args, "device": result.device, "weights": result.weights or plan.job.weights},
        recipe=plan.recipe.model_copy(update={"epochs_run": result.epochs_run, "checkpoint_used": result.checkpoint}),
        base_model=base_model,
        run_id=run_id,
        timings=timings,
        # What this version was trained on: reconciliation's baseline when Redis lost its ledger.
        annotations={str(k): v for k, v in annotations_in_export(built.tasks).items()},
    )


def weights_dir(settings: Settings) -> Path:
    """Where labelloop keeps downloaded Ultralytics assets (``<cache_dir>/weights``)."""
    return Path(settings.cache_dir).absolute() / "weights"


def _same_task(manifest: Manifest, spec: TrainSpec) -> bool:
    """Whether a version was trained for the same task, control tag and keypoints."""
    return (
        manifest.task == spec.task
        and (manifest.from_name or spec.from_name) == spec.from_name
        and tuple(manifest.spec.get("keypoint_labels") or ()) == spec.keypoint_labels
    )
