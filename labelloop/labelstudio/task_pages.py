"""Read a project's task list for a pre-annotation page by page, with the fields it needs only.

Label Studio 1.23.2 answers ``GET /api/tasks/?project=N&page=P&page_size=S``
(``data_manager/api.py`` ``TaskListAPI``) with ``{"total", "tasks": [...]}``; each task carries
its ``data``, ``total_annotations`` (cancelled ones left out) and ``total_predictions``.
``fields=all`` adds every annotation and every prediction (regions included) of every model
version, and label-studio-sdk's ``tasks.list`` asks for it unless told otherwise
(``tasks/client_ext.py``), so each request here says ``fields=task_only``.

Which tasks already hold a prediction of a model version is a second, filtered listing: a
Data Manager filter on ``predictions_model_versions`` ("contains", a substring match in
``data_manager/managers.py``, so ``v1`` also finds ``v10``) makes Label Studio annotate each
task with its versions (``"v1,v10"``), which are then compared exactly. A retried
pre-annotation therefore never imports a task's prediction of a version twice.

Memory holds one ``{"id", "data"}`` per task to predict, one id per task that already holds
the version, and a seeded sample of at most ``MAX_LABELED`` annotated tasks; never a
prediction or an annotation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from labelloop.ls_json import Task

log = structlog.get_logger(__name__)

PAGE_SIZE = 500  # tasks per GET /api/tasks/ (Label Studio's default is 100, unbounded unless TASK_API_PAGE_SIZE_MAX)
MAX_LABELED = 1000  # annotated tasks kept (a seeded reservoir sample above)


def pages(client: Any, project_id: int, page_size: int | None = None, query: str | None = None) -> Iterator[list[Any]]:
    """The project's tasks (label-studio-sdk ``RoleBasedTask`` objects), ``page_size`` (default
    ``PAGE_SIZE``) at a time, ``fields=task_only``, filtered by a Data Manager ``query`` (JSON) if
    given; stops at Label Studio's ``total`` (no request past the last page).

    Raises:
        label-studio-sdk's ``ApiError`` / httpx errors (call it inside ``labelstudio.calling``).
    """
    page_size = int(page_size or PAGE_SIZE)
    number = 1
    while True:
        page = client.tasks.list(project=project_id, page=number, page_size=page_size, fields="task_only", query=query)
        items = list(page.items or [])
        yield items
        total = int(getattr(page.response, "total", 0) or 0)
        if not items or number * page_size >= total:
            return
        number += 1


def holding(client: Any, project_id: int, version: str, page_size: int | None = None) -> set[int]:
    """Ids of the project's tasks that hold a prediction of ``version`` (exact model version)."""
    query = json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [
                    {
                        "filter": "filter:tasks:predictions_model_versions",
                        "operator": "contains",
                        "type": "List",
                        "value": [version],
                    }
                ],
            }
        }
    )
    out: set[int] = set()
    for items in pages(client, project_id, page_size, query):
        for task in items:
            raw = getattr(task, "predictions_model_versions", None) or ""
            # SQLite gives "v1,v10", PostgreSQL "v1, v10" (data_manager/serializers.py _pretty_results).
            versions = raw if isinstance(raw, list) else str(raw).split(",")
            if version in {str(v).strip() for v in versions}:
                out.add(int(task.id))
    return out


@dataclass
class Listing:
    """What a pre-annotation of one model version needs from the task list.

    Each task is an ``ls_json.Task`` with ``id`` and ``data`` only.
    ``todo``: ``{"id", "data"}`` of each task with no annotation and no prediction of the
    version, in task order; ``labeled``: a seeded sample of at most ``MAX_LABELED`` annotated
    tasks (``{"id", "data"}``, in task order); ``unlabeled``: how many tasks have no annotation;
    ``holding``: how many unlabeled tasks already hold the version; ``held``: their
    ``{"id", "data"}`` (in task order), only when asked for (``for_version(keep_held=True)``).
    """

    todo: list[Task] = field(default_factory=list)
    held: list[Task] = field(default_factory=list)
    labeled: list[Task] = field(default_factory=list)
    unlabeled: int = 0
    holding: int = 0


def for_version(
    client: Any,
    project_id: int,
    version: str,
    page_size: int | None = None,
    max_labeled: int = MAX_LABELED,
    keep_held: bool = False,
) -> Listing:
    """Stream the project's tasks into a ``Listing`` for ``version`` (see the module docstring).

    The annotated sample is a reservoir sample (Algorithm R, ``numpy`` generator seeded with 0):
    the same task list gives the same sample.

    Raises:
        label-studio-sdk's ``ApiError`` / httpx errors (call it inside ``labelstudio.calling``).
    """
    done = holding(client, project_id, version, page_size)
    listing = Listing()
    rng = np.random.default_rng(0)
    seen_labeled = 0
    sample: list[tuple[int, Task]] = []
    for items in pages(client, project_id, page_size):
        for task in items:
            entry = Task(id=int(task.id), data=dict(task.data or {}))
            if (getattr(task, "total_annotations", 0) or 0) > 0:
                if len(sample) < max_labeled:
                    sample.append((seen_labeled, entry))
                elif (slot := int(rng.integers(0, seen_labeled + 1))) < max_labeled:
                    sample[slot] = (seen_labeled, entry)
                seen_labeled += 1
                continue
            listing.unlabeled += 1
            if entry["id"] in done:
                listing.holding += 1
                if keep_held:
                    listing.held.append(entry)
            else:
                listing.todo.append(entry)
    listing.labeled = [entry for _, entry in sorted(sample, key=lambda pair: pair[0])]
    log.info(
        "task_list_read",
        project_id=project_id,
        version=version,
        todo=len(listing.todo),
        unlabeled=listing.unlabeled,
        holding=listing.holding,
        labeled=seen_labeled,
    )
    return listing
