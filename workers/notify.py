"""Tell other processes that a project's served version changed (Redis cache + pub/sub).

Redis only caches and notifies: the registry's ``CURRENT`` file stays the source of truth,
and readers that miss a message still see the new version on their next registry read.
"""

from __future__ import annotations

import json
import time

import redis
import structlog

log = structlog.get_logger(__name__)

CHANNEL = "labelloop:versions"


def current_key(project_id: int) -> str:
    return f"labelloop:project:{int(project_id)}:current"


def announce_version(client: redis.Redis, project_id: int, version: str) -> None:
    """Cache the served version and publish ``{"project_id", "version", "at"}`` on ``CHANNEL``.

    A Redis failure is logged and swallowed: the version is already published on disk.
    """
    try:
        client.set(current_key(project_id), version)
        client.publish(CHANNEL, json.dumps({"project_id": int(project_id), "version": version, "at": time.time()}))
    except redis.RedisError as exc:
        log.warning("version_announce_failed", project_id=project_id, version=version, error=str(exc))
