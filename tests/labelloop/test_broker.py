"""What ``labelloop.jobs.broker`` relies on in kombu's Redis transport, pinned against a real kombu
``Connection``/``Channel`` on real Redis: the names of the ``unacked_index`` sorted set and the
``unacked`` hash, the delivery tag as member and key, the ``[message, exchange, routing key]``
value, the priority lists' names, and a fresh score keeping a delivery from being restored.
A kombu upgrade that changes any of them fails here."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from labelloop import keys
from labelloop.jobs import broker
from labelloop.names import QUEUE_TRAIN, TASK_TRAIN
from tests.factories import make_settings
from workers.celery_app import create_celery


@pytest.fixture
def channel(redis_url: str) -> Iterator[Any]:
    """A kombu Redis channel as a worker's (visibility timeout 1 s), closed after the test."""
    with Connection(redis_url, transport_options={"visibility_timeout": 1}) as conn:
        chan = conn.channel()
        try:
            yield chan
        finally:
            chan.close()


def send_train(redis_url: str, tmp_path: Path, project_id: int, run_id: str, priority: int | None = None) -> None:
    """Send ``labelloop.train`` as the workers do: the Celery app's ``send_task`` by name and queue."""
    app = create_celery(make_settings(tmp_path, redis_url=redis_url))
    app.send_task(TASK_TRAIN, args=[project_id, run_id], queue=QUEUE_TRAIN, priority=priority)


def waiting(client: redis.Redis) -> list[list[bytes]]:
    with client.pipeline() as pipe:
        broker.read_waiting(pipe, QUEUE_TRAIN)
        replies: list[list[bytes]] = pipe.execute()
    return replies


def test_kombu_channel_names_the_keys_labelloop_reads(channel: Any) -> None:
    """kombu's Redis channel keeps unacknowledged deliveries under the names ``keys`` spells, with no
    prefix, and puts a priority-p message in the list ``keys.queue_lists`` names for it."""
    assert channel.unacked_index_key == keys.UNACKED_INDEX == "unacked_index"
    assert channel.unacked_key == keys.UNACKED == "unacked"
    assert channel.global_keyprefix == ""
    assert [channel._q_for_pri(QUEUE_TRAIN, p) for p in (0, 3, 6, 9)] == keys.queue_lists(QUEUE_TRAIN)


def test_a_delivery_is_indexed_by_its_tag_with_its_message(redis_url: str, tmp_path: Path, channel: Any) -> None:
    """A train message waits in the queue list ("queued"); once a worker takes it unacknowledged, the
    unacked_index member is its delivery tag scored with the delivery time and the unacked hash holds
    ``[message, exchange, routing key]`` under the tag ("delivered"); acknowledged, both go."""
    client = redis.Redis.from_url(redis_url)
    send_train(redis_url, tmp_path, 7, "run-a")
    assert broker.place(waiting(client), 7, "run-a") == "queued"
    assert broker.place(waiting(client), 7, "run-b") is None and broker.place(waiting(client), 8, "run-a") is None
    before = time.time()
    message = channel.basic_get(QUEUE_TRAIN, no_ack=False)
    assert message is not None and message.headers["task"] == TASK_TRAIN
    tag = message.delivery_tag
    [(member, score)] = client.zrange(keys.UNACKED_INDEX, 0, -1, withscores=True)
    assert member.decode() == tag and before - 1 <= score <= time.time() + 1
    raw = client.hget(keys.UNACKED, tag)
    assert raw is not None
    body, exchange, routing_key = json.loads(raw)
    assert body["headers"]["task"] == TASK_TRAIN and routing_key == QUEUE_TRAIN and isinstance(exchange, str)
    assert broker.place(waiting(client), 7, "run-a") == "delivered"
    message.ack()
    assert not client.exists(keys.UNACKED_INDEX, keys.UNACKED)
    assert broker.place(waiting(client), 7, "run-a") is None


def test_a_fresh_score_keeps_a_delivery_past_the_visibility_timeout(
    redis_url: str, tmp_path: Path, channel: Any
) -> None:
    """kombu restores a delivery whose index score is older than the visibility timeout (1 s) to its
    queue, and not one that ``keep_delivery_fresh`` scored as new; the keepalive never recreates an
    entry that is gone."""
    client = redis.Redis.from_url(redis_url)
    send_train(redis_url, tmp_path, 7, "run-a")
    message = channel.basic_get(QUEUE_TRAIN, no_ack=False)
    keepalive = broker.delivery_keepalive(client, message.delivery_tag)
    time.sleep(1.5)
    keepalive()
    channel.qos.restore_visible(interval=1)
    assert client.llen(QUEUE_TRAIN) == 0 and broker.place(waiting(client), 7, "run-a") == "delivered"
    time.sleep(1.5)
    channel.qos.restore_visible(interval=1)
    assert client.llen(QUEUE_TRAIN) == 1 and broker.place(waiting(client), 7, "run-a") == "queued"
    assert not client.exists(keys.UNACKED_INDEX)
    keepalive()
    assert not client.exists(keys.UNACKED_INDEX), "ZADD XX must not recreate a restored delivery"


def test_a_prioritised_message_is_found_in_its_priority_list(redis_url: str, tmp_path: Path) -> None:
    """A train message sent with priority 6 waits in the queue's priority-6 list, and ``place`` finds it."""
    client = redis.Redis.from_url(redis_url)
    send_train(redis_url, tmp_path, 9, "run-p", priority=6)
    assert client.llen(keys.queue_lists(QUEUE_TRAIN)[2]) == 1 and client.llen(QUEUE_TRAIN) == 0
    assert broker.place(waiting(client), 9, "run-p") == "queued"


def test_other_messages_are_not_taken_for_a_training() -> None:
    """Text that is not a Celery message, another task, or a train message for another run is not the run's."""
    assert not broker.is_train_message(b"not json", 1, "r")
    assert not broker.is_train_message(json.dumps({"headers": {"task": "labelloop.predict"}}).encode(), 1, "r")
    assert not broker.is_train_message(json.dumps([{"headers": {"task": TASK_TRAIN}, "body": "!"}]).encode(), 1, "r")
