"""What labelloop has seen of each project's annotations, and reconciliation with Label Studio.

The ledger maps each annotation id a project has seen to its normalised ``updated_at``. Webhook
events update it; the periodic reconciliation compares it with Label Studio's own annotations
and feeds the differences (changes whose webhook was lost, e.g. while labelloop was down) to the
trigger policy as annotation events.

It is kept for ever, so it is kept compact: small Redis hashes of ``BUCKET`` consecutive ids,
``labelloop:project:<id>:seen:<annotation id // BUCKET>``, field ``annotation id % BUCKET``,
value the time in integer microseconds since the epoch (``=<text>`` for a time that does not
parse), listed in the set ``labelloop:project:<id>:seen:buckets``. Redis stores such hashes as
listpacks (up to ``hash-max-listpack-entries``, 128): about 15 bytes per annotation against 92
for one hash of ISO strings (``MEMORY USAGE``, 20,000 annotations; README, Capacity). A ledger
in the earlier form (one hash, ``labelloop:project:<id>:seen``) is moved over on first use.

Events may arrive in any order (two receiver replicas, a late delivery, reconciliation's
export racing a webhook), so the ledger orders them by Label Studio's time, not by arrival:
- an entry only ever moves forward in time (``updated_at`` compared as times): an older
  update, resent or from an export taken before it, changes nothing and counts 0;
- a deleted annotation leaves a tombstone, ``labelloop:project:<id>:deleted`` (a set of ids;
  Label Studio never reuses an annotation id), so its CREATE or UPDATE arriving after the
  DELETE never brings it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis

from labelloop import keys
from labelloop.ls_json import Task

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


def parse_ts(value: str | None) -> datetime | None:
    """An ISO 8601 timestamp (``Z`` or ``+00:00``, with or without fractional seconds; naive
    means UTC) as an aware datetime; None when absent or unparsable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def is_newer(new: str | None, old: str | None) -> bool:
    """Whether timestamp ``new`` is later than ``old``, compared as times. An unparsable or
    absent ``old`` is older than anything; an unparsable ``new`` is newer only than that (then
    compared as text, which is all there is)."""
    n, o = parse_ts(new), parse_ts(old)
    if o is None:
        return n is not None or (new or "") != (old or "")
    return n is not None and n > o


def diff(
    seen: dict[int, str],
    current: dict[int, str],
    before: datetime | None = None,
    resolution: timedelta = timedelta(0),
) -> list[Change]:
    """Changes that turn ``seen`` into ``current`` (both: annotation id -> normalised updated_at).

    Only changes forward in time count: an annotation whose ``current`` time is not later than
    the one ``seen`` is not a change (the ledger has a newer webhook). With ``before`` (when the
    read of ``current`` started, Label Studio's clock), changes from that time on are left out:
    an annotation updated at or after it, and one ``seen`` at or after it but absent from
    ``current`` (created after the read started, not deleted); the next comparison sees them.
    ``resolution``: how coarse ``before`` is (an HTTP ``Date`` header: 1 s, truncated). Within
    it, an update ``current`` shows counts (it happened before the read saw it) while an
    absence does not (the annotation may have been created after the read started).

    Returns:
        new or updated annotations with their ``updated_at``, then deleted ones with None,
        each sorted by id.
    """

    def settled(ts: str | None, grace: timedelta = timedelta(0)) -> bool:
        parsed = parse_ts(ts)
        return before is None or parsed is None or parsed < before + grace

    changed: list[Change] = [
        (i, u) for i, u in sorted(current.items()) if (i not in seen or is_newer(u, seen[i])) and settled(u, resolution)
    ]
    deleted: list[Change] = [(i, None) for i in sorted(set(seen) - set(current)) if settled(seen[i])]
    return changed + deleted


def annotations_in_export(tasks: Iterable[Task]) -> dict[int, str]:
    """Annotation id -> normalised updated_at over exported tasks (Label Studio's JSON export format,
    cancelled ones included, since their webhooks are counted too)."""
    return {
        int(a["id"]): normalize_ts(a.get("updated_at") or a.get("created_at"))
        for t in tasks
        for a in t.get("annotations") or []
    }


