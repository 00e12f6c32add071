"""Where a project's registry files live: the on-disk layout ``labelloop.registry.store`` documents.

Only paths, names and the per-project lock; nothing here writes a file (the ``flock`` aside).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from labelloop.files import FileLock

VERSION_RE = re.compile(r"^v(\d+)$")
UNTRAINED = "untrained"  # the model version reported while a project has none
WEIGHTS = "weights.pt"
MANIFEST = "manifest.json"
ANNOTATIONS = "annotations.json"
INDEX = "index.json"
CURRENT = "CURRENT"
HISTORY = "history.jsonl"
LOCK = ".lock"
TEMP_PREFIX = ".tmp-"  # a version directory being written (``labelloop.registry.publish``)
TRASH_PREFIX = ".deleted-"  # a version directory being deleted (``labelloop.registry.retention``)


def is_version_name(name: str) -> bool:
    """Whether ``name`` is a version directory's name (``v<N>``, N a decimal number)."""
    return VERSION_RE.match(name) is not None


def version_number(name: str) -> int:
    """N of ``v<N>`` (a name ``is_version_name`` accepts)."""
    return int(name[1:])


@dataclass(frozen=True)
class Layout:
    """The paths of the registry under ``root`` (absolute), per project.

    Args:
        root: the models directory (``LABELLOOP_MODELS_DIR``).
    """

    root: Path

    def project_dir(self, project_id: int) -> Path:
        """``<root>/<project_id>``."""
        return self.root / str(int(project_id))

    def versions_dir(self, project_id: int) -> Path:
        """``<project>/versions``: one immutable directory per version."""
        return self.project_dir(project_id) / "versions"

    def version_dir(self, project_id: int, name: str) -> Path:
        """``<project>/versions/<name>`` (``name`` is not checked)."""
        return self.versions_dir(project_id) / name

    def current_file(self, project_id: int) -> Path:
        """``<project>/CURRENT``: the served version's name and a newline."""
        return self.project_dir(project_id) / CURRENT

    def history_file(self, project_id: int) -> Path:
        """``<project>/history.jsonl``: one JSON object a line (``labelloop.registry.history``)."""
        return self.project_dir(project_id) / HISTORY

    def index_file(self, project_id: int) -> Path:
        """``<project>/index.json``: ``{"versions": [entry, ...]}`` (``labelloop.registry.index``)."""
        return self.project_dir(project_id) / INDEX

    def lock(self, project_id: int) -> contextlib.AbstractContextManager[None]:
        """Hold the project's registry lock (``fcntl.flock`` on ``<project>/.lock``; re-entrant in
        a thread). Every change of ``CURRENT``, the index or the version directories holds it."""
        return FileLock.of(self.project_dir(project_id) / LOCK).held()

    def version_names(self, project_id: int) -> list[str]:
        """Names of the version directories, oldest first (one directory listing)."""
        try:
            names = [p.name for p in self.versions_dir(project_id).iterdir() if is_version_name(p.name)]
        except FileNotFoundError:
            return []
        return sorted(names, key=version_number)

    def projects(self) -> list[int]:
        """Project ids that have a directory under ``root``."""
        if not self.root.is_dir():
            return []
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit())
