"""Celery task shells: bind log context, call one plain function, return.

Task arguments are ids and small values; each task re-reads the world (Label Studio, the
registry) and decides for itself what is still needed.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import redis
import structlog
from celery import Celery

from service.errors import LabelloopError
from service.settings import Settings
from workers.celery_app import (
    QUEUE_PREDICT,
    QUEUE_TRAIN,
    TASK_HANDLE_EVENT,
    TASK_PREANNOTATE,
    TASK_PREDICT,
    TASK_RECONCILE,
    TASK_TRAIN,
)
from workers.changes import ChangeLog
from workers.export import export_tasks, ls_client
from workers.ledger import PROJECTS_KEY, Change, Ledger, annotations_in_export, diff
from workers.media import MediaConfig
from workers.params import load as load_params
from workers.params import train_spec
from workers.pipeline import run_training, yolo_config_dir
from workers.preannotate import preannotate_project
from workers.predictor import Predictor
from workers.progress import ProgressStore
from workers.registry import Registry
from workers.trigger import TriggerStore

log = structlog.get_logger(__name__)

ANNOTATION_ACTIONS = {
    "ANNOTATION_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATIONS_DELETED",
}


def register_tasks(app: Celery) -> None:
    """Define labelloop's tasks on ``app`` under their explicit names."""
    settings: Settings = app.conf.labelloop_settings

    @functools.cache
    def redis_client() -> redis.Redis:
        return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=10)

    @functools.cache
    def predictor() -> Predictor:
        p = Predictor(
            Registry(settings.models_dir),
            settings.base_model,
            yolo_config_dir(settings),
            Path(settings.cache_dir).absolute(),
            settings.imgsz,
            settings.predict_conf,
            settings.device,
            media=MediaConfig.from_settings(settings),
        )
        p.listen(settings.redis_url)
        return p

    def every_n(project_id: int) -> int:
        return int(load_params(settings.models_dir, project_id).effective(settings)["train_every_n"])

    def ledger() -> Ledger:
        return Ledger(redis_client())

    def trigger() -> TriggerStore:
        return TriggerStore(redis_client(), lock_ttl_s=settings.train_time_limit_s + 600)

    def start_training(project_id: int, run_id: str, reason: str) -> None:
        app.send_task(TASK_TRAIN, args=[project_id, run_id], queue=QUEUE_TRAIN)
        log.info("training_enqueued", project_id=project_id, run_id=run_id, reason=reason)

    @app.task(name=TASK_HANDLE_EVENT, ignore_result=True)
    def handle_event(project_id: int, action: str, changes: list[list[Any]] | None = None) -> str:
        """Apply one recorded webhook event to the ledger and the project's trigger policy.

        ``changes`` is ``[[annotation_id, updated_at or None], ...]`` (None: deleted).
        """
        with structlog.contextvars.bound_contextvars(project_id=project_id, action=action):
            return _handle_event(project_id, action, [(int(i), u) for i, u in changes or []])

    def ensure_ledger(project_id: int) -> None:
        """After Redis lost the ledger, start it from what the served version was trained on."""
        if ledger().redis.exists(Ledger.key(project_id)):
            return
        served = Registry(settings.models_dir).current(project_id)
        baseline = (served.manifest.get("annotations") or {}) if served else {}
        if served and ledger().seed(project_id, {int(i): u for i, u in baseline.items()}):
            log.info("ledger_seeded", version=served.name, annotations=len(baseline))

    def _handle_event(project_id: int, action: str, changes: list[Change]) -> str:
        ensure_ledger(project_id)
        if action == "START_TRAINING":
            redis_client().sadd(PROJECTS_KEY, project_id)
            decision = trigger().apply(project_id, "start_training", every_n(project_id))
        else:
            count = ledger().apply(project_id, changes)
            if count == 0:
                log.info("event_handled", changes=len(changes), effective=0)
                return "unchanged"
            decision = trigger().apply(project_id, "annotation", every_n(project_id), count=count)
        log.info(
            "event_handled",
            changes=len(changes),
            start=decision.start,
            pending=decision.state.pending,
            followup=decision.state.followup,
        )
        if decision.start and decision.run_id:
            start_training(project_id, decision.run_id, action)
            return "started"
        return "coalesced" if decision.state.followup else "counted"

    @app.task(name=TASK_RECONCILE, ignore_result=True)
    def reconcile() -> dict[str, int]:
        """Compare each known project's annotations in Label Studio with the ledger and feed the
        changes whose webhooks were missed to the trigger policy."""
        registry = Registry(settings.models_dir)
        projects = ledger().projects() | set(registry.projects())
        client = ls_client(settings.label_studio_url, settings.api_key)
        missed: dict[str, int] = {}
        for project_id in sorted(projects):
            with structlog.contextvars.bound_contextvars(project_id=project_id):
                try:
                    current = annotations_in_export(export_tasks(client, project_id))
                except Exception as exc:  # one unreachable project must not stop the others
                    log.warning("reconcile_failed", error_type=type(exc).__name__, error=str(exc)[:500])
                    continue
                ensure_ledger(project_id)
                changes = diff(ledger().seen(project_id), current)
                if changes:
                    log.info("reconcile_missed_changes", changes=len(changes))
                    # Their webhooks never arrived: the next dataset build reads Label Studio.
                    ChangeLog(redis_client()).invalidate(project_id)
                    _handle_event(project_id, "RECONCILED", changes)
                missed[str(project_id)] = len(changes)
        return missed

    @app.task(
        name=TASK_TRAIN,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        time_limit=settings.train_time_limit_s + 300,
    )
    def train(self: Any, project_id: int, run_id: str) -> dict[str, Any]:
        """Run the training pipeline for a project and publish the new version."""
        with structlog.contextvars.bound_contextvars(project_id=project_id, run_id=run_id, task_id=self.request.id):
            return _train(self, project_id, run_id)

    last_beat: dict[str, float] = {}

    def beat_lock(project_id: int, run_id: str) -> None:
        # Keep the lock alive while the training runs (at most once a minute).
        now = time.monotonic()
        if now - last_beat.get(run_id, 0.0) >= 60:
            last_beat[run_id] = now
            trigger().refresh_lock(project_id, run_id)

    def _train(task: Any, project_id: int, run_id: str) -> dict[str, Any]:
        outcome: dict[str, Any] = {"project_id": project_id, "run_id": run_id}
        progress = ProgressStore(redis_client())

        def on_progress(p: dict[str, Any]) -> None:
            # Celery state PROGRESS shows in Flower; the Redis record feeds `labelloop status`.
            meta = {"project_id": project_id, "run_id": run_id, **p}
            task.update_state(state="PROGRESS", meta=meta)
            progress.update(project_id, run_id, stage="training", **p)
            log.info("training_progress", epoch=p["epoch"], epochs=p["epochs"])

        try:
            progress.update(project_id, run_id, stage="preparing", task_id=task.request.id, pid=os.getpid())
            version = run_training(
                settings,
                project_id,
                run_id,
                on_progress=on_progress,
                should_cancel=lambda: progress.cancel_requested(project_id, run_id),
                heartbeat=lambda: beat_lock(project_id, run_id),
            )
            status = version.manifest.get("status")
            outcome.update(status=status, version=version.name, metrics=version.manifest.get("metrics"))
            if status == "promoted":
                if load_params(settings.models_dir, project_id).effective(settings)["preannotate"]:
                    app.send_task(TASK_PREANNOTATE, args=[project_id, version.name], queue=QUEUE_PREDICT)
        except LabelloopError as exc:
            log.error("training_failed", error_type=type(exc).__name__, error=str(exc)[:2000])
            outcome.update(status="failed", error=str(exc)[:2000])
        finally:
            progress.clear(project_id, run_id)
            decision = trigger().apply(project_id, "finished", every_n(project_id), run_id=run_id)
            if decision.start and decision.run_id:
                start_training(project_id, decision.run_id, "followup")
        return outcome

    @app.task(name=TASK_PREANNOTATE, bind=True)
    def preannotate(self: Any, project_id: int, version: str) -> dict[str, Any]:
        """Predict every unlabeled task of a project with a newly promoted version into Label Studio."""
        with structlog.contextvars.bound_contextvars(project_id=project_id, version=version, task_id=self.request.id):
            progress = ProgressStore(redis_client())

            def on_progress(done: int, total: int) -> None:
                meta = {"project_id": project_id, "version": version, "done": done, "total": total}
                self.update_state(state="PROGRESS", meta=meta)
                progress.set_preannotation(project_id, meta)

            try:
                return preannotate_project(
                    ls_client(settings.label_studio_url, settings.api_key),
                    predictor(),
                    project_id,
                    version,
                    settings.preannotate_batch,
                    settings.label_studio_url,
                    settings.api_key,
                    settings.set_project_model_version,
                    on_progress,
                )
            finally:
                progress.set_preannotation(project_id, None)

    @app.task(name=TASK_PREDICT)
    def predict(project_id: int, label_config: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        """Predict regions for Label Studio tasks with the project's served version."""
        with structlog.contextvars.bound_contextvars(project_id=project_id, task_id=predict.request.id):
            params = load_params(settings.models_dir, project_id)
            spec = train_spec(label_config, params)
            imgsz = params.effective(settings)["imgsz"]
            results = predictor().predict(
                project_id, spec, tasks, settings.label_studio_url, settings.api_key, imgsz=imgsz
            )
            return {"results": results}
