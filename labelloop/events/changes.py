"""The per-project change log: webhook payloads the receiver recorded, for rebuilds without
asking Label Studio.

Label Studio's annotation webhooks carry the whole annotation, its task and the project (label
config and annotation counters, as they are right after the change; see the captures in
``shared/fixtures/label-studio``). The receiver appends each accepted, non-duplicate annotation
webhook to the project's stream in the same Redis transaction that records and enqueues it
(``service.events``), numbered by a per-project counter. An entry keeps only what a rebuild
needs (``ANNOTATION_FIELDS``, ``TASK_FIELDS``, the project's counters and a digest of its label
config); an entry over ``MAX_ENTRY_BYTES`` is not kept and makes a gap instead.

A webhook body never supplies the label config: the rebuild keeps the one it last read from
Label Studio's API and uses the log only while every entry's label-config digest matches it (a
changed label config, or a forged one, makes the rebuild read Label Studio). A rebuild then applies the
entries since the previous build to its stored copy of the project's tasks
(``labelloop.labelstudio.export.sync_tasks``) instead of listing changed tasks through Label Studio's API.

The log is trusted only when nothing can be missing from it:
- the entries read follow the previous build's number without a gap. Gaps are made on purpose
  when an event may have been lost: the receiver bumps the counter of a known project whose
  webhook it refused with a valid credential (413, 415, 422, busy, ... at the refusal; Redis
  unavailable: once Redis answers again; Label Studio never resends), or
  ``labelloop:webhooks:refused`` when the refused webhook's project could not be read (413 before
  the body: every log is then unusable once); a 401 records nothing (not Label Studio's request);
  reconciliation bumps it when it finds changes whose webhooks never arrived; a Redis that lost
  its data starts the counter below the stored number;
- Redis is the server the previous build read (its ``run_id``): a restarted Redis may have lost
  its last writes (append-only file fsynced every second) and numbered new entries over the
  lost ones, which no counter can tell;
- after applying them, the stored tasks have exactly the annotation counts the newest entry's
  project reports (``total_annotations_number``, ``skipped_annotations_number``), and each task
  an entry carries has the counts that task reports (``total_annotations``,
  ``cancelled_annotations``).
Anything else raises ``ChangeLogUnusable`` and the caller reads Label Studio instead.

Modules: this one reads the log from Redis (``ChangeLog``); ``labelloop.events.change_entry``
makes one entry and types it (``Entry``); ``labelloop.events.change_apply`` applies entries to
the stored tasks and checks the counts. Their public names are importable from here too.

Redis keys: ``labelloop:project:<id>:changes`` (stream of ``seq``, ``entry`` = JSON: ``action``,
``project`` = ``{total_annotations_number, skipped_annotations_number, label_config_sha1}`` and
the webhook's ``annotation``, ``task``, ``tasks``, ``annotations`` cut to the fields above) and
``labelloop:project:<id>:changes:seq`` (the counter). Both expire ``TTL_S`` after the last write
(a project idle that long rebuilds from Label Studio).

Tombstones on every path: the receiver adds the ids of each ANNOTATIONS_DELETED webhook to
``labelloop:project:<id>:changes:deleted`` (a set, same transaction as the entry, same TTL), and
a build that reads Label Studio instead of the log takes them (``ChangeLog.tombstones``) together
with the ids its stored tasks had and Label Studio no longer has (``absent_after_read``). A DELETE
whose entry a Label Studio read absorbed thus still stops its late CREATE from bringing the
annotation back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import orjson
import redis

from labelloop import keys, redis_client
from labelloop.events.change_apply import absent_after_read, annotation_ids, apply_entries, project_counts
from labelloop.events.change_entry import (
    ANNOTATION_FIELDS,
    CLOCK_SKEW_S,
    LOGGED_ACTIONS,
    MAX_ENTRY_BYTES,
    PROJECT_FIELDS,
    TASK_FIELDS,
    ChangeLogUnusable,
    Entry,
    entry_bytes,
    in_future,
    label_config_digest,
)

__all__ = [
    "ANNOTATION_FIELDS",
    "CLOCK_SKEW_S",
    "LOGGED_ACTIONS",
    "MAX_ENTRY_BYTES",
    "PROJECT_FIELDS",
    "STREAM_MAXLEN",
    "TASK_FIELDS",
    "TTL_S",
    "Batch",
    "ChangeLog",
    "ChangeLogUnusable",
    "Entry",
    "Position",
    "PositionRecord",
    "absent_after_read",
    "annotation_ids",
    "apply_entries",
    "entry_bytes",
    "in_future",
    "label_config_digest",
    "project_counts",
    "seq_key",
    "stream_key",
    "tombstones_key",
]

# Entries kept per project at most (approximately); a build that falls further behind reads
# Label Studio instead. Consumed entries are trimmed by the build that consumed them.
STREAM_MAXLEN = 2_000
# Seconds the log and its counter live after their last write.
TTL_S = 30 * 86400


def stream_key(project_id: int) -> str:
    return keys.changes(project_id)


def seq_key(project_id: int) -> str:
    return keys.changes_seq(project_id)


def tombstones_key(project_id: int) -> str:
    """The set of annotation ids the receiver saw deleted (ANNOTATIONS_DELETED webhooks)."""
    return keys.project(project_id, "changes:deleted")


class PositionRecord(TypedDict):
    """A ``Position`` as JSON (in the task store, ``labelloop.labelstudio.export``)."""

    seq: int
    id: str
    run_id: str
    refused: int


@dataclass
class Position:
    """How far a store has consumed a project's change log: ``seq`` (counter value), ``id``
    (stream id of the last entry at that point, "0-0" when none), ``run_id`` (of the Redis
    server read, "" unknown) and ``refused`` (``labelloop:webhooks:refused`` then)."""

    seq: int
    id: str = "0-0"
    run_id: str = ""
    refused: int = 0

    def as_dict(self) -> PositionRecord:
        """The position as JSON (``from_dict`` reads it back)."""
        return {"seq": self.seq, "id": self.id, "run_id": self.run_id, "refused": self.refused}

    @classmethod
    def from_dict(cls, stored: PositionRecord) -> Position:
        """A position ``as_dict`` wrote (one written before ``run_id`` existed has "")."""
        run_id, refused = str(stored.get("run_id") or ""), int(stored.get("refused") or 0)
        return cls(int(stored["seq"]), str(stored["id"]), run_id, refused)


@dataclass
class Batch:
    """Entries after a position, and the position after them."""

    entries: list[Entry] = field(default_factory=list)
    position: Position = field(default_factory=lambda: Position(0))


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ChangeLog:
    """Reads (and invalidates) the project change logs the receiver writes.

    Args:
        client: a redis-py client; commands use its timeouts. Redis errors propagate
            (``redis.RedisError``); callers treat them as "log unusable".
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @classmethod
    def from_url(cls, url: str) -> ChangeLog:
        """A change log on the process's worker client for ``url`` (``labelloop.redis_client``)."""
        return cls(redis_client.client(url, "worker"))

    def _state(self, project_id: int, after_id: str | None) -> tuple[str, int, int, list[Any]]:
        """(run_id, counter, refused counter, newest entry or the entries after ``after_id``) in
        one transaction, the run_id read again after it (raises ChangeLogUnusable if Redis
        restarted in between)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.info("server")
            pipe.get(seq_key(project_id))
            pipe.get(keys.WEBHOOKS_REFUSED)
            if after_id is None:
                pipe.xrevrange(stream_key(project_id), count=1)
            else:
                pipe.xrange(stream_key(project_id), min=f"({after_id}" if after_id != "0-0" else "-")
            info, seq, refused, rows = pipe.execute()
        run_id = str(info.get("run_id") or "")
        if run_id != str(self.redis.info("server").get("run_id") or ""):
            raise ChangeLogUnusable("Redis restarted while the change log was read")
        return run_id, int(seq or 0), int(refused or 0), rows

    def position(self, project_id: int) -> Position:
        """The current end of the log (read before a full sync with Label Studio, so that what
        arrives during it is read again next time)."""
        try:
            run_id, seq, refused, last = self._state(project_id, None)
        except ChangeLogUnusable:
            return Position(0)  # a position no later read accepts: the next build reads Label Studio
        return Position(seq, _decode(last[0][0]) if last else "0-0", run_id, refused)

    def read(self, project_id: int, after: Position) -> Batch:
        """Entries recorded after ``after``, oldest first, as decoded JSON objects.

        Raises:
            ChangeLogUnusable: entries are missing between ``after`` and the end of the log
                (a deliberate gap, entries trimmed away, Redis lost its data or restarted, a
                webhook of an unnamed project was refused).
        """
        run_id, seq, refused, rows = self._state(project_id, after.id)
        if seq < after.seq:
            raise ChangeLogUnusable(f"change log restarted (counter {seq} < {after.seq} already read)")
        expected = after.seq
        entries: list[Entry] = []
        last_id = after.id
        for entry_id, fields in rows:
            number = int(fields[b"seq"])
            if number != expected + 1:
                raise ChangeLogUnusable(f"change log gap: entry {number} follows {expected}")
            entries.append(cast(Entry, orjson.loads(fields[b"entry"])))  # untrusted: apply_entries checks it
            expected, last_id = number, _decode(entry_id)
        if expected != seq:
            raise ChangeLogUnusable(f"change log gap: entries end at {expected}, counter is {seq}")
        # Checked last: a gap or restarted counter says more about what happened.
        if run_id != after.run_id:
            raise ChangeLogUnusable(f"Redis is not the server last read (run_id {run_id[:8]}, was {after.run_id[:8]})")
        if refused != after.refused:
            raise ChangeLogUnusable("a webhook was refused before its project could be read")
        return Batch(entries, Position(seq, last_id, run_id, refused))

    def trim(self, project_id: int, upto: Position) -> None:
        """Drop entries up to ``upto`` (consumed by the project's dataset build)."""
        if upto.id != "0-0":
            self.redis.xtrim(stream_key(project_id), minid=upto.id, approximate=False)

    def tombstones(self, project_id: int) -> set[int]:
        """Ids of the annotations whose ANNOTATIONS_DELETED webhook the receiver recorded (in the
        last ``TTL_S``). Read after ``position`` by a build that reads Label Studio: every entry up
        to that position has its ids here. Raises ``redis.RedisError``."""
        return {int(i) for i in self.redis.smembers(tombstones_key(project_id))}

    def invalidate(self, project_id: int) -> int:
        """Make a gap, so the next build reads Label Studio (an event may have been lost)."""
        return int(self.redis.incr(seq_key(project_id)))
