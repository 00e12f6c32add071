"""A training run's lifecycle: its states, and the one place that moves it between them.

A run is a run id that holds its project's training lock (``keys.training_lock``). Its states::

      trigger policy: a training is due (TriggerStore.apply: new run id, lock with the queued TTL)
           |
           v              every send failed (PUBLISH_DELAYS_S)
      +---------+ ---------------------------------------------> UNSENT (lock released,
      | QUEUED  | <-----------------------------------+            follow-up flag set)
      +---------+                                     |
           |  a delivery claims the lock              |  REQUEUED: a transient error with
           |  (TriggerStore.claim)                    |  retries left, or the worker shuts
           |-----> DUPLICATE (the run finished, or    |  down (SIGTERM); the retry or the
           |       another live delivery holds it)    |  redelivery claims it again
           |-----> SUPERSEDED (another run holds      |
           |       the lock)                          |
           |-----> GIVEN UP (deliveries died more     |
           |       than train_max_deliveries times;   |
           |       then released as FINISHED)         |
           v                                          |
      +---------+                                     |
      | CLAIMED | ----------------------------------->+
      +---------+  (RunLease renews the lock and      |
           |        the broker delivery from here)    |
           |  quiet period over, pending absorbed     |
           v  (TriggerStore.absorb)                   |
      +---------+                                     |
      | RUNNING | ----------------------------------->+
      +---------+
           |-----> LOST (the lease found the lock taken: nothing published, the lock untouched)
           v
      FINISHED (promoted, rejected or failed): the run is marked finished, the lock released,
      the follow-up the trigger policy asks for sent, and after a promotion the pre-annotation
      queued.

A delivery whose worker is killed (SIGKILL, OOM) while CLAIMED or RUNNING never leaves: its owner
key expires ``LABELLOOP_TRAIN_LOCK_TTL_S`` after the last renewal, kombu hands its message out
again once its ``unacked_index`` score is older than the visibility timeout (a live delivery keeps
it young: ``labelloop.jobs.broker``), and the next delivery claims the run again, counted by
``RunRecords.started``. A lock left with neither owner nor message (revoked, purged) is reaped
by the reconciliation (``labelloop.jobs.locks.reap``: GIVEN UP, then the follow-up).

Who does what: ``RunLifecycle`` drives every transition below; the primitives it calls are
``TriggerStore`` (``labelloop.jobs.trigger``: the lock, atomically), ``RunLease`` and
``RunRecords`` (``labelloop.jobs.lease``: renewals; deliveries and outcomes per run),
``ProgressStore`` (``labelloop.jobs.progress``) and ``labelloop.jobs.broker`` (the delivery's
keepalive, passed in by ``workers.tasks.train``).

=================  ====================================================================
QUEUED             ``enqueue`` (``TriggerStore.apply`` made the run and took the lock)
UNSENT             ``enqueue`` -> ``TriggerStore.unsent``, ``RunRecords.give_up``
CLAIMED            ``train`` -> ``_admit`` -> ``TriggerStore.claim``, then ``RunLease``
DUPLICATE          ``_admit``: ``RunRecords.finished`` or a claim still "busy"
SUPERSEDED         ``_admit``: ``TriggerStore.claim`` says "superseded"
GIVEN UP           ``_give_up`` (``RunRecords.started`` > ``train_max_deliveries``)
RUNNING            ``train``: ``_quiet_period`` (``TriggerStore.absorb``), then ``work``
REQUEUED           ``train``: ``RunRecords.ended_without_outcome``, ``TriggerStore.requeue``
LOST               ``train``: ``RunLease.lost`` set (renewal or absorb found the lock taken)
FINISHED           ``train`` -> ``RunRecords.finish``, ``_finished`` (``TriggerStore.apply``)
=================  ====================================================================
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Literal, Required, TypedDict

import httpx
import redis
import structlog

from labelloop.errors import LabelloopError, LabelStudioUnavailable, TrainingError
from labelloop.jobs.context import JobContext
from labelloop.jobs.lease import RunLease, RunRecords
from labelloop.jobs.pipeline import run_training
from labelloop.jobs.policy import quiet_wait
from labelloop.jobs.progress import ProgressStore, RunStage, stage_of
from labelloop.names import QUEUE_PREANNOTATE, QUEUE_TRAIN, TASK_PREANNOTATE, TASK_TRAIN
from labelloop.registry.params import load as load_params
from labelloop.registry.store import ModelVersion
from labelloop.settings import Settings
from labelloop.training.job import EpochProgress
from labelloop.training.process import OnProgress

log = structlog.get_logger(__name__)

# The progress stage of a run waiting for the annotations to stop coming (``_quiet_period``).
WAITING_STAGE = "waiting for a quiet period"
# Seconds between attempts to send a training to the broker (then it is given back: ``enqueue``).
PUBLISH_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# Errors that may pass: a training that meets one is retried rather than reported.
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, httpx.TransportError, LabelStudioUnavailable)


class TrainingReport(RunStage, total=False):
    """What a running training reports (Celery's PROGRESS meta): its project, run and ``RunStage``."""

    project_id: Required[int]
    run_id: Required[str]


class TrainOutcome(TypedDict, total=False):
    """How a delivery of a training ended (the train task's result).

    ``status``: "promoted" or "rejected" (published; ``version`` and its ``metrics``), "failed"
    (``error``), "given_up" (``error``), "lost" (another delivery took the lock; nothing
    published), "duplicate" or "superseded" (nothing done).
    """

    project_id: Required[int]
    run_id: Required[str]
    status: str
    version: str
    metrics: dict[str, float]
    error: str


Report = Callable[[TrainingReport], None]
# The RUNNING state's work: ``labelloop.jobs.pipeline.run_training``'s signature.
Work = Callable[[Settings, int, str, OnProgress, Callable[[], bool]], ModelVersion]


def _run_training(
    settings: Settings,
    project_id: int,
    run_id: str,
    on_progress: OnProgress,
    should_cancel: Callable[[], bool],
) -> ModelVersion:
    return run_training(settings, project_id, run_id, on_progress=on_progress, should_cancel=should_cancel)


class RunLifecycle:
    """Moves training runs through their states (see the module docstring).

    Args:
        context: the worker's settings, Redis client and ``send``.
        work: what the RUNNING state does (``labelloop.jobs.pipeline.run_training``).
    """

    publish_delays_s: tuple[float, ...] = PUBLISH_DELAYS_S

    def __init__(self, context: JobContext, work: Work = _run_training) -> None:
        self.context = context
        self.work = work

    def enqueue(self, project_id: int, run_id: str, reason: str) -> bool:
        """QUEUED or UNSENT: send the train task of ``run_id`` (which holds the project's lock).

        A failed send is tried again after each of ``publish_delays_s`` (seconds; event
        ``training_publish_retrying``). When the last attempt fails too (event
        ``training_publish_failed``), the run is recorded as given up (``labelloop status``) and
        the project handed back with the follow-up flag set (``TriggerStore.unsent``): the next
        reconciliation or annotation event starts the training again.

        Returns:
            whether the task was sent.
        """
        attempts, error = len(self.publish_delays_s) + 1, ""
        for attempt, delay in enumerate((*self.publish_delays_s, None), start=1):
            try:
                self.context.send(TASK_TRAIN, [project_id, run_id], QUEUE_TRAIN)
            except Exception as exc:  # the broker client's errors (kombu's) are not the core's to name
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
                if delay is None:
                    break
                log.warning("training_publish_retrying", run_id=run_id, attempt=attempt, delay_s=delay, error=error)
                time.sleep(delay)
                continue
            log.info("training_enqueued", project_id=project_id, run_id=run_id, reason=reason, attempts=attempt)
            return True
        log.error("training_publish_failed", project_id=project_id, run_id=run_id, attempts=attempts, error=error)
        reason = f"could not be sent to the broker ({attempts} attempts; {error})"
        RunRecords(self.context.redis).give_up(project_id, run_id, 0, reason)
        self.context.trigger().unsent(project_id, run_id)
        return False

    def train(
        self,
        project_id: int,
        run_id: str,
        task_id: str | None,
        report: Report,
        keepalive: Callable[[], None] | None = None,
        retry_transient: bool = False,
    ) -> TrainOutcome:
        """One delivery of ``run_id``: claim it, wait for a quiet period, run the pipeline and
        publish, then release the project and start the follow-up (and the pre-annotation after a
        promotion). See ``labelloop.jobs.jobs.Jobs.train`` for the whole contract.

        ``keepalive`` is called on the lease's beat (the delivery's broker keepalive). Long because
        every way the run can end settles the lock here, in one ``try``: FINISHED (published,
        failed, a time limit raised into it), LOST, or REQUEUED (a transient error with
        ``retry_transient``, the process shutting down: the error is raised again for the retry or
        the redelivery).

        Raises:
            one of ``TRANSIENT_ERRORS``, only with ``retry_transient``; SystemExit and
            KeyboardInterrupt, after handing the run back.
        """
        s, redis_client = self.context.settings, self.context.redis
        outcome: TrainOutcome = {"project_id": project_id, "run_id": run_id}
        records = RunRecords(redis_client)
        owner, refused = self._admit(project_id, run_id, keepalive)
        if refused is not None:
            outcome["status"] = refused
            return outcome
        trigger = self.context.trigger()
        deliveries = records.started(project_id, run_id)
        progress = ProgressStore(redis_client)
        if deliveries > s.train_max_deliveries:
            return self._give_up(project_id, run_id, owner, deliveries, outcome)

        def on_progress(p: EpochProgress) -> None:
            stage = stage_of(p)
            report({"project_id": project_id, "run_id": run_id, **stage})
            stage["stage"] = "training"
            progress.update(project_id, run_id, **stage)
            log.info("training_progress", epoch=stage.get("epoch"), epochs=stage.get("epochs"))

        lease = RunLease(trigger, project_id, run_id, owner, max(1.0, s.train_lock_ttl_s / 3), keepalive)
        requeued = False
        with lease:
            try:
                self._quiet_period(project_id, run_id, owner, lease, progress, task_id, report)
                progress.update(project_id, run_id, stage="preparing", task_id=task_id, pid=os.getpid())
                version = self.work(
                    s,
                    project_id,
                    run_id,
                    on_progress,
                    lambda: lease.lost.is_set() or progress.cancel_requested(project_id, run_id),
                )
                record = version.record
                outcome["status"] = record.status or "rejected"  # publish sets it (none reads as rejected)
                outcome["version"] = version.name
                outcome["metrics"] = record.metrics
                if record.status == "promoted" and load_params(s.models_dir, project_id).effective(s)["preannotate"]:
                    self.context.send(TASK_PREANNOTATE, [project_id, version.name], QUEUE_PREANNOTATE)
            except TRANSIENT_ERRORS as exc:
                if not retry_transient:
                    log.error("training_failed", error_type=type(exc).__name__, error=str(exc)[:2000])
                    outcome["status"] = "failed"
                    outcome["error"] = str(exc)[:2000]
                else:
                    log.warning("training_retrying", error_type=type(exc).__name__, error=str(exc)[:500])
                    records.ended_without_outcome(project_id, run_id)
                    requeued = trigger.requeue(project_id, run_id, owner)
                    raise
            except (SystemExit, KeyboardInterrupt):
                # The process is shutting down (a pool child's SIGTERM): the run did not end, it
                # goes back to its queued state for the redelivery, and this delivery did not die
                # (a clean shutdown never counts towards giving the run up).
                records.ended_without_outcome(project_id, run_id)
                requeued = trigger.requeue(project_id, run_id, owner)
                raise
            except LabelloopError as exc:
                if lease.lost.is_set():
                    outcome["status"] = "lost"
                    outcome["error"] = "another delivery or run took the project's lock"
                else:
                    log.error("training_failed", error_type=type(exc).__name__, error=str(exc)[:2000])
                    outcome["status"] = "failed"
                    outcome["error"] = str(exc)[:2000]
            finally:
                progress.clear(project_id, run_id)
                if not requeued:
                    records.finish(project_id, run_id)
                    if not lease.lost.is_set():
                        self._finished(project_id, run_id, owner)
        return outcome

    def _quiet_period(
        self,
        project_id: int,
        run_id: str,
        owner: str,
        lease: RunLease,
        progress: ProgressStore,
        task_id: str | None,
        report: Report,
    ) -> None:
        """CLAIMED -> RUNNING: wait, holding the project, until the annotations stop coming
        (``policy.quiet_wait``: ``LABELLOOP_TRAIN_QUIET_S`` without one, at most
        ``LABELLOOP_TRAIN_MAX_DELAY_S`` after the run became due; START_TRAINING, also one that
        arrives meanwhile, ends it), then absorb what is pending (``TriggerStore.absorb``) right
        before the build reads the data.

        The lease renews the lock and the broker delivery throughout; the Celery time limits
        include the longest wait (``workers.celery_app``); a killed worker's redelivery waits only
        what is left of the run's delay. Polls every half second, so a cancel or a lost lock stops
        the wait at once.

        Raises:
            TrainingError: cancelled meanwhile, or the lock was lost.
        """
        s, trigger = self.context.settings, self.context.trigger()
        started = time.monotonic()
        waited = False
        while (left := quiet_wait(trigger.waiting(project_id), s.train_quiet_s, s.train_max_delay_s)) > 0:
            if lease.lost.is_set():
                raise TrainingError("lost the project's lock while waiting for a quiet period")
            if progress.cancel_requested(project_id, run_id):
                raise TrainingError("training cancelled while waiting for a quiet period")
            if not waited:
                log.info("training_waiting_quiet", seconds_left=round(left, 1), quiet_s=s.train_quiet_s)
                progress.update(project_id, run_id, stage=WAITING_STAGE, task_id=task_id, pid=os.getpid())
                report({"project_id": project_id, "run_id": run_id, "stage": WAITING_STAGE})
                waited = True
            time.sleep(min(left, 0.5))
        absorbed = trigger.absorb(project_id, run_id, owner)
        if absorbed is None:
            lease.lost.set()
            raise TrainingError("lost the project's lock before reading the data")
        log.info(
            "training_absorbed_pending",
            pending=absorbed.pending,
            followup=absorbed.followup,
            waited_s=round(time.monotonic() - started, 1),
        )

    def _admit(
        self, project_id: int, run_id: str, keepalive: Callable[[], None] | None
    ) -> tuple[str, Literal["duplicate", "superseded"] | None]:
        """QUEUED -> CLAIMED for this delivery of ``run_id``: ``(owner token, None)``, or
        ``(owner, "duplicate" | "superseded")`` when this delivery must do nothing."""
        records = RunRecords(self.context.redis)
        owner = uuid.uuid4().hex
        if records.finished(project_id, run_id):
            log.warning("training_duplicate", reason="this run already finished")
            return owner, "duplicate"
        claim = self._claim(project_id, run_id, owner, keepalive)
        if claim == "claimed" and records.finished(project_id, run_id):
            claim = "finished"  # it finished between the wait's last look and the claim
            self._finished(project_id, run_id, owner)
        if claim in ("busy", "finished"):
            reason = "another delivery of this run " + ("ran it" if claim == "finished" else "is still running")
            log.warning("training_duplicate", reason=reason)
            return owner, "duplicate"
        if claim == "superseded":
            log.warning("training_superseded", reason="another run holds the project")
            return owner, "superseded"
        return owner, None

    def _claim(self, project_id: int, run_id: str, owner: str, keepalive: Callable[[], None] | None) -> str:
        """``TriggerStore.claim``, waiting while another delivery of the run holds it.

        The other delivery shares this one's broker message (a restored delivery keeps its
        tag), so acknowledging this one while that one might still die would lose the run:
        wait (keeping the message fresh) until it finished ("finished"), died (its claim
        expired: "claimed") or the time limit passed ("busy").
        """
        trigger, records = self.context.trigger(), RunRecords(self.context.redis)
        s = self.context.settings
        deadline = time.monotonic() + s.train_time_limit_s + s.train_max_delay_s + s.train_lock_ttl_s
        waiting = False
        while (claim := trigger.claim(project_id, run_id, owner)) == "busy":
            if records.finished(project_id, run_id):
                return "finished"
            if time.monotonic() > deadline:
                break
            if not waiting:
                log.info("training_delivery_waiting", reason="another delivery of this run holds its lease")
                waiting = True
            if keepalive is not None:
                keepalive()
            time.sleep(1.0)
        return claim

    def _finished(self, project_id: int, run_id: str, owner: str) -> None:
        """FINISHED: release the project's lock and start the follow-up the trigger policy asks for."""
        n = self.context.every_n(project_id)
        decision = self.context.trigger().apply(project_id, "finished", n, run_id=run_id, owner=owner)
        if decision.start and decision.run_id:
            self.enqueue(project_id, decision.run_id, "followup")

    def _give_up(
        self, project_id: int, run_id: str, owner: str, deliveries: int, outcome: TrainOutcome
    ) -> TrainOutcome:
        """GIVEN UP: a run whose earlier deliveries died with their worker; release the project."""
        progress = ProgressStore(self.context.redis)
        last = progress.get(project_id)
        seen = "queued"
        if last is not None and last.get("run_id") == run_id:
            seen = last.get("stage", "starting")
            if last.get("epoch"):
                seen += f", epoch {last.get('epoch')}/{last.get('epochs', '?')}"
        reason = f"{deliveries - 1} deliveries died with their worker (last seen: {seen})"
        records = RunRecords(self.context.redis)
        records.give_up(project_id, run_id, deliveries - 1, reason)
        log.error("training_given_up", deliveries=deliveries - 1, reason=reason)
        records.finish(project_id, run_id)
        progress.clear(project_id, run_id)
        self._finished(project_id, run_id, owner)
        outcome["status"] = "given_up"
        outcome["error"] = reason
        return outcome
