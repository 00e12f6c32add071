"""Versioned model registry on a filesystem: the source of truth for what is served.

Layout under ``models_dir``::

    <project_id>/
        CURRENT                 the served version's name, replaced atomically
        history.jsonl           every change of CURRENT, and each version the retention deleted
        index.json              one small summary per version (what listings read)
        .lock                   flock'd while CURRENT, the index or the versions change
        versions/
            v1/ weights.pt manifest.json annotations.json   immutable once renamed into place
            v2/ ...
        params.json             the project's extra params (``labelloop.registry.params``)
        classes.json            class ids per control tag (``labelloop.dataset.images``)

This module owns the layout: everything else reaches these files through ``Registry`` and
``ProjectFiles`` (the local directory today; an object store can implement the same methods).

A version directory is written under a temporary name and renamed into place, and
``CURRENT`` is written to a temporary file and ``os.replace``-d, so a crash at any point
leaves the previous version serving. Redis only caches and notifies; wiping it changes
nothing here. No torch or ultralytics: the receiver imports this module.

Several processes (and hosts sharing the models directory) write here: ``set_current`` and
``publish`` take ``lock(project_id)`` (``fcntl.flock`` on ``.lock``), so ``set_current(...,
expect=v)`` is a compare-and-swap: a training promotes only if ``CURRENT`` still points where
it started. ``index.json`` is rebuilt from the manifests when it is missing, unreadable or does
not list exactly the version directories, so it can never hide or invent a version.
"""

from __future__ import annotations

import contextlib
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

from labelloop.errors import CurrentMovedError, RegistryError, VersionNotFoundError
from labelloop.files import FileLock, write_atomic
from labelloop.manifest import Manifest

