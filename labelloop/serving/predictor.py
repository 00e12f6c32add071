"""Inference for ``/predict``: keep each project's served model loaded and swap on new versions.

Each predict worker process is told of promotions and rollbacks (Redis pub/sub) and loads the
new weights in a background thread; the old model serves until the new one is warm, then one
reference assignment swaps them. A process that missed the message notices on its next
request: every request reads the registry's ``CURRENT`` pointer (one small file). Version
directories are immutable, so a request in flight never sees half-written weights.

Staying up: the listener pings its subscription and, when a ping goes unanswered or the
connection drops (Redis restarted, ``CLIENT KILL``, a silent network drop), reconnects,
re-subscribes and re-checks ``CURRENT`` of every loaded project (swaps may have been missed
meanwhile). It also renews the process's heartbeat key (``keys.predict_alive``) every second,
so a promotion stops waiting for a process that died within ``HEARTBEAT_TTL_S``. At most
``cache_projects`` projects stay loaded per process (least recently predicted dropped first).

Predictions follow Label Studio's prediction format
(https://labelstud.io/guide/predictions): one item per task with ``result`` (regions),
``score`` and ``model_version``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from labelloop.labelstudio.media import CachedImage, ImageCache, MediaConfig
from labelloop.registry.notify import CHANNEL, alive_key, servers_key, warm_key
from labelloop.registry.store import UNTRAINED, Registry
from labelloop.task_types.convert import results_to_regions
from labelloop.task_types.informativeness import DEFAULT_STRATEGY, NO_DETECTION, Strategy, prediction_score
from labelloop.task_types.labels import TrainSpec

if TYPE_CHECKING:
    from labelloop.serving.video import VideoOptions

log = structlog.get_logger(__name__)

REPORT_TTL_S = 600  # the sets of servers and warm versions expire this long after a process's last report
WARM_VERSIONS = 3  # loaded versions kept per project and process (yolov8n: ~13 MB each)
HEARTBEAT_S = 1.0  # how often a predict process renews its heartbeat key
HEARTBEAT_TTL_S = 3  # seconds after its last beat that a process stops counting as alive
LISTENER_PING_S = 2.0  # the version listener pings its subscription this often ...
LISTENER_DEAD_S = 3 * LISTENER_PING_S  # ... and reconnects when nothing answered for this long
LISTENER_PING = "labelloop-listener"
LISTENER_NAME = "labelloop-version-listener"  # its connection's name in Redis' CLIENT LIST


DEFAULT_IMGSZ = 640  # Ultralytics' default, for a version that does not record its imgsz


@dataclass
class _Loaded:
    version: str
    model: Any
    names: dict[int, str]
    task: str | None = None  # from the version's manifest; None for a base .pt (its own task)
    from_name: str | None = None
    imgsz: int | None = None  # the version's training imgsz (manifest ``train_args``)
    show_conf: float | None = None  # the version's display threshold (manifest ``show_conf.value``)


class Predictor:
    """Per-process cache of loaded models, one per project.

    Args:
        registry: where versions are read from.
        base_model: weights served before a project's first version, when they are a .pt
            file (classes are matched to the label config by name); a model YAML has no
            weights, so such projects get empty predictions until trained.
        config_dir: ultralytics config dir (see ``labelloop.yolo_env``).
        cache_dir: where task images are downloaded.
        media: image sources and limits (``labelloop.labelstudio.media``); the host and token given to
            ``predict`` replace its Label Studio URL and key.
        cache_projects: projects kept loaded (``LABELLOOP_PREDICT_CACHE_PROJECTS``); the least
            recently predicted one is dropped (its models freed, the process leaves its set of
            servers) when another one is loaded.
        score_strategy: how a prediction's ``score`` is computed (``labelloop.task_types.informativeness``).
        show_conf: the display threshold for every version (``LABELLOOP_SHOW_CONF``); None: each
            version's own (its manifest's ``show_conf``), else ``conf``.
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
        cache_projects: int = 4,
        score_strategy: Strategy = DEFAULT_STRATEGY,
        show_conf: float | None = None,
        video: VideoOptions | None = None,
    ) -> None:
        self.registry = registry
        self.video = video  # how video tasks are tracked (labelloop.serving.video)
        self.show_conf = show_conf
        self.score_strategy: Strategy = score_strategy
        self.base_model = base_model
        self.config_dir = config_dir
        self.cache_dir = cache_dir
        self.imgsz = imgsz
        self.conf = conf
        self.device = device
        self.media = media
        self._caches: dict[tuple[str | None, str | None], ImageCache] = {}
        self.cache_projects = max(1, cache_projects)
        self._models: OrderedDict[int, _Loaded] = OrderedDict()  # least recently predicted first
        self._loading: dict[int, str | None] = {}
        self._warm: dict[int, dict[str, _Loaded]] = {}
        self._reported: dict[int, float] = {}
        self._redis: Any = None
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._first_load = threading.Lock()
        self._closed = threading.Event()
        # Orders the heartbeat's re-adding against a dropped project's removal from its servers.
        self._membership = threading.Lock()

    def _load(self, weights: str, version: str) -> _Loaded:
        from labelloop.yolo_env import prepare_ultralytics

        prepare_ultralytics(self.config_dir)
        from ultralytics.models import YOLO

        from labelloop.training.child import pick_device

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
            loaded.show_conf = record.show_conf.value if record.show_conf is not None else None
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
                pipe.set(alive_key(self.identity), "1", ex=HEARTBEAT_TTL_S)
                pipe.sadd(servers_key(project_id), self.identity)
                pipe.expire(servers_key(project_id), REPORT_TTL_S)
                for version in self._warm.get(project_id, {}):
                    pipe.sadd(warm_key(project_id, version), self.identity)
                    pipe.expire(warm_key(project_id, version), REPORT_TTL_S)
                pipe.execute()
            self._reported[project_id] = time.monotonic()
        except Exception as exc:  # reporting only speeds promotions up; serving goes on without it
            log.warning("warm_report_failed", project_id=project_id, error=str(exc)[:200])

    def _beat(self) -> None:
        """Renew this process's heartbeat key (``serve_when_warm`` waits only for live processes)
        and its place in the sets of servers of the projects it keeps loaded (a promotion drops a
        process whose beat was late from them; it comes back here)."""
        if self._redis is None:
            return
        try:
            with self._membership, self._redis.pipeline(transaction=False) as pipe:
                pipe.set(alive_key(self.identity), "1", ex=HEARTBEAT_TTL_S)
                for project_id in list(self._models):
                    pipe.sadd(servers_key(project_id), self.identity)
                    pipe.expire(servers_key(project_id), REPORT_TTL_S)
                pipe.execute()
        except Exception as exc:  # the listener loop beats again in a second
            log.debug("heartbeat_failed", error=str(exc)[:200])

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
                self._reported.pop(old, None)
        for old, versions in dropped:
            log.info("model_dropped", project_id=old, versions=versions, cache_projects=self.cache_projects)
            if self._redis is None:
                continue
            try:
                with self._membership, self._redis.pipeline() as pipe:
                    pipe.srem(servers_key(old), self.identity)
                    for version in versions:
                        pipe.srem(warm_key(old, version), self.identity)
                    pipe.execute()
            except Exception as exc:  # its heartbeat still marks this process alive: promotions wait 5 s at most
                log.warning("server_leave_failed", project_id=old, error=str(exc)[:200])

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
                if project_id not in self._models:
                    return  # dropped from the cache while the version loaded
                # Only swap if this is still the version to serve (a rollback may have come meanwhile).
                if new is not None:
                    self._remember(project_id, new)
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
            self._keep_bounded(project_id)
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
            self._keep_bounded(project_id)
            return loaded

    def loaded(self) -> dict[int, list[str]]:
        """The projects this process keeps loaded, least recently predicted first, each with its
        loaded versions (oldest first; the served one among them)."""
        with self._lock:
            return {p: list(self._warm.get(p, {})) for p in self._models}

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
            if loaded.version != (version or "base"):
                self._swap_in_background(project_id, version)

    def listen(self, redis_url: str) -> None:
        """Follow version announcements (Redis pub/sub) in a daemon thread, so a promotion or a
        rollback is loaded before the next request asks for it, and beat the heartbeat.

        The subscription is pinged every ``LISTENER_PING_S`` (and redis-py's
        ``health_check_interval``); with no answer for ``LISTENER_DEAD_S``, or on any connection
        error, it is closed, opened again (every second while Redis is down), re-subscribed, and
        every loaded project's ``CURRENT`` is checked again. Losing the subscription loses
        nothing: every request still checks the registry.
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=2)

        def run() -> None:
            subscribed_before = lost = False
            while not self._closed.is_set():
                try:
                    # No retries inside redis-py: a reconnection must come back here, to re-check.
                    client = redis.Redis.from_url(
                        redis_url,
                        socket_connect_timeout=1,
                        socket_timeout=LISTENER_DEAD_S,
                        health_check_interval=int(LISTENER_PING_S),
                        retry=Retry(NoBackoff(), 0),
                        client_name=LISTENER_NAME,
                    )
                    with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                        pubsub.subscribe(CHANNEL)
                        if subscribed_before:
                            log.info("version_listener_resubscribed")
                        subscribed_before, lost = True, False
                        self._recheck()
                        self._follow(pubsub)
                except (redis.RedisError, OSError) as exc:
                    if not lost:  # once per outage, not every second of it
                        log.warning("version_listener_lost", error=str(exc)[:200])
                    lost = True
                    self._closed.wait(1.0)

        threading.Thread(target=run, name="version-listener", daemon=True).start()

    def close(self) -> None:
        """Stop the listener thread (within a second) and its heartbeat."""
        self._closed.set()

    def _recheck(self) -> None:
        """Swap every loaded project whose ``CURRENT`` moved while no announcement could arrive."""
        for project_id in list(self._models):
            try:
                self.notice(project_id)
            except Exception as exc:  # one project's registry trouble must not stop the listener
                log.warning("version_recheck_failed", project_id=project_id, error=str(exc)[:200])

    def _follow(self, pubsub: Any) -> None:
        """Handle messages until the subscription stops answering pings (raises ConnectionError)."""
        import redis

        last_answer = last_ping = last_beat = time.monotonic()
        while not self._closed.is_set():
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_S:
                self._beat()
                last_beat = now
            if now - last_ping >= LISTENER_PING_S:
                pubsub.ping(LISTENER_PING)
                last_ping = now
            if now - last_answer > LISTENER_DEAD_S:
                raise redis.ConnectionError(f"subscription silent for {now - last_answer:.1f} s")
            message = pubsub.get_message(timeout=HEARTBEAT_S)
            if message is None:
                continue
            last_answer = time.monotonic()
            if message.get("type") != "message":
                continue  # our ping's pong
            try:
                data = json.loads(message["data"])
                warm = str(data["version"]) if data.get("action") == "warm" else None
                self.notice(int(data["project_id"]), warm=warm)
            except (ValueError, KeyError, TypeError):
                continue

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
        score_strategy: Strategy | None = None,
        version: str | None = None,
        show_conf: float | None = None,
        full_video: bool = False,
    ) -> list[dict[str, Any]]:
        """Predict regions for tasks with the served version (or ``version``), one result item per
        task, in order; the images go to Ultralytics as one batch (``model.predict(list, batch=n)``).

        Args:
            spec: what the label config trains (``labelloop.registry.params.train_spec``); the regions
                are of the type the served version was trained for (detect -> rectangles,
                obb -> rotated rectangles, segment -> polygons or brush RLE, pose ->
                rectangles + keypoints, classify -> choices), for ``spec``'s control tags.
            tasks: ``[{"id": int, "data": {...}}]`` as Label Studio sends them.
            score_strategy: the informativeness strategy of ``score`` (default: the predictor's).
            version: predict with this version (``model_at``) instead of the served one.
            show_conf: the display threshold (the extra param ``show_conf``; see ``_show_conf``).
            full_video: video tasks are tracked whole (the pre-annotation queue), not within the
                interactive budget (``labelloop.serving.video``).

        Returns:
            ``[{"result": [...regions...], "score": float, "model_version": str}]``; regions in
            Label Studio's prediction format (percent coordinates, ``original_width/height``,
            ``from_name/to_name``, a per-region ``score``; see ``labelloop.task_types.convert``). The task's
            ``score`` is ``1 - informativeness`` in [0, 1] (``labelloop.task_types.informativeness``): the
            lowest is the task to label first. A task whose image cannot be fetched, or a version
            trained for another control tag or task than ``spec``, gets an empty result and
            score 0.0 (nothing known about it: uncertain).
        """
        strategy = score_strategy or self.score_strategy
        unknown = prediction_score(NO_DETECTION)
        loaded = self.model_for(project_id) if version is None else self.model_at(project_id, version)
        if loaded is None:
            return [{"result": [], "score": unknown, "model_version": UNTRAINED} for _ in tasks]
        out: list[dict[str, Any]] = [{"result": [], "score": unknown, "model_version": loaded.version} for _ in tasks]
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
        if spec.region_type == "videorectangle":  # one VideoRectangle per track: labelloop.serving.video
            return self._tracks(loaded, spec, tasks, hostname, api_key, imgsz, unknown, show_conf, full_video)
        images = self._images(hostname, api_key).for_tasks(tasks, spec.value_key)
        ok = [(i, image) for i, image in enumerate(images) if isinstance(image, CachedImage)]
        for t, image in zip(tasks, images, strict=True):
            if not isinstance(image, CachedImage):
                log.warning("predict_image_unavailable", project_id=project_id, task_id=int(t["id"]), error=str(image))
        if not ok:
            return out
        show = self._show_conf(show_conf, loaded)
        results = loaded.model.predict(
            [str(image.path) for _, image in ok],
            imgsz=imgsz or self.imgsz or loaded.imgsz or DEFAULT_IMGSZ,
            conf=min(self.conf, show),
            batch=len(ok),  # a list is already one batch (LoadPilAndNumpy); explicit for any source
            verbose=False,
            device=loaded.model.device,
            **({"predictor": class_scores_predictor()} if loaded.model.task == "detect" else {}),
        )
        for (index, _image), res in zip(ok, results, strict=True):
            regions, score = results_to_regions(res, spec, loaded.names, strategy, show_conf=show, score_conf=self.conf)
            out[index]["result"] = regions
            out[index]["score"] = score
        return out

    def _tracks(
        self,
        loaded: _Loaded,
        spec: TrainSpec,
        tasks: list[dict[str, Any]],
        hostname: str | None,
        api_key: str | None,
        imgsz: int | None,
        unknown: float,
        show_conf: float | None,
        full: bool,
    ) -> list[dict[str, Any]]:
        """``predict`` of video tasks: ``labelloop.serving.video.predict_videos`` with this
        predictor's media configuration, thresholds and video options."""
        from labelloop.serving.video import VideoOptions, predict_videos

        media = replace(self.media or MediaConfig(None, None), label_studio_url=hostname, api_key=api_key)
        size = imgsz or self.imgsz or loaded.imgsz or DEFAULT_IMGSZ
        show = self._show_conf(show_conf, loaded)
        options = self.video or VideoOptions()
        return predict_videos(
            loaded.model, loaded.version, spec, loaded.names, tasks, self.cache_dir / "videos", media, options,
            min(self.conf, show), size, unknown, show, full=full,
        )  # fmt: skip

    def _show_conf(self, requested: float | None, loaded: _Loaded) -> float:
        """The display threshold of a request: ``requested`` (the project's extra param), else the
        predictor's (``LABELLOOP_SHOW_CONF``), else the version's own (its manifest's
        ``show_conf.value``), else ``conf``. Regions scoring below it are left out; the task's
        ``score`` counts the same candidate boxes whatever it is, those scoring at least ``conf``:
        under ``conf`` the images are predicted at the threshold, and NMS keeps the same boxes
        above ``conf`` either way (a box is suppressed only by higher-scoring ones)."""
        return next((c for c in (requested, self.show_conf, loaded.show_conf) if c is not None), self.conf)

    def embed(
        self,
        project_id: int,
        spec: TrainSpec,
        tasks: list[dict[str, Any]],
        hostname: str | None,
        api_key: str | None,
        version: str,
        imgsz: int | None = None,
    ) -> list[npt.NDArray[np.float32] | None]:
        """Image embeddings of tasks from ``version``'s backbone, one per task in order (None
        where the image cannot be fetched), for ``labelloop.serving.diversity``.

        Ultralytics' public ``YOLO.embed`` (``predict(..., embed=[layer])``: the layer's feature
        map, global-average-pooled) at the backbone's last layer (SPPF in YOLOv8/11: the forward
        pass stops there, the neck and head are skipped); models without a ``backbone`` in their
        YAML use Ultralytics' default (the layer before the head). Images come from the same
        cache as ``predict``'s, so predicting and embedding a batch downloads it once.

        Returns:
            ``[(C,) float32 | None]``; all None when the version cannot be loaded.
        """
        out: list[npt.NDArray[np.float32] | None] = [None] * len(tasks)
        loaded = self.model_at(project_id, version)
        if loaded is None or spec.region_type == "videorectangle":  # a video is not an image to fetch again
            return out
        images = self._images(hostname, api_key).for_tasks(tasks, spec.value_key)
        ok = [(i, image) for i, image in enumerate(images) if isinstance(image, CachedImage)]
        if not ok:
            return out
        yaml = getattr(loaded.model.model, "yaml", None) or {}
        layers = {"embed": [len(yaml["backbone"]) - 1]} if isinstance(yaml.get("backbone"), list) else {}
        vectors = loaded.model.embed(
            [str(image.path) for _, image in ok],
            imgsz=imgsz or self.imgsz or loaded.imgsz or DEFAULT_IMGSZ,
            batch=len(ok),
            verbose=False,
            device=loaded.model.device,
            **layers,
        )
        for (index, _image), vector in zip(ok, vectors, strict=True):
            out[index] = vector.detach().float().cpu().numpy().reshape(-1).astype(np.float32)
        return out


