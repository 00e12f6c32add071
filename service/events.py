"""Record an accepted webhook and enqueue its Celery task, in one Redis transaction.

An event is acknowledged only after Redis has it: one Lua script adds the delivery to the
deduplication keys, appends it to the event stream and pushes the Celery message onto the
``events`` queue, so an event is never half-recorded (recorded but not enqueued, or the
reverse), and one round trip keeps the ack in the sub-millisecond range. The scripts go over the
receiver's redis-py asyncio client (``service.redis_client``: bounded timeouts, no retries), as
``register_script`` objects (``EVALSHA``, and after a Redis restart ``SCRIPT LOAD`` and
``EVALSHA`` again, as redis-py does), within one deadline per call (``deadline_s``).

The Celery message is what Celery's own ``app.amqp.as_task_v2`` (task protocol 2) builds,
wrapped the way kombu's Redis transport stores messages (``CeleryMessage``), then pushed with
``LPUSH <queue>`` as kombu does for priority 0; workers consume it like any ``send_task``.

Only webhooks of known projects are recorded (``service.projects``): the script refuses any
other project id before it writes, and the recorder admits a project labelloop's own token can
read in Label Studio, then records.

Redis keys, each bounded: ``labelloop:delivery:<sha1>`` (deduplication, ``DEDUP_TTL_S``), the
stream ``labelloop:events`` (about ``STREAM_MAXLEN`` entries), the set ``labelloop:projects``
(known projects only) and each project's change log (``labelloop.events.changes``: what a rebuild needs
of the webhook's annotation, task and project counters, numbered, at most ``MAX_ENTRY_BYTES``
per entry and ``STREAM_MAXLEN`` entries, expiring ``TTL_S`` after the last write; a log past its
project's budget, ``LABELLOOP_CHANGE_LOG_PROJECT_BYTES`` of Redis ``MEMORY USAGE``, is dropped
and gets a gap). When Redis
refuses an annotation webhook, its project's change log gets a gap once Redis answers again
(Label Studio never resends it); so does an entry too large to keep. A webhook the receiver
refuses after its credential was checked (413, 415, 422, busy 503, a refused Host, ...) gets its
gap at once (``record_refusal``): in its project's change log when the body named a known
project, else in the one counter ``labelloop:webhooks:refused`` (every change log is then
unusable once); an unknown project's id writes nothing. A request with a missing or wrong
credential (401) records nothing: it is not Label Studio's, and one such request must not make
every project's next build read Label Studio (issue 21, item 8). A receiver
that starts bumps that counter (``start``): its previous run may have refused webhooks while
Redis was down and died before it could record their gaps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from celery import Celery
from redis.exceptions import RedisError

from labelloop import keys
from labelloop.errors import UnavailableError, UnknownProjectError
from labelloop.events.changes import STREAM_MAXLEN as CHANGES_MAXLEN
from labelloop.events.changes import TTL_S as CHANGES_TTL_S
from labelloop.events.changes import entry_bytes, seq_key, stream_key, tombstones_key
from labelloop.events.ledger import PROJECTS_KEY
from labelloop.names import QUEUE_EVENTS, TASK_HANDLE_EVENT
from service.projects import LabelStudioProjects
from service.protocol import WebhookEvent

log = structlog.get_logger(__name__)

EVENT_STREAM = keys.EVENTS
# What Redis may raise or the deadline may end with: redis-py's errors (replies, connections,
# timeouts), the socket's (TLS included) and asyncio's TimeoutError.
_UNAVAILABLE = (RedisError, OSError, TimeoutError)
# Duplicate deliveries come from two webhooks on one project or two replicas, seconds apart.
DEDUP_TTL_S = 86400
STREAM_MAXLEN = 100_000


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(value, separators=(",", ":")).encode()


class CeleryMessage:
    """The bytes kombu's Redis transport would push for ``send_task(task_name, args, queue=queue)``.

    Each message is built by Celery itself (``app.amqp.as_task_v2``, task protocol 2) and
    wrapped the way kombu's Redis transport stores it (``Channel.prepare_message`` plus
    ``basic_publish``: base64 body, ``delivery_info``, a delivery tag). The message must exist as
    bytes before the record-and-enqueue script runs, so it is not sent through a producer.
    ``bench.receiver`` measures this against a template filled in per message: 24x the official
    backend's webhook throughput with Starlette's routing, against 39x (README, Benchmarks).
    """

    def __init__(self, celery: Celery, task_name: str, queue: str) -> None:
        self.celery = celery
        self.task_name = task_name
        self.queue = queue

    def build(self, args: list[Any]) -> bytes:
        task_id = str(uuid.uuid4())
        message = self.celery.amqp.as_task_v2(task_id, self.task_name, args=args, kwargs={})
        body = base64.b64encode(_dumps(message.body)).decode()
        envelope = {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": message.headers,
            "properties": {
                **message.properties,
                "delivery_info": {"exchange": self.queue, "routing_key": self.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return _dumps(envelope)


class EventRecorder:
    """Records webhook events and hands them to the ``events`` queue.

    Args:
        client: the receiver's asyncio Redis client (``service.redis_client``); the scripts are
            registered on it.
        celery: the Celery app (only its message protocol is used).
        has_versions: whether the registry has versions of a project (which makes it known).
        label_studio: asks Label Studio whether labelloop's token can read a project; None: only
            ``/setup`` and the registry make projects known.
        change_log_bytes: a project's change-log budget (Redis ``MEMORY USAGE`` of its stream,
            bytes; 0: none). The entry that takes the log past it drops the log and makes a gap
            (logged ``change_log_over_budget``): the next dataset build reads Label Studio.
        deadline_s: bound on one record, refusal or ``SADD``, every round trip included
            (seconds); past it the webhook is refused (503) as when Redis is down.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        celery: Celery,
        has_versions: Callable[[int], bool] = lambda project_id: False,
        label_studio: LabelStudioProjects | None = None,
        change_log_bytes: int = 0,
        deadline_s: float = 0.6,
    ) -> None:
        self.redis = client
        self.deadline_s = deadline_s
        self._record_script = client.register_script(_RECORD)
        self._refused_script = client.register_script(_REFUSED)
        self.change_log_bytes = change_log_bytes
        self.celery = celery
        self.has_versions = has_versions
        self.label_studio = label_studio
        self._message = CeleryMessage(celery, TASK_HANDLE_EVENT, QUEUE_EVENTS)
        # Projects whose webhook Redis refused: their change logs get a gap when it is back (-1:
        # the refused counter; see ``start``).
        self._lost: set[int] = {-1}

    async def start(self) -> None:
        """At the receiver's start: a receiver cannot know what its previous run refused while
        Redis was down and died before recording, so every change log gets one gap, now or (Redis
        down) with the first webhook Redis takes. Never raises."""
        if await self._gap(None):
            self._lost.discard(-1)

    async def remember_project(self, project_id: int) -> None:
        """Add a project to the set reconciliation walks; best effort (``/setup`` must not fail on it)."""
        try:
            async with asyncio.timeout(self.deadline_s):
                await self.redis.sadd(PROJECTS_KEY, project_id)
        except _UNAVAILABLE:
            pass

    async def record_and_enqueue(self, event: WebhookEvent, body: dict[str, Any] | None = None) -> str:
        """Record ``event`` once and enqueue ``labelloop.handle_event(project_id, action, changes)``.

        ``body`` (the webhook as parsed JSON) also goes into the project's change log
        (``labelloop.events.changes.entry_bytes``), in the same transaction.

        Returns:
            "accepted", or "duplicate" when this delivery was already recorded.

        Raises:
            UnknownProjectError: the project is not known to labelloop (see ``service.projects``);
                nothing was recorded.
            UnavailableError: Redis did not take it within the timeout (or refused it); nothing
                was recorded (the script is all or nothing).
        """
        result = await self._record(event, body)
        if result == -1:
            if not await self._admit(event.project.id):
                raise UnknownProjectError(
                    f"project {event.project.id} is not connected to labelloop: add labelloop as the project's "
                    "ML backend (Label Studio then calls /setup), or give labelloop a Label Studio token that "
                    "can read the project"
                )
            result = await self._record(event, body)
        if self._lost:
            await self._mark_lost()
        return "accepted" if result == 1 else "duplicate"

    async def _admit(self, project_id: int) -> bool:
        """Make a project known when the registry has versions of it or Label Studio lets
        labelloop's token read it."""
        if self.has_versions(project_id) or (
            self.label_studio is not None and await self.label_studio.readable(project_id)
        ):
            await self.remember_project(project_id)
            log.info("project_admitted", project_id=project_id)
            return True
        return False

    async def _record(self, event: WebhookEvent, body: dict[str, Any] | None) -> int:
        """Run the script: 1 recorded, 0 duplicate, -1 unknown project."""
        changes = event.changes()
        project_id = event.project.id
        action = event.action
        key = event.delivery_key()
        if key is not None:
            dedup, ttl = keys.delivery(hashlib.sha1(key.encode()).hexdigest()), DEDUP_TTL_S
        else:  # START_TRAINING: each click counts
            dedup, ttl = keys.delivery("-"), 0
        message = self._message.build([project_id, action, [[i, u] for i, u in changes]])
        entry = entry_bytes(body) if body is not None else None
        if entry is None and body is not None and action != "START_TRAINING":
            entry = b"gap"  # too large to keep: the next rebuild reads Label Studio
        try:
            async with asyncio.timeout(self.deadline_s):
                result = await self._record_script(
                    [
                        dedup,
                        EVENT_STREAM,
                        QUEUE_EVENTS,
                        PROJECTS_KEY,
                        stream_key(project_id),
                        seq_key(project_id),
                        tombstones_key(project_id),
                    ],
                    [
                        ttl,
                        STREAM_MAXLEN,
                        message,
                        project_id,
                        action,
                        ",".join([str(i) for i, _ in changes]),
                        f"{time.time():.6f}",
                        entry or b"",
                        CHANGES_MAXLEN,
                        CHANGES_TTL_S,
                        self.change_log_bytes,
                    ],
                )
        except _UNAVAILABLE as exc:
            log.warning("redis_unavailable", error_type=type(exc).__name__, error=str(exc), project_id=project_id)
            self._lost.add(project_id)
            raise UnavailableError(f"Redis unavailable: {type(exc).__name__}") from None
        if int(result) == 2:
            log.warning("change_log_over_budget", project_id=project_id, budget_bytes=self.change_log_bytes)
            return 1
        return int(result)

    async def record_refusal(self, project_id: int | None) -> None:
        """A webhook was refused (``project_id``: the project its body named, None when it was not
        read): make a gap so the next dataset build reads Label Studio. One round trip; best
        effort (when Redis does not answer, the gap is made with the next webhook it takes)."""
        if not await self._gap(project_id):
            self._lost.add(-1 if project_id is None else project_id)

    async def _gap(self, project_id: int | None) -> bool:
        """Run ``_REFUSED`` for ``project_id`` (None or -1: the refused counter); False when Redis
        did not answer."""
        pid = "" if project_id is None or project_id < 0 else str(int(project_id))
        try:
            async with asyncio.timeout(self.deadline_s):
                await self._refused_script(
                    [keys.WEBHOOKS_REFUSED, PROJECTS_KEY, seq_key(int(pid or 0))], [pid, CHANGES_TTL_S]
                )
        except _UNAVAILABLE:
            return False
        return True

    async def _mark_lost(self) -> None:
        """Give the change log of each project whose webhook was refused a gap (best effort: a
        project stays marked until Redis takes it)."""
        for project_id in sorted(self._lost):
            if not await self._gap(project_id):
                return
            self._lost.discard(project_id)
            log.info("change_log_gap", project_id=project_id, reason="webhook refused while Redis was unavailable")


