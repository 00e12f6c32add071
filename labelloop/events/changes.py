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

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from labelloop import keys
from labelloop.events.ledger import is_newer, parse_ts

# Entries kept per project at most (approximately); a build that falls further behind reads
# Label Studio instead. Consumed entries are trimmed by the build that consumed them.
STREAM_MAXLEN = 2_000
# Largest entry kept (JSON bytes); a larger one is replaced by a gap.
MAX_ENTRY_BYTES = 256 * 1024
# Seconds the log and its counter live after their last write.
TTL_S = 30 * 86400
# How far (seconds) an annotation's ``updated_at`` may be ahead of this host's clock (hosts'
# clocks drift apart); later than that it is refused: a forged time would outrank every real
# update of that annotation (changes are ordered by Label Studio's time).
CLOCK_SKEW_S = 300.0

# Fields of the webhook's ``project`` object an entry keeps (the object also carries the
# project's token, which never goes into Redis); the label config is kept as its digest.
PROJECT_FIELDS = ("total_annotations_number", "skipped_annotations_number")
# What a rebuild reads of an annotation (``labelloop.labelstudio.export.select_annotation``, the converters)
# and of a task (its data and the counters ``apply_entries`` checks).
ANNOTATION_FIELDS = ("id", "task", "result", "was_cancelled", "ground_truth", "updated_at", "created_at")
TASK_FIELDS = ("id", "data", "total_annotations", "cancelled_annotations", "updated_at")
LOGGED_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"})


class ChangeLogUnusable(Exception):
    """The change log cannot stand in for Label Studio this time; the message says why."""


def stream_key(project_id: int) -> str:
    return keys.changes(project_id)


def seq_key(project_id: int) -> str:
    return keys.changes_seq(project_id)


def tombstones_key(project_id: int) -> str:
    """The set of annotation ids the receiver saw deleted (ANNOTATIONS_DELETED webhooks)."""
    return keys.project(project_id, "changes:deleted")


def label_config_digest(label_config: str) -> str:
    """SHA-1 (hex) of a label config's text, as entries record it."""
    return hashlib.sha1(label_config.encode()).hexdigest()


def in_future(updated_at: str | None, now: float | None = None) -> bool:
    """Whether an ISO 8601 ``updated_at`` is more than ``CLOCK_SKEW_S`` seconds after ``now``
    (epoch seconds, default this host's clock). Absent or unparsable: False (ordered as oldest)."""
    parsed = parse_ts(updated_at)
    return parsed is not None and parsed.timestamp() > (time.time() if now is None else now) + CLOCK_SKEW_S


def _cut(value: Any, fields: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: value[k] for k in fields if k in value}
    if isinstance(value, list):
        return [_cut(v, fields) for v in value]
    return value


def entry_bytes(body: dict[str, Any]) -> bytes | None:
    """The change-log entry for a validated webhook body (JSON bytes), or None when the action is
    not logged (START_TRAINING) or the entry would exceed ``MAX_ENTRY_BYTES`` (the caller then
    makes a gap): the action, the fields a rebuild reads of the annotation(s) and task(s), the
    project's annotation counters and the digest of its label config."""
    action = body.get("action")
    if action not in LOGGED_ACTIONS:
        return None
    project = body.get("project")
    summary: dict[str, Any] | None = None
    if isinstance(project, dict):
        summary = {k: project.get(k) for k in PROJECT_FIELDS}
        config = project.get("label_config")
        summary["label_config_sha1"] = label_config_digest(config) if isinstance(config, str) else None
    entry: dict[str, Any] = {"action": action, "project": summary}
    for name, fields in (("annotation", ANNOTATION_FIELDS), ("task", TASK_FIELDS), ("tasks", TASK_FIELDS)):
        if name in body:
            entry[name] = _cut(body[name], fields)
    if "annotations" in body:
        entry["annotations"] = _cut(body["annotations"], ("id",))
    raw = orjson.dumps(entry)
    return raw if len(raw) <= MAX_ENTRY_BYTES else None


