"""Inference for ``/predict``: keep each project's served model loaded and swap on new versions.

Each predict worker process is told of promotions and rollbacks (Redis pub/sub) and loads the
new weights in a background thread; the old model serves until the new one is warm, then one
reference assignment swaps them. A process that missed the message notices on its next
request: every request reads the registry's ``CURRENT`` pointer (one small file). Version
directories are immutable, so a request in flight never sees half-written weights.

``Predictor`` composes the parts, one module each:

- ``model_loader.ModelLoader``: a version's weights into an Ultralytics ``YOLO`` (``LoadedModel``);
- ``model_cache.ModelCache``: the loaded models per project, warm versions, the background swap,
  at most ``cache_projects`` projects (least recently predicted dropped first);
- ``presence.Presence``: the heartbeat (``keys.predict_alive``, renewed every second, so a
  promotion stops waiting for a process that died within ``HEARTBEAT_TTL_S``) and the sets of
  servers and warm versions promotions wait on;
- ``listener.VersionListener``: the pub/sub thread (reconnects, re-subscribes, re-checks);
- ``inference.Inference``: batch predict to regions, embeddings, video tracking.

Predictions follow Label Studio's prediction format
(https://labelstud.io/guide/predictions): one item per task with ``result`` (regions),
``score`` and ``model_version``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import structlog

from labelloop.labelstudio.media import MediaConfig
from labelloop.ls_json import Prediction, Task
from labelloop.registry.store import UNTRAINED, Registry
from labelloop.serving.inference import DEFAULT_IMGSZ, Inference, class_scores_predictor, serves
from labelloop.serving.listener import LISTENER_NAME, VersionListener
from labelloop.serving.model_cache import WARM_VERSIONS, ModelCache
from labelloop.serving.model_loader import LoadedModel, ModelLoader
from labelloop.serving.presence import HEARTBEAT_TTL_S, REPORT_TTL_S, Presence
from labelloop.task_types.informativeness import DEFAULT_STRATEGY, NO_DETECTION, Strategy, prediction_score
from labelloop.task_types.labels import TrainSpec

if TYPE_CHECKING:
    from labelloop.serving.video import VideoOptions

__all__ = [
    "DEFAULT_IMGSZ",
    "HEARTBEAT_TTL_S",
    "LISTENER_NAME",
    "REPORT_TTL_S",
    "WARM_VERSIONS",
    "LoadedModel",
    "Predictor",
    "class_scores_predictor",
]

log = structlog.get_logger(__name__)


class Predictor:
    """A predict process's models and inference.

    Args:
        registry: where versions are read from.
        base_model: weights served before a project's first version, when they are a .pt
            file (classes are matched to the label config by name); a model YAML has no
            weights, so such projects get empty predictions until trained.
        config_dir: ultralytics config dir (see ``labelloop.yolo_env``).
        cache_dir: where task images are downloaded.
        imgsz: ``LABELLOOP_IMGSZ`` (None: each version's training imgsz).
        conf: ``LABELLOOP_PREDICT_CONF``.
        device: ``LABELLOOP_DEVICE``.
        media: image sources and limits (``labelloop.labelstudio.media``); the host and token given to
            ``predict`` replace its Label Studio URL and key.
        cache_projects: projects kept loaded (``LABELLOOP_PREDICT_CACHE_PROJECTS``); the least
            recently predicted one is dropped (its models freed, the process leaves its set of
            servers) when another one is loaded.
        score_strategy: how a prediction's ``score`` is computed (``labelloop.task_types.informativeness``).
        show_conf: the display threshold for every version (``LABELLOOP_SHOW_CONF``); None: each
            version's own (its manifest's ``show_conf``), else ``conf``.
        video: how video tasks are tracked (``labelloop.serving.video``).
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
        self.presence = Presence()
        self.cache = ModelCache(
            registry, ModelLoader(registry, base_model, config_dir, device), self.presence, cache_projects
        )
        self.inference = Inference(cache_dir, imgsz, conf, media, score_strategy, show_conf, video)
        self._listener: VersionListener | None = None

    @property
    def identity(self) -> str:
        """This process's name in Redis' sets of servers (``host:pid``)."""
        return self.presence.identity

    def model_for(self, project_id: int) -> LoadedModel | None:
        """The project's model to serve this request with (``ModelCache.model_for``): the loaded
        one while a newer version loads in the background; None when there is nothing to serve."""
        return self.cache.model_for(project_id)

    def model_at(self, project_id: int, version: str) -> LoadedModel | None:
        """The project's ``version`` itself, warm or loaded now (``ModelCache.model_at``).

        Raises:
            VersionNotFoundError: no such version in the registry.
        """
        return self.cache.model_at(project_id, version)

    def loaded(self) -> dict[int, list[str]]:
        """The projects this process keeps loaded, least recently predicted first, each with its
        loaded versions (oldest first; the served one among them)."""
        return self.cache.loaded()

    def notice(self, project_id: int, warm: str | None = None) -> None:
        """A version change was announced: if this process serves the project, warm up the
        version named by a ``"warm"`` message, or swap to the registry's current one."""
        self.cache.notice(project_id, warm)

    def listen(self, redis_url: str) -> None:
        """Report to promoters through ``redis_url`` and follow version announcements in a daemon
        thread (``labelloop.serving.listener``), so a promotion or a rollback is loaded before the
        next request asks for it, and the heartbeat is renewed every second."""
        self.presence.connect(redis_url)
        self._listener = VersionListener(redis_url, self.cache, self.presence)
        self._listener.start()

    def close(self) -> None:
        """Stop the listener thread (within a second) and its heartbeat."""
        if self._listener is not None:
            self._listener.close()

    def predict(
        self,
        project_id: int,
        spec: TrainSpec,
        tasks: list[Task],
        hostname: str | None,
        api_key: str | None,
        imgsz: int | None = None,
        score_strategy: Strategy | None = None,
        version: str | None = None,
        show_conf: float | None = None,
        full_video: bool = False,
        video_until: float | None = None,
    ) -> list[Prediction]:
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
            show_conf: the display threshold (the extra param ``show_conf``; see
                ``Inference.show_threshold``).
            full_video: video tasks are tracked whole (the pre-annotation queue), not within the
                interactive budget (``labelloop.serving.video``).
            video_until: ``time.monotonic()`` by which the interactive tracking of the tasks' videos
                stops (``Inference.track``: the videos share it); None: the video options' budget
                from now. Images ignore it.

        Returns:
            ``[{"result": [...regions...], "score": float, "model_version": str}]``; regions in
            Label Studio's prediction format (percent coordinates, ``original_width/height``,
            ``from_name/to_name``, a per-region ``score``; see ``labelloop.task_types.convert``). The task's
            ``score`` is ``1 - informativeness`` in [0, 1] (``labelloop.task_types.informativeness``): the
            lowest is the task to label first. A task whose image cannot be fetched, or a version
            trained for another control tag or task than ``spec``, gets an empty result and
            score 0.0 (nothing known about it: uncertain).
        """
        strategy = score_strategy or self.inference.score_strategy
        unknown = prediction_score(NO_DETECTION)
        loaded = self.model_for(project_id) if version is None else self.model_at(project_id, version)
        if loaded is None:
            return [{"result": [], "score": unknown, "model_version": UNTRAINED} for _ in tasks]
        out: list[Prediction] = [{"result": [], "score": unknown, "model_version": loaded.version} for _ in tasks]
        task = loaded.task or spec.task
        if not serves(spec, task, loaded.from_name):
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
            return self.inference.track(
                loaded, spec, tasks, hostname, api_key, imgsz, unknown, show_conf, full_video, video_until
            )
        images = self.inference.images(hostname, api_key)
        self.inference.predict(project_id, loaded, spec, tasks, images, imgsz, strategy, show_conf, out)
        return out

    def embed(
        self,
        project_id: int,
        spec: TrainSpec,
        tasks: list[Task],
        hostname: str | None,
        api_key: str | None,
        version: str,
        imgsz: int | None = None,
    ) -> list[npt.NDArray[np.float32] | None]:
        """Image embeddings of tasks from ``version``'s backbone, one per task in order (None
        where the image cannot be fetched), for ``labelloop.serving.diversity``
        (``Inference.embed``). Images come from the same cache as ``predict``'s, so predicting
        and embedding a batch downloads it once.

        Returns:
            ``[(C,) float32 | None]``; all None when the version cannot be loaded or ``spec`` is
            a video's (a video is not an image to fetch again).
        """
        loaded = self.model_at(project_id, version)
        if loaded is None or spec.region_type == "videorectangle":
            return [None] * len(tasks)
        return self.inference.embed(loaded, tasks, self.inference.images(hostname, api_key), spec.value_key, imgsz)
