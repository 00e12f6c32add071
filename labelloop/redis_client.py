"""One Redis client per process and role, built in one place with one set of timeouts.

Roles (seconds: connect timeout, socket timeout):

- ``worker``: Celery workers and the training run (2, 10): a command may wait on a busy server.
- ``cli``: the command line and the receiver's blocking helpers run in threads (2, 5).
- ``predict``: what a predict worker writes while it answers ``/predict`` (its heartbeat and
  warm versions, ``labelloop.serving.presence``) (1, 2): a slow Redis must not hold a request.
- ``listener``: the predict worker's pub/sub subscription (1, its own read deadline), built by
  ``labelloop.serving.listener`` with ``subscriber`` below.

The receiver's own asyncio client is the third construction (``service.redis_client``). redis-py's
connection pool notices a fork (it compares the process id) and opens new connections in the
child, so a client shared in a Celery prefork parent is safe to use in its children.
"""

from __future__ import annotations

import functools
from typing import Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

Role = Literal["worker", "cli", "predict"]
TIMEOUTS: dict[Role, tuple[float, float]] = {"worker": (2.0, 10.0), "cli": (2.0, 5.0), "predict": (1.0, 2.0)}


@functools.cache
def client(url: str, role: Role = "worker") -> redis.Redis:
    """The process's client for ``url`` in ``role`` (created on first use, then shared; thread-safe:
    redis-py's pool hands each thread its own connection)."""
    connect_s, socket_s = TIMEOUTS[role]
    return redis.Redis.from_url(url, socket_connect_timeout=connect_s, socket_timeout=socket_s)


def subscriber(url: str, *, read_deadline_s: float, ping_s: float, name: str) -> redis.Redis:
    """A client for one pub/sub subscription: no retries inside redis-py (a lost connection must
    come back to the caller's loop), a health-check ping every ``ping_s`` and reads that give up
    after ``read_deadline_s``; named ``name`` in ``CLIENT LIST``."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=1,
        socket_timeout=read_deadline_s,
        health_check_interval=int(ping_s),
        retry=Retry(NoBackoff(), 0),
        client_name=name,
    )
