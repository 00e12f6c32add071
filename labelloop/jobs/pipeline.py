"""The training pipeline: export -> images -> dataset -> fine-tune -> publish.

Each run works in its own directory ``<cache_dir>/runs/<project_id>/<run_id>``
(``labelloop.training.runs``: removed on every exit); only the final publish changes what is served, so a
crash at any stage leaves the current version in place, and the publish promotes only over the
version the training started from (``gate_and_publish``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
import structlog

from labelloop.dataset.images import BuildResult, build_project_dataset
from labelloop.dataset.pseudo import prepare as prepare_pseudo_labels
from labelloop.errors import TrainingError
from labelloop.events.changes import ChangeLog
from labelloop.events.ledger import annotations_in_export
from labelloop.manifest import (
    Incumbent,
    Manifest,
    Promotion,
    PseudoLabels,
    Recipe,
    ShowConf,
    TrainingJob,
    TrainingResult,
)
from labelloop.registry.base_models import BaseModel, family_yaml
from labelloop.registry.base_models import resolve as resolve_base_model
from labelloop.registry.notify import serve_when_warm
from labelloop.registry.params import load as load_params
from labelloop.registry.promotion import Decision, comparable
from labelloop.registry.store import ModelVersion, Registry
from labelloop.settings import Settings
from labelloop.task_types import task_type
from labelloop.task_types.labels import TrainSpec
from labelloop.training.child import cuda_present, run_training_process
from labelloop.training.recipe import OVERRIDABLE, DataShape, plan_recipe
from labelloop.training.runs import run_directory

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
    config + JSON export), ``download`` (images), ``build`` (dataset files), ``pseudo`` (with
    ``LABELLOOP_PSEUDO_LABELS``: listing and fetching unlabeled tasks, ``labelloop.dataset.pseudo``), ``train``
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
    with run_directory(settings.cache_dir, project_id, run_id) as run_dir:
        built = build_project_dataset(settings, project_id, changes=ChangeLog(_redis(settings)))
        timings = _log_dataset(built)
        parent = registry.current(project_id)
        plan = plan_training(settings, built, parent, project_params.base_model is None, params)
        t0 = time.perf_counter()
        pseudo = prepare_pseudo_labels(settings, project_id, built, parent, params, run_dir / "pseudo")
        plan.job.pseudo, plan.pseudo_labels = pseudo.job, pseudo.record
        if params.get("pseudo_labels"):
            timings["pseudo"] = time.perf_counter() - t0
        log.info(
            "training_recipe",
            warm_start=plan.warm_start,
            **{k: v for k, v in plan.train_args.items() if k != "weights"},
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
        timings["total"] = time.perf_counter() - t_start
        candidate = Candidate(built, parent, plan, result, run_id, timings, should_cancel)
        return gate_and_publish(settings, registry, project_id, candidate)


@dataclass
class Candidate:
    """A finished training waiting for the promotion gate: what it was built and trained on,
    the version served when it started (``parent``) and its run's stage timings."""

    built: BuildResult
    parent: ModelVersion | None
    plan: TrainingPlan
    result: TrainingResult
    run_id: str
    timings: dict[str, float]
    # True once the run must not publish (cancelled, or its lease on the project was lost).
    should_cancel: Callable[[], bool] | None = None


REGATES = 3  # served-version changes a candidate follows before it gives up promoting


