"""The dataset folder's state file, ``<out>/.labelloop-state.json``: what each task contributed to the
last build into that folder, so the next build rewrites only what changed.

Format (version 2, JSON)::

    {"version": 2, "layout": "<task>:<from_name>:<keypoint from_name>",
     "names": {"<class id>": "<label>"},
     "tasks": {"<task id>": PlanEntry, ...}}

A state of another version or layout is ignored: the folder is then rebuilt from scratch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict, cast

import orjson

from labelloop.files import write_atomic
from labelloop.task_types.spec import TrainSpec

STATE_FILE = ".labelloop-state.json"
STATE_VERSION = 2


class PlanEntry(TypedDict):
    """One task's part of the dataset folder (planned by ``labelloop.dataset.plan``, recorded in the state).

    Attributes:
        key: what the label text was made from (annotation id and ``updated_at``, image size,
            class ids): the same key reuses ``label`` without converting again.
        label: the label file's text (``cls ...`` lines), or classify's label.
        dropped: why regions of the annotation were left out.
        image: the image's path in the folder (``images/<split>/<task>.<ext>`` or
            ``<split>/<class id>/<task>.<ext>``); ``labels``: its label file, None for classify.
        src: the absolute source file linked; ``src_mtime`` its modification time (ns, 0 unknown).
        url: the task's image URL; ``width``, ``height``: the upright image in pixels.
    """

    key: str
    label: str
    dropped: list[str]
    image: str
    labels: str | None
    src: str
    src_mtime: int
    url: str
    width: int
    height: int


class BuildState(TypedDict):
    """The state file's content (``names`` keys are class ids as text, as JSON keeps them)."""

    version: int
    layout: str
    names: dict[str, str]
    tasks: dict[str, PlanEntry]


def layout(spec: TrainSpec) -> str:
    """Builds of the same layout can update each other's folder in place."""
    return f"{spec.task}:{spec.from_name}:{spec.keypoint_from_name or ''}"


def read_state(out_dir: Path, spec: TrainSpec) -> BuildState | None:
    """The last build's state when it was written for the same layout (else None: rebuild)."""
    try:
        state = orjson.loads((out_dir / STATE_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or state.get("layout") != layout(spec):
        return None
    if not isinstance(state.get("tasks"), dict):
        return None
    return cast(BuildState, state)


def write_state(out_dir: Path, spec: TrainSpec, names: Mapping[int, str], tasks: Mapping[str, PlanEntry]) -> None:
    """Replace the state file (atomic, fsynced): call it after the files it describes are on disk."""
    state: BuildState = {
        "version": STATE_VERSION,
        "layout": layout(spec),
        "names": {str(k): v for k, v in names.items()},
        "tasks": dict(tasks),
    }
    write_atomic(out_dir / STATE_FILE, orjson.dumps(state))
