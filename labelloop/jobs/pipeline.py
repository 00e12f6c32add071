"""The training pipeline: export -> images -> dataset -> fine-tune -> publish.

Each run works in its own directory ``<cache_dir>/runs/<project_id>/<run_id>``
(``labelloop.training.runs``: removed on every exit); only the final publish changes what is served, so a
crash at any stage leaves the current version in place, and the publish promotes only over the
version the training started from (``labelloop.jobs.gate``). What to train is decided by
``labelloop.jobs.plan``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from labelloop import redis_client
from labelloop.dataset.images import BuildResult
from labelloop.dataset.pseudo import prepare as prepare_pseudo_labels
from labelloop.events.changes import ChangeLog
from labelloop.jobs.datasets import build_project_dataset, pseudo_source
from labelloop.jobs.gate import Candidate, gate_and_publish
from labelloop.jobs.plan import plan_training
from labelloop.registry.params import load as load_params
from labelloop.registry.store import ModelVersion, Registry
from labelloop.settings import Settings
from labelloop.training.process import OnProgress, train_in_child
from labelloop.training.runs import run_directory

log = structlog.get_logger(__name__)


def run_training(
    settings: Settings,
    project_id: int,
    run_id: str,
    on_progress: OnProgress | None = None,
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
        built = build_project_dataset(
            settings, project_id, changes=ChangeLog(redis_client.client(settings.redis_url, "worker"))
        )
        timings = _log_dataset(built)
        parent = registry.current(project_id)
        plan = plan_training(settings, built, parent, project_params.base_model is None, params)
        t0 = time.perf_counter()
        pseudo = prepare_pseudo_labels(pseudo_source(settings), project_id, built, parent, params, run_dir / "pseudo")
        plan.job.pseudo, plan.pseudo_labels = pseudo.job, pseudo.record
        if params["pseudo_labels"]:
            timings["pseudo"] = time.perf_counter() - t0
        log.info(
            "training_recipe",
            warm_start=plan.warm_start,
            **{k: v for k, v in plan.train_args.items() if k != "weights"},
        )
        t0 = time.perf_counter()
        result = train_in_child(
            plan.job,
            run_dir / "train",
            # What is left of the run's time limit after the dataset build.
            timeout_s=max(1.0, settings.train_time_limit_s - (time.perf_counter() - t_start)),
            on_progress=on_progress,
            should_cancel=should_cancel,
        )
        timings["train"] = time.perf_counter() - t0 - result.val_seconds
        timings["validate"] = result.val_seconds
        log.info("training_finished", seconds=round(timings["train"], 3), **result.metrics)
        timings["total"] = time.perf_counter() - t_start
        candidate = Candidate(built, parent, plan, result, run_id, timings, should_cancel)
        return gate_and_publish(settings, registry, project_id, candidate)


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
