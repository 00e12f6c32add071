"""What every job of a worker shares: its settings, its Redis client and the way it sends a task.

``Send``: ``send(task_name, args, queue)`` enqueues a follow-up task (the Celery app's
``send_task`` in a worker; a list's ``append`` in a test). Task arguments are ids and small values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from labelloop.events.ledger import Ledger
from labelloop.jobs.trigger import TriggerStore
from labelloop.registry.params import load as load_params
from labelloop.settings import Settings

Send = Callable[[str, list[Any], str], None]

# A queued training keeps its project's lock this long (seconds): longer than any queue wait.
QUEUED_LOCK_TTL_S = 86400


@dataclass
class JobContext:
    """The collaborators the jobs share (``labelloop.jobs.jobs.Jobs`` builds one per worker).

    Attributes:
        settings: the worker's settings.
        redis: the worker's Redis client (``labelloop.redis_client.client(url, "worker")``).
        send: enqueues ``(task name, args, queue)``.
    """

    settings: Settings
    redis: redis.Redis
    send: Send

    def trigger(self) -> TriggerStore:
        """The trigger state and training locks (queued lock ``QUEUED_LOCK_TTL_S``, a delivery's
        ``LABELLOOP_TRAIN_LOCK_TTL_S``)."""
        return TriggerStore(self.redis, lock_ttl_s=QUEUED_LOCK_TTL_S, run_ttl_s=self.settings.train_lock_ttl_s)

    def ledger(self) -> Ledger:
        """The annotations each project's trainings have seen (``labelloop.events.ledger``)."""
        return Ledger(self.redis)

    def every_n(self, project_id: int) -> int:
        """The project's ``train_every_n``: annotation events that make a training due (its params
        file over the settings)."""
        return load_params(self.settings.models_dir, project_id).effective(self.settings)["train_every_n"]
