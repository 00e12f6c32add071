"""The label-mistakes report of a project, ``mistakes.json`` in its registry directory.

Written by ``labelloop.quality.mistakes.score_project`` (a worker), read by the project page
(``service.page``): a light module, so the receiver reads it without importing the predictor.
Shape: ``{"project_id", "at", "supported", "reason", "scored", "unscored", "predicted",
"tasks": [{"task", "annotation", "updated_at", "version", "score", "issues", "boxes"}, ...]}``, tasks worst
first; ``issues`` are ``labelloop.quality.label_quality.Issue`` as dicts, regions and boxes in percent
(typed: ``labelloop.quality.records.MistakesReport``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labelloop.files import write_atomic
from labelloop.quality.records import MistakesReport
from labelloop.registry.store import Registry

REPORT = "mistakes.json"


def report_path(registry: Registry, project_id: int) -> Path:
    """Where the project's report lives (the registry's project directory)."""
    return registry.project_dir(project_id) / REPORT


def write_report(registry: Registry, project_id: int, report: MistakesReport) -> None:
    """Replace the project's ``mistakes.json`` atomically (a reader sees the old or the new one)."""
    path = report_path(registry, project_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report))


def read_report(registry: Registry, project_id: int) -> dict[str, Any]:
    """The project's last report, or an empty one (``{"tasks": []}``) when none can be read; as read
    (a ``MistakesReport`` when this version wrote it; the page reads it as plain JSON)."""
    try:
        data = json.loads(report_path(registry, project_id).read_text())
    except (OSError, ValueError):
        return {"tasks": []}
    return data if isinstance(data, dict) and isinstance(data.get("tasks"), list) else {"tasks": []}
