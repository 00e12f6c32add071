"""The promotion gate and the publish: a finished training's candidate against the served version,
promoted only over the version the training started from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from labelloop import redis_client
from labelloop.dataset.images import BuildResult
from labelloop.errors import TrainingError
from labelloop.events.ledger import annotations_in_export
from labelloop.jobs.plan import TrainingPlan, same_task, version_manifest
from labelloop.manifest import Incumbent, Promotion, TrainingResult
from labelloop.registry.notify import serve_when_warm
from labelloop.registry.params import load as load_params
from labelloop.registry.promotion import Decision, comparable
from labelloop.registry.store import ModelVersion, Registry
from labelloop.settings import Settings
from labelloop.task_types import task_type
from labelloop.training.process import validate_in_child
from labelloop.training.runs import run_directory

log = structlog.get_logger(__name__)


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
    built, result, plan = candidate.built, candidate.result, candidate.plan
    params = load_params(settings.models_dir, project_id).effective(settings)
    client = redis_client.client(settings.redis_url, "worker")
    kind = task_type(built.spec)
    metric = kind.promotion_metric or params["promotion_metric"]
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
        manifest = version_manifest(built, candidate.parent, plan, result, candidate.run_id, candidate.timings)
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
                    serve_when_warm(client, registry, project_id, version.name, "promoted", expect=expected)
                pruned = registry.prune(project_id, settings.keep_versions)
                break
        log.info("served_version_moved", started_from=expected, served=now, regate=attempt + 1)
        served = registry.current(project_id) if now else None
        incumbent_metrics, incumbent_classes = _validate_served(
            settings, built, plan, served, candidate.run_id, attempt
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
    if served is None or not same_task(served.record, built.spec):
        return None, None
    with run_directory(settings.cache_dir, int(served.project_id), f"{run_id}-regate{attempt + 1}") as run_dir:
        as_served = replace(plan.job, imgsz=served.record.trained_imgsz() or plan.job.imgsz)
        out = validate_in_child(as_served, str(served.weights), run_dir, timeout_s=settings.train_time_limit_s)
    return out.metrics, out.class_metrics


def _shared_classes(served: ModelVersion | None, built: BuildResult) -> dict[str, int] | None:
    """None when the served version knows the dataset's classes (or nothing is served); else
    each label both know under the same class id -> its validation objects."""
    if served is None or served.record.class_names() == built.names:
        return None
    old = served.record.class_names()
    val = built.report.instances_per_class.get("val", {})
    return {name: int(val.get(name, 0)) for i, name in built.names.items() if old.get(i) == name}
