"""Check a change-log batch against Label Studio before a dataset build trusts it.

A webhook's credential (the webhook secret, or Basic auth) proves only that the sender knows
it, not that Label Studio sent the webhook: any manager of any project's webhooks can read the
secret. The change log therefore says only *which* tasks changed; what they hold comes from Label
Studio's API, read with labelloop's own token (``GET /api/tasks/?project=<id>&fields=all``,
``query`` = ``{"selectedItems": {"all": false, "included": [task ids]}}``; see
https://api.labelstud.io/api-reference/api-reference/tasks/list), one paged request per build:

- every task an entry names, or whose stored copy applying the entries changed, is replaced by
  Label Studio's copy (dropped when Label Studio returns it without annotations or not at all):
  an annotation Label Studio does not have (a forged CREATE), a forged result or time (a forged
  UPDATE) and a forged DELETE of an annotation Label Studio still has never reach the dataset;
- a tombstone of an annotation Label Studio still returns is lifted (a forged DELETE would
  otherwise hide the annotation's later updates).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import structlog

from labelloop.events.change_apply import TaskStore, annotation_ids
from labelloop.events.change_entry import CHANGED_ACTIONS, Entry
from labelloop.events.ledger import parse_ts
from labelloop.ls_json import Task

log = structlog.get_logger(__name__)

PAGE_SIZE = 500


def named_tasks(entries: list[Entry]) -> set[str]:
    """Ids (as text) of the tasks change-log entries name: each created or updated annotation's
    task, and the tasks the webhooks carry."""
    ids: set[str] = set()
    for entry in entries:
        if entry.get("action") not in CHANGED_ACTIONS:
            continue
        annotations: object = entry.get("annotation")
        for annotation in annotations if isinstance(annotations, list) else [annotations]:
            task: object = annotation.get("task") if isinstance(annotation, dict) else None
            task = task.get("id") if isinstance(task, dict) else task
            if isinstance(task, int) and not isinstance(task, bool):
                ids.add(str(task))
        task_field: object = entry.get("task")
        carried: list[object] = [task_field] if isinstance(task_field, dict) else list(entry.get("tasks") or [])
        ids.update(str(t["id"]) for t in carried if isinstance(t, dict) and isinstance(t.get("id"), int))
    return ids


def read_tasks(client: Any, project_id: int, task_ids: list[int]) -> list[Task]:
    """The project's tasks with these ids as Label Studio holds them (JSON export format, with
    ``annotations``), through label-studio-sdk's ``tasks.list``; a task Label Studio does not
    have is absent. Label Studio's errors propagate (the build fails and is retried)."""
    query = json.dumps({"selectedItems": {"all": False, "included": task_ids}})
    tasks: list[Task] = []
    for item in client.tasks.list(
        project=project_id, fields="all", query=query, resolve_uri=False, page_size=PAGE_SIZE
    ):
        row = item.model_dump(mode="json", exclude_unset=True) if hasattr(item, "model_dump") else dict(item)
        task = cast(Task, row)  # the SDK's task as Label Studio's JSON
        if str(task.get("id")) in {str(i) for i in task_ids}:  # only what was asked for, whatever the server does
            tasks.append(task)
    return tasks


def _signature(task: Mapping[str, Any] | None) -> set[tuple[Any, ...]]:
    return {
        (a.get("id"), parse_ts(a.get("updated_at")) or a.get("updated_at"), json.dumps(a.get("result"), sort_keys=True))
        for a in (task or {}).get("annotations") or []
    }


def confirm_with_label_studio(
    client: Any,
    project_id: int,
    tasks: TaskStore,
    before: TaskStore,
    entries: list[Entry],
    deleted: set[int],
) -> dict[str, int]:
    """Replace the tasks a batch touched by Label Studio's copies, in place (see the module doc).

    Args:
        tasks: the stored tasks after ``labelloop.events.changes.apply_entries`` (task id as text -> task).
        before: a shallow copy of ``tasks`` taken before applying (apply_entries replaces a task's
            dict when it changes one, so an identity change marks a touched task).
        entries: the batch applied.
        deleted: tombstones (annotation ids), in place.

    Returns:
        ``{"confirmed": tasks read from Label Studio, "disagreed": tasks whose annotations (id,
        ``updated_at``, result) differed from what the log made of them}``.
    """
    touched = {k for k in set(tasks) | set(before) if tasks.get(k) is not before.get(k)} | named_tasks(entries)
    if not touched:
        return {"confirmed": 0, "disagreed": 0}
    fresh: TaskStore = {str(t["id"]): t for t in read_tasks(client, project_id, sorted(int(k) for k in touched))}
    disagreed = sorted(int(k) for k in touched if _signature(tasks.get(k)) != _signature(fresh.get(k)))
    for key in touched:
        task = fresh.get(key)
        if task is not None and task.get("annotations"):
            tasks[key] = task
        else:
            tasks.pop(key, None)
    deleted -= annotation_ids(fresh.values())
    if disagreed:
        # A forged webhook, or (harmless) a change in Label Studio whose webhook is still on its way.
        log.warning("change_log_disagrees", project_id=project_id, tasks=disagreed[:20], count=len(disagreed))
    return {"confirmed": len(fresh), "disagreed": len(disagreed)}
