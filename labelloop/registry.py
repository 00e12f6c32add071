"""Versioned model registry on a filesystem: the source of truth for what is served.

Layout under ``models_dir``::

    <project_id>/
        CURRENT                 the served version's name, replaced atomically
        versions/
            v1/ weights.pt manifest.json      immutable once renamed into place
            v2/ ...
        params.json             the project's extra params (``labelloop.params``)
        classes.json            class ids per control tag (``labelloop.dataset``)

This module owns the layout: everything else reaches these files through ``Registry`` and
``ProjectFiles`` (the local directory today; an object store can implement the same methods).

A version directory is written under a temporary name and renamed into place, and
``CURRENT`` is written to a temporary file and ``os.replace``-d, so a crash at any point
leaves the previous version serving. Redis only caches and notifies; wiping it changes
nothing here. No torch or ultralytics: the receiver imports this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelloop.errors import RegistryError, VersionNotFoundError
from labelloop.manifest import Manifest

_VERSION_RE = re.compile(r"^v(\d+)$")
UNTRAINED = "untrained"  # the model version reported while a project has none
WEIGHTS = "weights.pt"
MANIFEST = "manifest.json"


class ProjectFiles:
    """The small per-project files kept with the versions (``params.json``, ``classes.json``).

    Args:
        models_dir: the registry root.
    """

    NAMES = frozenset({"params.json", "classes.json"})

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
        from labelloop.files import write_atomic

        write_atomic(self._path(project_id, name), text)


@dataclass(frozen=True)
class ModelVersion:
    """One immutable model version of a project."""

    project_id: int
    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def weights(self) -> Path:
        """Path of the version's Ultralytics weights file (best.pt of its training)."""
        return self.path / WEIGHTS

    @property
    def record(self) -> Manifest:
        """The manifest as a typed record (``labelloop.manifest.Manifest``)."""
        return Manifest.model_validate(self.manifest)


