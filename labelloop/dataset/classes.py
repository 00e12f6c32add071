"""Stable class ids: a label keeps its Ultralytics class id for the life of a project.

Stored per control tag in ``<models_dir>/<project>/classes.json`` (``labelloop.registry.store.ProjectFiles``):
``{"<from_name>": {"<class id>": "<label>", ...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from labelloop.registry.store import ProjectFiles

CLASSES_FILE = "classes.json"


def stable_names(previous: Mapping[int, str] | None, labels: tuple[str, ...]) -> dict[int, str]:
    """Class ids for a project's labels that never change meaning.

    Args:
        previous: the ids used so far (id -> label), e.g. from the last build or version.
        labels: the label config's labels, in config order.

    Returns:
        id -> label: every previous id keeps its label (a label removed from the config keeps
        its id reserved), and labels seen for the first time get the next ids in config order.
    """
    names = {int(k): str(v) for k, v in (previous or {}).items()}
    known = set(names.values())
    next_id = max(names, default=-1) + 1
    for label in labels:
        if label not in known:
            names[next_id] = label
            known.add(label)
            next_id += 1
    return dict(sorted(names.items()))


def load_class_names(models_dir: Path, project_id: int, from_name: str) -> dict[int, str] | None:
    """The class ids stored for a project's control tag (``classes.json``, ``ProjectFiles``)."""
    try:
        stored = json.loads(ProjectFiles(models_dir).read(project_id, CLASSES_FILE) or "{}")
        return {int(k): str(v) for k, v in stored[from_name].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def store_class_names(models_dir: Path, project_id: int, from_name: str, names: Mapping[int, str]) -> None:
    """Persist a control tag's class ids with the project's model versions (atomic write)."""
    files = ProjectFiles(models_dir)
    try:
        stored = json.loads(files.read(project_id, CLASSES_FILE) or "{}")
        if not isinstance(stored, dict):
            stored = {}
    except ValueError:
        stored = {}
    stored[from_name] = {str(k): v for k, v in sorted(names.items())}
    files.write(project_id, CLASSES_FILE, json.dumps(stored, indent=1))