# Ids per bucket hash: within Redis' default hash-max-listpack-entries (128), so each bucket stays
# a listpack; ids are Label Studio's, shared by all projects, so a bucket may be sparse.
BUCKET = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def encode_ts(normalised: str) -> str:
    """A normalised ``updated_at`` as the ledger stores it: integer microseconds since the epoch,
    or ``=`` and the text when it does not parse (``""``: absent)."""
    parsed = parse_ts(normalised) if normalised else None
    return str((parsed - _EPOCH) // _MICRO) if parsed is not None else "=" + normalised


def decode_ts(stored: str) -> str:
    """The normalised ``updated_at`` (``normalize_ts``'s form) ``encode_ts`` stored."""
    if stored.startswith("="):
        return stored[1:]
    return (_EPOCH + int(stored) * _MICRO).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Ledger:
    """The per-project ledger in Redis (see the module doc for its layout)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @staticmethod
    def key(project_id: int) -> str:
        """The key whose existence says the project has a ledger (its list of buckets)."""
        return keys.project(project_id, "seen:buckets")

    @staticmethod
    def legacy_key(project_id: int) -> str:
        """The one hash of ISO strings earlier versions kept (moved over on first use)."""
        return keys.seen(project_id)

    @staticmethod
    def bucket_key(project_id: int, bucket: int) -> str:
        return keys.project(project_id, f"seen:{int(bucket)}")

    def deleted(self, project_id: int) -> set[int]:
        """Tombstones: ids of annotations the ledger saw deleted."""
        return {int(i) for i in self.redis.smembers(keys.deleted(project_id))}

    def projects(self) -> set[int]:
        """Projects labelloop has heard of (webhooks or /setup)."""
        return {int(p) for p in self.redis.smembers(PROJECTS_KEY)}

    def _write(self, pipe: Any, project_id: int, annotations: dict[int, str]) -> None:
        """Queue HSETs of ``annotation id -> normalised updated_at`` into their buckets."""
        grouped: dict[int, dict[str, str]] = {}
        for i, u in annotations.items():
            grouped.setdefault(int(i) // BUCKET, {})[str(int(i) % BUCKET)] = encode_ts(u)
        for bucket, mapping in grouped.items():
            pipe.hset(self.bucket_key(project_id, bucket), mapping=mapping)
        if grouped:
            pipe.sadd(self.key(project_id), *grouped)

    def _migrate(self, project_id: int) -> None:
        """Move a ledger kept in the earlier form (one hash of ISO strings) into buckets, once."""
        legacy = self.legacy_key(project_id)
        if not self.redis.exists(legacy):
            return
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(legacy)
                raw = cast(dict[bytes, bytes], pipe.hgetall(legacy))
                pipe.multi()
                self._write(pipe, project_id, {int(k): normalize_ts(v.decode()) for k, v in raw.items()})
                pipe.delete(legacy)
                pipe.execute()
            except redis.WatchError:
                pass  # another process moved it

    def seed(self, project_id: int, annotations: dict[int, str]) -> bool:
        """Fill an absent ledger (e.g. after Redis lost its data) from a baseline; returns
        whether it was seeded. An existing ledger is left alone."""
        self._migrate(project_id)
        key = self.key(project_id)
        if not annotations or self.redis.exists(key):
            return False
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.exists(key):
                    return False
                pipe.multi()
                self._write(pipe, project_id, {i: normalize_ts(u) for i, u in annotations.items()})
                pipe.sadd(PROJECTS_KEY, int(project_id))
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def seen(self, project_id: int) -> dict[int, str]:
        """Annotation id -> normalised updated_at, every annotation the ledger holds."""
        self._migrate(project_id)
        buckets = sorted(int(b) for b in self.redis.smembers(self.key(project_id)))
        with self.redis.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.hgetall(self.bucket_key(project_id, bucket))
            replies = pipe.execute()
        # redis-py types a reply as bytes | str; without decode_responses it is bytes.
        return {
            bucket * BUCKET + int(k): decode_ts(v.decode())
            for bucket, raw in zip(buckets, replies, strict=True)
            for k, v in cast(dict[bytes, bytes], raw).items()
        }

    def apply(self, project_id: int, changes: list[Change]) -> int:
        """Record changes; returns how many were new to the ledger (a resent update counts 0).

        An update not later than the recorded one (``is_newer``) and any change to a deleted
        annotation (a tombstone) count 0 and change nothing; a deletion always leaves a
        tombstone, also of an annotation whose CREATE has not arrived yet.

        Atomic per call (one MULTI over the buckets it touches): concurrent event workers never
        double count.
        """
        if not changes:
            return 0
        self._migrate(project_id)
        tombstones = keys.deleted(project_id)
        ids = [int(i) for i, _ in changes]
        buckets = sorted({i // BUCKET for i in ids})
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(tombstones, *(self.bucket_key(project_id, b) for b in buckets))
                    before = [pipe.hget(self.bucket_key(project_id, i // BUCKET), str(i % BUCKET)) for i in ids]
                    gone = {int(i) for i in pipe.smembers(tombstones)}
                    effective = 0
                    updates: dict[int, str] = {}
                    deletes: list[int] = []
                    for (i, u), old in zip(changes, before, strict=True):
                        i = int(i)
                        stored = old.decode() if isinstance(old, bytes) else old
                        recorded = updates.get(i) or (decode_ts(stored) if stored is not None else None)
                        if i in gone:
                            continue
                        if u is None:
                            gone.add(i)
                            deletes.append(i)
                            updates.pop(i, None)
                            effective += 1 if recorded is not None else 0
                        else:
                            norm = normalize_ts(u)
                            if recorded is None or is_newer(norm, recorded):
                                updates[i] = norm
                                effective += 1
                    pipe.multi()
                    pipe.sadd(PROJECTS_KEY, int(project_id))
                    self._write(pipe, project_id, updates)
                    for i in deletes:
                        pipe.hdel(self.bucket_key(project_id, i // BUCKET), str(i % BUCKET))
                    if deletes:
                        pipe.sadd(tombstones, *deletes)
                    pipe.execute()
                    return effective
                except redis.WatchError:
                    continue
