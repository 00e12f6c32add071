"""Applying change-log entries (``labelloop.events.change_entry.Entry``) to a store of tasks, and the
counts that say whether the result can be trusted (``labelloop.events.changes``, module doc).

The store is Label Studio's JSON export format keyed by task id as text (task -> ``annotations``),
as ``labelloop.labelstudio.export.sync_tasks`` keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from labelloop.events.change_entry import CHANGED_ACTIONS, ChangeLogUnusable, Entry, in_future, label_config_digest
from labelloop.events.ledger import is_newer
from labelloop.ls_json import Annotation, Task

TaskStore = dict[str, Task]  # task id as text -> task (export JSON as stored)


def annotation_ids(tasks: Iterable[Task]) -> set[int]:
    """Ids of the annotations in tasks (Label Studio JSON export format)."""
    return {int(a["id"]) for t in tasks for a in t.get("annotations") or [] if isinstance(a, dict) and "id" in a}


def absent_after_read(before: set[int], tasks: Iterable[Task]) -> set[int]:
    """Annotation ids a store held (``before``) that a read of Label Studio no longer returns
    (``tasks``, the store after the read): deleted in Label Studio, which never reuses an id,
    so they become tombstones like a recorded ANNOTATIONS_DELETED."""
    return before - annotation_ids(tasks)


def _annotation_counts(annotations: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    done = sum(1 for a in annotations if not a.get("was_cancelled"))
    return done, len(annotations) - done


def project_counts(tasks: Mapping[str, Mapping[str, Any]]) -> tuple[int, int]:
    """(completed, cancelled) annotations in stored tasks (task id -> task), counted as Label
    Studio's project ``total_annotations_number`` and ``skipped_annotations_number`` count them."""
    done = cancelled = 0
    for task in tasks.values():
        d, c = _annotation_counts(task.get("annotations") or [])
        done, cancelled = done + d, cancelled + c
    return done, cancelled


def _task_id(annotation: Mapping[str, Any]) -> int:
    task: object = annotation.get("task")
    if isinstance(task, dict):
        task = task.get("id")
    if isinstance(task, bool) or not isinstance(task, int):
        raise ChangeLogUnusable(f"annotation {annotation.get('id')} does not name its task")
    return task


def apply_entries(tasks: TaskStore, entries: list[Entry], label_config: str, deleted: set[int] | None = None) -> None:
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
            counters), or the counts disagree (see ``labelloop.events.changes``). A malformed
            entry (a field of the wrong type) is refused the same way. ``tasks`` may then be
            partly changed: the caller discards it.
    """
    try:
        _Applier(tasks, set() if deleted is None else deleted).apply(entries, label_config_digest(label_config))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ChangeLogUnusable(f"malformed change-log entry: {type(exc).__name__}: {exc}") from exc


class _Applier:
    """Applies entries to one store; ``deleted`` is its tombstones (changed in place)."""

    def __init__(self, tasks: TaskStore, deleted: set[int]) -> None:
        self.tasks, self.deleted = tasks, deleted

    def apply(self, entries: list[Entry], digest: str) -> None:
        project: object = None
        for entry in entries:
            project = entry.get("project")
            action = entry.get("action")
            if not isinstance(project, dict):
                raise ChangeLogUnusable("an entry has no project counters")
            if project.get("label_config_sha1") != digest:
                raise ChangeLogUnusable("the label config changed since Label Studio was last read")
            if action == "ANNOTATIONS_DELETED":
                self._delete(entry)
            elif action in CHANGED_ACTIONS:
                self._upsert(entry, str(action))
            else:
                raise ChangeLogUnusable(f"unexpected action {action!r} in the change log")
        if not isinstance(project, dict) or project.get("total_annotations_number") is None:
            raise ChangeLogUnusable("the newest entry has no project counters")
        reported = (int(project["total_annotations_number"] or 0), int(project.get("skipped_annotations_number") or 0))
        have = project_counts(self.tasks)
        if have != reported:
            raise ChangeLogUnusable(
                f"{have} stored (completed, cancelled) annotations, Label Studio reports {reported}"
            )

    def _delete(self, entry: Entry) -> None:
        tasks = self.tasks
        gone = {int(a["id"]) for a in entry.get("annotations") or [] if isinstance(a, dict) and "id" in a}
        self.deleted.update(gone)
        for key in [k for k, t in tasks.items() if any(a.get("id") in gone for a in t.get("annotations") or [])]:
            kept = [a for a in tasks[key].get("annotations") or [] if a.get("id") not in gone]
            if kept:
                tasks[key] = {**tasks[key], "annotations": kept}  # a new dict: returned ones never change
            else:
                del tasks[key]

    def _upsert(self, entry: Entry, action: str) -> None:
        tasks = self.tasks
        annotations: object = entry.get("annotation")
        annotations = annotations if isinstance(annotations, list) else [annotations]
        task_field: object = entry.get("task")
        carried: list[object] = [task_field] if isinstance(task_field, dict) else list(entry.get("tasks") or [])
        by_id: dict[Any, Mapping[str, Any]] = {t["id"]: t for t in carried if isinstance(t, dict) and "id" in t}
        for annotation in annotations:
            if not isinstance(annotation, dict) or "id" not in annotation:
                raise ChangeLogUnusable(f"{action} without an annotation object")
            if not isinstance(annotation.get("result") or [], list):
                raise ChangeLogUnusable(f"annotation {annotation['id']}: result is not a list")
            if in_future(annotation.get("updated_at")):
                raise ChangeLogUnusable(f"annotation {annotation['id']}: updated_at in the future")
            tid = _task_id(annotation)
            if int(annotation["id"]) in self.deleted:
                continue  # deleted already: this CREATE or UPDATE arrived after its DELETE
            stored = tasks.get(str(tid))
            payload = by_id.get(tid)
            if payload is not None and not isinstance(payload.get("data", {}), dict):
                raise ChangeLogUnusable(f"task {tid}: data is not an object")
            if stored is None and payload is None:
                raise ChangeLogUnusable(f"{action}: task {tid} is neither in the webhook nor stored")
            # The webhook's task and annotation: Label Studio's JSON, checked above for what is read here.
            fields = {k: v for k, v in (payload or {}).items() if k != "annotations"}
            task = cast(Task, {**(stored or {}), **fields})
            incoming = cast(Annotation, annotation)
            current = list((stored or {}).get("annotations") or [])
            index = next((i for i, a in enumerate(current) if a.get("id") == incoming["id"]), None)
            if index is None:
                current.append(incoming)
            elif not is_newer(current[index].get("updated_at"), incoming.get("updated_at")):
                current[index] = incoming  # the entry's is newer or the same
            task["annotations"] = current
            tasks[str(tid)] = task
        for tid, payload in by_id.items():
            if "total_annotations" in payload and str(tid) in tasks:
                told = (int(payload.get("total_annotations") or 0), int(payload.get("cancelled_annotations") or 0))
                have = _annotation_counts(tasks[str(tid)]["annotations"])
                if have != told:
                    raise ChangeLogUnusable(f"task {tid}: {have} stored annotations, webhook reports {told}")
