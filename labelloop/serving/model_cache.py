"""The models a predict process keeps loaded: one served model per project, the last few versions
of each warm, at most ``cache_projects`` projects (least recently predicted dropped first), and
the swap to a new version loaded in a background thread while the old one serves."""

from __future__ import annotations

import threading
from collections import OrderedDict

import structlog

from labelloop.registry.store import Registry
from labelloop.serving.model_loader import BASE, LoadedModel, ModelLoader
from labelloop.serving.presence import Presence

log = structlog.get_logger(__name__)

WARM_VERSIONS = 3  # loaded versions kept per project and process (yolov8n: ~13 MB each)


class ModelCache:
    """Per-process cache of loaded models, one served per project.

    Args:
        registry: where ``CURRENT`` is read (one small file per request).
        loader: loads versions.
        presence: told which projects and versions this process holds.
        cache_projects: projects kept loaded (``LABELLOOP_PREDICT_CACHE_PROJECTS``, at least 1).
    """

    def __init__(self, registry: Registry, loader: ModelLoader, presence: Presence, cache_projects: int = 4) -> None:
        self.registry = registry
        self.loader = loader
        self.presence = presence
        self.cache_projects = max(1, cache_projects)
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()  # least recently predicted first
        self._loading: dict[int, str | None] = {}
        self._warm: dict[int, dict[str, LoadedModel]] = {}
        self._lock = threading.Lock()
        self._first_load = threading.Lock()

    def projects(self) -> list[int]:
        """The projects served from this cache, least recently predicted first."""
        return list(self._models)

    def loaded(self) -> dict[int, list[str]]:
        """The projects kept loaded, least recently predicted first, each with its loaded versions
        (oldest first; the served one among them)."""
        with self._lock:
            return {p: list(self._warm.get(p, {})) for p in self._models}

    def _remember(self, project_id: int, loaded: LoadedModel, report: bool = True) -> None:
        """Keep the last ``WARM_VERSIONS`` loaded versions of a project, so a rollback (or a
        promotion back) swaps without loading, and report them warm (see ``serve_when_warm``)
        unless ``report`` is False (a process that does not serve ``/predict``)."""
        warm = self._warm.setdefault(project_id, {})
        warm.pop(loaded.version, None)
        warm[loaded.version] = loaded
        while len(warm) > WARM_VERSIONS:
            warm.pop(next(iter(warm)))
        if report:
            self._report(project_id)

    def _report(self, project_id: int) -> None:
        self.presence.report(project_id, list(self._warm.get(project_id, {})))

    def _keep_bounded(self, project_id: int) -> None:
        """Drop the least recently predicted projects beyond ``cache_projects`` (never
        ``project_id``, the one just served): their models are freed and this process leaves
        their sets of servers and warm versions in Redis, so promotions stop waiting for it."""
        dropped: list[tuple[int, list[str]]] = []
        with self._lock:
            self._models.move_to_end(project_id)
            while len(self._models) > self.cache_projects:
                old, _ = self._models.popitem(last=False)
                dropped.append((old, list(self._warm.pop(old, {}))))
        for old, versions in dropped:
            log.info("model_dropped", project_id=old, versions=versions, cache_projects=self.cache_projects)
            self.presence.leave(old, versions)

    def _swap_in_background(self, project_id: int, version: str | None, swap: bool = True) -> None:
        """Swap to ``version``: at once when it is still warm, else after loading it in a thread;
        the old model serves meanwhile. With ``swap=False`` only warm it up."""
        cached = self._warm.get(project_id, {}).get(version or BASE)
        if cached is not None:
            if swap:
                self._models[project_id] = cached
                log.info("model_swapped", project_id=project_id, version=cached.version, warm=True)
            else:
                self._report(project_id)
            return
        with self._lock:
            if self._loading.get(project_id) == version:
                return
            self._loading[project_id] = version
        threading.Thread(
            target=self._load_and_swap, args=(project_id, version), name=f"load-{project_id}-{version}", daemon=True
        ).start()

    def _load_and_swap(self, project_id: int, version: str | None) -> None:
        """The background load of ``_swap_in_background``."""
        try:
            new = self.loader.load_version(project_id, version)
            if project_id not in self._models:
                return  # dropped from the cache while the version loaded
            if new is not None:
                self._remember(project_id, new)
            # Only swap if this is still the version to serve (a rollback may have come meanwhile).
            # A warm-up (``swap=False``) swaps too when CURRENT moved to it meanwhile: the
            # "serve" message that came while it loaded was folded into this load.
            if new is not None and self.registry.current_name(project_id) == version:
                self._models[project_id] = new
                log.info("model_swapped", project_id=project_id, version=new.version)
        except Exception as exc:  # the old model keeps serving; the next request retries
            log.warning("model_load_failed", project_id=project_id, version=version, error=str(exc)[:500])
        finally:
            with self._lock:
                if self._loading.get(project_id) == version:
                    del self._loading[project_id]

    def model_for(self, project_id: int) -> LoadedModel | None:
        """The project's model to serve this request with.

        One small file read per call (the registry's ``CURRENT``). When it names another
        version than the loaded one, that version loads in the background and the loaded model
        keeps serving until the new one is warm; only a project with nothing loaded yet loads
        in the request. Returns None when there is nothing to serve (no version, no .pt base).
        """
        version = self.registry.current_name(project_id)
        loaded = self._models.get(project_id)
        if loaded is not None:
            self._keep_bounded(project_id)
            if self.presence.due(project_id):
                self._report(project_id)
            if loaded.version != (version or BASE):
                self._swap_in_background(project_id, version)
            return loaded
        with self._first_load:
            loaded = self._models.get(project_id)
            while loaded is None or loaded.version != (version or BASE):
                # A first load takes a while (ultralytics import, weights); if CURRENT moved
                # meanwhile, load the newer version too rather than serve a stale one.
                loaded = self.loader.load_version(project_id, version)
                if loaded is None:
                    return None
                self._remember(project_id, loaded)
                log.info("model_loaded", project_id=project_id, version=loaded.version)
                version = self.registry.current_name(project_id)
            self._models[project_id] = loaded
            self._keep_bounded(project_id)
            return loaded

    def model_at(self, project_id: int, version: str) -> LoadedModel | None:
        """The project's ``version`` itself, warm or loaded now (in the caller's thread), for work
        that must carry that version (pre-annotation); None when it cannot be loaded. The process
        is not reported as serving the project: promotions do not wait for it to warm up.

        Raises:
            VersionNotFoundError: no such version in the registry.
        """
        cached = self._warm.get(project_id, {}).get(version)
        if cached is not None:
            return cached
        loaded = self.loader.load_version(project_id, version)
        if loaded is not None:
            with self._lock:  # bounded: other projects' pre-annotation models (never served here) go
                for other in [p for p in self._warm if p != project_id and p not in self._models]:
                    del self._warm[other]
            self._remember(project_id, loaded, report=False)
            log.info("model_loaded", project_id=project_id, version=loaded.version, served=False)
        return loaded

    def notice(self, project_id: int, warm: str | None = None) -> None:
        """A version change was announced: if this process serves the project, warm up the
        version named by a ``"warm"`` message, or swap to the registry's current one."""
        if warm is not None:
            if project_id in self._models:
                self._swap_in_background(project_id, warm, swap=False)
            return
        loaded = self._models.get(project_id)
        if loaded is not None:
            version = self.registry.current_name(project_id)
            if loaded.version != (version or BASE):
                self._swap_in_background(project_id, version)
