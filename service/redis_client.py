"""The receiver's one asyncio Redis client (redis-py's ``redis.asyncio``), built in one place.

``labelloop.redis_client`` builds the blocking clients (workers, command line, the receiver's
helpers run in threads); this is the third construction, the receiver's, made in its lifespan and
shared by the webhook path (``service.events``) and the other routes.

What the receiver relies on:

- time is bounded: opening a TCP (or TLS) connection takes at most ``timeout_s``, each reply
  (the connection's own ``AUTH``/``SELECT``/``CLIENT SETINFO`` included) at most ``2 *
  timeout_s`` (``socket_timeout``); callers that need one bound over several
  round trips (``service.events``: ``EVALSHA``, ``NOSCRIPT``, ``SCRIPT LOAD``, ``EVALSHA``) put
  their own deadline around them;
- a command is never retried by redis-py (``Retry(NoBackoff(), 0)``): after a timeout or a lost
  connection nobody knows whether Redis ran it, so the caller reports the failure (the receiver
  answers 503 and records the gap) instead of running an enqueue twice; the next command opens a
  fresh connection from the pool (a connection the server closed is noticed before it is used);
- at most ``max_connections`` connections (redis-py's ``BlockingConnectionPool``): a caller
  beyond them waits for a free one, within the reply bound, instead of failing at once (redis-py's
  default pool raises ``MaxConnectionsError`` past 100);
- a connection idle for ``HEALTH_CHECK_S`` is PINGed before it is trusted again: one that went
  silent (a NAT or a dead peer) fails that command within the reply bound, not later, and the
  next command gets a fresh connection;
- the URL means what it means to the workers' blocking clients (redis-py's ``parse_url``), and a
  ``rediss://`` URL's ``ssl_*`` options are checked here, at start-up (``check_tls_options``):
  redis-py's asyncio client would otherwise read them at the first connection, and accept TLS
  options on a plain ``redis://`` URL until then.
"""

from __future__ import annotations

import ssl
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.exceptions import RedisError

HEALTH_CHECK_S = 10
MAX_CONNECTIONS = 128


def check_tls_options(url: str) -> ssl.SSLContext | None:
    """The ``ssl.SSLContext`` redis-py's asyncio client will use for ``url`` (None: no TLS).

    The ``ssl_*`` query options of a ``rediss://`` URL (``ssl_ca_certs``, ``ssl_cert_reqs``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``, ...) mean what redis-py's
    ``SSLConnection`` makes of them (certificate and hostname verified against the system CAs by
    default; ``ssl_cert_reqs=none`` also turns the hostname check off); building its context here
    reads the CA, certificate and key files once, so a wrong path fails at start-up.

    Raises:
        ValueError: the URL is not one redis-py accepts; an option redis-py's asyncio client does
            not take (the OCSP ones among them) or an invalid value (``ssl_cert_reqs=maybe``);
            ``ssl_*`` options on a URL without TLS (dropping them would connect in plain text where
            TLS was asked for).
        OSError: a CA, certificate or key file cannot be read (``ssl.SSLError`` if unusable).
    """
    opts: dict[str, Any] = dict(parse_url(url))
    tls = {k: v for k, v in opts.items() if k.startswith("ssl_")}
    if opts.get("connection_class") is not SSLConnection:
        if tls:
            raise ValueError(f"Redis URL: TLS options without rediss://: {', '.join(sorted(tls))}")
        return None
    try:
        # Constructing a connection opens nothing; it only normalises the options.
        spec = AsyncSSLConnection(**tls).ssl_context
    except (TypeError, RedisError) as exc:
        raise ValueError(f"Redis URL: unusable TLS option: {exc}") from None
    return spec.get()


def client(
    url: str, timeout_s: float, max_connections: int = MAX_CONNECTIONS, health_check_s: float = HEALTH_CHECK_S
) -> aioredis.Redis:
    """The receiver's asyncio client for ``url`` (``LABELLOOP_REDIS_URL``): a connection pool, no
    connection opened yet.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://``, as redis-py reads it (user, password, db,
            ``ssl_*`` options).
        timeout_s: ``LABELLOOP_REDIS_TIMEOUT_S``: the connect timeout; a reply may take twice it.
        max_connections: connections to Redis at most; the receiver passes twice its requests in
            flight (``LABELLOOP_MAX_CONCURRENT_REQUESTS``: webhooks and ``/predict`` have a bound each).
        health_check_s: a connection idle for longer is PINGed before its next command.

    Raises:
        ValueError, OSError: as ``check_tls_options``.
    """
    check_tls_options(url)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=2 * timeout_s,
        socket_connect_timeout=timeout_s,
        socket_timeout=2 * timeout_s,
        health_check_interval=health_check_s,
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis.from_pool(pool)
