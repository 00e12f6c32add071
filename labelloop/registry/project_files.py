"""The small per-project files kept beside the versions (``params.json``, ``classes.json``,
``sampling.json``): read whole, replaced atomically."""

from __future__ import annotations

from pathlib import Path

from labelloop.files import write_atomic


class ProjectFiles:
    """The small per-project files kept with the versions (``params.json``, ``classes.json``).

    Args:
        models_dir: the registry root.
    """

    NAMES = frozenset({"params.json", "classes.json", "sampling.json"})

    def __init__(self, models_dir: Path) -> None:
        self.root = Path(models_dir)

    def _path(self, project_id: int, name: str) -> Path:
        if name not in self.NAMES:
            raise ValueError(f"not a project file: {name!r}")
        return self.root / str(int(project_id)) / name

    def read(self, project_id: int, name: str) -> str | None:
        """The file's text, or None when it does not exist or cannot be read."""
        try:
            return self._path(project_id, name).read_text()
        except OSError:
            return None

    def write(self, project_id: int, name: str, text: str) -> None:
        """Replace the file atomically (a reader sees the old text or the new, never a mix)."""
        write_atomic(self._path(project_id, name), text)
