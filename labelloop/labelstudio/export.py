"""Read a project out of Label Studio with label-studio-sdk: annotated tasks and their images.

Follows Label Studio's JSON export format
(https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, cast

import orjson
import redis
import structlog

from labelloop.errors import DatasetError
from labelloop.events.change_check import confirm_with_label_studio
from labelloop.events.changes import (
    Batch,
    ChangeLog,
    ChangeLogUnusable,
    Position,
    absent_after_read,
    annotation_ids,
    apply_entries,
    project_counts,
)
from labelloop.events.ledger import parse_ts
from labelloop.labelstudio.export_store import StoreState, SyncInfo, read_store, write_store
from labelloop.ls_json import Annotation, Task

log = structlog.get_logger(__name__)


def export_tasks(client: Any, project_id: int) -> list[Task]:
    """Export the project's annotated tasks as Label Studio JSON: a list of ``ls_json.Task``
    (untrusted: readers check the fields they use).

    Uses the SDK's synchronous export (``GET /api/projects/{id}/export?exportType=JSON``),
    which returns tasks that have at least one annotation, with ``annotations`` inline.

    Raises:
        DatasetError: the export is not a JSON list.
    """
    body = b"".join(client.projects.exports.download_sync(project_id, export_type="JSON"))
    try:
        tasks = orjson.loads(body or b"[]")
    except orjson.JSONDecodeError:  # NaN/Infinity (Python's encoder writes them) or huge integers
        tasks = json.loads(body)
    if not isinstance(tasks, list):
        raise DatasetError(f"project {project_id}: export is not a list of tasks")
    return tasks


# Tasks re-read before the last sync's server time, to absorb clock resolution (seconds).
SYNC_OVERLAP_S = 2.0


def sync_tasks(
    client: Any,
    project_id: int,
    store: Path,
    changes: ChangeLog | None = None,
    verify_every_s: float = 3600.0,
) -> tuple[str, list[Task], SyncInfo]:
    """The project's label config and annotated tasks, read incrementally and verified per task.

    The first call exports the project (``export_tasks``). Later calls with the same ``store``
    file read only what changed since the previous call:

    - every ``verify_every_s`` seconds (0: every call), the project is exported again and the
      stored tasks are compared with it task by task: what Label Studio holds replaces what is
      stored, whatever was missed (a lost webhook, an update the ``updated_at`` filter below
      skipped because of clock skew between hosts); ``info["corrected"]`` counts the tasks
      that differed;
    - else from the project's change log (``changes``: the webhooks the receiver recorded, see
      ``labelloop.events.changes``) when the log has at least one entry and every entry since the
      previous call and the newest entry's counters agree with the stored tasks; the tasks the
      entries touched are then read from Label Studio (``labelloop.events.change_check``: a webhook's
      secret is not proof of what Label Studio holds). Deleted annotation ids are kept in the
      store (tombstones, Label Studio never reuses them), so a CREATE or UPDATE recorded after
      its DELETE never brings one back;
    - else from Label Studio: only the tasks it updated since the previous call
      (``GET /api/tasks/?project=&query=`` filtered on ``tasks:updated_at``; Label Studio
      touches a task's ``updated_at`` when one of its annotations is created, updated or
      deleted), merged. When the project's annotation counters (``total_annotations_number``,
      ``skipped_annotations_number``) then disagree with the merged tasks (e.g. a task was
      deleted), the project is exported again.

    Args:
        store: a JSON file this function owns (tasks by id, label config, the server time of the
            last read from Label Studio, when it was last verified, the change-log position and
            the deleted annotation ids).
        changes: the change log; None reads Label Studio every time.
        verify_every_s: compare with a full export at least this often (seconds).

    Returns:
        ``(label_config, tasks, info)``: tasks in the JSON export format that have at least
        one annotation; ``info`` (``SyncInfo``) = ``{"mode": "full"|"verify"|"incremental"|"change log",
        "tasks_fetched": n, "seconds": s}`` (plus ``"changes": n`` entries applied,
        ``"confirmed"``/``"disagreed"``: tasks read back from Label Studio / that the log had
        wrong, ``"corrected": n`` tasks a verification replaced, or ``"change_log": reason`` when the
        log could not be used).

    Long for its docstring (the four ways a sync reads the project); the reads themselves are
    ``_from_change_log`` and ``_read_label_studio``.
    """
    t0 = time.perf_counter()
    try:
        state = read_store(store)
        tasks: dict[str, Task] | None = state["tasks"]
        since = float(state["server_time"]) - SYNC_OVERLAP_S
        deleted = {int(i) for i in state.get("deleted") or []}
    except (OSError, ValueError, KeyError, TypeError):
        state, tasks, since, deleted = StoreState(), None, 0.0, set()
    verified_at = float(state.get("verified_at") or 0.0)
    verify = tasks is not None and time.time() - verified_at >= verify_every_s
    info = SyncInfo()
    position: Position | None = None
    if changes is not None:
        try:
            if tasks is not None and not verify:
                label_config, batch, checked = _from_change_log(client, changes, project_id, state, tasks, deleted)
                updated: StoreState = {
                    **state,
                    "label_config": label_config,
                    "tasks": tasks,
                    "changes": batch.position.as_dict(),
                    "deleted": sorted(deleted),
                }
                write_store(store, updated)
                _trim(changes, project_id, batch.position)
                seconds = time.perf_counter() - t0
                info = SyncInfo(
                    mode="change log",
                    tasks_fetched=0,
                    changes=len(batch.entries),
                    seconds=seconds,
                    confirmed=checked["confirmed"],
                    disagreed=checked["disagreed"],
                )
                return label_config, list(tasks.values()), info
            if verify:
                age = time.time() - verified_at
                raise ChangeLogUnusable(f"Label Studio last read {age:.0f} s ago (verify every {verify_every_s:.0f} s)")
        except ChangeLogUnusable as exc:
            info["change_log"] = str(exc)
            tasks = read_store(store)["tasks"]  # apply_entries may have changed it
        except redis.RedisError as exc:
            info["change_log"] = f"Redis: {type(exc).__name__}: {exc}"
        if "change_log" in info:
            log.info("change_log_unused", project_id=project_id, reason=info["change_log"])
        try:
            position = changes.position(project_id)
        except redis.RedisError:
            position = None
    read_at = time.time()
    known = annotation_ids(tasks.values()) if tasks is not None else set()  # tombstones if the read drops them
    raw, changed, exported = _read_label_studio(client, project_id, first=tasks is None or verify, since=since)
    mode, fetched = "full", 0
    project = raw.data
    try:
        server_time = parsedate_to_datetime(raw.headers.get("date")).timestamp()
    except (TypeError, ValueError):
        server_time = time.time()
    counts = (int(project.total_annotations_number or 0), int(project.skipped_annotations_number or 0))
    if tasks is not None and exported is not None:  # the periodic verification
        corrected = differing_tasks(tasks, exported)
        info["corrected"] = len(corrected)
        log.info("dataset_verified", project_id=project_id, corrected=len(corrected), tasks=corrected[:20])
        tasks, mode = None, "verify"
    elif tasks is not None:
        for task in changed:
            fetched += 1
            if task.get("annotations"):
                tasks[str(task["id"])] = task
            else:
                tasks.pop(str(task["id"]), None)
        mode = "incremental"
        if project_counts(tasks) != counts:
            tasks = None
    if tasks is None:
        if exported is None:  # the counters disagreed with the merged tasks
            exported = export_tasks(client, project_id)
        tasks = {str(t["id"]): t for t in exported if t.get("annotations")}
        mode, fetched = ("full" if mode != "verify" else mode), len(exported)
        verified_at = read_at
    label_config = str(project.label_config)
    deleted |= absent_after_read(known, tasks.values())
    if changes is not None and position is not None:
        try:  # DELETEs whose entries this read absorbed (read after the position: none missed)
            deleted |= changes.tombstones(project_id)
        except redis.RedisError:
            pass
    new_state = StoreState(
        server_time=server_time,
        verified_at=verified_at,
        label_config=label_config,
        tasks=tasks,
        deleted=sorted(deleted),
    )
    if position is not None:
        new_state["changes"] = position.as_dict()
    write_store(store, new_state)
    if changes is not None and position is not None:
        _trim(changes, project_id, position)
    info.update(SyncInfo(mode=mode, tasks_fetched=fetched, seconds=time.perf_counter() - t0))
    return label_config, list(tasks.values()), info


def _annotations_signature(task: Task) -> set[tuple[Any, ...]]:
    return {
        (a.get("id"), parse_ts(a.get("updated_at")) or a.get("updated_at"), bool(a.get("was_cancelled")))
        for a in task.get("annotations") or []
    }


def differing_tasks(stored: Mapping[str, Task], exported: Sequence[Task]) -> list[int]:
    """Ids of tasks (sorted) whose annotations differ between ``stored`` (task id as text -> task)
    and an export of the project: an annotation added, removed, cancelled or with another
    ``updated_at`` (compared as times), or a task only one side has."""
    fresh = {str(t["id"]): t for t in exported if t.get("annotations")}
    ids = set(stored) | set(fresh)
    sig = _annotations_signature
    return sorted(int(i) for i in ids if i not in stored or i not in fresh or sig(stored[i]) != sig(fresh[i]))


def _read_label_studio(
    client: Any, project_id: int, first: bool, since: float
) -> tuple[Any, list[Task], list[Task] | None]:
    """The project (raw response: label config, counters, server time) and either the whole
    export (``first``) or the tasks Label Studio updated after ``since`` (epoch seconds).

    The project is read while the tasks are listed or exported; both requests start after the
    previous sync's server time minus the overlap.
    """
    changed: list[Task] = []
    exported: list[Task] | None = None
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        project_future = pool.submit(client.projects.with_raw_response.get, id=project_id)
        if first:
            exported = export_tasks(client, project_id)
        else:
            query = {
                "filters": {
                    "conjunction": "and",
                    "items": [
                        {
                            "filter": "filter:tasks:updated_at",
                            "operator": "greater",
                            "type": "Datetime",
                            "value": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(since)),
                        }
                    ],
                }
            }
            for item in client.tasks.list(
                project=project_id, fields="all", query=json.dumps(query), resolve_uri=False, page_size=500
            ):
                raw = item.model_dump(mode="json", exclude_unset=True) if hasattr(item, "model_dump") else dict(item)
                changed.append(cast(Task, raw))  # the SDK's task as Label Studio's JSON
        return project_future.result(), changed, exported
    finally:
        # Never wait for the project request after an error (a time limit raised into this
        # thread included): it ends by its own timeout, the caller goes on at once.
        pool.shutdown(wait=False, cancel_futures=True)


def _from_change_log(
    client: Any,
    changes: ChangeLog,
    project_id: int,
    state: StoreState,
    tasks: dict[str, Task],
    deleted: set[int],
) -> tuple[str, Batch, dict[str, int]]:
    """Apply the change log since the stored position to ``tasks`` and ``deleted`` (in place), the
    tasks it touched then read from Label Studio (``labelloop.events.change_check``: a webhook's secret
    is not proof); the label config (the one last read from Label Studio: the log never changes
    it) and what the check found.

    Raises:
        ChangeLogUnusable: see ``labelloop.events.changes``; also when the store has no position or
            label config yet.
    """
    stored = state.get("changes")
    if not isinstance(stored, dict) or not state.get("label_config"):
        raise ChangeLogUnusable("no change-log position stored yet")
    batch = changes.read(project_id, Position.from_dict(stored))
    if not batch.entries:
        # Nothing recorded is not proof that nothing changed (the webhook may not be set up, or
        # the build was not started by one): only entries carry Label Studio's counters.
        raise ChangeLogUnusable("no webhook recorded since the last build")
    label_config = str(state["label_config"])
    before = dict(tasks)
    apply_entries(tasks, batch.entries, label_config, deleted)
    checked = confirm_with_label_studio(client, project_id, tasks, before, batch.entries, deleted)
    return label_config, batch, checked


def _trim(changes: ChangeLog, project_id: int, position: Position) -> None:
    try:
        changes.trim(project_id, position)
    except redis.RedisError as exc:  # the next build reads the same entries again: no harm
        log.info("change_log_trim_failed", project_id=project_id, error=str(exc)[:200])


def select_annotation(task: Task) -> Annotation | None:
    """Pick the annotation to train on: completed, not cancelled; ground truth first, else newest.

    Drafts are never part of ``annotations`` in an export; skipped tasks show up as
    cancelled annotations and are left out.

    Returns:
        the chosen annotation (the task's own, not a copy), or None when the task has no usable annotation.
    """
    usable: list[Annotation] = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not usable:
        return None
    oldest = datetime.min.replace(tzinfo=UTC)
    return max(
        usable,
        key=lambda a: (bool(a.get("ground_truth")), parse_ts(a.get("updated_at")) or oldest, a.get("id", 0)),
    )