_VERSION_RE = re.compile(r"^v(\d+)$")
UNTRAINED = "untrained"  # the model version reported while a project has none
WEIGHTS = "weights.pt"
MANIFEST = "manifest.json"
ANNOTATIONS = "annotations.json"
INDEX = "index.json"
ANY_CURRENT: object = object()  # set_current without a compare-and-swap


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

    def annotations(self) -> dict[str, str]:
        """Annotation id (text) -> ``updated_at`` of what the version was trained on.

        Read from ``annotations.json`` next to the manifest; a manifest written before that file
        existed embeds the map (``annotations``). Empty when neither can be read.
        """
        try:
            data = json.loads((self.path / ANNOTATIONS).read_text())
        except (OSError, ValueError):
            data = self.manifest.get("annotations")
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def summary(version: ModelVersion, annotations: int | None = None) -> dict[str, Any]:
    """The index entry of a version: ``{"version", "status", "parent", "created_at", "metrics",
    "dataset_size", "promotion", "annotations"}`` (``status`` as published: "promoted" or
    "rejected"; ``annotations``: how many it was trained on)."""
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

    def lock(self, project_id: int) -> contextlib.AbstractContextManager[None]:
        """Hold the project's registry lock (``fcntl.flock`` on ``<project>/.lock``; re-entrant in
        a thread). Every change of ``CURRENT``, the index or the version directories holds it."""
        return FileLock.of(self.project_dir(project_id) / ".lock").held()

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

    def version_names(self, project_id: int) -> list[str]:
        """Names of the published versions, oldest first (one directory listing)."""
        vdir = self.project_dir(project_id) / "versions"
        try:
            names = [p.name for p in vdir.iterdir() if _VERSION_RE.match(p.name)]
        except FileNotFoundError:
            return []
        return sorted(names, key=lambda n: int(n[1:]))

    def summaries(self, project_id: int) -> list[dict[str, Any]]:
        """Every version's index entry (``summary``), oldest first, from ``index.json``: one small
        file read instead of every manifest. Rebuilt from the manifests (and written back) when
        it is missing, unreadable or does not list exactly the version directories."""
        names, entries = self.version_names(project_id), self._read_index(project_id)
        if set(entries) != set(names):
            with self.lock(project_id):  # a publish or prune in flight finishes first
                names, entries = self.version_names(project_id), self._read_index(project_id)
                if set(entries) != set(names):
                    entries = {e["version"]: e for e in self._rebuild_index(project_id, names)}
        return [entries[n] for n in names]

    def _read_index(self, project_id: int) -> dict[str, dict[str, Any]]:
        """``index.json`` by version name; empty when it is missing or unreadable."""
        try:
            index = json.loads((self.project_dir(project_id) / INDEX).read_text())
            return {e["version"]: e for e in index["versions"] if isinstance(e, dict)}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _rebuild_index(self, project_id: int, names: list[str]) -> list[dict[str, Any]]:
        """Write ``index.json`` from the manifests of ``names`` (hold the lock)."""
        entries = [summary(self.find(project_id, n)) for n in names]
        if names:
            write_atomic(self.project_dir(project_id) / INDEX, json.dumps({"versions": entries}))
        return entries

    def _index_add(self, project_id: int, version: ModelVersion, annotations: int) -> None:
        """Add a just-published version to the index (hold the lock); a stale index is rebuilt."""
        path = self.project_dir(project_id) / INDEX
        try:
            entries = [e for e in json.loads(path.read_text())["versions"] if e["version"] != version.name]
        except (OSError, ValueError, KeyError, TypeError):
            entries = None
        names = self.version_names(project_id)
        if entries is None or {e["version"] for e in entries} | {version.name} != set(names):
            self._rebuild_index(project_id, names)
            return
        entries.append(summary(version, annotations))
        entries.sort(key=lambda e: int(e["version"][1:]))
        write_atomic(path, json.dumps({"versions": entries}))

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
        annotations: dict[str, str] | None = None,
    ) -> ModelVersion:
        """Publish ``weights`` as the project's next version ``v<N+1>``.

        The weights file is copied into a temporary directory next to the versions, the
        manifest written with ``version``, ``parent``, ``created_at`` and ``status``
        ("promoted", or "rejected" by the promotion gate) added, the annotation map
        (``annotations``, or one the manifest embeds) into ``annotations.json`` beside it, and
        the directory renamed into place and added to ``index.json``; then, if ``promote``
        (and ``move_current``, which defaults to ``promote``), ``CURRENT`` points at it. A
        rejected version is kept. ``move_current=False`` leaves serving it to the caller
        (``labelloop.registry.notify.serve_when_warm``).

        Raises:
            RegistryError: ``weights`` does not exist.
        """
        manifest = dict(manifest)
        embedded = manifest.pop("annotations", None)
        if annotations is None:
            annotations = embedded if isinstance(embedded, dict) else {}
        with self.lock(project_id):
            version = self._publish(project_id, Path(weights), manifest, promote, annotations)
            self._index_add(project_id, version, len(annotations))
            if promote and move_current is not False:
                self.set_current(project_id, version.name)
        return version

    def _publish(
        self, project_id: int, weights: Path, manifest: dict[str, Any], promote: bool, annotations: dict[str, str]
    ) -> ModelVersion:
        """Write and rename the version directory into place (hold the lock)."""
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
            with open(tmp / ANNOTATIONS, "w") as fh:
                fh.write(json.dumps(annotations, separators=(",", ":")))
                fh.flush()
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
        return self.get(project_id, name)

    def status(self, project_id: int, name: str) -> str:
        """ "serving", "promoted" (served before), "rolled back" (left by a rollback) or "rejected"."""
        statuses = self.statuses(project_id, {name: None})
        if name in statuses:
            return statuses[name]
        return str(self.get(project_id, name).manifest.get("status", "rejected"))

    def statuses(self, project_id: int, published: dict[str, str | None]) -> dict[str, str]:
        """``status`` of many versions from one read of ``CURRENT`` and the history.

        Args:
            published: version name -> its status as published (``summary``'s ``status``); a
                version never served gets that one (None: left out of the result).
        """
        current = self.current_name(project_id)
        history = self.history(project_id)
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

    def history(self, project_id: int, deletions: bool = False) -> list[dict[str, Any]]:
        """Every change of ``CURRENT``, oldest first: ``{"version", "reason", "at"}``; with
        ``deletions``, also each version the retention deleted, in place:
        ``{"version", "event": "deleted", "reason", "at"}``.

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
                if deletions or "event" not in entry:
                    entries.append(entry)
        return entries

    def _append_history(self, project_id: int, entry: dict[str, Any]) -> None:
        path = self.project_dir(project_id) / "history.jsonl"
        entry = {**entry, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(path, "a") as fh:
            # A torn tail from an earlier crash must not swallow this entry.
            fh.write("\n" + json.dumps(entry) + "\n" if _torn(path) else json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

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
        stack = self.rollback_stack(project_id)
        if len(stack) < 2:
            raise RegistryError(f"project {project_id}: no earlier version to roll back to")
        return stack[-2]

    def rollback_stack(self, project_id: int) -> list[str]:
        """The served versions successive rollbacks walk back through, oldest first (the last
        is the one served; a version may appear more than once; versions the retention deleted
        are left out)."""
        stack: list[str] = []
        history = self.history(project_id, deletions=True)
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

    def set_current(self, project_id: int, name: str, reason: str = "promoted", expect: object = ANY_CURRENT) -> None:
        """Point ``CURRENT`` at an existing version, atomically, and append to the history.

        Args:
            expect: when given, a compare-and-swap: ``CURRENT`` moves only if it still names
                ``expect`` (None: nothing served), checked under the project's lock.

        Raises:
            VersionNotFoundError: the version does not exist.
            CurrentMovedError: ``CURRENT`` is no longer ``expect``; nothing changed.
        """
        pdir = self.project_dir(project_id)
        self.find(project_id, name)  # before the lock: an unknown project gets no directory
        with self.lock(project_id):
            self.find(project_id, name)  # exists (its weights serve even if its manifest was emptied)
            if expect is not ANY_CURRENT and (now := self.current_name(project_id)) != expect:
                raise CurrentMovedError(f"project {project_id}: CURRENT is {now}, not {expect}", now)
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
            self._append_history(project_id, {"version": name, "reason": reason})

    def prune(self, project_id: int, keep_last: int) -> list[str]:
        """Delete the versions retention does not keep; returns their names, oldest first.

        Kept: the newest ``keep_last`` (at least 1, so version numbers are never reused), the
        served one and the versions the next ``keep_last`` rollbacks (at least 1) serve (the
        top of ``rollback_stack``). Each
        deletion is renamed out of ``versions/`` first (listings never see half a version),
        removed from the index and recorded in the history (``history(deletions=True)``).
        Temp and trash directories a killed process left in ``versions/`` go too.
        """
        keep_last = max(1, int(keep_last))
        deleted: list[str] = []
        with self.lock(project_id):
            names = self.version_names(project_id)
            targets: list[str] = []
            for name in reversed(self.rollback_stack(project_id)):
                if name not in targets:
                    targets.append(name)
            keep = set(names[-keep_last:]) | set(targets[: max(2, keep_last + 1)])
            if current := self.current_name(project_id):
                keep.add(current)
            vdir = self.project_dir(project_id) / "versions"
            for name in names:
                if name in keep:
                    continue
                trash = vdir / f".deleted-{name}-{uuid.uuid4().hex}"
                os.rename(vdir / name, trash)
                shutil.rmtree(trash, ignore_errors=True)
                self._append_history(project_id, {"version": name, "event": "deleted", "reason": "retention"})
                deleted.append(name)
            if deleted:
                self._rebuild_index_from(project_id, names, deleted)
            # Publishes hold the lock too: a temp or trash directory seen now belongs to a dead process.
            for leftover in vdir.iterdir() if vdir.is_dir() else ():
                if leftover.name.startswith((".tmp-", ".deleted-")):
                    shutil.rmtree(leftover, ignore_errors=True)
        return deleted

    def _rebuild_index_from(self, project_id: int, names: list[str], deleted: list[str]) -> None:
        """Drop ``deleted`` from the index (hold the lock)."""
        try:
            entries = json.loads((self.project_dir(project_id) / INDEX).read_text())["versions"]
        except (OSError, ValueError, KeyError, TypeError):
            entries = None
        left = [n for n in names if n not in deleted]
        if entries is None or {e.get("version") for e in entries} != set(names):
            self._rebuild_index(project_id, left)
            return
        kept = [e for e in entries if e.get("version") not in deleted]
        write_atomic(self.project_dir(project_id) / INDEX, json.dumps({"versions": kept}))