def _torn(path: Path) -> bool:
    """Whether a non-empty file does not end with a newline (an append cut short)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:  # empty or missing
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Registry:
    """Read and publish model versions under ``root``.

    Args:
        root: the models directory; created on first publish.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def project_dir(self, project_id: int) -> Path:
        return self.root / str(int(project_id))

    def current_name(self, project_id: int) -> str | None:
        """Name of the served version, or None when the project has none. One small file read."""
        try:
            name = (self.project_dir(project_id) / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        return name or None

    def served_name(self, project_id: int) -> str:
        """The version ``/setup`` reports: the current one, or ``UNTRAINED``."""
        return self.current_name(project_id) or UNTRAINED

    def get(self, project_id: int, name: str) -> ModelVersion:
        """Load one version's manifest.

        Raises:
            RegistryError: the version does not exist or its manifest is unreadable.
        """
        if not _VERSION_RE.match(name):
            raise VersionNotFoundError(f"not a version name: {name!r}")
        path = self.project_dir(project_id) / "versions" / name
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise VersionNotFoundError(f"project {project_id} has no version {name}") from None
        except (OSError, ValueError) as exc:
            raise RegistryError(f"project {project_id} version {name}: unreadable manifest ({exc})") from None
        return ModelVersion(int(project_id), name, path, manifest)

    def current(self, project_id: int) -> ModelVersion | None:
        """The served version, or None.

        A served version whose manifest cannot be read (emptied by a crash) is still returned,
        with an empty manifest: it keeps serving, and a training then starts from the base
        model instead of failing on it.
        """
        name = self.current_name(project_id)
        if not name:
            return None
        return self.find(project_id, name)

    def list_versions(self, project_id: int) -> list[ModelVersion]:
        """All published versions of a project, oldest first (an unreadable manifest reads as empty)."""
        vdir = self.project_dir(project_id) / "versions"
        if not vdir.is_dir():
            return []
        names = sorted(
            (p.name for p in vdir.iterdir() if _VERSION_RE.match(p.name)),
            key=lambda n: int(n[1:]),
        )
        return [self.find(project_id, n) for n in names]

    def find(self, project_id: int, name: str) -> ModelVersion:
        """``get``, with an empty manifest when the manifest cannot be read (a crash emptied it)."""
        try:
            return self.get(project_id, name)
        except VersionNotFoundError:
            raise
        except RegistryError:
            return ModelVersion(int(project_id), name, self.project_dir(project_id) / "versions" / name, {})

    def projects(self) -> list[int]:
        """Project ids that have a directory in the registry."""
        if not self.root.is_dir():
            return []
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit())

    def publish(
        self,
        project_id: int,
        weights: Path,
        manifest: dict[str, Any],
        promote: bool = True,
        move_current: bool | None = None,
    ) -> ModelVersion:
        """Publish ``weights`` as the project's next version ``v<N+1>``.

        The weights file is copied into a temporary directory next to the versions, the
        manifest written with ``version``, ``parent``, ``created_at`` and ``status``
        ("promoted", or "rejected" by the promotion gate) added, and the directory renamed into
        place; then, if ``promote`` (and ``move_current``, which defaults to ``promote``),
        ``CURRENT`` points at it. A rejected version is kept. ``move_current=False`` leaves
        serving it to the caller (``labelloop.notify.serve_when_warm``).

        Raises:
            RegistryError: ``weights`` does not exist.
        """
        weights = Path(weights)
        if not weights.is_file():
            raise RegistryError(f"weights not found: {weights}")
        vdir = self.project_dir(project_id) / "versions"
        vdir.mkdir(parents=True, exist_ok=True)
        tmp = vdir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            shutil.copyfile(weights, tmp / WEIGHTS)
            with open(tmp / WEIGHTS, "rb") as fh:
                os.fsync(fh.fileno())
            parent = self.current_name(project_id)
            while True:
                existing = [int(m.group(1)) for p in vdir.iterdir() if (m := _VERSION_RE.match(p.name))]
                name = f"v{max(existing, default=0) + 1}"
                body = {
                    **manifest,
                    "version": name,
                    "project_id": int(project_id),
                    "parent": parent,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "status": "promoted" if promote else "rejected",
                }
                with open(tmp / MANIFEST, "w") as fh:
                    fh.write(json.dumps(body, indent=2, sort_keys=True))
                    fh.flush()
                    os.fsync(fh.fileno())  # on disk before the directory is renamed into place
                _fsync_dir(tmp)
                try:
                    # rename() onto an existing non-empty directory fails: another publisher won.
                    os.rename(tmp, vdir / name)
                    break
                except OSError:
                    if not (vdir / name).exists():
                        raise
            _fsync_dir(vdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if promote and move_current is not False:
            self.set_current(project_id, name)
        return self.get(project_id, name)

    def status(self, project_id: int, name: str) -> str:
        """ "serving", "promoted" (served before), "rolled back" (left by a rollback) or "rejected"."""
        if name == self.current_name(project_id):
            return "serving"
        history = self.history(project_id)
        for before, after in zip(history, history[1:], strict=False):
            if before["version"] == name and after.get("reason") == "rollback":
                return "rolled back"
        if any(h["version"] == name for h in history):
            return "promoted"
        return str(self.get(project_id, name).manifest.get("status", "rejected"))

    def history(self, project_id: int) -> list[dict[str, Any]]:
        """Every change of ``CURRENT``, oldest first: ``{"version", "reason", "at"}``.

        A line that does not parse (the torn tail of an append a crash cut short) is left out:
        the history degrades by that entry instead of failing every reader.
        """
        path = self.project_dir(project_id) / "history.jsonl"
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("version"), str):
                entries.append(entry)
        return entries

    def rollback(self, project_id: int) -> str:
        """Serve the version that was served before the current one; returns its name.

        Successive rollbacks walk further back (v3 -> v2 -> v1); a promotion starts a new
        step on top.

        Raises:
            RegistryError: there is no earlier served version.
        """
        target = self.rollback_target(project_id)
        self.set_current(project_id, target, reason="rollback")
        return target

    def rollback_target(self, project_id: int) -> str:
        """The version ``rollback`` would serve, without serving it.

        Raises:
            RegistryError: there is no earlier served version.
        """
        stack: list[str] = []
        for entry in self.history(project_id):
            if entry.get("reason") == "rollback":
                while stack and stack[-1] != entry["version"]:
                    stack.pop()
            else:
                stack.append(entry["version"])
        if len(stack) < 2:
            raise RegistryError(f"project {project_id}: no earlier version to roll back to")
        return stack[-2]

    def set_current(self, project_id: int, name: str, reason: str = "promoted") -> None:
        """Point ``CURRENT`` at an existing version, atomically, and append to the history.

        Raises:
            RegistryError: the version does not exist.
        """
        self.find(project_id, name)  # exists (its weights serve even if its manifest was emptied)
        pdir = self.project_dir(project_id)
        fd, tmp = tempfile.mkstemp(dir=pdir, prefix=".CURRENT-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(name + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, pdir / "CURRENT")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(pdir)
        entry = {"version": name, "reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(pdir / "history.jsonl", "a") as fh:
            # A torn tail from an earlier crash must not swallow this entry.
            fh.write("\n" + json.dumps(entry) + "\n" if _torn(pdir / "history.jsonl") else json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
