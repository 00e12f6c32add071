"""What labelloop's Celery tasks do, as plain methods: ``workers.tasks`` only binds log context
and calls one of these, so each can be called and tested without Celery.

``Jobs(settings, send)``: ``send(task_name, args, queue)`` enqueues a follow-up task (the
Celery app's ``send_task`` in a worker; a list in a test). Task arguments are ids and small
values; each job re-reads the world (Label Studio, the registry) and decides for itself what
is still needed.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import redis
import structlog

from labelloop import keys
from labelloop.errors import LabelloopError, LabelStudioUnavailable, TrainingError
from labelloop.events.changes import ChangeLog
from labelloop.events.ledger import PROJECTS_KEY, Change, Ledger, annotations_in_export, diff
from labelloop.jobs import locks
from labelloop.jobs.lease import RunLease, RunRecords, renewed_lock
from labelloop.jobs.pipeline import run_training, yolo_config_dir
from labelloop.jobs.progress import ProgressStore
from labelloop.jobs.trigger import TriggerStore, quiet_wait
from labelloop.labelstudio import client as labelstudio
from labelloop.labelstudio.export import export_tasks
from labelloop.labelstudio.media import ImageCache, MediaConfig
from labelloop.labelstudio.sampling import FIRST_PICKS_VERSION
from labelloop.labelstudio.tabs import ensure_tab, mistakes_tab_data
from labelloop.names import QUEUE_PREANNOTATE, QUEUE_TRAIN, TASK_PREANNOTATE, TASK_TRAIN
from labelloop.quality.mistakes import score_project
from labelloop.registry.params import load as load_params
from labelloop.registry.params import train_spec
from labelloop.registry.store import Registry
from labelloop.serving.first_picks import first_picks
from labelloop.serving.preannotate import Generation, preannotate_project
from labelloop.serving.predictor import Predictor
from labelloop.serving.selection import deadline_s, predict_selection
from labelloop.serving.video import VideoOptions
from labelloop.settings import Settings

log = structlog.get_logger(__name__)

Send = Callable[[str, list[Any], str], None]
Report = Callable[[dict[str, Any]], None]

# How long a reconciliation holds a project's lock at most (seconds; released when it is done).
RECONCILE_LOCK_S = 60.0  # renewed while held (lease.renewed_lock): a lost holder blocks for 60 s at most
# A queued training keeps its project's lock this long (seconds): longer than any queue wait.
QUEUED_LOCK_TTL_S = 86400
# The progress stage of a run waiting for the annotations to stop coming (``Jobs._quiet_period``).
WAITING_STAGE = "waiting for a quiet period"
# Seconds between attempts to send a training to the broker (then it is given back: ``start_training``).
PUBLISH_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# Errors that may pass: a training that meets one is retried rather than reported.
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, httpx.TransportError, LabelStudioUnavailable)


class Jobs:
    """labelloop's work, one method per Celery task (see the module docstring).

    Args:
        settings: the worker's settings.
        send: enqueues ``(task name, args, queue)``.
    """

    def __init__(self, settings: Settings, send: Send) -> None:
        self.settings = settings
        self.send = send

    @functools.cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=2, socket_timeout=10)

    @functools.cached_property
    def predictor(self) -> Predictor:
        s = self.settings
        p = Predictor(
            Registry(s.models_dir),
            s.base_model,
            yolo_config_dir(s),
            Path(s.cache_dir).absolute(),
            s.imgsz,
            s.predict_conf,
            s.device,
            media=MediaConfig.from_settings(s),
            cache_projects=s.predict_cache_projects,
            score_strategy=s.score_strategy,
            show_conf=s.show_conf,
            video=VideoOptions.from_settings(s),
        )
        p.listen(s.redis_url)
        return p

    def ledger(self) -> Ledger:
        return Ledger(self.redis)

    def trigger(self) -> TriggerStore:
        return TriggerStore(self.redis, lock_ttl_s=QUEUED_LOCK_TTL_S, run_ttl_s=self.settings.train_lock_ttl_s)

    def every_n(self, project_id: int) -> int:
        return int(load_params(self.settings.models_dir, project_id).effective(self.settings)["train_every_n"])

    # -- events -------------------------------------------------------------------------------

    def handle_event(self, project_id: int, action: str, changes: list[Change]) -> str:
        """Apply one recorded webhook event (or reconciliation's missed changes) to the ledger and
        the project's trigger policy; enqueue a training when the policy says so.

        ``changes``: ``(annotation_id, updated_at or None)`` per annotation (None: deleted).

        Returns:
            "started", "unsent" (the training could not be sent: ``start_training``),
            "coalesced" (a training runs: one follow-up is due), "counted" or "unchanged"
            (nothing new in the ledger).
        """
        self.ensure_ledger(project_id)
        trigger = self.trigger()
        if action == "START_TRAINING":
            self.redis.sadd(PROJECTS_KEY, project_id)
            decision = trigger.apply(project_id, "start_training", self.every_n(project_id))
        else:
            count = self.ledger().apply(project_id, changes)
            if count == 0:
                log.info("event_handled", changes=len(changes), effective=0)
                return "unchanged"
            decision = trigger.apply(project_id, "annotation", self.every_n(project_id), count=count)
        log.info(
            "event_handled",
            changes=len(changes),
            start=decision.start,
            pending=decision.state.pending,
            followup=decision.state.followup,
        )
        if decision.start and decision.run_id:
            return "started" if self.start_training(project_id, decision.run_id, action) else "unsent"
        return "coalesced" if decision.state.followup else "counted"

    def ensure_ledger(self, project_id: int) -> None:
        """After Redis lost the ledger, start it from what the served version was trained on."""
        if self.redis.exists(Ledger.key(project_id)):
            return
        served = Registry(self.settings.models_dir).current(project_id)
        baseline = served.annotations() if served else {}
        if served and self.ledger().seed(project_id, {int(i): u for i, u in baseline.items()}):
            log.info("ledger_seeded", version=served.name, annotations=len(baseline))

    publish_delays_s: tuple[float, ...] = PUBLISH_DELAYS_S

    def start_training(self, project_id: int, run_id: str, reason: str) -> bool:
        """Send the train task of ``run_id`` (which holds the project's lock) to the broker.

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
                self.send(TASK_TRAIN, [project_id, run_id], QUEUE_TRAIN)
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
        RunRecords(self.redis).give_up(project_id, run_id, 0, reason)
        self.trigger().unsent(project_id, run_id)
        return False

    def reap_lock(self, project_id: int) -> str | None:
        """Free the project's training lock when nothing keeps it alive (``labelloop.jobs.locks.reap``),
        and send the training that is then due.

        Returns:
            "reaped", "restarted" or None (nothing to do), as ``locks.reap``.

        Raises:
            redis.RedisError: Redis is unreachable.
        """
        n = self.every_n(project_id)
        reaped = locks.reap(self.redis, self.trigger(), project_id, self.settings.train_lock_orphan_s, n)
        if reaped is None:
            return None
        if reaped.start:
            self.start_training(project_id, reaped.start, "followup")
        return reaped.what

    def reconcile(self) -> dict[str, int]:
        """Compare each known project's annotations in Label Studio with the ledger and feed the
        changes whose webhooks were missed to the trigger policy; first free a training lock
        without owner (``reap_lock``).

        One reconciliation per project at a time: each holds the project's lock
        (``labelloop:project:<id>:reconcile``, ``lease.renewed_lock``: renewed while held, so a
        holder that lost Redis or died blocks the project ``RECONCILE_LOCK_S`` at most); a project
        another beat tick or worker is reconciling is skipped. Changes from the export's start on
        (Label Studio's clock, the ``Date`` of the project read just before it) are left to the webhooks and the
        next reconciliation, and the ledger never moves back in time (``labelloop.events.ledger``).

        Returns:
            missed changes per project id (as text); a project Label Studio does not answer for,
            or that is being reconciled elsewhere, is logged and left out.
        """
        s = self.settings
        projects = self.ledger().projects() | set(Registry(s.models_dir).projects())
        client = labelstudio.client(s.label_studio_url, s.api_key)
        missed: dict[str, int] = {}
        for project_id in sorted(projects):
            with structlog.contextvars.bound_contextvars(project_id=project_id):
                with renewed_lock(self.redis, keys.reconcile_lock(project_id), RECONCILE_LOCK_S) as held:
                    if not held:
                        log.info("reconcile_skipped", reason="another reconciliation holds the project")
                        continue
                    try:
                        self.reap_lock(project_id)
                    except redis.RedisError as exc:  # Label Studio's side below may still be read
                        log.warning("reap_lock_failed", error_type=type(exc).__name__, error=str(exc)[:500])
                    try:
                        changes = self._reconcile_project(client, project_id)
                    except Exception as exc:  # one unreachable project must not stop the others
                        log.warning("reconcile_failed", error_type=type(exc).__name__, error=str(exc)[:500])
                        continue
                missed[str(project_id)] = changes
        return missed

    def _reconcile_project(self, client: Any, project_id: int) -> int:
        """Export one project and apply the changes the ledger missed; returns how many."""
        s = self.settings
        from labelloop.events import project_webhook, retired_projects
        from labelloop.labelstudio import retired_predictions

        if not retired_projects.still_there(client, self.redis, project_id):  # deleted in Label Studio
            return 0
        try:  # a webhook that stopped is reported and re-armed; it never stops the reconciliation
            secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
            headers = project_webhook.secret_headers(s.webhook_secret_header, secret)
            project_webhook.watch(client, self.redis, project_id, headers)
        except Exception as exc:
            log.warning("project_webhook_check_failed", error_type=type(exc).__name__, error=str(exc)[:300])
        try:  # /predict's predictions of versions retention removed, with pre-annotation off too
            retired_predictions.sweep(client, Registry(s.models_dir), project_id)
        except Exception as exc:
            log.warning("retired_predictions_delete_failed", error_type=type(exc).__name__, error=str(exc)[:300])
        with labelstudio.calling(s.label_studio_url, f"exporting project {project_id}"):
            raw = client.projects.with_raw_response.get(id=project_id)
            try:
                started: datetime | None = parsedate_to_datetime(raw.headers.get("date"))
            except (TypeError, ValueError):
                started = None
            current = annotations_in_export(export_tasks(client, project_id))
        self.ensure_ledger(project_id)
        changes = diff(self.ledger().seen(project_id), current, before=started, resolution=timedelta(seconds=1))
        if changes:
            log.info("reconcile_missed_changes", changes=len(changes))
            # Their webhooks never arrived: the next dataset build reads Label Studio.
            ChangeLog(self.redis).invalidate(project_id)
            self.handle_event(project_id, "RECONCILED", changes)
        return len(changes)

    # -- training -------------------------------------------------------------------------------

    def train(
        self,
        project_id: int,
        run_id: str,
        task_id: str | None,
        report: Report,
        keepalive: Callable[[], None] | None = None,
        retry_transient: bool = False,
    ) -> dict[str, Any]:
        """Run the training pipeline for a project and publish the new version; then start the
        follow-up training the trigger policy asks for, and pre-annotation after a promotion.

        The delivery first claims the project's lock for ``run_id`` (while another delivery of
        the run holds it, waiting until that one finished or died) and holds it with a
        ``RunLease`` for the whole run; ``keepalive`` is called on the lease's beat. Holding it,
        the run waits for a quiet period and absorbs the pending annotation events before it
        reads the data (``_quiet_period``), so a burst of annotations makes one training. A run
        that another run or a live delivery holds, or that already finished, does nothing; one whose
        earlier deliveries died ``train_max_deliveries`` times is given up. Whatever ends the run
        (success, failure, a time limit raised into it) removes its run directory, releases the
        lock and starts the follow-up, except a transient error with ``retry_transient`` and the
        process shutting down (SystemExit): then the lock goes back to the queued run and the
        error is raised, for the retry or the redelivery. Long because every way a run can end
        (published, failed, transient error, shutdown, lease lost) settles the lock in one place.

        ``report`` gets each epoch's progress (``project_id``, ``run_id``, ``epoch``, ``epochs``,
        ``metrics``), and ``stage`` when the run starts to wait for a quiet period, e.g. for
        Celery's PROGRESS state.

        Returns:
            ``{"project_id", "run_id", "status", "version", "metrics"}``; ``status`` "failed"
            with ``error`` when a LabelloopError or a transient error stopped it, "given_up"
            with ``error``, "lost" (another delivery took the lock; nothing published),
            "duplicate" or "superseded" (nothing done).

        Raises:
            one of ``TRANSIENT_ERRORS``, only with ``retry_transient``.
        """
        s = self.settings
        outcome: dict[str, Any] = {"project_id": project_id, "run_id": run_id}
        records = RunRecords(self.redis)
        owner, refused = self._admit(project_id, run_id, keepalive)
        if refused is not None:
            return {**outcome, "status": refused}
        trigger = self.trigger()
        deliveries = records.started(project_id, run_id)
        progress = ProgressStore(self.redis)
        if deliveries > s.train_max_deliveries:
            return self._give_up(project_id, run_id, owner, deliveries, outcome)

        def on_progress(p: dict[str, Any]) -> None:
            meta = {"project_id": project_id, "run_id": run_id, **p}
            report(meta)
            progress.update(project_id, run_id, stage="training", **p)
            log.info("training_progress", epoch=p["epoch"], epochs=p["epochs"])

        lease = RunLease(trigger, project_id, run_id, owner, max(1.0, s.train_lock_ttl_s / 3), keepalive)
        requeued = False
        with lease:
            try:
                self._quiet_period(project_id, run_id, owner, lease, progress, task_id, report)
                progress.update(project_id, run_id, stage="preparing", task_id=task_id, pid=os.getpid())
                version = run_training(
                    s,
                    project_id,
                    run_id,
                    on_progress=on_progress,
                    should_cancel=lambda: lease.lost.is_set() or progress.cancel_requested(project_id, run_id),
                )
                record = version.record
                status = record.status
                outcome.update(status=status, version=version.name, metrics=record.metrics)
                if status == "promoted" and load_params(s.models_dir, project_id).effective(s)["preannotate"]:
                    self.send(TASK_PREANNOTATE, [project_id, version.name], QUEUE_PREANNOTATE)
            except TRANSIENT_ERRORS as exc:
                if not retry_transient:
                    log.error("training_failed", error_type=type(exc).__name__, error=str(exc)[:2000])
                    outcome.update(status="failed", error=str(exc)[:2000])
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
                    outcome.update(status="lost", error="another delivery or run took the project's lock")
                else:
                    log.error("training_failed", error_type=type(exc).__name__, error=str(exc)[:2000])
                    outcome.update(status="failed", error=str(exc)[:2000])
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
        """Wait, holding the project, until the annotations stop coming (``trigger.quiet_wait``:
        ``LABELLOOP_TRAIN_QUIET_S`` without one, at most ``LABELLOOP_TRAIN_MAX_DELAY_S`` after the
        run became due; START_TRAINING, also one that arrives meanwhile, ends it), then absorb
        what is pending (``TriggerStore.absorb``) right before the build reads the data.

        The lease renews the lock and the broker delivery throughout; the Celery time limits
        include the longest wait (``workers.celery_app``); a killed worker's redelivery waits only
        what is left of the run's delay. Polls every half second, so a cancel or a lost lock stops
        the wait at once.

        Raises:
            TrainingError: cancelled meanwhile, or the lock was lost.
        """
        s, trigger = self.settings, self.trigger()
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

    def _admit(self, project_id: int, run_id: str, keepalive: Callable[[], None] | None) -> tuple[str, str | None]:
        """Claim the project for this delivery of ``run_id``: ``(owner token, None)``, or
        ``(owner, "duplicate" | "superseded")`` when this delivery must do nothing."""
        records = RunRecords(self.redis)
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
        trigger, records = self.trigger(), RunRecords(self.redis)
        s = self.settings
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
        """Release the project's lock and start the follow-up training the trigger policy asks for."""
        decision = self.trigger().apply(project_id, "finished", self.every_n(project_id), run_id=run_id, owner=owner)
        if decision.start and decision.run_id:
            self.start_training(project_id, decision.run_id, "followup")

    def _give_up(
        self, project_id: int, run_id: str, owner: str, deliveries: int, outcome: dict[str, Any]
    ) -> dict[str, Any]:
        """Give up a run whose earlier deliveries died with their worker; release the project."""
        progress = ProgressStore(self.redis)
        last = progress.get(project_id) or {}
        seen = last.get("stage", "starting") if last.get("run_id") == run_id else "queued"
        if last.get("run_id") == run_id and last.get("epoch"):
            seen += f", epoch {last['epoch']}/{last.get('epochs', '?')}"
        reason = f"{deliveries - 1} deliveries died with their worker (last seen: {seen})"
        records = RunRecords(self.redis)
        records.give_up(project_id, run_id, deliveries - 1, reason)
        log.error("training_given_up", deliveries=deliveries - 1, reason=reason)
        records.finish(project_id, run_id)
        progress.clear(project_id, run_id)
        self._finished(project_id, run_id, owner)
        return {**outcome, "status": "given_up", "error": reason}

    # -- prediction -------------------------------------------------------------------------------

    def preannotate(self, project_id: int, version: str, report: Report) -> dict[str, Any]:
        """Predict every unlabeled task of a project with a newly promoted version into Label Studio,
        in batches of ``LABELLOOP_PREANNOTATE_BATCH``; ``report`` gets ``{"project_id", "version",
        "done", "total"}`` after each batch (also kept in ``ProgressStore.preannotation``).

        The run claims the project's newest generation first, so it supersedes any older run, and
        stops between batches once another version is served or a newer run starts (see
        ``labelloop.serving.preannotate``).

        Returns:
            ``preannotate_project``'s outcome.
        """
        s = self.settings
        progress = ProgressStore(self.redis)
        generation = Generation.claim(self.redis, project_id)

        def on_progress(done: int, total: int) -> None:
            meta = {"project_id": project_id, "version": version, "done": done, "total": total}
            report(meta)
            progress.set_preannotation(project_id, meta)

        try:
            with labelstudio.calling(s.label_studio_url, f"pre-annotating project {project_id}"):
                client = labelstudio.client(s.label_studio_url, s.api_key)
                effective = load_params(s.models_dir, project_id).effective(s)
                if effective["informative_tab"]:
                    self.informative_tab(client, project_id)
                outcome = preannotate_project(
                    client,
                    self.predictor,
                    project_id,
                    version,
                    s.preannotate_batch,
                    s.label_studio_url,
                    s.api_key,
                    s.set_project_model_version,
                    on_progress,
                    generation,
                    set_sampling=bool(effective["set_sampling"]),
                    budget=int(effective["train_every_n"]),
                )
        finally:
            progress.clear_preannotation(project_id, version)
        # After the pre-annotation's progress ended: scoring the annotations is advice that follows it.
        if s.label_mistakes and outcome["stopped"] is None:
            self.label_mistakes(client, project_id)
        return outcome

    def first_picks(self, project_id: int, report: Report) -> dict[str, Any]:
        """Before a project's first version, order its unlabeled tasks by coverage of the images and
        import them as predictions of ``labelloop-first-picks`` (``labelloop.serving.first_picks``);
        ``report`` gets ``{"project_id", "version", "done", "total"}`` after each imported batch.

        Does nothing when the project has a served version, first picks are off
        (``LABELLOOP_FIRST_PICKS`` / extra param ``first_picks``) or every unlabeled task has its
        first pick already. Claims the project's pre-annotation generation: a version's
        pre-annotation started later stops it.

        Returns:
            ``labelloop.serving.first_picks.first_picks``'s outcome, or ``{"status": "off"}``.
        """
        s = self.settings
        effective = load_params(s.models_dir, project_id).effective(s)
        if not effective["first_picks"]:
            return {"status": "off"}
        progress = ProgressStore(self.redis)
        generation = Generation.claim(self.redis, project_id)
        version = FIRST_PICKS_VERSION

        def on_progress(done: int, total: int) -> None:
            meta = {"project_id": project_id, "version": version, "done": done, "total": total}
            report(meta)
            progress.set_preannotation(project_id, meta)

        images = ImageCache(Path(s.cache_dir).absolute() / "images", MediaConfig.from_settings(s))
        try:
            with images, labelstudio.calling(s.label_studio_url, f"ordering the first picks of project {project_id}"):
                client = labelstudio.client(s.label_studio_url, s.api_key)
                if effective["informative_tab"]:
                    self.informative_tab(client, project_id)
                return first_picks(
                    client,
                    images,
                    Registry(s.models_dir),
                    project_id,
                    s.preannotate_batch,
                    int(effective["train_every_n"]),
                    bool(effective["set_sampling"]),
                    generation,
                    on_progress,
                )
        finally:
            progress.clear_preannotation(project_id, version)

    def informative_tab(self, client: Any, project_id: int) -> None:
        """Keep the project's Data Manager tab "labelloop: most informative first" (``labelloop.labelstudio.tabs``);
        a failure is logged, never fails the pre-annotation it comes with."""
        try:
            view_id, what = ensure_tab(client, project_id)
            log.info("informative_tab", project_id=project_id, view_id=view_id, change=what)
        except Exception as exc:  # the tab is a convenience; predictions matter more
            log.warning("informative_tab_failed", project_id=project_id, error=str(exc)[:500])

    def label_mistakes(self, client: Any, project_id: int) -> None:
        """Score the project's annotations and keep its tab "labelloop: possible label mistakes"
        (``labelloop.quality.mistakes``); a failure is logged, never fails the pre-annotation it follows."""
        s = self.settings
        try:
            report = score_project(
                client, self.predictor, project_id, s.label_studio_url, s.api_key, s.preannotate_batch
            )
            if not report["supported"]:
                log.info("label_mistakes_unsupported", project_id=project_id, reason=report["reason"])
                return
            view_id, what = ensure_tab(client, project_id, mistakes_tab_data())
            log.info("label_mistakes_tab", project_id=project_id, view_id=view_id, change=what, scored=report["scored"])
        except Exception as exc:  # the queue is advice; the pre-annotation matters more
            log.warning("label_mistakes_failed", project_id=project_id, error=str(exc)[:500])

    def predict(
        self, project_id: int, label_config: str, tasks: list[dict[str, Any]], expires: datetime | None = None
    ) -> dict[str, Any]:
        """Regions for Label Studio tasks with the project's served version: ``{"results": [...]}``,
        one item per task in order (Label Studio's ``/predict`` response), predicted in chunks of
        ``LABELLOOP_PREDICT_BATCH`` until ``LABELLOOP_PREDICT_DEADLINE_S`` (``labelloop.serving.selection``:
        a task left by the deadline gets ``[]``), or until ``expires`` draws near (the predict task's
        expiry: when the receiver stops waiting; ``labelloop.serving.selection.deadline_s``).

        Raises:
            UnavailableError: out of memory on a chunk.
        """
        s = self.settings
        params = load_params(s.models_dir, project_id)
        spec = train_spec(label_config, params)
        imgsz = params.effective(s)["imgsz"]
        results = predict_selection(
            self.predictor,
            project_id,
            spec,
            tasks,
            s.label_studio_url,
            s.api_key,
            s.predict_batch,
            deadline_s(s.predict_deadline_s, expires, datetime.now(UTC)),
            imgsz=imgsz,
            score_strategy=params.score_strategy,
            show_conf=params.show_conf,
        )
        return {"results": results}
