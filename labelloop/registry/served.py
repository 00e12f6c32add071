"""The served version: ``<project>/CURRENT``, read in one small file read and replaced atomically by
a compare-and-swap under the project's lock, each change appended to the history."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from labelloop.errors import CurrentMovedError
from labelloop.files import fsync_dir
from labelloop.registry.history import History
from labelloop.registry.layout import Layout
from labelloop.registry.versions import VersionReader

ANY_CURRENT: object = object()  # set without a compare-and-swap


class ServedPointer:
    """Reads and moves a project's ``CURRENT``.

    Args:
        layout: the registry's paths.
        versions: checks that the version pointed at exists.
        history: where each move is recorded.
    """

    def __init__(self, layout: Layout, versions: VersionReader, history: History) -> None:
        self.layout = layout
        self.versions = versions
        self.history = history

    def name(self, project_id: int) -> str | None:
        """Name of the served version, or None when the project has none. One small file read."""
        try:
            name = self.layout.current_file(project_id).read_text().strip()
        except FileNotFoundError:
            return None
        return name or None

    def move(self, project_id: int, name: str, reason: str = "promoted", expect: object = ANY_CURRENT) -> None:
        """Point ``CURRENT`` at an existing version, atomically (a temp file ``.CURRENT-*`` fsync'd,
        ``os.replace``-d, the folder fsync'd), and append ``{"version", "reason"}`` to the history.

        Args:
            expect: when given, a compare-and-swap: ``CURRENT`` moves only if it still names
                ``expect`` (None: nothing served), checked under the project's lock.

        Raises:
            VersionNotFoundError: the version does not exist.
            CurrentMovedError: ``CURRENT`` is no longer ``expect``; nothing changed.
        """
        pdir = self.layout.project_dir(project_id)
        self.versions.find(project_id, name)  # before the lock: an unknown project gets no directory
        with self.layout.lock(project_id):
            self.versions.find(project_id, name)  # exists (its weights serve even if its manifest was emptied)
            if expect is not ANY_CURRENT and (now := self.name(project_id)) != expect:
                raise CurrentMovedError(f"project {project_id}: CURRENT is {now}, not {expect}", now)
            fd, tmp = tempfile.mkstemp(dir=pdir, prefix=".CURRENT-")
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(name + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.layout.current_file(project_id))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            fsync_dir(pdir)
            self.history.append(project_id, name, reason)
