"""Record an accepted webhook in Redis, then enqueue it by task name.

An event is acknowledged only after Redis has it. Redis keys:
``labelloop:delivery:<key>`` (deduplication, 7 days) and the stream ``labelloop:events``
(the event log, capped at about 100,000 entries).
"""

from __future__ import annotations

import hashlib
import time

import anyio
import redis.asyncio as aioredis
import structlog
from celery import Celery
from redis.exceptions import RedisError

from service.errors import UnavailableError
from service.protocol import WebhookEvent
from workers.celery_app import QUEUE_EVENTS, TASK_HANDLE_EVENT
from workers.ledger import PROJECTS_KEY

log = structlog.get_logger(__name__)

EVENT_STREAM = "labelloop:events"
DEDUP_TTL_S = 7 * 86400


class EventRecorder:
    """Records webhook events and hands them to the ``events`` queue."""

    def __init__(self, client: aioredis.Redis, celery: Celery, timeout_s: float = 0.3) -> None:
        self.redis = client
        self.celery = celery
        self.timeout_s = timeout_s

    async def remember_project(self, project_id: int) -> None:
        """Add a project to the set reconciliation walks; best effort (``/setup`` must not fail on it)."""
        with anyio.move_on_after(self.timeout_s):
            try:
                await self.redis.sadd(PROJECTS_KEY, project_id)
            except (RedisError, OSError):
                pass

    async def record_and_enqueue(self, event: WebhookEvent) -> str:
        """Record ``event`` once and enqueue ``labelloop.handle_event``.

        Returns:
            "accepted", or "duplicate" when this delivery was already recorded.

        Raises:
            UnavailableError: Redis did not answer within its timeouts.
        """
        key = event.delivery_key()
        dedup = f"labelloop:delivery:{hashlib.sha1(key.encode()).hexdigest()}" if key else None
        try:
            with anyio.fail_after(self.timeout_s * 2):
                if dedup and not await self.redis.set(dedup, 1, nx=True, ex=DEDUP_TTL_S):
                    return "duplicate"
                await self.redis.xadd(
                    EVENT_STREAM,
                    {
                        "action": event.action,
                        "project_id": event.project.id,
                        "annotation_ids": ",".join(str(i) for i, _ in event.changes()),
                        "received_at": f"{time.time():.6f}",
                    },
                    maxlen=100_000,
                    approximate=True,
                )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis_unavailable", error_type=type(exc).__name__, project_id=event.project.id)
            raise UnavailableError(f"Redis unavailable: {type(exc).__name__}") from None

        def send() -> None:
            self.celery.send_task(
                TASK_HANDLE_EVENT,
                args=[event.project.id, event.action, [list(c) for c in event.changes()]],
                queue=QUEUE_EVENTS,
                retry=False,
            )

        try:
            await anyio.to_thread.run_sync(send)
        except Exception as exc:
            if dedup:
                # Forget the delivery so that a resend is not dropped as a duplicate.
                with anyio.move_on_after(0.5):
                    try:
                        await self.redis.delete(dedup)
                    except (RedisError, OSError):
                        pass
            raise UnavailableError(f"could not enqueue: {type(exc).__name__}") from None
        return "accepted"
