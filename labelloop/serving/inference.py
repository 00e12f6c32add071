"""Batch inference for ``/predict`` and pre-annotation: tasks' images through a loaded model into
Label Studio predictions (https://labelstud.io/guide/predictions: one item per task with
``result`` regions, ``score`` and ``model_version``), and image embeddings for diversity."""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from labelloop.labelstudio.media import CachedImage, ImageCache, MediaConfig
from labelloop.ls_json import Prediction, Task
from labelloop.serving.model_loader import LoadedModel
from labelloop.task_types.convert import results_to_regions
from labelloop.task_types.informativeness import DEFAULT_STRATEGY, Strategy
from labelloop.task_types.labels import TrainSpec

if TYPE_CHECKING:
    from labelloop.serving.video import VideoOptions

log = structlog.get_logger(__name__)

DEFAULT_IMGSZ = 640  # Ultralytics' default, for a version that does not record its imgsz


@dataclass
class Inference:
    """How a process predicts: thresholds, sizes and where media are cached.

    Args:
        cache_dir: images go to ``cache_dir/images``, videos to ``cache_dir/videos``.
        imgsz: ``LABELLOOP_IMGSZ``; None: the version's training imgsz, else ``DEFAULT_IMGSZ``.
        conf: ``LABELLOOP_PREDICT_CONF``, Ultralytics' ``conf`` (the boxes a score counts).
        media: image sources and limits (``labelloop.labelstudio.media``); the host and token of a
            request replace its Label Studio URL and key.
        score_strategy: how a prediction's ``score`` is computed (``labelloop.task_types.informativeness``).
        show_conf: the display threshold for every version (``LABELLOOP_SHOW_CONF``); None: each
            version's own, else ``conf``.
        video: how video tasks are tracked (``labelloop.serving.video``).
    """

    cache_dir: Path
    imgsz: int | None
    conf: float
    media: MediaConfig | None = None
    score_strategy: Strategy = DEFAULT_STRATEGY
    show_conf: float | None = None
    video: VideoOptions | None = None
    _caches: dict[tuple[str | None, str | None], ImageCache] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def images(self, hostname: str | None, api_key: str | None) -> ImageCache:
        """The image cache for a Label Studio host and token (one per pair, kept open)."""
        key = (hostname, api_key)
        with self._lock:
            cache = self._caches.get(key)
            if cache is None:
                base = self.media or MediaConfig(label_studio_url=None, api_key=None)
                config = replace(base, label_studio_url=hostname, api_key=api_key)
                cache = self._caches[key] = ImageCache(self.cache_dir / "images", config)
            return cache

    def size(self, requested: int | None, loaded: LoadedModel) -> int:
        """The imgsz of a request: ``requested``, else the process's, the version's, ``DEFAULT_IMGSZ``."""
        return requested or self.imgsz or loaded.imgsz or DEFAULT_IMGSZ

    def show_threshold(self, requested: float | None, loaded: LoadedModel) -> float:
        """The display threshold of a request: ``requested`` (the project's extra param), else the
        process's (``LABELLOOP_SHOW_CONF``), else the version's own (its manifest's
        ``show_conf.value``), else ``conf``. Regions scoring below it are left out; the task's
        ``score`` counts the same candidate boxes whatever it is, those scoring at least ``conf``:
        under ``conf`` the images are predicted at the threshold, and NMS keeps the same boxes
        above ``conf`` either way (a box is suppressed only by higher-scoring ones)."""
        return next((c for c in (requested, self.show_conf, loaded.show_conf) if c is not None), self.conf)

    def predict(
        self,
        project_id: int,
        loaded: LoadedModel,
        spec: TrainSpec,
        tasks: list[Task],
        images: ImageCache,
        imgsz: int | None,
        strategy: Strategy,
        show_conf: float | None,
        out: list[Prediction],
    ) -> None:
        """Fill ``out`` (one item per task, in order) with the regions and score of each task whose
        image can be fetched; the images go to Ultralytics as one batch. ``spec`` is that of the
        model's task (``TrainSpec.with_task``)."""
        fetched = images.for_tasks(tasks, spec.value_key)
        ok = [(i, image) for i, image in enumerate(fetched) if isinstance(image, CachedImage)]
        for t, image in zip(tasks, fetched, strict=True):
            if not isinstance(image, CachedImage):
                log.warning("predict_image_unavailable", project_id=project_id, task_id=int(t["id"]), error=str(image))
        if not ok:
            return
        show = self.show_threshold(show_conf, loaded)
        results = loaded.model.predict(
            [str(image.path) for _, image in ok],
            imgsz=self.size(imgsz, loaded),
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

    def track(
        self,
        loaded: LoadedModel,
        spec: TrainSpec,
        tasks: list[Task],
        hostname: str | None,
        api_key: str | None,
        imgsz: int | None,
        unknown: float,
        show_conf: float | None,
        full: bool,
        until: float | None = None,
    ) -> list[Prediction]:
        """``predict`` of video tasks: ``labelloop.serving.video.predict_videos`` with this
        process's media configuration, thresholds and video options; ``full`` and ``until`` as
        there. The videos of one call share one interactive tracking budget: until ``until`` or the
        video options' ``budget_s`` from now, whichever comes first."""
        from labelloop.serving.video import VideoOptions, predict_videos

        media = replace(self.media or MediaConfig(None, None), label_studio_url=hostname, api_key=api_key)
        show = self.show_threshold(show_conf, loaded)
        options = self.video or VideoOptions()
        if not full and options.budget_s is not None:
            own = time.monotonic() + options.budget_s
            until = own if until is None else min(until, own)
        return predict_videos(
            loaded.model, loaded.version, spec, loaded.names, tasks, self.cache_dir / "videos", media, options,
            min(self.conf, show), self.size(imgsz, loaded), unknown, show, full=full, until=until,
        )  # fmt: skip

    def embed(
        self, loaded: LoadedModel, tasks: list[Task], images: ImageCache, value_key: str, imgsz: int | None
    ) -> list[npt.NDArray[np.float32] | None]:
        """Image embeddings of tasks from the model's backbone, one per task in order (None where
        the image cannot be fetched): Ultralytics' public ``YOLO.embed`` (``predict(...,
        embed=[layer])``: the layer's feature map, global-average-pooled) at the backbone's last
        layer (SPPF in YOLOv8/11: the forward pass stops there); models without a ``backbone`` in
        their YAML use Ultralytics' default (the layer before the head).

        Returns:
            ``[(C,) float32 | None]``.
        """
        out: list[npt.NDArray[np.float32] | None] = [None] * len(tasks)
        fetched = images.for_tasks(tasks, value_key)
        ok = [(i, image) for i, image in enumerate(fetched) if isinstance(image, CachedImage)]
        if not ok:
            return out
        yaml = getattr(loaded.model.model, "yaml", None) or {}
        layers = {"embed": [len(yaml["backbone"]) - 1]} if isinstance(yaml.get("backbone"), list) else {}
        vectors = loaded.model.embed(
            [str(image.path) for _, image in ok],
            imgsz=self.size(imgsz, loaded),
            batch=len(ok),
            verbose=False,
            device=loaded.model.device,
            **layers,
        )
        for (index, _image), vector in zip(ok, vectors, strict=True):
            out[index] = vector.detach().float().cpu().numpy().reshape(-1).astype(np.float32)
        return out


def serves(spec: TrainSpec, task: str, from_name: str | None) -> bool:
    """Whether a model trained for ``task`` on control tag ``from_name`` answers for ``spec``
    (detect and obb answer for each other)."""
    same_task = task == spec.task or {task, spec.task} == {"detect", "obb"}
    return same_task and (from_name is None or from_name == spec.from_name)


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
