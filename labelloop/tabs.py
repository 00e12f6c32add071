"""The Data Manager tab "labelloop: most informative first": labelloop's order, visible.

Label Studio 1.23 Community has uncertainty sampling of its own ("Label All Tasks" outside a tab
serves the lowest prediction score of the least solved cluster, ``labelloop.sampling``); this
tab shows the same order in the Data Manager, and "Label All Tasks" from the tab follows the
tab's order. labelloop keeps one tab per project (found by its title) that shows the unlabeled
tasks (``tasks:total_annotations`` = 0) by ascending ``tasks:predictions_score``: the score is
the task's rank in labelloop's order (``labelloop.diversity``, low = label first), averaged by
Label Studio over the predictions of the project's model version.
Tabs are Label Studio's "views" (``/api/dm/views``, label-studio-sdk ``client.views``); the
field names are those of Label Studio 1.23's Data Manager (``PrepareParamsFiltersRequest``).
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger(__name__)

TAB_TITLE = "labelloop: most informative first"
ORDERING = ["tasks:predictions_score"]  # ascending: the lowest score (the most informative) first


def tab_data() -> dict[str, Any]:
    """The tab's ``data`` as Label Studio's Data Manager stores it (title, filters, ordering)."""
    return {
        "title": TAB_TITLE,
        "type": "list",
        "target": "tasks",
        "filters": {
            "conjunction": "and",
            "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
            ],
        },
        "ordering": list(ORDERING),
    }


def _matches(view: Any) -> bool:
    data = getattr(view, "data", None) or {}
    return isinstance(data, dict) and data.get("title") == TAB_TITLE


def ensure_tab(client: Any, project_id: int) -> tuple[int, str]:
    """Create the project's tab, or bring its filters and ordering back to ``tab_data()``.

    Idempotent: the tab is found by its title; a second call changes nothing
    (``"unchanged"``). A tab someone else edited (other filters or ordering) is updated in place;
    other tabs are left alone.

    Args:
        client: a label-studio-sdk ``LabelStudio`` client (``labelloop.labelstudio.client``).

    Returns:
        ``(view id, "created" | "updated" | "unchanged")``.

    Raises:
        label-studio-sdk's ``ApiError`` / httpx errors (call it inside ``labelstudio.calling``).
    """
    want = tab_data()
    for view in client.views.list(project=project_id):
        if not _matches(view):
            continue
        data = dict(view.data or {})
        if data.get("filters") == want["filters"] and data.get("ordering") == want["ordering"]:
            return int(view.id), "unchanged"
        client.views.update(id=str(view.id), project=project_id, data={**data, **want})
        return int(view.id), "updated"
    view = client.views.create(project=project_id, data=want)
    return int(view.id), "created"
