"""labelloop's Celery tasks: module-level shells that take ids, bind log context, call one
method of ``labelloop.jobs.jobs.Jobs`` and return.

Names are explicit and never change (``labelloop.names``): queued messages survive upgrades.
Transient Redis and network errors (``TRANSIENT``) are retried with exponential backoff (up to
``MAX_RETRIES`` times, at most ``RETRY_BACKOFF_MAX_S`` apart: below the broker's visibility
timeout, so a retry waiting in a worker is never handed out twice); everything else is the job's
to report. The training is retried the same way (its last attempt reports the error), and is
redelivered when its worker dies (``acks_late``, ``reject_on_worker_lost``; a whole worker
killed: the broker's visibility timeout, while the running training keeps its delivery fresh).
Over Celery's soft time limit it is stopped and cleaned up. The interactive ``predict`` answers
at once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypedDict, TypeVar, cast

import structlog
from celery import Celery, Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import maybe_iso8601, maybe_make_aware

from labelloop import ls_json
from labelloop.jobs import broker
from labelloop.jobs.jobs import Jobs
from labelloop.jobs.lifecycle import TRANSIENT_ERRORS, TrainOutcome
from labelloop.jobs.prediction import PredictResponse
from labelloop.names import (
    TASK_FIRST_PICKS,
    TASK_HANDLE_EVENT,
    TASK_PREANNOTATE,
    TASK_PREDICT,
    TASK_RECONCILE,
    TASK_TRAIN,
    TASK_WRITE_SELECTION,
)
from labelloop.serving.first_picks import FirstPicksOutcome
from labelloop.serving.preannotate import PreannotateOutcome

TRANSIENT = TRANSIENT_ERRORS
MAX_RETRIES = 5
RETRY_BACKOFF_MAX_S = 30


class _RetryOptions(TypedDict):
    """Celery's automatic retry options of a task (``Task.autoretry_for`` and its backoff)."""

    autoretry_for: tuple[type[BaseException], ...]
    retry_backoff: bool
    retry_backoff_max: int
    retry_jitter: bool
    max_retries: int


_RETRY: _RetryOptions = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "retry_backoff_max": RETRY_BACKOFF_MAX_S,
    "retry_jitter": True,
    "max_retries": MAX_RETRIES,
}


_P = ParamSpec("_P")
_R = TypeVar("_R")


def bound_task(**options: Any) -> Callable[[Callable[Concatenate[Task, _P], _R]], Callable[_P, _R]]:
    """``celery.shared_task(bind=True, **options)`` with the task's signature kept for mypy.

    Celery ships no type information; a bound task is called without its ``self`` (the task).
    """
    return cast(Callable[[Callable[Concatenate[Task, _P], _R]], Callable[_P, _R]], shared_task(bind=True, **options))


_JOBS_LOCK = threading.Lock()


def jobs(app: Celery) -> Jobs:
    """The app's ``Jobs``, built on first use from the settings ``create_celery`` kept; under a lock,
    so a predict worker's warm-up thread (``workers.warmup``) and its first task share one."""
    with _JOBS_LOCK:
        built: Jobs | None = getattr(app, "labelloop_jobs", None)
        if built is None:

            def send(name: str, args: list[Any], queue: str) -> None:
                app.send_task(name, args=args, queue=queue)

            built = Jobs(app.conf.labelloop_settings, send)
            app.labelloop_jobs = built
        return built


@bound_task(name=TASK_HANDLE_EVENT, ignore_result=True, **_RETRY)
def handle_event(self: Task, project_id: int, action: str, changes: list[list[Any]] | None = None) -> str:
    """Apply one recorded webhook event; ``changes`` is ``[[annotation_id, updated_at or None], ...]``."""
    with structlog.contextvars.bound_contextvars(project_id=project_id, action=action):
        return jobs(self.app).handle_event(project_id, action, [(int(i), u) for i, u in changes or []])


