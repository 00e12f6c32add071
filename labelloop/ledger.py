"""What labelloop has seen of each project's annotations, and reconciliation with Label Studio.

The ledger is a Redis hash per project, ``labelloop:project:<id>:seen``: annotation id ->
normalised ``updated_at``. Webhook events update it; the periodic reconciliation compares it
with Label Studio's own annotations and feeds the differences (changes whose webhook was
lost, e.g. while labelloop was down) to the trigger policy as annotation events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import redis

from labelloop import keys

Change = tuple[int, str | None]  # (annotation id, normalised updated_at; None = deleted)

PROJECTS_KEY = keys.PROJECTS


def normalize_ts(value: str | None) -> str:
    """An ISO 8601 timestamp as UTC with microseconds (webhooks and exports print them alike,
    but not always with the same precision); unparsable strings are kept as they are."""
    if not value:
        return ""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def diff(seen: dict[int, str], current: dict[int, str]) -> list[Change]:
    """Changes that turn ``seen`` into ``current`` (both: annotation id -> normalised updated_at).

    Returns:
        new or updated annotations with their ``updated_at``, then deleted ones with None,
        each sorted by id.
    """
    changed: list[Change] = [(i, u) for i, u in sorted(current.items()) if seen.get(i) != u]
    deleted: list[Change] = [(i, None) for i in sorted(set(seen) - set(current))]
    return changed + deleted


def annotations_in_export(tasks: list[dict[str, Any]]) -> dict[int, str]:
    """Annotation id -> normalised updated_at over exported tasks (cancelled ones included,
    since their webhooks are counted too)."""
    return {
        int(a["id"]): normalize_ts(a.get("updated_at") or a.get("created_at"))
        for t in tasks
        for a in t.get("annotations") or []
    }


class Ledger:
    """The per-project ledger in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @staticmethod
    def key(project_id: int) -> str:
        return keys.seen(project_id)

    def projects(self) -> set[int]:
        """Projects labelloop has heard of (webhooks or /setup)."""
        return {int(p) for p in self.redis.smembers(PROJECTS_KEY)}

    def seed(self, project_id: int, annotations: dict[int, str]) -> bool:
        """Fill an absent ledger (e.g. after Redis lost its data) from a baseline; returns
        whether it was seeded. An existing ledger is left alone."""
        key = self.key(project_id)
        if not annotations or self.redis.exists(key):
            return False
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.exists(key):
                    return False
                pipe.multi()
                pipe.hset(key, mapping={str(i): normalize_ts(u) for i, u in annotations.items()})
                pipe.sadd(PROJECTS_KEY, int(project_id))
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def seen(self, project_id: int) -> dict[int, str]:
        # redis-py types a reply as bytes | str; without decode_responses it is bytes.
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self.key(project_id)))
        return {int(k): v.decode() for k, v in raw.items()}

    def apply(self, project_id: int, changes: list[Change]) -> int:
        """Record changes; returns how many were new to the ledger (a resent update counts 0).

        Atomic per call (one MULTI): concurrent event workers never double count.
        """
        if not changes:
            return 0
        key = self.key(project_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    ids = [str(i) for i, _ in changes]
                    before = pipe.hmget(key, ids)
                    effective = 0
                    updates: dict[Any, Any] = {}
                    deletes: list[str] = []
                    for (i, u), old in zip(changes, before, strict=True):
                        if u is None:
                            if old is not None:
                                deletes.append(str(i))
                                effective += 1
                        else:
                            norm = normalize_ts(u)
                            if old is None or (old.decode() if isinstance(old, bytes) else old) != norm:
                                updates[str(i)] = norm
                                effective += 1
                    pipe.multi()
                    pipe.sadd(PROJECTS_KEY, int(project_id))
                    if updates:
                        pipe.hset(key, mapping=updates)
                    if deletes:
                        pipe.hdel(key, *deletes)
                    pipe.execute()
                    return effective
                except redis.WatchError:
                    continue