@functools.cache
def class_scores_predictor() -> type:
    """Ultralytics' ``DetectionPredictor`` that also keeps every class's score of each kept box.

    Ultralytics' detect NMS keeps only the best class per box (``Results.boxes.conf/cls``);
    margin and entropy need them all. This subclass runs the same
    ``ultralytics.utils.nms.non_max_suppression`` with its public ``return_idxs=True``, which
    returns the kept boxes' indices into the head's raw output (B, 4 + nc, anchors; class
    scores after the sigmoid), and sets ``Results.class_scores`` to those columns, (N, nc) in
    the order of ``Results.boxes``. Passed as ``YOLO.predict(predictor=...)`` (Ultralytics'
    documented custom-predictor argument). End-to-end heads (yolo26: (B, 300, 6), no per-class
    scores) leave ``class_scores`` unset; ``labelloop.task_types.informativeness`` then uses (conf, 1 - conf).
    """
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.utils import nms, ops

    class ClassScoresPredictor(DetectionPredictor):
        def postprocess(self, preds: Any, img: Any, orig_imgs: Any, **kwargs: Any) -> Any:
            raw = preds[0] if isinstance(preds, (list, tuple)) else preds
            end2end = bool(getattr(self.model, "end2end", False)) or raw.shape[-1] == 6
            kept, idxs = nms.non_max_suppression(
                preds,
                self.args.conf,
                kwargs.pop("iou", self.args.iou),
                self.args.classes,
                self.args.agnostic_nms,
                max_det=self.args.max_det,
                end2end=end2end,
                return_idxs=True,
            )
            if not isinstance(orig_imgs, list):
                orig_imgs = ops.convert_torch2numpy_batch(orig_imgs)[..., ::-1]
            results = self.construct_results(kept, img, orig_imgs, **kwargs)  # type: ignore[no-untyped-call]
            if not end2end:
                for res, scores, idx in zip(results, raw, idxs, strict=True):
                    nc = len(res.names)
                    res.class_scores = scores[4 : 4 + nc, idx.long().view(-1)].T.float().cpu().numpy()
            return results

    return ClassScoresPredictor


def _serves(spec: TrainSpec, task: str, from_name: str | None) -> bool:
    """Whether a model trained for ``task`` on control tag ``from_name`` answers for ``spec``."""
    same_task = task == spec.task or {task, spec.task} == {"detect", "obb"}
    return same_task and (from_name is None or from_name == spec.from_name)
