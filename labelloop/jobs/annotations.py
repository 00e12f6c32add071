"""Annotation events into the trigger policy: the ``handle_event`` job.

A recorded webhook event (or the changes a reconciliation found missed) goes into the project's
ledger (``labelloop.events.ledger``: only what is new counts) and the trigger policy
(``labelloop.jobs.policy``, state in ``labelloop.jobs.trigger``); a training the policy makes due
is sent by the run lifecycle (``labelloop.jobs.lifecycle.RunLifecycle.enqueue``).
"""

from __future__ import annotations

from typing import Literal

import structlog

from labelloop.events.ledger import PROJECTS_KEY, Change, Ledger
from labelloop.jobs.context import JobContext
from labelloop.jobs.lifecycle import RunLifecycle
from labelloop.registry.store import Registry

log = structlog.get_logger(__name__)

Handled = Literal["started", "unsent", "coalesced", "counted", "unchanged"]


class AnnotationEvents:
    """Applies annotation events to the ledger and the trigger policy.

    Args:
        context: the worker's settings, Redis client and ``send``.
        runs: sends the training the policy makes due.
    """

    def __init__(self, context: JobContext, runs: RunLifecycle) -> None:
        self.context = context
        self.runs = runs

    def handle(self, project_id: int, action: str, changes: list[Change]) -> Handled:
        """Apply one recorded webhook event (or reconciliation's missed changes) to the ledger and
        the project's trigger policy; enqueue a training when the policy says so.

        ``action``: Label Studio's webhook action (``ANNOTATION_CREATED``, ...), ``START_TRAINING``
        or ``RECONCILED``; ``changes``: ``(annotation_id, updated_at or None)`` per annotation
        (None: deleted).

        Returns:
            "started", "unsent" (the training could not be sent: ``RunLifecycle.enqueue``),
            "coalesced" (a training runs: one follow-up is due), "counted" or "unchanged"
            (nothing new in the ledger).
        """
        self.ensure_ledger(project_id)
        trigger = self.context.trigger()
        if action == "START_TRAINING":
            self.context.redis.sadd(PROJECTS_KEY, project_id)
            decision = trigger.apply(project_id, "start_training", self.context.every_n(project_id))
        else:
            count = self.context.ledger().apply(project_id, changes)
            if count == 0:
                log.info("event_handled", changes=len(changes), effective=0)
                return "unchanged"
            decision = trigger.apply(project_id, "annotation", self.context.every_n(project_id), count=count)
        log.info(
            "event_handled",
            changes=len(changes),
            start=decision.start,
            pending=decision.state.pending,
            followup=decision.state.followup,
        )
        if decision.start and decision.run_id:
            return "started" if self.runs.enqueue(project_id, decision.run_id, action) else "unsent"
        return "coalesced" if decision.state.followup else "counted"

    def ensure_ledger(self, project_id: int) -> None:
        """After Redis lost the ledger, start it from what the served version was trained on
        (its ``annotations.json``, ``labelloop.registry.store``)."""
        if self.context.redis.exists(Ledger.key(project_id)):
            return
        served = Registry(self.context.settings.models_dir).current(project_id)
        baseline = served.annotations() if served else {}
        if served and self.context.ledger().seed(project_id, {int(i): u for i, u in baseline.items()}):
            log.info("ledger_seeded", version=served.name, annotations=len(baseline))
