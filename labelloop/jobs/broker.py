"""Everything labelloop relies on in kombu's Redis transport, in one place.

kombu keeps no public API for a delivery's age or for finding a message by its content, and
labelloop needs both: a training runs longer than the broker's visibility timeout, and a
project's lock must know whether its run's message still waits. This module reads and writes
kombu's own structures (``kombu.transport.redis``: ``Channel``, ``QoS.append``,
``QoS.restore_visible``, ``Channel._q_for_pri``; kombu 5.x, no ``global_keyprefix``):

- ``unacked_index`` (``keys.UNACKED_INDEX``): sorted set, member the delivery tag (a uuid4 text),
  score ``time.time()`` when kombu handed the message to a worker. ``restore_visible`` puts back
  into its queue every delivery whose score is older than ``visibility_timeout`` seconds.
  ``keep_delivery_fresh`` moves a live training's score to now (only while its entry exists).
- ``unacked`` (``keys.UNACKED``): hash, delivery tag -> JSON ``[message, exchange, routing key]``,
  ``message`` kombu's raw message (Celery protocol 2: ``headers.task`` names the task, ``body``
  is base64 JSON ``[args, kwargs, embed]``).
- a queue's waiting messages: the list ``<queue>`` (priority 0) and ``<queue>\\x06\\x16<p>`` for
  each other priority step (``keys.queue_lists``).

``tests/labelloop/test_broker.py`` pins all of it against a real kombu ``Connection`` on real
Redis: a kombu upgrade that renames a key or changes a member's format fails there first.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import redis

from labelloop import keys
from labelloop.names import QUEUE_TRAIN, TASK_TRAIN

Place = Literal["queued", "delivered"]


def keep_delivery_fresh(client: redis.Redis, delivery_tag: str) -> None:
    """Score ``delivery_tag``'s entry in ``unacked_index`` as delivered now, so kombu does not hand
    the message to another worker while this one still runs it. Does nothing once the entry is
    gone (acknowledged or restored): ``ZADD XX`` never creates one.

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    client.zadd(keys.UNACKED_INDEX, {delivery_tag: time.time()}, xx=True)


def delivery_keepalive(client: redis.Redis, delivery_tag: str | None) -> Callable[[], None]:
    """``keep_delivery_fresh`` bound to one delivery (a no-op without a tag: a task run eagerly)."""

    def keepalive() -> None:
        if delivery_tag:
            keep_delivery_fresh(client, delivery_tag)

    return keepalive


def read_waiting(pipe: redis.client.Pipeline, queue: str = QUEUE_TRAIN) -> int:
    """Queue on ``pipe`` the reads of ``queue``'s waiting lists and of the ``unacked`` hash (whole:
    both hold only what waits); returns how many replies they add, for ``place``."""
    lists = keys.queue_lists(queue)
    for name in lists:
        pipe.lrange(name, 0, -1)
    pipe.hvals(keys.UNACKED)
    return len(lists) + 1


def place(replies: Sequence[list[bytes]], project_id: int, run_id: str) -> Place | None:
    """Where the train message of ``run_id`` is, from ``read_waiting``'s replies: "queued" (in a
    queue list), "delivered" (in ``unacked``: handed to a worker, not yet acknowledged) or None."""
    *queued, delivered = replies
    if any(is_train_message(m, project_id, run_id) for rows in queued for m in rows):
        return "queued"
    if any(is_train_message(m, project_id, run_id) for m in delivered):
        return "delivered"
    return None


def is_train_message(raw: bytes, project_id: int, run_id: str) -> bool:
    """Whether a kombu message (a queue list's item, or an ``unacked`` value ``[message, exchange,
    routing key]``) is the Celery task ``labelloop.train`` with args ``[project_id, run_id]``."""
    try:
        message: Any = json.loads(raw)
        if isinstance(message, list):
            message = message[0]
        if (message.get("headers") or {}).get("task") != TASK_TRAIN:
            return False
        args = json.loads(base64.b64decode(message["body"]))[0]
        return int(args[0]) == int(project_id) and str(args[1]) == run_id
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return False  # not a message labelloop sent