@dataclass
class Position:
    """How far a store has consumed a project's change log: ``seq`` (counter value), ``id``
    (stream id of the last entry at that point, "0-0" when none), ``run_id`` (of the Redis
    server read, "" unknown) and ``refused`` (``labelloop:webhooks:refused`` then)."""

    seq: int
    id: str = "0-0"
    run_id: str = ""
    refused: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.id, "run_id": self.run_id, "refused": self.refused}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> Position:
        """A position ``as_dict`` wrote (one written before ``run_id`` existed has "")."""
        run_id, refused = str(stored.get("run_id") or ""), int(stored.get("refused") or 0)
        return cls(int(stored["seq"]), str(stored["id"]), run_id, refused)


@dataclass
class Batch:
    """Entries after a position, and the position after them."""

    entries: list[dict[str, Any]] = field(default_factory=list)
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
        return cls(redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10))

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
        entries: list[dict[str, Any]] = []
        last_id = after.id
        for entry_id, fields in rows:
            number = int(fields[b"seq"])
            if number != expected + 1:
                raise ChangeLogUnusable(f"change log gap: entry {number} follows {expected}")
            entries.append(orjson.loads(fields[b"entry"]))
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


def annotation_ids(tasks: Iterable[dict[str, Any]]) -> set[int]:
    """Ids of the annotations in tasks (Label Studio JSON export format)."""
    return {int(a["id"]) for t in tasks for a in t.get("annotations") or [] if isinstance(a, dict) and "id" in a}


def absent_after_read(before: set[int], tasks: Iterable[dict[str, Any]]) -> set[int]:
    """Annotation ids a store held (``before``) that a read of Label Studio no longer returns
    (``tasks``, the store after the read): deleted in Label Studio, which never reuses an id,
    so they become tombstones like a recorded ANNOTATIONS_DELETED."""
    return before - annotation_ids(tasks)


def _annotation_counts(annotations: list[dict[str, Any]]) -> tuple[int, int]:
    done = sum(1 for a in annotations if not a.get("was_cancelled"))
    return done, len(annotations) - done


