"""labelloop's Data Manager tabs: "labelloop: most informative first" (labelloop's order, visible)
and "labelloop: possible label mistakes" (annotated tasks, worst label quality first).

Label Studio 1.23 Community has uncertainty sampling of its own ("Label All Tasks" outside a tab
serves the lowest prediction score of the least solved cluster, ``labelloop.labelstudio.sampling``); this
tab shows the same order in the Data Manager, and "Label All Tasks" from the tab follows the
tab's order. labelloop keeps one tab per project (found by its title) that shows the unlabeled
tasks (``tasks:total_annotations`` = 0) by ascending ``tasks:predictions_score``: the score is
the task's rank in labelloop's order (``labelloop.serving.diversity``, low = label first), averaged by
Label Studio over the predictions of the project's model version.
Tabs are Label Studio's "views" (``/api/dm/views``, label-studio-sdk ``client.views``); the
field names are those of Label Studio 1.23's Data Manager (``PrepareParamsFiltersRequest``).

The mistakes tab shows the annotated tasks (``tasks:total_annotations`` > 0) by ascending
``tasks:data.labelloop_label_quality`` (``labelloop.quality.mistakes``: low = the model disagrees most);
``columnsDisplayType`` marks that column a Number, which makes Label Studio 1.23.2 sort it as a
float (``apply_ordering`` in ``data_manager/managers.py``) and not as text. Tasks not scored
(yet) come last (``nulls_last``). Both tabs are kept the same way (``ensure_tab``).
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger(__name__)

TAB_TITLE = "labelloop: most informative first"
ORDERING = ["tasks:predictions_score"]  # ascending: the lowest score (the most informative) first
MISTAKES_TAB_TITLE = "labelloop: possible label mistakes"
MISTAKES_COLUMN = "tasks:data.labelloop_label_quality"  # labelloop.quality.mistakes.QUALITY_KEY in the task data


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


def mistakes_tab_data() -> dict[str, Any]:
    """The mistakes tab's ``data``: annotated tasks, lowest ``labelloop_label_quality`` first."""
    return {
        "title": MISTAKES_TAB_TITLE,
        "type": "list",
        "target": "tasks",
        "filters": {
            "conjunction": "and",
            "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0},
            ],
        },
        "ordering": [MISTAKES_COLUMN],
        "columnsDisplayType": {MISTAKES_COLUMN: "Number"},
    }


_KEPT = ("filters", "ordering", "columnsDisplayType")


def _matches(view: Any, title: str) -> bool:
    data = getattr(view, "data", None) or {}
    return isinstance(data, dict) and data.get("title") == title


def ensure_tab(client: Any, project_id: int, want: dict[str, Any] | None = None) -> tuple[int, str]:
    """Create the project's tab, or bring its filters and ordering back to ``want``.

    Idempotent: the tab is found by its title; a second call changes nothing
    (``"unchanged"``). A tab someone else edited (other filters or ordering) is updated in place;
    other tabs are left alone.

    Args:
        client: a label-studio-sdk ``LabelStudio`` client (``labelloop.labelstudio.client.client``).
        want: the tab's data (default ``tab_data()``; ``mistakes_tab_data()`` for the other tab).

    Returns:
        ``(view id, "created" | "updated" | "unchanged")``.

    Raises:
        label-studio-sdk's ``ApiError`` / httpx errors (call it inside ``labelstudio.calling``).
    """
    want = want or tab_data()
    for view in client.views.list(project=project_id):
        if not _matches(view, want["title"]):
            continue
        data = dict(view.data or {})
        if all(data.get(k) == want[k] for k in _KEPT if k in want):
            return int(view.id), "unchanged"
        client.views.update(id=str(view.id), project=project_id, data={**data, **want})
        return int(view.id), "updated"
    view = client.views.create(project=project_id, data=want)
    return int(view.id), "created"
