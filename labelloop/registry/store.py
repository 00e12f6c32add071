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
        classes.json            class ids per control tag (``labelloop.dataset.classes``)

This room owns the layout: everything else reaches these files through ``Registry`` and
``ProjectFiles`` (the local directory today; an object store can implement the same methods).
``Registry`` composes one small collaborator per concern, each in its own module:

- ``layout.Layout``: the paths above and the project's lock;
- ``versions.VersionReader``: reads version directories into ``ModelVersion``;
- ``publish.Publisher``: writes a new version directory (fsyncs, one rename);
- ``served.ServedPointer``: ``CURRENT`` and its compare-and-swap;
- ``history.History``: ``history.jsonl`` (the rollback stack and statuses are drawn from it);
- ``index.VersionIndex``: ``index.json``;
- ``retention``: the plan of what to keep (pure) and ``Retention``, which deletes the rest.

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
from pathlib import Path
from typing import Any, cast

from labelloop.errors import RegistryError
from labelloop.registry.history import History, HistoryEntry, rollback_stack, statuses
from labelloop.registry.index import IndexEntry, VersionIndex, summary
from labelloop.registry.layout import ANNOTATIONS, INDEX, MANIFEST, UNTRAINED, WEIGHTS, Layout
from labelloop.registry.project_files import ProjectFiles
from labelloop.registry.publish import Publisher
from labelloop.registry.retention import Retention, plan_retention
from labelloop.registry.served import ANY_CURRENT, ServedPointer
from labelloop.registry.versions import ModelVersion, VersionReader

__all__ = [
    "ANNOTATIONS",
    "ANY_CURRENT",
    "INDEX",
    "MANIFEST",
    "UNTRAINED",
    "WEIGHTS",
    "HistoryEntry",
    "IndexEntry",
    "ModelVersion",
    "ProjectFiles",
    "Registry",
    "summary",
]


