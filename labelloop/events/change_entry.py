"""One change-log entry: what the receiver keeps of an annotation webhook (``entry_bytes``) and its
typed shape as a rebuild reads it (``Entry``). The log itself: ``labelloop.events.changes``.

An entry is JSON: ``action``; ``project`` = ``{total_annotations_number,
skipped_annotations_number, label_config_sha1}`` (the project's counters right after the change,
and a digest of its label config: never the label config, never the project's token); and the
webhook's ``annotation``, ``task``, ``tasks``, ``annotations`` cut to the fields a rebuild reads
(``ANNOTATION_FIELDS``, ``TASK_FIELDS``, ids only for a deletion's ``annotations``). Label
Studio's webhook payloads: https://labelstud.io/guide/webhook_reference (captures in
``shared/fixtures/label-studio``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any, TypedDict

import orjson

from labelloop.events.ledger import parse_ts
from labelloop.ls_json import Annotation, Task

# Largest entry kept (JSON bytes); a larger one is replaced by a gap.
MAX_ENTRY_BYTES = 256 * 1024
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
# Actions whose entry carries created or updated annotations (the rest of LOGGED_ACTIONS deletes).
CHANGED_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")


class ChangeLogUnusable(Exception):
    """The change log cannot stand in for Label Studio this time; the message says why."""


class ProjectCounters(TypedDict):
    """The project as an entry keeps it: Label Studio's annotation counters right after the change
    (None when the webhook lacked them) and the SHA-1 of its label config."""

    total_annotations_number: int | None
    skipped_annotations_number: int | None
    label_config_sha1: str | None


class AnnotationRef(TypedDict):
    """A deleted annotation, as an ANNOTATIONS_DELETED entry keeps it."""

    id: int


class Entry(TypedDict, total=False):
    """A change-log entry as read back (untrusted: ``labelloop.events.change_apply`` checks every
    field it uses). ``annotation`` is one annotation, or a list for ANNOTATIONS_CREATED; ``task``
    or ``tasks`` the task(s) the webhook carried; ``annotations`` the ids a deletion removed."""

    action: str
    project: ProjectCounters | None
    annotation: Annotation | list[Annotation]
    task: Task
    tasks: list[Task]
    annotations: list[AnnotationRef]


def label_config_digest(label_config: str) -> str:
    """SHA-1 (hex) of a label config's text, as entries record it."""
    return hashlib.sha1(label_config.encode()).hexdigest()


def in_future(updated_at: str | None, now: float | None = None) -> bool:
    """Whether an ISO 8601 ``updated_at`` is more than ``CLOCK_SKEW_S`` seconds after ``now``
    (epoch seconds, default this host's clock). Absent or unparsable: False (ordered as oldest)."""
    parsed = parse_ts(updated_at)
    return parsed is not None and parsed.timestamp() > (time.time() if now is None else now) + CLOCK_SKEW_S


def _cut(value: object, fields: tuple[str, ...]) -> object:
    if isinstance(value, dict):
        return {k: value[k] for k in fields if k in value}
    if isinstance(value, list):
        return [_cut(v, fields) for v in value]
    return value


def entry_bytes(body: Mapping[str, Any]) -> bytes | None:
    """The change-log entry for a validated webhook body (JSON bytes), or None when the action is
    not logged (START_TRAINING) or the entry would exceed ``MAX_ENTRY_BYTES`` (the caller then
    makes a gap): the action, the fields a rebuild reads of the annotation(s) and task(s), the
    project's annotation counters and the digest of its label config."""
    action = body.get("action")
    if action not in LOGGED_ACTIONS:
        return None
    project = body.get("project")
    summary: ProjectCounters | None = None
    if isinstance(project, dict):
        config = project.get("label_config")
        summary = {
            "total_annotations_number": project.get("total_annotations_number"),
            "skipped_annotations_number": project.get("skipped_annotations_number"),
            "label_config_sha1": label_config_digest(config) if isinstance(config, str) else None,
        }
    entry: dict[str, object] = {"action": action, "project": summary}
    for name, fields in (("annotation", ANNOTATION_FIELDS), ("task", TASK_FIELDS), ("tasks", TASK_FIELDS)):
        if name in body:
            entry[name] = _cut(body[name], fields)
    if "annotations" in body:
        entry["annotations"] = _cut(body["annotations"], ("id",))
    raw = orjson.dumps(entry)
    return raw if len(raw) <= MAX_ENTRY_BYTES else None
