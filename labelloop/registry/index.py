"""The versions index (``<project>/index.json``): one small summary per version, what listings read
instead of every manifest.

``{"versions": [IndexEntry, ...]}``, oldest first. It is rebuilt from the manifests when it is
missing, unreadable or does not list exactly the version directories, so it can never hide or
invent a version. Every write holds the project's lock and goes through ``write_atomic``.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict, cast

from labelloop.files import write_atomic
from labelloop.registry.layout import Layout, version_number
from labelloop.registry.versions import ModelVersion, VersionReader


class IndexEntry(TypedDict):
    """A version's summary, copied from its manifest when it was published.

    ``status``: as published, "promoted" or "rejected" (the served status is
    ``Registry.statuses``); ``metrics``: Ultralytics' validation metrics (``map50_95``...);
    ``dataset_size``: images per split; ``promotion``: the gate's decision
    (``labelloop.manifest.Promotion`` as JSON); ``annotations``: how many it was trained on.
    Every field but ``version`` is None when the manifest lacked it.
    """

    version: str
    status: str | None
    parent: str | None
    created_at: str | None
    metrics: dict[str, float] | None
    dataset_size: dict[str, int] | None
    promotion: dict[str, Any] | None
    annotations: int


def summary(version: ModelVersion, annotations: int | None = None) -> IndexEntry:
    """The index entry of a version (``annotations``: the count, else that of its annotation map)."""
    m = version.manifest
    return {
        "version": version.name,
        "status": m.get("status"),
        "parent": m.get("parent"),
        "created_at": m.get("created_at"),
        "metrics": m.get("metrics"),
        "dataset_size": m.get("dataset_size"),
        "promotion": m.get("promotion"),
        "annotations": len(version.annotations()) if annotations is None else annotations,
    }


class VersionIndex:
    """Reads and maintains a project's ``index.json``.

    Args:
        layout: the registry's paths (and lock).
        versions: reads the manifests a rebuild summarizes.
    """

    def __init__(self, layout: Layout, versions: VersionReader) -> None:
        self.layout = layout
        self.versions = versions

    def summaries(self, project_id: int) -> list[IndexEntry]:
        """Every version's entry, oldest first, from ``index.json``: one small file read. Rebuilt
        from the manifests (and written back, under the lock) when it is missing, unreadable or
        does not list exactly the version directories."""
        names, entries = self.layout.version_names(project_id), self._read(project_id)
        if set(entries) != set(names):
            with self.layout.lock(project_id):  # a publish or prune in flight finishes first
                names, entries = self.layout.version_names(project_id), self._read(project_id)
                if set(entries) != set(names):
                    entries = {e["version"]: e for e in self.rebuild(project_id, names)}
        return [entries[n] for n in names]

    def _entries(self, project_id: int) -> list[IndexEntry] | None:
        """The entries as stored; None when the file is missing or not an index."""
        try:
            stored = json.loads(self.layout.index_file(project_id).read_text())["versions"]
            # Checked as far as the readers rely on: objects with a text ``version``.
            entries = cast(
                "list[IndexEntry]", [e for e in stored if isinstance(e, dict) and isinstance(e["version"], str)]
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return entries if len(entries) == len(stored) else None  # a stray item: rebuilt

    def _read(self, project_id: int) -> dict[str, IndexEntry]:
        """``index.json`` by version name; empty when it is missing or unreadable."""
        return {e["version"]: e for e in self._entries(project_id) or []}

    def _write(self, project_id: int, entries: list[IndexEntry]) -> None:
        write_atomic(self.layout.index_file(project_id), json.dumps({"versions": entries}))

    def rebuild(self, project_id: int, names: list[str]) -> list[IndexEntry]:
        """Write ``index.json`` from the manifests of ``names`` (hold the lock); nothing is written
        when ``names`` is empty."""
        entries = [summary(self.versions.find(project_id, n)) for n in names]
        if names:
            self._write(project_id, entries)
        return entries

    def add(self, project_id: int, version: ModelVersion, annotations: int) -> None:
        """Add a just-published version (hold the lock); a stale index is rebuilt."""
        stored = self._entries(project_id)
        entries = None if stored is None else [e for e in stored if e["version"] != version.name]
        names = self.layout.version_names(project_id)
        if entries is None or {e["version"] for e in entries} | {version.name} != set(names):
            self.rebuild(project_id, names)
            return
        entries.append(summary(version, annotations))
        entries.sort(key=lambda e: version_number(e["version"]))
        self._write(project_id, entries)

    def drop(self, project_id: int, names: list[str], deleted: list[str]) -> None:
        """Drop ``deleted`` from an index that listed exactly ``names`` (hold the lock); any other
        index is rebuilt from the versions left."""
        entries = self._entries(project_id)
        if entries is None or {e["version"] for e in entries} != set(names):
            self.rebuild(project_id, [n for n in names if n not in deleted])
            return
        self._write(project_id, [e for e in entries if e["version"] not in deleted])
