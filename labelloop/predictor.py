"""Inference for ``/predict``: keep each project's served model loaded and swap on new versions.

Each predict worker process is told of promotions and rollbacks (Redis pub/sub) and loads the
new weights in a background thread; the old model serves until the new one is warm, then one
reference assignment swaps them. A process that missed the message notices on its next
request: every request reads the registry's ``CURRENT`` pointer (one small file). Version
directories are immutable, so a request in flight never sees half-written weights.

Predictions follow Label Studio's prediction format
(https://labelstud.io/guide/predictions): one item per task with ``result`` (regions),
``score`` and ``model_version``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from labelloop.convert import results_to_regions
from labelloop.labels import TrainSpec
from labelloop.media import CachedImage, ImageCache, MediaConfig
from labelloop.notify import CHANNEL, servers_key, warm_key
from labelloop.registry import UNTRAINED, Registry

log = structlog.get_logger(__name__)

REPORT_TTL_S = 600  # a process that stops reporting drops out of promotions' wait after this
WARM_VERSIONS = 3  # loaded versions kept per project and process (yolov8n: ~13 MB each)


DEFAULT_IMGSZ = 640  # Ultralytics' default, for a version that does not record its imgsz


@dataclass
class _Loaded:
    version: str
    model: Any
    names: dict[int, str]
    task: str | None = None  # from the version's manifest; None for a base .pt (its own task)
    from_name: str | None = None
    imgsz: int | None = None  # the version's training imgsz (manifest ``train_args``)


class Predictor:
    """Per-process cache of loaded models, one per project.

    Args:
        registry: where versions are read from.
        base_model: weights served before a project's first version, when they are a .pt
            file (classes are matched to the label config by name); a model YAML has no
            weights, so such projects get empty predictions until trained.
        config_dir: ultralytics config dir (see ``labelloop.yolo_env``).
        cache_dir: where task images are downloaded.
        media: image sources and limits (``labelloop.media``); the host and token given to
            ``predict`` replace its Label Studio URL and key.
    """

    def __init__(
        self,
        registry: Registry,
        base_model: str,
        config_dir: Path,
        cache_dir: Path,
        imgsz: int | None,
        conf: float,
        device: str = "",
        media: MediaConfig | None = None,
    ) -> None:
        self.registry = registry
        self.base_model = base_model
        self.config_dir = config_dir
        self.cache_dir = cache_dir
        self.imgsz = imgsz
        self.conf = conf
        self.device = device
        self.media = media
        self._caches: dict[tuple[str | None, str | None], ImageCache] = {}
        self._models: dict[int, _Loaded] = {}
        self._loading: dict[int, str | None] = {}
        self._warm: dict[int, dict[str, _Loaded]] = {}
        self._reported: dict[int, float] = {}
        self._redis: Any = None
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._first_load = threading.Lock()

    def _load(self, weights: str, version: str) -> _Loaded:
        from labelloop.yolo_env import prepare_ultralytics

        prepare_ultralytics(self.config_dir)
        from ultralytics.models import YOLO

        from labelloop.training import pick_device

        model = YOLO(weights)
        device = pick_device(self.device)
        model.to("cuda:0" if device == "0" else device)
        return _Loaded(version, model, dict(model.names), model.task)

    def _load_version(self, project_id: int, version: str | None) -> _Loaded | None:
        if version:
            mv = self.registry.get(project_id, version)
            loaded = self._load(str(mv.weights), version)
            record = mv.record
            loaded.task = ("task" in mv.manifest and record.task) or loaded.model.task
            loaded.from_name = record.from_name
            trained_at = record.train_args.get("imgsz")
            loaded.imgsz = int(trained_at) if isinstance(trained_at, int) and trained_at > 0 else None
            return loaded
        if self.base_model.endswith(".pt") and Path(self.base_model).exists():
            return self._load(self.base_model, "base")
        return None

    def _remember(self, project_id: int, loaded: _Loaded, report: bool = True) -> None:
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
        """Tell promoters that this process serves the project and which versions it holds."""
        if self._redis is None:
            return
        try:
            with self._redis.pipeline() as pipe:
                pipe.sadd(servers_key(project_id), self.identity)
                pipe.expire(servers_key(project_id), REPORT_TTL_S)
                for version in self._warm.get(project_id, {}):
                    pipe.sadd(warm_key(project_id, version), self.identity)
                    pipe.expire(warm_key(project_id, version), REPORT_TTL_S)
                pipe.execute()
            self._reported[project_id] = time.monotonic()
        except Exception as exc:  # reporting only speeds promotions up; serving goes on without it
            log.warning("warm_report_failed", project_id=project_id, error=str(exc)[:200])

    def _swap_in_background(self, project_id: int, version: str | None, swap: bool = True) -> None:
        """Swap to ``version``: at once when it is still warm, else after loading it in a thread;
        the old model serves meanwhile. With ``swap=False`` only warm it up."""
        cached = self._warm.get(project_id, {}).get(version or "base")
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

        def run() -> None:
            try:
                new = self._load_version(project_id, version)
                # Only swap if this is still the version to serve (a rollback may have come meanwhile).
                if new is not None:
                    self._remember(project_id, new)
                if swap and new is not None and self.registry.current_name(project_id) == version:
                    self._models[project_id] = new
                    log.info("model_swapped", project_id=project_id, version=new.version)
            except Exception as exc:  # the old model keeps serving; the next request retries
                log.warning("model_load_failed", project_id=project_id, version=version, error=str(exc)[:500])
            finally:
                with self._lock:
                    if self._loading.get(project_id) == version:
                        del self._loading[project_id]

        threading.Thread(target=run, name=f"load-{project_id}-{version}", daemon=True).start()

    def model_for(self, project_id: int) -> _Loaded | None:
        """The project's model to serve this request with.

        One small file read per call (the registry's ``CURRENT``). When it names another
        version than the loaded one, that version loads in the background and the loaded model
        keeps serving until the new one is warm; only a project with nothing loaded yet loads
        in the request. Returns None when there is nothing to serve (no version, no .pt base).
        """
        version = self.registry.current_name(project_id)
        loaded = self._models.get(project_id)
        if loaded is not None:
            if time.monotonic() - self._reported.get(project_id, 0.0) > REPORT_TTL_S / 4:
                self._report(project_id)
            if loaded.version != (version or "base"):
                self._swap_in_background(project_id, version)
            return loaded
        with self._first_load:
            loaded = self._models.get(project_id)
            while loaded is None or loaded.version != (version or "base"):
                # A first load takes a while (ultralytics import, weights); if CURRENT moved
                # meanwhile, load the newer version too rather than serve a stale one.
                loaded = self._load_version(project_id, version)
                if loaded is None:
                    return None
                self._remember(project_id, loaded)
                log.info("model_loaded", project_id=project_id, version=loaded.version)
                version = self.registry.current_name(project_id)
            self._models[project_id] = loaded
            return loaded

    def model_at(self, project_id: int, version: str) -> _Loaded | None:
        """The project's ``version`` itself, warm or loaded now (in the caller's thread), for work
        that must carry that version (pre-annotation); None when it cannot be loaded. The process
        is not reported as serving the project: promotions do not wait for it to warm up.

        Raises:
            VersionNotFoundError: no such version in the registry.
        """
        cached = self._warm.get(project_id, {}).get(version)
        if cached is not None:
            return cached
        loaded = self._load_version(project_id, version)
        if loaded is not None:
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
        if project_id in self._models:
            version = self.registry.current_name(project_id)
            if self._models[project_id].version != (version or "base"):
                self._swap_in_background(project_id, version)

    def listen(self, redis_url: str) -> None:
        """Follow version announcements (Redis pub/sub) in a daemon thread, so a promotion or a
        rollback is loaded before the next request asks for it. Losing the subscription loses
        nothing: every request still checks the registry."""
        import redis

        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=2)

        def run() -> None:
            while True:
                try:
                    pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(CHANNEL)
                    for message in pubsub.listen():
                        try:
                            data = json.loads(message["data"])
                            warm = str(data["version"]) if data.get("action") == "warm" else None
                            self.notice(int(data["project_id"]), warm=warm)
                        except (ValueError, KeyError, TypeError):
                            continue
                except redis.RedisError:
                    time.sleep(1.0)

        threading.Thread(target=run, name="version-listener", daemon=True).start()

    def _images(self, hostname: str | None, api_key: str | None) -> ImageCache:
        """The image cache for a Label Studio host and token (one per pair, kept open)."""
        key = (hostname, api_key)
        with self._lock:
            cache = self._caches.get(key)
            if cache is None:
                base = self.media or MediaConfig(label_studio_url=None, api_key=None)
                config = replace(base, label_studio_url=hostname, api_key=api_key)
                cache = self._caches[key] = ImageCache(self.cache_dir / "images", config)
            return cache

    def predict(
        self,
        project_id: int,
        spec: TrainSpec,
        tasks: list[dict[str, Any]],
        hostname: str | None,
        api_key: str | None,
        imgsz: int | None = None,
        version: str | None = None,
    ) -> list[dict[str, Any]]:
        """Predict regions for tasks with the served version (or ``version``), one result item per
        task, in order; the images go to Ultralytics as one batch (``model.predict(list, batch=n)``).

        Args:
            spec: what the label config trains (``labelloop.params.train_spec``); the regions
                are of the type the served version was trained for (detect -> rectangles,
                obb -> rotated rectangles, segment -> polygons or brush RLE, pose ->
                rectangles + keypoints, classify -> choices), for ``spec``'s control tags.
            tasks: ``[{"id": int, "data": {...}}]`` as Label Studio sends them.
            version: predict with this version (``model_at``) instead of the served one.

        Returns:
            ``[{"result": [...regions...], "score": float, "model_version": str}]``; regions in
            Label Studio's prediction format (percent coordinates, ``original_width/height``,
            ``from_name/to_name``, a per-region ``score``; see ``labelloop.convert``). A task whose
            image cannot be fetched, or a version trained for another control tag or task than
            ``spec``, gets an empty result.
        """
        loaded = self.model_for(project_id) if version is None else self.model_at(project_id, version)
        if loaded is None:
            return [{"result": [], "score": 0.0, "model_version": UNTRAINED} for _ in tasks]
        out: list[dict[str, Any]] = [{"result": [], "score": 0.0, "model_version": loaded.version} for _ in tasks]
        task = loaded.task or spec.task
        if not _serves(spec, task, loaded.from_name):
            log.warning(
                "predict_model_mismatch",
                project_id=project_id,
                version=loaded.version,
                model_task=task,
                config_task=spec.task,
                from_name=spec.from_name,
            )
            return out
        spec = spec.with_task(task)
        items = [(int(t["id"]), str((t.get("data") or {}).get(spec.value_key, ""))) for t in tasks]
        images = self._images(hostname, api_key).get_many([it for it in items if it[1]])
        ok: list[tuple[int, CachedImage]] = []
        for i, (tid, _) in enumerate(items):
            image = images.get(tid)
            if isinstance(image, CachedImage):
                ok.append((i, image))
        for tid, _url in items:
            if not isinstance(images.get(tid), CachedImage):
                log.warning("predict_image_unavailable", project_id=project_id, task_id=tid, error=str(images.get(tid)))
        if not ok:
            return out
        results = loaded.model.predict(
            [str(image.path) for _, image in ok],
            imgsz=imgsz or self.imgsz or loaded.imgsz or DEFAULT_IMGSZ,
            conf=self.conf,
            batch=len(ok),  # a list is already one batch (LoadPilAndNumpy); explicit for any source
            verbose=False,
            device=loaded.model.device,
        )
        for (index, _image), res in zip(ok, results, strict=True):
            regions, score = results_to_regions(res, spec, loaded.names)
            out[index]["result"] = regions
            out[index]["score"] = score
        return out


def _serves(spec: TrainSpec, task: str, from_name: str | None) -> bool:
    """Whether a model trained for ``task`` on control tag ``from_name`` answers for ``spec``."""
    same_task = task == spec.task or {task, spec.task} == {"detect", "obb"}
    return same_task and (from_name is None or from_name == spec.from_name)
