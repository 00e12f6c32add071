"""Retention: which versions a project keeps (a pure plan) and their deletion (renamed out of
``versions/`` first, so listings never see half a version, then removed and recorded)."""

from __future__ import annotations

import os
import shutil
import uuid

from labelloop.registry.history import History
from labelloop.registry.layout import TEMP_PREFIX, TRASH_PREFIX, Layout


def plan_retention(names: list[str], stack: list[str], current: str | None, keep_last: int) -> list[str]:
    """The versions to delete, oldest first.

    Kept: the newest ``keep_last`` of ``names`` (at least 1, so version numbers are never
    reused), ``current`` and the versions the next ``keep_last`` rollbacks (at least 1) serve:
    the top ``max(2, keep_last + 1)`` distinct versions of the rollback ``stack`` (oldest first,
    ``labelloop.registry.history.rollback_stack``).
    """
    keep_last = max(1, int(keep_last))
    targets: list[str] = []
    for name in reversed(stack):
        if name not in targets:
            targets.append(name)
    keep = set(names[-keep_last:]) | set(targets[: max(2, keep_last + 1)])
    if current:
        keep.add(current)
    return [n for n in names if n not in keep]


class Retention:
    """Deletes version directories and sweeps what killed processes left.

    Args:
        layout: the registry's paths.
        history: where each deletion is recorded.
    """

    def __init__(self, layout: Layout, history: History) -> None:
        self.layout = layout
        self.history = history

    def delete(self, project_id: int, names: list[str]) -> None:
        """Rename each version to a ``.deleted-*`` directory, remove it and append
        ``{"version", "event": "deleted", "reason": "retention"}`` to the history (hold the lock).

        Raises:
            OSError: a rename or the history append failed (the versions before it are gone).
        """
        vdir = self.layout.versions_dir(project_id)
        for name in names:
            trash = vdir / f"{TRASH_PREFIX}{name}-{uuid.uuid4().hex}"
            os.rename(vdir / name, trash)
            shutil.rmtree(trash, ignore_errors=True)
            self.history.append(project_id, name, "retention", event="deleted")

    def sweep(self, project_id: int) -> None:
        """Remove the temp and trash directories in ``versions/`` (hold the lock: publishes hold
        it too, so one seen now belongs to a dead process)."""
        vdir = self.layout.versions_dir(project_id)
        for leftover in vdir.iterdir() if vdir.is_dir() else ():
            if leftover.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(leftover, ignore_errors=True)
