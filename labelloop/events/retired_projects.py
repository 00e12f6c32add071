"""Projects deleted in Label Studio are retired: no more reconciliation, trainings or pre-annotations.

A project deleted in Label Studio answers 404 to ``GET /api/projects/{id}/``. Reconciliation
(``labelloop.jobs.jobs``) asks ``still_there`` first: ``MISSING_AFTER`` 404s in a row (counted in
``labelloop:project:<id>:not_found``, reset by any answer) retire the project, so one 404 of a
proxy or a restore in progress retires nothing. Retiring records it in the hash
``labelloop:projects:retired`` (``{project_id: {"reason", "at"}}``, for ``labelloop status``) and
removes it from the known projects (``keys.PROJECTS``): reconciliation no longer reads it, the
receiver no longer takes its webhooks without asking Label Studio (which answers 404), and a
pre-annotation of it stops at its next check (``labelloop.serving.preannotate.superseded_by``). Its
versions stay on disk.
"""

from __future__ import annotations

import json
import time
from typing import Any, TypedDict

import redis
import structlog

from labelloop import keys

log = structlog.get_logger(__name__)

RETIRED = "labelloop:projects:retired"
MISSING_AFTER = 3  # 404s in a row at reconciliation before a project is retired
MISSES_TTL_S = 7 * 86400


def misses_key(project_id: int) -> str:
    """Redis key counting a project's 404s in a row."""
    return f"labelloop:project:{int(project_id)}:not_found"


class Retirement(TypedDict):
    """Why a project was retired and when (``at``: Unix seconds), as ``RETIRED`` holds it (JSON)."""

    reason: str
    at: float


def retired(store: redis.Redis) -> dict[int, Retirement]:
    """Retired projects: ``{project_id: {"reason", "at"}}`` (an unreadable record: ``unknown``, 0)."""
    out: dict[int, Retirement] = {}
    for raw_id, raw in (store.hgetall(RETIRED) or {}).items():
        try:
            out[int(raw_id)] = json.loads(raw)
        except (TypeError, ValueError):
            out[int(raw_id)] = {"reason": "unknown", "at": 0}
    return out


def is_retired(store: redis.Redis, project_id: int) -> bool:
    """Whether the project is retired."""
    return bool(store.hexists(RETIRED, str(int(project_id))))


def retire(store: redis.Redis, project_id: int, reason: str) -> None:
    """Retire the project (see the module docstring); logs ``project_retired``."""
    with store.pipeline() as pipe:
        pipe.hset(RETIRED, str(int(project_id)), json.dumps({"reason": reason, "at": time.time()}))
        pipe.srem(keys.PROJECTS, int(project_id))
        pipe.delete(misses_key(project_id))
        pipe.execute()
    log.warning("project_retired", project_id=project_id, reason=reason)


def still_there(client: Any, store: redis.Redis, project_id: int, after: int = MISSING_AFTER) -> bool:
    """Whether reconciliation should go on with the project: False when it is retired, or when
    Label Studio answers 404 for it (the ``after``-th 404 in a row retires it).

    Other failures are left to the caller's own requests: True.

    Raises:
        redis-py's errors.
    """
    from label_studio_sdk.core.api_error import ApiError

    if is_retired(store, project_id):
        return False
    try:
        client.projects.get(id=project_id)
    except ApiError as exc:
        if exc.status_code != 404:
            return True
        with store.pipeline() as pipe:
            pipe.incr(misses_key(project_id))
            pipe.expire(misses_key(project_id), MISSES_TTL_S)
            misses = int(pipe.execute()[0])
        log.warning("project_not_found", project_id=project_id, times=misses, retire_after=after)
        if misses >= after:
            retire(store, project_id, f"Label Studio answered 404 {misses} times in a row (project deleted)")
        return False
    except Exception:
        return True
    store.delete(misses_key(project_id))
    return True
