"""The served version's history (``<project>/history.jsonl``): every change of ``CURRENT`` and each
version the retention deleted, one JSON object a line, appended and fsync'd.

Lines, oldest first::

    {"version": "v2", "reason": "promoted" | "rollback" | ..., "at": "2026-01-01T00:00:00Z"}
    {"version": "v1", "event": "deleted", "reason": "retention", "at": "..."}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import NotRequired, TypedDict

from labelloop.registry.layout import Layout


class HistoryEntry(TypedDict):
    """One line of ``history.jsonl``: a change of ``CURRENT`` (no ``event``), or a deletion
    (``event``: "deleted"). ``at``: UTC, ``%Y-%m-%dT%H:%M:%SZ``."""

    version: str
    reason: NotRequired[str]
    at: NotRequired[str]
    event: NotRequired[str]


def _torn(path: Path) -> bool:
    """Whether a non-empty file does not end with a newline (an append cut short)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:  # empty or missing
        return False


def rollback_stack(history: list[HistoryEntry]) -> list[str]:
    """The served versions successive rollbacks walk back through, oldest first, from
    ``history`` read with its deletions (the last is the one served; a version may appear more
    than once; versions the retention deleted are left out)."""
    stack: list[str] = []
    deleted = {e["version"] for e in history if e.get("event") == "deleted"}
    for entry in history:
        if "event" in entry:
            continue
        if entry.get("reason") == "rollback":
            while stack and stack[-1] != entry["version"]:
                stack.pop()
        else:
            stack.append(entry["version"])
    return [v for v in stack if v not in deleted]


def statuses(current: str | None, history: list[HistoryEntry], published: dict[str, str | None]) -> dict[str, str]:
    """Each version's status: "serving" (``current``), "rolled back" (served, then left by a
    rollback), "promoted" (served before) or its status as published (``published``'s value;
    None: left out of the result). ``history``: the changes of ``CURRENT`` only."""
    rolled_back = {
        before["version"]
        for before, after in zip(history, history[1:], strict=False)
        if after.get("reason") == "rollback"
    }
    served = {h["version"] for h in history}
    out: dict[str, str] = {}
    for name, status in published.items():
        if name == current:
            out[name] = "serving"
        elif name in rolled_back:
            out[name] = "rolled back"
        elif name in served:
            out[name] = "promoted"
        elif status is not None:
            out[name] = status
    return out


class History:
    """Reads and appends a project's ``history.jsonl``.

    Args:
        layout: the registry's paths.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def read(self, project_id: int, deletions: bool = False) -> list[HistoryEntry]:
        """Every change of ``CURRENT``, oldest first; with ``deletions``, also each version the
        retention deleted, in place.

        A line that does not parse (the torn tail of an append a crash cut short) is left out:
        the history degrades by that entry instead of failing every reader.
        """
        try:
            text = self.layout.history_file(project_id).read_text(errors="replace")
        except FileNotFoundError:
            return []
        entries: list[HistoryEntry] = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("version"), str):
                if deletions or "event" not in entry:
                    entries.append(entry)  # type: ignore[arg-type]  # checked: a dict with a str version
        return entries

    def append(self, project_id: int, version: str, reason: str, event: str | None = None) -> None:
        """Append one line, ``at`` now, fsync'd before returning (hold the project's lock).

        Raises:
            OSError: the file cannot be written or synced.
        """
        path = self.layout.history_file(project_id)
        entry: HistoryEntry = {"version": version}
        if event is not None:
            entry["event"] = event
        entry["reason"] = reason
        entry["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(path, "a") as fh:
            # A torn tail from an earlier crash must not swallow this entry.
            fh.write("\n" + json.dumps(entry) + "\n" if _torn(path) else json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
