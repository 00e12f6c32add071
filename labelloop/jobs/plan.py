"""What a training will do, decided before it starts: the weights to start from, the Ultralytics
arguments (``labelloop.training.recipe``) and the child's job (``labelloop.manifest.TrainingJob``),
then the manifest of the version it produced.
"""

from __future__ import annotations

from dataclasses import dataclass

from labelloop.dataset.images import BuildResult
from labelloop.manifest import (
    BaseModelRecord,
    Incumbent,
    Manifest,
    PseudoLabels,
    Recipe,
    SpecRecord,
    TrainArgs,
    TrainingJob,
    TrainingResult,
)
from labelloop.registry.base_models import BaseModel, family_yaml
from labelloop.registry.base_models import resolve as resolve_base_model
from labelloop.registry.params import EffectiveParams
from labelloop.registry.store import ModelVersion
from labelloop.settings import Settings
from labelloop.task_types.labels import TrainSpec
from labelloop.training.child import cuda_present
from labelloop.training.recipe import OVERRIDABLE, DataShape, plan_recipe
from labelloop.training.threshold import PRIOR


def same_task(manifest: Manifest, spec: TrainSpec) -> bool:
    """Whether a version was trained for the same task, control tag and keypoints."""
    return (
        manifest.task == spec.task
        and (manifest.from_name or spec.from_name) == spec.from_name
        and tuple(manifest.spec.get("keypoint_labels") or ()) == spec.keypoint_labels
    )


@dataclass
class TrainingPlan:
    """What a training will do, decided before it starts (``plan_training``)."""

    job: TrainingJob
    train_args: TrainArgs
    recipe: Recipe
    warm_start: bool
    base: BaseModel | None
    same_kind: bool
    # The manifest's pseudo_labels when none are predicted in the child (skipped, or the setting off: None).
    pseudo_labels: PseudoLabels | None = None


def plan_training(
    settings: Settings,
    built: BuildResult,
    parent: ModelVersion | None,
    operator_base_model: bool,
    params: EffectiveParams,
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
    same = served is not None and same_task(served, spec)
    same_kind = parent is not None and same and served is not None and served.class_names() == built.names
    base = None
    if parent is not None and same:
        weights, pretrained = str(parent.weights), True
    else:
        base = resolve_base_model(
            params["base_model"],
            spec.task,
            settings.paths.weights_dir,
            settings.offline,
            from_operator=operator_base_model,
        )
        weights, pretrained = base.weights, base.pretrained
    device = settings.device or ("0" if cuda_present() else "cpu")
    recipe = plan_recipe(
        DataShape(report.images["train"], report.images["val"], report.long_side_p90, report.object_side_p10),
        device=device,
        warm_start=base is None,
        pretrained=pretrained,
        overrides={k: params.get(k) for k in OVERRIDABLE},
    )
    ultralytics_args = recipe.train_args()
    train_args = TrainArgs(weights=weights)
    train_args.update(ultralytics_args)
    train_args.update(TrainArgs(device=settings.device, workers=settings.dataloader_workers, seed=settings.seed))
    extra = ultralytics_args.copy()  # the job's fields by name, the rest flat beside them
    del extra["epochs"], extra["imgsz"], extra["batch"]
    job = TrainingJob(
        weights=weights,
        data=str(built.data),
        task=spec.task,
        config_dir=str(settings.paths.yolo_config_dir),
        epochs=recipe.epochs,
        imgsz=recipe.imgsz,
        batch=recipe.batch,
        device=settings.device,
        workers=settings.dataloader_workers,
        seed=settings.seed,
        incumbent=str(parent.weights) if parent is not None and same else None,
        incumbent_imgsz=served.trained_imgsz() if served is not None and same else None,
        fallback_weights=family_yaml(base.weights) if base and base.source == "download" else None,
        show_prior=PRIOR,
        extra=extra,
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
        base_model = BaseModelRecord(
            requested=base.requested,
            weights=base.weights,
            pretrained=base.pretrained,
            source=base.source,
            note=base.note,
        )
        if result.base_model_note:
            base_model["note"] = result.base_model_note
    else:
        base_model = BaseModelRecord(fine_tuned_from=parent.name if parent else None)
    return Manifest(
        task=spec.task,
        classes=list(spec.labels),
        names={str(k): v for k, v in built.names.items()},
        spec=SpecRecord(
            task=spec.task,
            region_type=spec.region_type,
            from_name=spec.from_name,
            to_name=spec.to_name,
            value_key=spec.value_key,
            labels=list(spec.labels),
            keypoint_from_name=spec.keypoint_from_name,
            keypoint_labels=list(spec.keypoint_labels),
        ),
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
        pseudo_labels=pseudo,
        show_conf=result.show_conf,
    )
