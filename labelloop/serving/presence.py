"""What a predict process tells promoters through Redis: its heartbeat (``keys.predict_alive``),
the projects it serves (``keys.servers``) and the versions it holds warm (``keys.warm``), which
``labelloop.registry.notify.serve_when_warm`` waits on. Reporting only speeds promotions up: every
failure here is logged and serving goes on."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable

import redis
import structlog

from labelloop import redis_client
from labelloop.registry.notify import alive_key, servers_key, warm_key

log = structlog.get_logger(__name__)

REPORT_TTL_S = 600  # the sets of servers and warm versions expire this long after a process's last report
HEARTBEAT_TTL_S = 3  # seconds after its last beat that a process stops counting as alive


class Presence:
    """One process's reports (``identity``: ``host:pid``). Silent until ``connect``.

    Args:
        identity: the process's member name in the sets; defaults to ``host:pid``.
    """

    def __init__(self, identity: str | None = None) -> None:
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self._redis: redis.Redis | None = None
        self._reported: dict[int, float] = {}  # project -> monotonic time of its last report
        # Orders the heartbeat's re-adding against a dropped project's removal from its servers.
        self._membership = threading.Lock()

    def connect(self, redis_url: str) -> None:
        """Report to the Redis at ``redis_url`` from now on.

        The process's ``predict`` client (``labelloop.redis_client``): reports run in ``/predict``
        requests and beside a 3 s heartbeat TTL, so they give up after 2 s.
        """
        self._redis = redis_client.client(redis_url, "predict")

    def due(self, project_id: int) -> bool:
        """Whether the project's report is older than a quarter of ``REPORT_TTL_S`` (or missing)."""
        return time.monotonic() - self._reported.get(project_id, 0.0) > REPORT_TTL_S / 4

    def report(self, project_id: int, versions: Iterable[str]) -> None:
        """Tell promoters that this process serves the project and holds ``versions`` warm."""
        if self._redis is None:
            return
        try:
            with self._redis.pipeline() as pipe:
                pipe.set(alive_key(self.identity), "1", ex=HEARTBEAT_TTL_S)
                pipe.sadd(servers_key(project_id), self.identity)
                pipe.expire(servers_key(project_id), REPORT_TTL_S)
                for version in versions:
                    pipe.sadd(warm_key(project_id, version), self.identity)
                    pipe.expire(warm_key(project_id, version), REPORT_TTL_S)
                pipe.execute()
            self._reported[project_id] = time.monotonic()
        except Exception as exc:  # reporting only speeds promotions up; serving goes on without it
            log.warning("warm_report_failed", project_id=project_id, error=str(exc)[:200])

    def beat(self, projects: Callable[[], Iterable[int]]) -> None:
        """Renew the heartbeat key (``serve_when_warm`` waits only for live processes) and this
        process's place in the sets of servers of ``projects()`` (read under the membership lock:
        a project ``leave`` removes meanwhile is not added back)."""
        if self._redis is None:
            return
        try:
            with self._membership, self._redis.pipeline(transaction=False) as pipe:
                pipe.set(alive_key(self.identity), "1", ex=HEARTBEAT_TTL_S)
                for project_id in list(projects()):
                    pipe.sadd(servers_key(project_id), self.identity)
                    pipe.expire(servers_key(project_id), REPORT_TTL_S)
                pipe.execute()
        except Exception as exc:  # the listener loop beats again in a second
            log.debug("heartbeat_failed", error=str(exc)[:200])

    def leave(self, project_id: int, versions: Iterable[str]) -> None:
        """Leave the project's set of servers and its warm ``versions`` (the project was dropped)."""
        self._reported.pop(project_id, None)
        if self._redis is None:
            return
        try:
            with self._membership, self._redis.pipeline() as pipe:
                pipe.srem(servers_key(project_id), self.identity)
                for version in versions:
                    pipe.srem(warm_key(project_id, version), self.identity)
                pipe.execute()
        except Exception as exc:  # its heartbeat still marks this process alive: promotions wait 5 s at most
            log.warning("server_leave_failed", project_id=project_id, error=str(exc)[:200])
