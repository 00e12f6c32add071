"""The reconciliation job: what the webhooks missed, and training locks nothing keeps alive.

Every ``LABELLOOP_RECONCILE_INTERVAL_S`` (Celery beat) each known project is exported from Label
Studio and compared with its ledger; the changes whose webhooks never arrived go to the trigger
policy as one ``RECONCILED`` event (``labelloop.jobs.annotations``). Before that, a training lock
without owner is reaped (``labelloop.jobs.locks.reap``) and the training then due is sent
(``labelloop.jobs.lifecycle.RunLifecycle.enqueue``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import redis
import structlog

from labelloop import keys
from labelloop.events.changes import ChangeLog
from labelloop.events.ledger import annotations_in_export, diff
from labelloop.jobs import locks
from labelloop.jobs.annotations import AnnotationEvents
from labelloop.jobs.context import JobContext
from labelloop.jobs.lease import renewed_lock
from labelloop.jobs.lifecycle import RunLifecycle
from labelloop.labelstudio import client as labelstudio
from labelloop.labelstudio.export import export_tasks
from labelloop.registry.store import Registry

log = structlog.get_logger(__name__)

# How long a reconciliation holds a project's lock at most (seconds; released when it is done).
RECONCILE_LOCK_S = 60.0  # renewed while held (lease.renewed_lock): a lost holder blocks for 60 s at most


class Reconciliation:
    """Reconciles every known project with Label Studio.

    Args:
        context: the worker's settings, Redis client and ``send``.
        events: applies the missed changes (and seeds a lost ledger).
        runs: sends the training a reaped lock leaves due.
    """

    def __init__(self, context: JobContext, events: AnnotationEvents, runs: RunLifecycle) -> None:
        self.context = context
        self.events = events
        self.runs = runs

    def reap_lock(self, project_id: int) -> str | None:
        """Free the project's training lock when nothing keeps it alive (``labelloop.jobs.locks.reap``),
        and send the training that is then due.

        Returns:
            "reaped", "restarted" or None (nothing to do), as ``locks.reap``.

        Raises:
            redis.RedisError: Redis is unreachable.
        """
        ctx = self.context
        n = ctx.every_n(project_id)
        reaped = locks.reap(ctx.redis, ctx.trigger(), project_id, ctx.settings.train_lock_orphan_s, n)
        if reaped is None:
            return None
        if reaped.start:
            self.runs.enqueue(project_id, reaped.start, "followup")
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
        s, client_redis = self.context.settings, self.context.redis
        projects = self.context.ledger().projects() | set(Registry(s.models_dir).projects())
        client = labelstudio.client(s.label_studio_url, s.api_key)
        missed: dict[str, int] = {}
        for project_id in sorted(projects):
            with structlog.contextvars.bound_contextvars(project_id=project_id):
                with renewed_lock(client_redis, keys.reconcile_lock(project_id), RECONCILE_LOCK_S) as held:
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
        s, client_redis = self.context.settings, self.context.redis
        from labelloop.events import project_webhook, retired_projects
        from labelloop.labelstudio import retired_predictions

        if not retired_projects.still_there(client, client_redis, project_id):  # deleted in Label Studio
            return 0
        try:  # a webhook that stopped is reported and re-armed; it never stops the reconciliation
            secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
            headers = project_webhook.secret_headers(s.webhook_secret_header, secret)
            project_webhook.watch(client, client_redis, project_id, headers)
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
        self.events.ensure_ledger(project_id)
        changes = diff(self.context.ledger().seen(project_id), current, before=started, resolution=timedelta(seconds=1))
        if changes:
            log.info("reconcile_missed_changes", changes=len(changes))
            # Their webhooks never arrived: the next dataset build reads Label Studio.
            ChangeLog(client_redis).invalidate(project_id)
            self.events.handle(project_id, "RECONCILED", changes)
        return len(changes)
