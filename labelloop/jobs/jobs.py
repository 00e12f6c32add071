"""What labelloop's Celery tasks do, as plain methods: ``workers.tasks`` only binds log context
and calls one of these, so each can be called and tested without Celery.

``Jobs(settings, send)`` composes one job per kind of work, each behind its own module:

- ``AnnotationEvents`` (``labelloop.jobs.annotations``): webhook events into the ledger and the
  trigger policy (``handle_event``);
- ``Reconciliation`` (``labelloop.jobs.reconcile``): what the webhooks missed, and training
  locks nothing keeps alive (``reconcile``);
- ``RunLifecycle`` (``labelloop.jobs.lifecycle``): a training run from queued to finished
  (``train``, ``start_training``);
- ``PreannotationJob`` (``labelloop.jobs.preannotation``): ``preannotate`` and ``first_picks``;
- ``PredictJob`` (``labelloop.jobs.prediction``): ``predict``.

They share a ``JobContext`` (``labelloop.jobs.context``): the settings, the worker's Redis client
(``labelloop.redis_client.client(url, "worker")``) and ``send(task_name, args, queue)``, which
enqueues a follow-up task (the Celery app's ``send_task`` in a worker; a list in a test). Task
arguments are ids and small values; each job re-reads the world (Label Studio, the registry) and
decides for itself what is still needed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import redis

from labelloop import keys, redis_client
from labelloop.events.ledger import Change, Ledger
from labelloop.jobs.annotations import AnnotationEvents, Handled
from labelloop.jobs.context import JobContext, Send
from labelloop.jobs.lifecycle import Report, RunLifecycle, TrainOutcome
from labelloop.jobs.preannotation import PreannotationJob, PreannotationReport
from labelloop.jobs.prediction import PredictJob, Predictors, PredictResponse
from labelloop.jobs.reconcile import Reconciliation
from labelloop.jobs.trigger import TriggerStore
from labelloop.ls_json import Task
from labelloop.serving.first_picks import FirstPicksOutcome
from labelloop.serving.preannotate import PreannotateOutcome
from labelloop.serving.selection import SelectionWritten
from labelloop.settings import Settings


class Jobs:
    """labelloop's work, one method per Celery task (see the module docstring).

    Args:
        settings: the worker's settings.
        send: enqueues ``(task name, args, queue)``.
    """

    def __init__(self, settings: Settings, send: Send) -> None:
        self.context = JobContext(settings, redis_client.client(settings.redis_url, "worker"), send)
        self.runs = RunLifecycle(self.context)
        self.events = AnnotationEvents(self.context, self.runs)
        self.reconciliation = Reconciliation(self.context, self.events, self.runs)
        predictors = Predictors(settings)
        self.preannotation = PreannotationJob(settings, self.context.redis, predictors)
        self.prediction = PredictJob(settings, predictors)

    @property
    def settings(self) -> Settings:
        return self.context.settings

    @property
    def redis(self) -> redis.Redis:
        return self.context.redis

    def trigger(self) -> TriggerStore:
        return self.context.trigger()

    def ledger(self) -> Ledger:
        return self.context.ledger()

    def handle_event(self, project_id: int, action: str, changes: list[Change]) -> Handled:
        """``AnnotationEvents.handle``: one webhook event into the ledger and the trigger policy."""
        return self.events.handle(project_id, action, changes)

    def ensure_ledger(self, project_id: int) -> None:
        """``AnnotationEvents.ensure_ledger``: seed a lost ledger from the served version."""
        self.events.ensure_ledger(project_id)

    def start_training(self, project_id: int, run_id: str, reason: str) -> bool:
        """``RunLifecycle.enqueue``: send the train task of ``run_id``; returns whether it was sent."""
        return self.runs.enqueue(project_id, run_id, reason)

    def reap_lock(self, project_id: int) -> str | None:
        """``Reconciliation.reap_lock``: free a training lock nothing keeps alive."""
        return self.reconciliation.reap_lock(project_id)

    def reconcile(self) -> dict[str, int]:
        """``Reconciliation.reconcile``: missed changes per project id (as text)."""
        return self.reconciliation.reconcile()

    def train(
        self,
        project_id: int,
        run_id: str,
        task_id: str | None,
        report: Report,
        keepalive: Callable[[], None] | None = None,
        retry_transient: bool = False,
    ) -> TrainOutcome:
        """Run the training pipeline for a project and publish the new version; then start the
        follow-up training the trigger policy asks for, and pre-annotation after a promotion
        (``RunLifecycle.train``; its states in ``labelloop.jobs.lifecycle``).

        The delivery first claims the project's lock for ``run_id`` (while another delivery of
        the run holds it, waiting until that one finished or died) and holds it with a
        ``RunLease`` for the whole run; ``keepalive`` is called on the lease's beat. Holding it,
        the run waits for a quiet period and absorbs the pending annotation events before it
        reads the data, so a burst of annotations makes one training. A run that another run or
        a live delivery holds, or that already finished, does nothing; one whose earlier
        deliveries died ``train_max_deliveries`` times is given up. Whatever ends the run
        (success, failure, a time limit raised into it) removes its run directory, releases the
        lock and starts the follow-up, except a transient error with ``retry_transient`` and the
        process shutting down (SystemExit): then the lock goes back to the queued run and the
        error is raised, for the retry or the redelivery.

        ``report`` gets each epoch's progress (``project_id``, ``run_id``, ``epoch``, ``epochs``,
        ``metrics``, ``losses``), and ``stage`` when the run starts to wait for a quiet period,
        e.g. for Celery's PROGRESS state.

        Returns:
            ``{"project_id", "run_id", "status", "version", "metrics"}``; ``status`` "failed"
            with ``error`` when a LabelloopError or a transient error stopped it, "given_up"
            with ``error``, "lost" (another delivery took the lock; nothing published),
            "duplicate" or "superseded" (nothing done).

        Raises:
            one of ``lifecycle.TRANSIENT_ERRORS``, only with ``retry_transient``.
        """
        return self.runs.train(project_id, run_id, task_id, report, keepalive, retry_transient)

    def preannotate(self, project_id: int, version: str, report: PreannotationReport) -> PreannotateOutcome:
        """``PreannotationJob.preannotate``: a promoted version's predictions into Label Studio."""
        return self.preannotation.preannotate(project_id, version, report)

    def first_picks(self, project_id: int, report: PreannotationReport) -> FirstPicksOutcome:
        """``PreannotationJob.first_picks``: before a project's first version, its first picks."""
        return self.preannotation.first_picks(project_id, report)

    def predict(
        self, project_id: int, label_config: str, tasks: list[Task], expires: datetime | None = None
    ) -> PredictResponse:
        """``PredictJob.predict``: regions for Label Studio tasks (``/predict``'s response)."""
        return self.prediction.predict(project_id, label_config, tasks, expires)

    def write_selection(self, project_id: int, label_config: str, tasks: list[Task]) -> SelectionWritten:
        """``PredictJob.write_selection``: a selection too big for ``/predict`` into Label Studio; then
        the selection is no longer queued (``keys.selection_queued``: the next "Retrieve Predictions"
        of the same tasks queues it again)."""
        try:
            return self.prediction.write_selection(project_id, label_config, tasks)
        finally:
            self.redis.delete(keys.selection_queued(project_id, keys.selection_digest([t["id"] for t in tasks])))