def gate_and_publish(settings: Settings, registry: Registry, project_id: int, candidate: Candidate) -> ModelVersion:
    """Gate ``candidate`` against the served version and publish it; promote it only if
    ``CURRENT`` still names the version served when the training started.

    Under the project's registry lock (``Registry.lock``) ``CURRENT`` is compared with the
    version the candidate was gated against; if an operator promoted or rolled back meanwhile,
    the lock is released, the new served version is validated on the candidate's split (a
    child process, ``labelloop.training.child.validate``) and the gate decides again against it (up
    to ``REGATES`` times; then the candidate is published rejected). The version is published,
    served (``serve_when_warm`` with a compare-and-swap) and old versions pruned
    (``LABELLOOP_KEEP_VERSIONS``) while the lock is held, so no rollback lands in between.

    Returns:
        the published version, "promoted" or "rejected".

    Raises:
        TrainingError: validating the new served version failed.
    """
    built, result = candidate.built, candidate.result
    params = load_params(settings.models_dir, project_id).effective(settings)
    kind = task_type(built.spec)
    metric = kind.promotion_metric or str(params["promotion_metric"])
    report = built.report
    n_val = kind.validation_count(report.images["val"], sum(report.instances_per_class.get("val", {}).values()))
    served, incumbent_metrics = candidate.parent, result.incumbent_metrics
    incumbent_classes, margin = result.incumbent_class_metrics, params["promotion_margin"]
    # What this version is trained on (annotations.json): reconciliation's baseline when Redis lost its ledger.
    annotations = {str(k): v for k, v in annotations_in_export(built.tasks).items()}
    for attempt in range(REGATES + 1):
        expected = served.name if served is not None else None
        # A label added or removed since the served version: compared on the labels both know.
        shared = _shared_classes(served, built)
        compared = comparable(
            metric, result.metrics, result.class_metrics or {}, incumbent_metrics, incumbent_classes, shared, n_val
        )
        decision = compared.decide(metric, margin)
        if attempt == REGATES:
            decision = Decision(False, f"the served version kept changing during the gate ({decision.reason})")
        manifest = version_manifest(
            built, candidate.parent, candidate.plan, result, candidate.run_id, candidate.timings
        )
        manifest.incumbent = Incumbent(version=served.name, metrics=incumbent_metrics) if served else None
        manifest.promotion = Promotion(
            metric=metric,
            margin=margin,
            promoted=decision.promote,
            reason=decision.reason,
            noise=decision.noise,
            val_objects=compared.n_val,
        )
        with registry.lock(project_id):
            if candidate.should_cancel is not None and candidate.should_cancel():
                raise TrainingError("training cancelled before publishing")
            now = registry.current_name(project_id)
            if now == expected or attempt == REGATES:
                version = registry.publish(
                    project_id,
                    Path(result.best),
                    manifest.to_json(),
                    promote=decision.promote,
                    move_current=False,
                    annotations=annotations,
                )
                if decision.promote:
                    serve_when_warm(_redis(settings), registry, project_id, version.name, "promoted", expect=expected)
                pruned = registry.prune(project_id, settings.keep_versions)
                break
        log.info("served_version_moved", started_from=expected, served=now, regate=attempt + 1)
        served = registry.current(project_id) if now else None
        incumbent_metrics, incumbent_classes = _validate_served(
            settings, built, candidate.plan, served, candidate.run_id, attempt
        )
    log.info(
        "version_published" if decision.promote else "candidate_rejected",
        version=version.name,
        reason=decision.reason,
        pruned=pruned,
        **{f"{k}_s": round(v, 3) for k, v in candidate.timings.items()},
    )
    return version


def _validate_served(
    settings: Settings, built: BuildResult, plan: TrainingPlan, served: ModelVersion | None, run_id: str, attempt: int
) -> tuple[dict[str, float] | None, dict[str, dict[str, float]] | None]:
    """The served version's metrics and per-class metrics on the candidate's split, or Nones
    when the gate cannot compare with it (nothing served, another task: see ``plan_training``)."""
    if served is None or not _same_task(served.record, built.spec):
        return None, None
    job = {**plan.job.to_dict(), "validate_only": str(served.weights)}
    with run_directory(settings.cache_dir, int(served.project_id), f"{run_id}-regate{attempt + 1}") as run_dir:
        out = run_training_process(job, run_dir, timeout_s=settings.train_time_limit_s)
    return {k: float(v) for k, v in out["metrics"].items()}, out.get("class_metrics")


def _shared_classes(served: ModelVersion | None, built: BuildResult) -> dict[str, int] | None:
    """None when the served version knows the dataset's classes (or nothing is served); else
    each label both know under the same class id -> its validation objects."""
    if served is None or served.record.class_names() == built.names:
        return None
    old = served.record.class_names()
    val = built.report.instances_per_class.get("val", {})
    return {name: int(val.get(name, 0)) for i, name in built.names.items() if old.get(i) == name}


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
    # The manifest's pseudo_labels when none are predicted in the child (skipped, or the setting off: None).
    pseudo_labels: dict[str, Any] | None = None


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
    the class outputs afresh. The promotion gate compares with it on the classes both know
    (``labelloop.registry.promotion.comparable``). A new task starts from its base model.
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
        incumbent=str(parent.weights) if parent is not None and same_task else None,
        fallback_weights=family_yaml(base.weights) if base and base.source == "download" else None,
        predict_conf=settings.predict_conf,
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
    pseudo = result.pseudo_labels or plan.pseudo_labels
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
        class_metrics=result.class_metrics or {},
        incumbent=Incumbent(version=parent.name, metrics=result.incumbent_metrics) if parent else None,
        dataset=report.to_dict(),
        dataset_size={"train": report.images["train"], "val": report.images["val"]},
        train_args={**plan.train_args, "device": result.device, "weights": result.weights or plan.job.weights},
        recipe=plan.recipe.model_copy(update={"epochs_run": result.epochs_run, "checkpoint_used": result.checkpoint}),
        base_model=base_model,
        run_id=run_id,
        timings=timings,
        pseudo_labels=PseudoLabels.model_validate(pseudo) if pseudo else None,
        show_conf=ShowConf.model_validate(result.show_conf) if result.show_conf else None,
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