# A refused webhook's gap. KEYS: refused counter, projects set, the project's change log counter.
# ARGV: project id ('' = not read: the refused counter), change log TTL. An unknown project: nothing.
_REFUSED = """
if ARGV[1] == '' then
  return redis.call('INCR', KEYS[1])
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  return 1
end
return 0
"""


# One atomic step: if the project is known and the delivery is new (or not deduplicated: TTL 0),
# remember it, append the event to the stream and to the project's change log (when it has an
# entry; 'gap' only bumps the counter), and push the Celery message; Redis runs a script without
# interleaving other commands, and a script that fails before its first write changes nothing.
# A deletion's ids also go into the project's tombstones (``labelloop.events.changes.tombstones_key``).
# KEYS: dedup key, event stream, events queue, projects set, change log, change log counter,
# change log tombstones.
# ARGV: dedup TTL (0: none), stream max length, Celery message, project id, action,
# annotation ids, received_at, change-log entry ('' = none, 'gap'), change log max length,
# change log TTL, change-log budget in bytes ('0': none; over it the log is dropped and the
# counter bumped: a gap, and the script returns 2).
# Field names are literals here: no table built per call.
_RECORD = """
if redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 0 then
  return -1
end
if ARGV[1] ~= '0' and not redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then
  return 0
end
local over = 1
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
  'action', ARGV[5], 'project_id', ARGV[4], 'annotation_ids', ARGV[6], 'received_at', ARGV[7])
if ARGV[8] ~= '' then
  local seq = redis.call('INCR', KEYS[6])
  redis.call('EXPIRE', KEYS[6], ARGV[10])
  if ARGV[8] ~= 'gap' then
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], '*', 'seq', seq, 'entry', ARGV[8])
    redis.call('EXPIRE', KEYS[5], ARGV[10])
    if ARGV[11] ~= '0' and (redis.call('MEMORY', 'USAGE', KEYS[5]) or 0) > tonumber(ARGV[11]) then
      redis.call('DEL', KEYS[5])
      redis.call('INCR', KEYS[6])
      over = 2
    end
  end
end
if ARGV[5] == 'ANNOTATIONS_DELETED' and ARGV[6] ~= '' then
  for id in string.gmatch(ARGV[6], '[^,]+') do
    redis.call('SADD', KEYS[7], id)
  end
  redis.call('EXPIRE', KEYS[7], ARGV[10])
end
redis.call('LPUSH', KEYS[3], ARGV[3])
return over
"""