@bound_task(name=TASK_RECONCILE, ignore_result=True, **_RETRY)
def reconcile(self: Task) -> dict[str, int]:
    """Feed the changes whose webhooks were missed, per known project, to the trigger policy."""
    return jobs(self.app).reconcile()


@bound_task(name=TASK_TRAIN, acks_late=True, reject_on_worker_lost=True, **_RETRY)
def train(self: Task, project_id: int, run_id: str) -> TrainOutcome:
    """Train a project's next version; progress shows as Celery state PROGRESS (Flower)."""
    with structlog.contextvars.bound_contextvars(project_id=project_id, run_id=run_id, task_id=self.request.id):
        job = jobs(self.app)
        # Keeps this live delivery young in kombu's unacked index (``labelloop.jobs.broker``): only
        # a dead worker's delivery ages past the visibility timeout and is handed out again.
        keepalive = broker.delivery_keepalive(job.redis, (self.request.properties or {}).get("delivery_tag"))
        try:
            return job.train(
                project_id,
                run_id,
                self.request.id,
                lambda meta: self.update_state(state="PROGRESS", meta=meta),
                keepalive=keepalive,
                retry_transient=self.request.retries < MAX_RETRIES,
            )
        except SoftTimeLimitExceeded:
            limit = job.settings.train_time_limit_s
            structlog.get_logger(__name__).error("training_failed", error_type="TimeLimit", error=f"over {limit} s")
            return {"project_id": project_id, "run_id": run_id, "status": "failed", "error": f"over {limit} s"}


@bound_task(name=TASK_PREANNOTATE, **_RETRY)
def preannotate(self: Task, project_id: int, version: str) -> PreannotateOutcome:
    """Predict every unlabeled task of a project with a newly promoted version into Label Studio
    (queue ``preannotate``); progress ``{"done", "total"}`` shows as Celery state PROGRESS (Flower)."""
    with structlog.contextvars.bound_contextvars(project_id=project_id, version=version, task_id=self.request.id):
        return jobs(self.app).preannotate(
            project_id, version, lambda meta: self.update_state(state="PROGRESS", meta=meta)
        )


@bound_task(name=TASK_FIRST_PICKS, **_RETRY)
def first_picks(self: Task, project_id: int) -> FirstPicksOutcome:
    """Before a project's first version, order its unlabeled tasks by coverage of the images into
    Label Studio (queue ``preannotate``); progress ``{"done", "total"}`` as Celery state PROGRESS."""
    with structlog.contextvars.bound_contextvars(project_id=project_id, task_id=self.request.id):
        return jobs(self.app).first_picks(project_id, lambda meta: self.update_state(state="PROGRESS", meta=meta))


@bound_task(name=TASK_PREDICT)
def predict(self: Task, project_id: int, label_config: str, tasks: list[ls_json.Task]) -> PredictResponse:
    """Regions for Label Studio tasks with the project's served version (``/predict``), predicted in
    chunks until the deadline, which the task's ``expires`` (when the receiver stops waiting) may shorten."""
    with structlog.contextvars.bound_contextvars(project_id=project_id, task_id=self.request.id):
        expires = self.request.expires
        when = maybe_make_aware(maybe_iso8601(expires)) if isinstance(expires, str) else expires
        return jobs(self.app).predict(project_id, label_config, tasks, expires=when)


@bound_task(name=TASK_WRITE_SELECTION)
def write_selection(self: Task, project_id: int, label_config: str, tasks: list[ls_json.Task]) -> dict[str, Any]:
    """A ``/predict`` selection over ``LABELLOOP_PREDICT_MAX_TASKS`` (queue ``preannotate``), predicted
    with the served version and written into Label Studio as predictions: ``{"tasks", "written",
    "version", "stopped"}``. Not retried: a retry would write the chunks already written a second time;
    Label Studio's next "Retrieve Predictions" asks only for the tasks still without a prediction."""
    with structlog.contextvars.bound_contextvars(project_id=project_id, task_id=self.request.id):
        return dataclasses.asdict(jobs(self.app).write_selection(project_id, label_config, tasks))
