"""Training progress and cancellation per project, in Redis (a cache: losing it loses nothing).

Keys: ``labelloop:project:<id>:progress`` (JSON: run_id, stage, epoch, epochs, metrics,
started_at, updated_at; expires a day after its last update) and
``labelloop:project:<id>:cancel`` (the run id to cancel), and
``labelloop:project:<id>:preannotate`` (JSON: project_id, version, done, total of the running
pre-annotation).
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

from labelloop import keys

TTL_S = 86400


class ProgressStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @staticmethod
    def _key(project_id: int, what: str) -> str:
        return keys.project(project_id, what)

    def update(self, project_id: int, run_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the run's progress record and return it."""
        current = self.get(project_id) or {}
        if current.get("run_id") != run_id:
            current = {"run_id": run_id, "started_at": time.time()}
        current.update(fields, updated_at=time.time())
        self.redis.set(self._key(project_id, "progress"), json.dumps(current), ex=TTL_S)
        return current

    def get(self, project_id: int) -> dict[str, Any] | None:
        raw = self.redis.get(self._key(project_id, "progress"))
        return json.loads(raw) if raw else None

    def clear(self, project_id: int, run_id: str) -> None:
        if (self.get(project_id) or {}).get("run_id") == run_id:
            self.redis.delete(self._key(project_id, "progress"))
        self.redis.delete(self._key(project_id, "cancel"))

    def set_preannotation(self, project_id: int, meta: dict[str, Any] | None) -> None:
        """Record (or, with None, clear) a running pre-annotation's ``{"version", "done", "total"}``."""
        key = self._key(project_id, "preannotate")
        if meta is None:
            self.redis.delete(key)
        else:
            self.redis.set(key, json.dumps(meta), ex=TTL_S)

    def clear_preannotation(self, project_id: int, version: str) -> None:
        """Clear the pre-annotation record if it is ``version``'s (a newer run's record stays)."""
        if (self.preannotation(project_id) or {}).get("version") == version:
            self.redis.delete(self._key(project_id, "preannotate"))

    def preannotation(self, project_id: int) -> dict[str, Any] | None:
        raw = self.redis.get(self._key(project_id, "preannotate"))
        return json.loads(raw) if raw else None

    def request_cancel(self, project_id: int) -> str | None:
        """Ask the running training of a project to stop; returns its run id, or None if none runs."""
        progress = self.get(project_id)
        if not progress:
            return None
        self.redis.set(self._key(project_id, "cancel"), progress["run_id"], ex=TTL_S)
        return str(progress["run_id"])

    def cancel_requested(self, project_id: int, run_id: str) -> bool:
        # redis-py types a reply as bytes | str; without decode_responses it is bytes.
        raw = cast(bytes | None, self.redis.get(self._key(project_id, "cancel")))
        return raw is not None and raw.decode() == run_id
