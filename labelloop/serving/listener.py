"""The predict process's version listener: a daemon thread subscribed to the registry's
announcements (Redis pub/sub, ``labelloop.registry.notify.CHANNEL``) that swaps or warms the
announced versions, and beats the process's heartbeat every second.

Staying up: it pings its subscription and, when a ping goes unanswered or the connection drops
(Redis restarted, ``CLIENT KILL``, a silent network drop), reconnects, re-subscribes and
re-checks ``CURRENT`` of every loaded project (swaps may have been missed meanwhile). Losing the
subscription loses nothing: every request still checks the registry.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis
import structlog

from labelloop.redis_client import subscriber
from labelloop.registry.notify import CHANNEL
from labelloop.serving.model_cache import ModelCache
from labelloop.serving.presence import Presence

log = structlog.get_logger(__name__)

HEARTBEAT_S = 1.0  # how often a predict process renews its heartbeat key
LISTENER_PING_S = 2.0  # the version listener pings its subscription this often ...
LISTENER_DEAD_S = 3 * LISTENER_PING_S  # ... and reconnects when nothing answered for this long
LISTENER_PING = "labelloop-listener"
LISTENER_NAME = "labelloop-version-listener"  # its connection's name in Redis' CLIENT LIST


class VersionListener:
    """Follows announcements for ``cache`` and beats for ``presence`` until ``close``.

    Args:
        redis_url: the Redis the registry announces on.
        cache: the models to swap or warm (``ModelCache.notice``).
        presence: whose heartbeat to renew.
    """

    def __init__(self, redis_url: str, cache: ModelCache, presence: Presence) -> None:
        self.redis_url = redis_url
        self.cache = cache
        self.presence = presence
        self._closed = threading.Event()

    def start(self) -> None:
        """Run the listener in a daemon thread ("version-listener")."""
        threading.Thread(target=self._run, name="version-listener", daemon=True).start()

    def close(self) -> None:
        """Stop the thread (within a second) and its heartbeat."""
        self._closed.set()

    def _run(self) -> None:
        """Subscribe, follow, and on any connection error reconnect every second while Redis is down."""
        subscribed_before = lost = False
        while not self._closed.is_set():
            try:
                # No retries inside redis-py: a reconnection must come back here, to re-check.
                client = subscriber(
                    self.redis_url, read_deadline_s=LISTENER_DEAD_S, ping_s=LISTENER_PING_S, name=LISTENER_NAME
                )
                with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(CHANNEL)
                    if subscribed_before:
                        log.info("version_listener_resubscribed")
                    subscribed_before, lost = True, False
                    self._recheck()
                    self._follow(pubsub)
            except (redis.RedisError, OSError) as exc:
                if not lost:  # once per outage, not every second of it
                    log.warning("version_listener_lost", error=str(exc)[:200])
                lost = True
                self._closed.wait(1.0)

    def _recheck(self) -> None:
        """Swap every loaded project whose ``CURRENT`` moved while no announcement could arrive."""
        for project_id in self.cache.projects():
            try:
                self.cache.notice(project_id)
            except Exception as exc:  # one project's registry trouble must not stop the listener
                log.warning("version_recheck_failed", project_id=project_id, error=str(exc)[:200])

    def _follow(self, pubsub: Any) -> None:
        """Handle messages until the subscription stops answering pings (raises ConnectionError).

        A message is ``{"project_id": int, "action": "serve" | "warm", "version": str}``
        (``labelloop.registry.notify``); one that does not parse is skipped.
        """
        last_answer = last_ping = last_beat = time.monotonic()
        while not self._closed.is_set():
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_S:
                self.presence.beat(self.cache.projects)
                last_beat = now
            if now - last_ping >= LISTENER_PING_S:
                pubsub.ping(LISTENER_PING)
                last_ping = now
            if now - last_answer > LISTENER_DEAD_S:
                raise redis.ConnectionError(f"subscription silent for {now - last_answer:.1f} s")
            message = pubsub.get_message(timeout=HEARTBEAT_S)
            if message is None:
                continue
            last_answer = time.monotonic()
            if message.get("type") != "message":
                continue  # our ping's pong
            try:
                data = json.loads(message["data"])
                warm = str(data["version"]) if data.get("action") == "warm" else None
                self.cache.notice(int(data["project_id"]), warm=warm)
            except (ValueError, KeyError, TypeError):
                continue
