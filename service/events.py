"""Record an accepted webhook and enqueue its Celery task, in one Redis transaction.

An event is acknowledged only after Redis has it: one ``MULTI``/``EXEC`` adds the delivery to
the deduplication keys, appends it to the event stream and pushes the Celery message onto the
``events`` queue, so an event is never half-recorded (recorded but not enqueued, or the
reverse), and one round trip keeps the ack in the sub-millisecond range.

The Celery message is built from Celery's own (``app.amqp.as_task_v2``, task protocol 2) and
wrapped the way kombu's Redis transport stores messages (``Channel.prepare_message`` plus
``_inplace_augment_message``: base64 body, ``delivery_info``, a delivery tag), then pushed
with ``LPUSH <queue>`` as kombu does for priority 0; workers consume it like any
``send_task``.

Redis keys: ``labelloop:delivery:<sha1>`` (deduplication, 7 days), the stream
``labelloop:events`` (about 100,000 entries) and the set ``labelloop:projects``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
import uuid
from typing import Any

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
STREAM_MAXLEN = 100_000


@functools.lru_cache(maxsize=8)
def _template(celery: Celery, task_name: str) -> Any:
    # Celery builds the protocol-2 headers once; each message then changes only its ids and reprs.
    return celery.amqp.as_task_v2("00000000-0000-0000-0000-000000000000", task_name, args=[], kwargs={})


def celery_message(celery: Celery, task_name: str, args: list[Any], queue: str) -> bytes:
    """The bytes kombu's Redis transport would push for ``send_task(task_name, args, queue=queue)``."""
    task_id = str(uuid.uuid4())
    template = _template(celery, task_name)
    headers = {**template.headers, "id": task_id, "root_id": task_id, "argsrepr": repr(args)}
    body = json.dumps([args, {}, template.body[2]]).encode()
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            **template.properties,
            "correlation_id": task_id,
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


class EventRecorder:
    """Records webhook events and hands them to the ``events`` queue.

    Args:
        client: the receiver's async Redis client (with bounded socket timeouts).
        celery: the Celery app (only its message protocol is used).
        timeout_s: upper bound on the whole Redis exchange; past it the event is refused (503).
    """

    def __init__(self, client: aioredis.Redis, celery: Celery, timeout_s: float = 0.3) -> None:
        self.redis = client
        self.celery = celery
        self.timeout_s = timeout_s
        self._record_once = client.register_script(_RECORD_ONCE)

    async def remember_project(self, project_id: int) -> None:
        """Add a project to the set reconciliation walks; best effort (``/setup`` must not fail on it)."""
        with anyio.move_on_after(self.timeout_s):
            try:
                await self.redis.sadd(PROJECTS_KEY, project_id)
            except (RedisError, OSError):
                pass

    async def record_and_enqueue(self, event: WebhookEvent) -> str:
        """Record ``event`` once and enqueue ``labelloop.handle_event(project_id, action, changes)``.

        Returns:
            "accepted", or "duplicate" when this delivery was already recorded.

        Raises:
            UnavailableError: Redis did not answer within the timeout; nothing was recorded
                (the transaction is all or nothing).
        """
        changes = event.changes()
        key = event.delivery_key()
        dedup = f"labelloop:delivery:{hashlib.sha1(key.encode()).hexdigest()}" if key else None
        message = celery_message(
            self.celery, TASK_HANDLE_EVENT, [event.project.id, event.action, [list(c) for c in changes]], QUEUE_EVENTS
        )
        fields: dict[str, Any] = {
            "action": event.action,
            "project_id": event.project.id,
            "annotation_ids": ",".join(str(i) for i, _ in changes),
            "received_at": f"{time.time():.6f}",
        }
        try:
            with anyio.fail_after(self.timeout_s * 2):
                if dedup is None:
                    async with self.redis.pipeline(transaction=True) as pipe:
                        pipe.xadd(EVENT_STREAM, fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
                        pipe.lpush(QUEUE_EVENTS, message)
                        pipe.sadd(PROJECTS_KEY, event.project.id)
                        await pipe.execute()
                    return "accepted"
                result = await self._record_once(
                    keys=[dedup, EVENT_STREAM, QUEUE_EVENTS, PROJECTS_KEY],
                    args=[
                        DEDUP_TTL_S,
                        STREAM_MAXLEN,
                        message,
                        event.project.id,
                        *[x for kv in fields.items() for x in kv],
                    ],
                )
                return "accepted" if int(result) == 1 else "duplicate"
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis_unavailable", error_type=type(exc).__name__, project_id=event.project.id)
            raise UnavailableError(f"Redis unavailable: {type(exc).__name__}") from None


def _flatten(fields: dict[str, Any]) -> list[Any]:
    return [x for kv in fields.items() for x in kv]


# One atomic step: if the delivery is new, remember it, append the event to the stream and push
# the Celery message; Redis runs a script without interleaving other commands.
_RECORD_ONCE = """
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) == false then
  return 0
end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
return 1
"""