class Registry:
    """Read and publish model versions under ``root``.

    Args:
        root: the models directory; created on first publish.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.layout = Layout(self.root)
        self.versions = VersionReader(self.layout)
        self.history_log = History(self.layout)
        self.served = ServedPointer(self.layout, self.versions, self.history_log)
        self.index = VersionIndex(self.layout, self.versions)
        self.publisher = Publisher(self.layout, self.versions)
        self.retention = Retention(self.layout, self.history_log)

    def project_dir(self, project_id: int) -> Path:
        """``<root>/<project_id>``."""
        return self.layout.project_dir(project_id)

    def lock(self, project_id: int) -> contextlib.AbstractContextManager[None]:
        """Hold the project's registry lock (``fcntl.flock`` on ``<project>/.lock``; re-entrant in
        a thread). Every change of ``CURRENT``, the index or the version directories holds it."""
        return self.layout.lock(project_id)

    # -- reading versions

    def get(self, project_id: int, name: str) -> ModelVersion:
        """Load one version's manifest.

        Raises:
            RegistryError: the version does not exist (``VersionNotFoundError``) or its manifest
                is unreadable.
        """
        return self.versions.get(project_id, name)

    def find(self, project_id: int, name: str) -> ModelVersion:
        """``get``, with an empty manifest when the manifest cannot be read (a crash emptied it)."""
        return self.versions.find(project_id, name)

    def list_versions(self, project_id: int) -> list[ModelVersion]:
        """All published versions of a project, oldest first (an unreadable manifest reads as empty)."""
        return self.versions.list(project_id)

    def version_names(self, project_id: int) -> list[str]:
        """Names of the published versions, oldest first (one directory listing)."""
        return self.layout.version_names(project_id)

    def projects(self) -> list[int]:
        """Project ids that have a directory in the registry."""
        return self.layout.projects()

    def summaries(self, project_id: int) -> list[IndexEntry]:
        """Every version's index entry (``summary``), oldest first, from ``index.json``: one small
        file read instead of every manifest. Rebuilt from the manifests (and written back) when
        it is missing, unreadable or does not list exactly the version directories."""
        return self.index.summaries(project_id)

    # -- the served version

    def current_name(self, project_id: int) -> str | None:
        """Name of the served version, or None when the project has none. One small file read."""
        return self.served.name(project_id)

    def served_name(self, project_id: int) -> str:
        """The version ``/setup`` reports: the current one, or ``UNTRAINED``."""
        return self.current_name(project_id) or UNTRAINED

    def current(self, project_id: int) -> ModelVersion | None:
        """The served version, or None.

        A served version whose manifest cannot be read (emptied by a crash) is still returned,
        with an empty manifest: it keeps serving, and a training then starts from the base
        model instead of failing on it.
        """
        name = self.current_name(project_id)
        return self.find(project_id, name) if name else None

    def set_current(self, project_id: int, name: str, reason: str = "promoted", expect: object = ANY_CURRENT) -> None:
        """Point ``CURRENT`` at an existing version, atomically, and append to the history.

        Args:
            expect: when given, a compare-and-swap: ``CURRENT`` moves only if it still names
                ``expect`` (None: nothing served), checked under the project's lock.

        Raises:
            VersionNotFoundError: the version does not exist.
            CurrentMovedError: ``CURRENT`` is no longer ``expect``; nothing changed.
        """
        self.served.move(project_id, name, reason, expect)

    def history(self, project_id: int, deletions: bool = False) -> list[dict[str, Any]]:
        """Every change of ``CURRENT``, oldest first: ``{"version", "reason", "at"}``; with
        ``deletions``, also each version the retention deleted, in place:
        ``{"version", "event": "deleted", "reason", "at"}``. A torn line is left out.

        The entries are ``HistoryEntry`` records, typed as plain dicts here for the readers
        (``service.page.ProjectView.history``) that still take those.
        """
        return cast("list[dict[str, Any]]", self.history_log.read(project_id, deletions))

    def status(self, project_id: int, name: str) -> str:
        """ "serving", "promoted" (served before), "rolled back" (left by a rollback) or "rejected"."""
        found = self.statuses(project_id, {name: None})
        if name in found:
            return found[name]
        return str(self.get(project_id, name).manifest.get("status", "rejected"))

    def statuses(self, project_id: int, published: dict[str, str | None]) -> dict[str, str]:
        """``status`` of many versions from one read of ``CURRENT`` and the history.

        Args:
            published: version name -> its status as published (``summary``'s ``status``); a
                version never served gets that one (None: left out of the result).
        """
        return statuses(self.current_name(project_id), self.history_log.read(project_id), published)

    def rollback_stack(self, project_id: int) -> list[str]:
        """The served versions successive rollbacks walk back through, oldest first (the last
        is the one served; a version may appear more than once; versions the retention deleted
        are left out)."""
        return rollback_stack(self.history_log.read(project_id, deletions=True))

    def rollback_target(self, project_id: int) -> str:
        """The version ``rollback`` would serve, without serving it.

        Raises:
            RegistryError: there is no earlier served version.
        """
        stack = self.rollback_stack(project_id)
        if len(stack) < 2:
            raise RegistryError(f"project {project_id}: no earlier version to roll back to")
        return stack[-2]

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

    # -- changes of the version directories

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
            parent = self.current_name(project_id)
            version = self.publisher.write(project_id, Path(weights), manifest, promote, annotations, parent)
            self.index.add(project_id, version, len(annotations))
            if promote and move_current is not False:
                self.set_current(project_id, version.name)
        return version

    def prune(self, project_id: int, keep_last: int) -> list[str]:
        """Delete the versions retention does not keep (``retention.plan_retention``: the newest
        ``keep_last``, the served one and the next rollbacks' targets); returns their names,
        oldest first. Each is renamed out of ``versions/`` first (listings never see half a
        version), removed from the index and recorded in the history
        (``history(deletions=True)``). Temp and trash directories a killed process left in
        ``versions/`` go too."""
        with self.lock(project_id):
            names = self.version_names(project_id)
            doomed = plan_retention(names, self.rollback_stack(project_id), self.current_name(project_id), keep_last)
            self.retention.delete(project_id, doomed)
            if doomed:
                self.index.drop(project_id, names, doomed)
            self.retention.sweep(project_id)
        return doomed
