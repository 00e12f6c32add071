"""Writing a new version directory: every file fsync'd under a temporary name, then one rename into
place, so a crash at any point leaves no half version (only a ``.tmp-*`` directory that the next
retention sweeps)."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from labelloop.errors import RegistryError
from labelloop.files import fsync_dir
from labelloop.registry.layout import ANNOTATIONS, MANIFEST, TEMP_PREFIX, VERSION_RE, WEIGHTS, Layout
from labelloop.registry.versions import ModelVersion, VersionReader


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


class Publisher:
    """Writes versions ``v<N+1>`` into ``<project>/versions``.

    Args:
        layout: the registry's paths.
        versions: reads the version back once it is in place.
    """

    def __init__(self, layout: Layout, versions: VersionReader) -> None:
        self.layout = layout
        self.versions = versions

    def write(
        self,
        project_id: int,
        weights: Path,
        manifest: dict[str, Any],
        promoted: bool,
        annotations: dict[str, str],
        parent: str | None,
    ) -> ModelVersion:
        """Copy ``weights`` to ``weights.pt``, write ``annotations.json`` (compact JSON) and
        ``manifest.json`` (``manifest`` with ``version``, ``project_id``, ``parent``,
        ``created_at`` (UTC) and ``status``: "promoted" or "rejected" added; indented, sorted
        keys) in a temporary directory, fsync them and it, and rename it to the next free
        ``v<N>`` (another publisher taking N first moves this one to N+1). Hold the lock.

        Raises:
            RegistryError: ``weights`` does not exist.
            OSError: a write, sync or rename failed; the temporary directory is removed.
        """
        weights = Path(weights)
        if not weights.is_file():
            raise RegistryError(f"weights not found: {weights}")
        vdir = self.layout.versions_dir(project_id)
        vdir.mkdir(parents=True, exist_ok=True)
        tmp = vdir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            shutil.copyfile(weights, tmp / WEIGHTS)
            with open(tmp / WEIGHTS, "rb") as fh:
                os.fsync(fh.fileno())
            _write_synced(tmp / ANNOTATIONS, json.dumps(annotations, separators=(",", ":")))
            name = self._rename_into_place(project_id, tmp, manifest, promoted, parent)
            fsync_dir(vdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.versions.get(project_id, name)

    def _rename_into_place(
        self, project_id: int, tmp: Path, manifest: dict[str, Any], promoted: bool, parent: str | None
    ) -> str:
        """Write the manifest naming the next free version and rename ``tmp`` to it; returns the name."""
        vdir = tmp.parent
        while True:
            existing = [int(m.group(1)) for p in vdir.iterdir() if (m := VERSION_RE.match(p.name))]
            name = f"v{max(existing, default=0) + 1}"
            body = {
                **manifest,
                "version": name,
                "project_id": int(project_id),
                "parent": parent,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "status": "promoted" if promoted else "rejected",
            }
            # On disk before the directory is renamed into place.
            _write_synced(tmp / MANIFEST, json.dumps(body, indent=2, sort_keys=True))
            fsync_dir(tmp)
            try:
                # rename() onto an existing non-empty directory fails: another publisher won.
                os.rename(tmp, vdir / name)
                return name
            except OSError:
                if not (vdir / name).exists():
                    raise