def project_counts(tasks: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(completed, cancelled) annotations in stored tasks (task id -> task), counted as Label
    Studio's project ``total_annotations_number`` and ``skipped_annotations_number`` count them."""
    done = cancelled = 0
    for task in tasks.values():
        d, c = _annotation_counts(task.get("annotations") or [])
        done, cancelled = done + d, cancelled + c
    return done, cancelled


def _task_id(annotation: dict[str, Any]) -> int:
    task = annotation.get("task")
    if isinstance(task, dict):
        task = task.get("id")
    if isinstance(task, bool) or not isinstance(task, int):
        raise ChangeLogUnusable(f"annotation {annotation.get('id')} does not name its task")
    return task


def _newer_or_same(new: dict[str, Any], old: dict[str, Any]) -> bool:
    return not is_newer(old.get("updated_at"), new.get("updated_at"))


def apply_entries(
    tasks: dict[str, dict[str, Any]],
    entries: list[dict[str, Any]],
    label_config: str,
    deleted: set[int] | None = None,
) -> None:
    """Apply change-log entries, oldest first, to tasks in Label Studio's JSON export format
    (task id as text -> task with ``annotations``), in place, and check the result.

    ``label_config`` is the project's label config as last read from Label Studio's API; every
    entry must carry its digest (the log never changes the label config).

    Entries are applied in arrival order but ordered by Label Studio's time: created and updated
    annotations replace the stored one with the same id unless the stored one is newer
    (``updated_at`` compared as times; one more than ``CLOCK_SKEW_S`` ahead of this host's clock
    is refused); the task's other fields come from the webhook's
    task; deleted annotations are removed and their ids added to ``deleted`` (tombstones, in
    place; Label Studio never reuses an id), and an annotation in ``deleted`` is never added
    again (its CREATE or UPDATE arriving after its DELETE); a task left without annotations is
    dropped (as an export would leave it out).

    Raises:
        ChangeLogUnusable: an entry's label config is not ``label_config``; an entry lacks
            what it needs (a task it does not carry and the store does not have, the project's
            counters), or the counts disagree (see the module doc). A malformed entry (a field
            of the wrong type) is refused the same way. ``tasks`` may then be partly changed:
            the caller discards it.
    """
    try:
        _apply_entries(tasks, entries, label_config_digest(label_config), set() if deleted is None else deleted)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ChangeLogUnusable(f"malformed change-log entry: {type(exc).__name__}: {exc}") from exc


def _apply_entries(
    tasks: dict[str, dict[str, Any]], entries: list[dict[str, Any]], digest: str, deleted: set[int]
) -> None:
    project: dict[str, Any] | None = None
    for entry in entries:
        project = entry.get("project")
        action = entry.get("action")
        if not isinstance(project, dict):
            raise ChangeLogUnusable("an entry has no project counters")
        if project.get("label_config_sha1") != digest:
            raise ChangeLogUnusable("the label config changed since Label Studio was last read")
        if action == "ANNOTATIONS_DELETED":
            gone = {int(a["id"]) for a in entry.get("annotations") or [] if isinstance(a, dict) and "id" in a}
            deleted.update(gone)
            for key in [k for k, t in tasks.items() if any(a.get("id") in gone for a in t.get("annotations") or [])]:
                kept = [a for a in tasks[key].get("annotations") or [] if a.get("id") not in gone]
                if kept:
                    tasks[key] = {**tasks[key], "annotations": kept}  # a new dict: returned ones never change
                else:
                    del tasks[key]
        elif action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"):
            annotations = entry.get("annotation")
            annotations = annotations if isinstance(annotations, list) else [annotations]
            carried = [entry["task"]] if isinstance(entry.get("task"), dict) else list(entry.get("tasks") or [])
            by_id = {t["id"]: t for t in carried if isinstance(t, dict) and "id" in t}
            for annotation in annotations:
                if not isinstance(annotation, dict) or "id" not in annotation:
                    raise ChangeLogUnusable(f"{action} without an annotation object")
                if not isinstance(annotation.get("result") or [], list):
                    raise ChangeLogUnusable(f"annotation {annotation['id']}: result is not a list")
                if in_future(annotation.get("updated_at")):
                    raise ChangeLogUnusable(f"annotation {annotation['id']}: updated_at in the future")
                tid = _task_id(annotation)
                if int(annotation["id"]) in deleted:
                    continue  # deleted already: this CREATE or UPDATE arrived after its DELETE
                stored = tasks.get(str(tid))
                payload = by_id.get(tid)
                if payload is not None and not isinstance(payload.get("data", {}), dict):
                    raise ChangeLogUnusable(f"task {tid}: data is not an object")
                if stored is None and payload is None:
                    raise ChangeLogUnusable(f"{action}: task {tid} is neither in the webhook nor stored")
                task = {**(stored or {}), **{k: v for k, v in (payload or {}).items() if k != "annotations"}}
                current = list((stored or {}).get("annotations") or [])
                index = next((i for i, a in enumerate(current) if a.get("id") == annotation["id"]), None)
                if index is None:
                    current.append(annotation)
                elif _newer_or_same(annotation, current[index]):
                    current[index] = annotation
                task["annotations"] = current
                tasks[str(tid)] = task
            for tid, payload in by_id.items():
                if "total_annotations" in payload and str(tid) in tasks:
                    told = (int(payload.get("total_annotations") or 0), int(payload.get("cancelled_annotations") or 0))
                    have = _annotation_counts(tasks[str(tid)]["annotations"])
                    if have != told:
                        raise ChangeLogUnusable(f"task {tid}: {have} stored annotations, webhook reports {told}")
        else:
            raise ChangeLogUnusable(f"unexpected action {action!r} in the change log")
    if not isinstance(project, dict) or project.get("total_annotations_number") is None:
        raise ChangeLogUnusable("the newest entry has no project counters")
    reported = (int(project["total_annotations_number"] or 0), int(project.get("skipped_annotations_number") or 0))
    have = project_counts(tasks)
    if have != reported:
        raise ChangeLogUnusable(f"{have} stored (completed, cancelled) annotations, Label Studio reports {reported}")
