"""Tell predict processes about versions (Redis pub/sub), and promote only once they are warm.

Redis only caches and notifies: the registry's ``CURRENT`` file stays the source of truth,
and readers that miss a message still see the new version on their next registry read.
"""

from __future__ import annotations

import json
import time

import redis
import structlog

from labelloop import keys
from labelloop.registry.store import ANY_CURRENT, Registry

log = structlog.get_logger(__name__)

CHANNEL = keys.VERSIONS_CHANNEL


def current_key(project_id: int) -> str:
    return keys.current(project_id)


def servers_key(project_id: int) -> str:
    """Set of predict processes (host:pid) that have served the project."""
    return keys.servers(project_id)


def alive_key(identity: str) -> str:
    """A predict process's heartbeat: set with a TTL of a few seconds, renewed every second."""
    return keys.predict_alive(identity)


def _names(members: set[bytes | str] | set[bytes] | set[str]) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else m for m in members}


def live_servers(client: redis.Redis, project_id: int) -> set[str]:
    """The predict processes serving the project whose heartbeat has not expired; the dead ones
    (a worker killed or restarted) leave the project's set here.

    Returns:
        identities (``"host:pid"``) as stored in ``servers_key``. Raises redis.RedisError.
    """
    servers = sorted(_names(client.smembers(servers_key(project_id))))
    if not servers:
        return set()
    with client.pipeline(transaction=False) as pipe:
        for identity in servers:
            pipe.exists(alive_key(identity))
        alive = pipe.execute()
    dead = [identity for identity, up in zip(servers, alive, strict=True) if not up]
    if dead:
        client.srem(servers_key(project_id), *dead)
        log.info("predict_servers_dropped", project_id=project_id, servers=dead)
    return {identity for identity, up in zip(servers, alive, strict=True) if up}


def warm_key(project_id: int, version: str) -> str:
    """Set of predict processes that hold ``version`` loaded."""
    return keys.warm(project_id, version)


def serve_when_warm(
    client: redis.Redis,
    registry: Registry,
    project_id: int,
    version: str,
    reason: str,
    timeout_s: float = 5.0,
    expect: object = ANY_CURRENT,
) -> bool:
    """Make ``version`` the served one once every live predict process serving the project has
    it loaded (or after ``timeout_s``), then announce it. A process whose heartbeat expired (it
    died) is not waited for (``live_servers``).

    Workers are told to warm the version (pub/sub ``"warm"``), load it in the background and
    report in ``warm_key``; then ``CURRENT`` moves and ``"serve"`` is announced, so the swap in
    each process is one reference assignment. Without Redis the pointer still moves.

    Args:
        expect: when given, ``CURRENT`` moves only if it still names ``expect``
            (``Registry.set_current``'s compare-and-swap).

    Returns:
        whether every live process reported warm before the timeout.

    Raises:
        VersionNotFoundError: no such version.
        CurrentMovedError: ``CURRENT`` is no longer ``expect`` (nothing is announced).
    """
    registry.find(project_id, version)  # raises VersionNotFoundError before anything is announced
    warm = False
    try:
        client.publish(CHANNEL, json.dumps({"project_id": int(project_id), "version": version, "action": "warm"}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            servers = live_servers(client, project_id)
            if not servers or servers <= _names(client.smembers(warm_key(project_id, version))):
                warm = True
                break
            time.sleep(0.05)
    except redis.RedisError as exc:
        log.warning("warm_up_skipped", project_id=project_id, version=version, error=str(exc))
    registry.set_current(project_id, version, reason=reason, expect=expect)
    announce_version(client, project_id, version)
    return warm


def announce_version(client: redis.Redis, project_id: int, version: str) -> None:
    """Cache the served version and publish ``{"project_id", "version", "at"}`` on ``CHANNEL``.

    A Redis failure is logged and swallowed: the version is already published on disk.
    """
    try:
        client.set(current_key(project_id), version)
        message = {"project_id": int(project_id), "version": version, "action": "serve", "at": time.time()}
        client.publish(CHANNEL, json.dumps(message))
    except redis.RedisError as exc:
        log.warning("version_announce_failed", project_id=project_id, version=version, error=str(exc))
