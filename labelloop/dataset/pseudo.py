"""Self-training on the unlabeled pool: the served version's confident predictions on unlabeled
tasks become pseudo-labels in the train split of the next training (detect only).

Two halves, on the two sides of the training child process (``labelloop.training.child``):

- ``prepare`` runs in the train worker (no torch there): it decides whether pseudo-labels apply
  (setting on, a detect project, a served version trained for the same task and control tag
  that knows every label of the config), lists the project's unlabeled tasks in Label Studio
  (``unlabeled_pool``: no annotation, not skipped, not in the export the dataset was built
  from, never a task whose id hashes into the validation split), fetches their images through
  the guarded image cache (``labelloop.labelstudio.media``) and writes the job into the training spec
  (``spec["pseudo"]``);
- ``label_unlabeled`` runs in the child before training: the served version predicts the pool
  at ``low_conf`` (``LABELLOOP_PREDICT_CONF``), ``choose`` keeps the images that qualify, most
  confident first, up to the cap, and ``write_overlay`` writes them as an Ultralytics detect
  dataset of their own (``<run>/pseudo/images/train``, ``labels/train``, ``cls cx cy w h``) plus
  a ``data.yaml`` whose ``train`` lists the human train folder and that one and whose ``val`` is
  the human one. The project's dataset folder is never touched: the next build starts from
  human labels only, and a task annotated since is a human label there.

The rule (``qualifies``): every region the served version predicts on the image at ``low_conf``
or more is at ``conf`` or more; a region in the doubtful band ``[low_conf, conf)`` disqualifies
the image (half-found objects would be taught as background), and so does an image with no
region at all: a model that finds nothing is the uncertain case (``labelloop.task_types.informativeness``
ranks it first to label), not evidence of an empty image. At most ``ratio`` x the human train
images are added (``cap_for``). The promotion gate is unchanged: the candidate is scored on the
human validation split only.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import yaml

from labelloop.dataset.images import val_score
from labelloop.files import write_atomic

if TYPE_CHECKING:
    from labelloop.dataset.images import BuildResult
    from labelloop.registry.store import ModelVersion
    from labelloop.settings import Settings

log = structlog.get_logger(__name__)

# Unlabeled images predicted per pseudo-label slot (the cap): enough to choose the confident ones
# from, without predicting a 100,000-task pool on every training.
POOL_PER_SLOT = 4
PREDICT_BATCH = 16


@dataclass(frozen=True)
class Region:
    """A box the served version predicted: dataset class id, confidence, normalised ``cx cy w h``."""

    class_id: int
    conf: float
    box: tuple[float, float, float, float] = (0.5, 0.5, 1.0, 1.0)

    def line(self) -> str:
        """The region as an Ultralytics detect label line (https://docs.ultralytics.com/datasets/detect/)."""
        return f"{self.class_id} " + " ".join(f"{min(1.0, max(0.0, v)):.6f}" for v in self.box)


@dataclass(frozen=True)
class ImagePrediction:
    """The served version's regions on one unlabeled task's image."""

    task_id: int
    regions: tuple[Region, ...]

    @property
    def confidence(self) -> float:
        """The image's weakest region's confidence (0.0 with no region): how sure the model is of all of it."""
        return min((r.conf for r in self.regions), default=0.0)


def qualifies(image: ImagePrediction, conf: float, low_conf: float) -> bool:
    """Whether an image's predictions may stand in for a human label.

    Args:
        conf: every region must be at least this confident (``LABELLOOP_PSEUDO_CONF``).
        low_conf: regions below this are not predictions at all (``LABELLOOP_PREDICT_CONF``);
            one in ``[low_conf, conf)`` disqualifies the image.

    Returns:
        True when the image has at least one region at ``low_conf`` or more and all of those
        are at ``conf`` or more.
    """
    candidates = [r for r in image.regions if r.conf >= low_conf]
    return bool(candidates) and all(r.conf >= conf for r in candidates)


def cap_for(train_images: int, ratio: float) -> int:
    """Pseudo-labelled images allowed next to ``train_images`` human-labelled ones (``floor(ratio x n)``)."""
    return max(0, math.floor(train_images * ratio + 1e-9))


def choose(images: Iterable[ImagePrediction], conf: float, low_conf: float, cap: int) -> list[ImagePrediction]:
    """The images to train on as pseudo-labels: those that ``qualify``, most confident first
    (weakest region's confidence, then task id), at most ``cap``; each keeps only its regions
    at ``low_conf`` or more."""
    kept = [
        ImagePrediction(i.task_id, tuple(r for r in i.regions if r.conf >= low_conf))
        for i in images
        if qualifies(i, conf, low_conf)
    ]
    kept.sort(key=lambda i: (-i.confidence, i.task_id))
    return kept[: max(0, cap)]


def _count(task: Mapping[str, Any], key: str) -> int:
    try:
        return int(task.get(key) or 0)
    except (TypeError, ValueError):
        return 1  # unreadable: treat as annotated, never pseudo-label it


def unlabeled_pool(
    tasks: Iterable[Mapping[str, Any]],
    annotated: set[int],
    value_key: str,
    val_fraction: float,
    size: int,
    seed: str = "",
) -> list[tuple[int, str]]:
    """The unlabeled tasks to predict, ``[(task_id, image url)]``, at most ``size``.

    Left out: a task with an annotation or a skip (``total_annotations``,
    ``cancelled_annotations``), one in ``annotated`` (the export the dataset was built from: a
    task annotated meanwhile is a human label), one without an image under ``value_key``, and
    one whose id would put it in the validation split once annotated (``val_score(id) <
    val_fraction``, as ``labelloop.dataset.images.assign_splits``), so no image a version trained on
    ever scores it. The pool is a pseudo-random sample by a hash of ``seed`` and the task id
    (a new served version looks at other tasks of a large project).
    """
    pool: list[tuple[str, int, str]] = []
    for task in tasks:
        task_id = int(task["id"])
        if task_id in annotated or _count(task, "total_annotations") or _count(task, "cancelled_annotations"):
            continue
        url = (task.get("data") or {}).get(value_key)
        if not isinstance(url, str) or not url or val_score(task_id) < val_fraction:
            continue
        pool.append((hashlib.sha1(f"{seed}:{task_id}".encode()).hexdigest(), task_id, url))
    pool.sort()
    return [(task_id, url) for _, task_id, url in pool[: max(0, size)]]


# ---------------------------------------------------------------------------------------------
# The train worker's half


@dataclass
class Prepared:
    """What ``prepare`` decided: the child's job (None: no pseudo-labels this time) and the
    manifest record (``labelloop.manifest.PseudoLabels``'s fields) when nothing will run."""

    job: dict[str, Any] | None
    record: dict[str, Any] | None


def _skipped(reason: str, **fields: Any) -> Prepared:
    log.info("pseudo_labels_skipped", reason=reason)
    return Prepared(None, {"applied": False, "skipped": reason, **fields})


def prepare(
    settings: Settings,
    project_id: int,
    built: BuildResult,
    parent: ModelVersion | None,
    params: Mapping[str, Any],
    out_dir: Path,
) -> Prepared:
    """Decide and gather the pseudo-labelling of one training (in the train worker: no torch).

    Args:
        built: the dataset just built (its spec, class ids, train count and exported tasks).
        parent: the version served when the training started (it predicts the pool).
        params: the project's effective params (``pseudo_labels``, ``val_fraction``).
        out_dir: where the child writes the pseudo-labelled images and the run's data.yaml.

    Returns:
        ``Prepared(None, None)`` when the setting is off (nothing changes); ``Prepared(None,
        record)`` when it is on but does not apply (``record["skipped"]`` says why); else the
        child's job (``spec["pseudo"]``). A Label Studio failure while listing the tasks skips
        pseudo-labels for this training rather than failing it.
    """
    if not params.get("pseudo_labels"):
        return Prepared(None, None)
    spec = built.spec
    thresholds: dict[str, Any] = {
        "conf": settings.pseudo_conf,
        "low_conf": settings.predict_conf,
        "ratio": settings.pseudo_ratio,
    }
    if spec.task != "detect":
        return _skipped(f"not applicable to {spec.task} (detect only)", **thresholds)
    if parent is None:
        return _skipped("no served version", **thresholds)
    served = parent.record
    thresholds["version"] = parent.name
    if (served.task or "detect") != "detect" or (served.from_name or spec.from_name) != spec.from_name:
        return _skipped("the served version was trained for another task or control tag", **thresholds)
    served_names = served.class_names()
    missing = [label for label in spec.labels if label not in served_names.values()]
    if missing:
        # It would teach its ignorance of these labels as background.
        return _skipped(f"the served version does not know {', '.join(missing)}", **thresholds)
    cap = cap_for(built.report.images["train"], settings.pseudo_ratio)
    if cap < 1:
        return _skipped("cap is 0", cap=cap, **thresholds)
    dataset_ids = {label: i for i, label in built.names.items()}
    class_ids = {str(k): dataset_ids[v] for k, v in served_names.items() if v in spec.labels and v in dataset_ids}
    annotated = {int(t["id"]) for t in built.tasks}
    try:
        pool = unlabeled_pool(
            list_unlabeled(settings, project_id),
            annotated,
            spec.value_key,
            float(params["val_fraction"]),
            min(settings.pseudo_pool, POOL_PER_SLOT * cap),
            seed=parent.name,
        )
    except Exception as exc:  # LabelStudioUnavailable, LabelStudioError: train on human labels only
        return _skipped(f"listing the unlabeled tasks failed: {str(exc)[:200]}", cap=cap, **thresholds)
    if not pool:
        return _skipped("no unlabeled task to predict", cap=cap, **thresholds)
    images = fetch_images(settings, pool)
    if not images:
        return _skipped("no unlabeled image could be fetched", cap=cap, **thresholds)
    job = {
        "weights": str(parent.weights),
        "out_dir": str(Path(out_dir).absolute()),
        "class_ids": class_ids,
        "cap": cap,
        "pool": len(pool),
        "images": [[task_id, str(path)] for task_id, path in images],
        **thresholds,
    }
    log.info("pseudo_labels_prepared", version=parent.name, pool=len(pool), images=len(images), cap=cap)
    return Prepared(job, None)


def list_unlabeled(settings: Settings, project_id: int) -> list[dict[str, Any]]:
    """The project's tasks with no annotation and no skip, from Label Studio's task list
    (``GET /api/tasks/?project=`` with Data Manager filters on ``tasks:total_annotations`` and
    ``tasks:cancelled_annotations``; tasks only, no annotations or predictions).

    Raises:
        LabelStudioUnavailable, LabelStudioError: see ``labelloop.labelstudio.client.calling``.
    """
    import json

    from labelloop.labelstudio import client as labelstudio

    zero = {"operator": "equal", "type": "Number", "value": 0}
    query = {
        "filters": {
            "conjunction": "and",
            "items": [
                {"filter": "filter:tasks:total_annotations", **zero},
                {"filter": "filter:tasks:cancelled_annotations", **zero},
            ],
        }
    }
    client = labelstudio.client(settings.label_studio_url, settings.api_key)
    with labelstudio.calling(settings.label_studio_url, f"listing project {project_id}'s unlabeled tasks"):
        items: Any = client.tasks.list(
            project=project_id, fields="task_only", query=json.dumps(query), resolve_uri=False, page_size=500
        )
        return [
            item.model_dump(mode="json", exclude_unset=True) if hasattr(item, "model_dump") else dict(item)
            for item in items
        ]


def fetch_images(settings: Settings, pool: Sequence[tuple[int, str]]) -> list[tuple[int, Path]]:
    """The pool's upright images from the image cache (``labelloop.labelstudio.media.ImageCache``, the one
    dataset builds use); a task whose image cannot be fetched is left out."""
    from labelloop.labelstudio.media import CachedImage, ImageCache, MediaConfig

    with ImageCache(Path(settings.cache_dir).absolute() / "images", MediaConfig.from_settings(settings)) as cache:
        got = cache.get_many(list(pool))
    out = []
    for task_id, _ in pool:
        image = got.get(task_id)
        if isinstance(image, CachedImage):
            out.append((task_id, image.path))
    return out


# ---------------------------------------------------------------------------------------------
# The training child's half


def label_unlabeled(spec: dict[str, Any], device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Predict the pool with the served version and write the chosen pseudo-labels (in the
    training child, before training).

    Args:
        spec: the training spec; ``spec["pseudo"]`` is ``prepare``'s job.
        device: the Ultralytics device the training uses.

    Returns:
        ``(spec, record)``: the spec to train with (``data`` is the run's data.yaml with the
        pseudo-labelled folder in ``train`` when any image was chosen; ``time_s`` less the
        seconds spent here, so the training's wall-clock budget holds), and the manifest record
        (``labelloop.manifest.PseudoLabels``'s fields).
    """
    t0 = time.perf_counter()
    job = spec["pseudo"]
    predictions = predict(job, int(spec["imgsz"]), device)
    chosen = choose(predictions, float(job["conf"]), float(job["low_conf"]), int(job["cap"]))
    images = {int(task_id): Path(path) for task_id, path in job["images"]}
    data = write_overlay(Path(job["out_dir"]), Path(spec["data"]), chosen, images) if chosen else None
    seconds = time.perf_counter() - t0
    record = {
        "applied": bool(chosen),
        "skipped": None if chosen else "no unlabeled image qualified",
        "version": job.get("version"),
        "conf": job["conf"],
        "low_conf": job["low_conf"],
        "ratio": job["ratio"],
        "cap": job["cap"],
        "pool": job["pool"],
        "predicted": len(predictions),
        "qualified": sum(qualifies(p, float(job["conf"]), float(job["low_conf"])) for p in predictions),
        "images": len(chosen),
        "regions": sum(len(c.regions) for c in chosen),
        "task_ids": [c.task_id for c in chosen],
        "seconds": round(seconds, 3),
    }
    print(f"labelloop: pseudo-labels {record['images']} images, {record['regions']} regions", flush=True)
    out = {**spec, "data": str(data)} if data is not None else dict(spec)
    if float(spec.get("time_s") or 0) > 0:
        out["time_s"] = max(1.0, float(spec["time_s"]) - seconds)
    return out, record


def predict(job: Mapping[str, Any], imgsz: int, device: str) -> list[ImagePrediction]:
    """The served version's regions at ``low_conf`` or more on each pool image, in dataset class
    ids (a region of a class the label config lacks is left out, as ``/predict`` leaves it out)."""
    from ultralytics.models import YOLO

    class_ids = {int(k): int(v) for k, v in job["class_ids"].items()}
    model = YOLO(str(job["weights"]), task="detect")
    items = [(int(task_id), str(path)) for task_id, path in job["images"]]
    out: list[ImagePrediction] = []
    for start in range(0, len(items), PREDICT_BATCH):
        batch = [(t, p) for t, p in items[start : start + PREDICT_BATCH] if os.path.exists(p)]
        if not batch:
            continue
        results: Any = model.predict(
            [p for _, p in batch],
            imgsz=imgsz,
            conf=float(job["low_conf"]),
            batch=len(batch),
            device=device,
            verbose=False,
        )
        for (task_id, _), res in zip(batch, results, strict=True):
            boxes = res.boxes
            regions = []
            if boxes is not None:
                for cls, conf, xywhn in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xywhn.tolist(), strict=True):
                    if int(cls) in class_ids:
                        cx, cy, w, h = (float(v) for v in xywhn)
                        regions.append(Region(class_ids[int(cls)], float(conf), (cx, cy, w, h)))
            out.append(ImagePrediction(task_id, tuple(regions)))
    del model  # the training loads its own; free the served version's memory first
    if device not in ("cpu", "mps"):
        import torch

        torch.cuda.empty_cache()
    return out


def write_overlay(
    out_dir: Path, data_yaml: Path, chosen: Sequence[ImagePrediction], images: Mapping[int, Path]
) -> Path:
    """Write the pseudo-labelled images as a train folder of their own and the run's data.yaml.

    Layout (Ultralytics finds a label by replacing the last ``/images/`` of the image path by
    ``/labels/``)::

        <out_dir>/images/train/<task_id>.<ext>   a hard link (or copy) of the cached image
        <out_dir>/labels/train/<task_id>.txt     ``cls cx cy w h`` per region
        <out_dir>/data.yaml                      the dataset's, with train = [its train, this one]

    Returns:
        the run's data.yaml.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "images" / "train").mkdir(parents=True)
    (out_dir / "labels" / "train").mkdir(parents=True)
    for image in chosen:
        src = images[image.task_id]
        dst = out_dir / "images" / "train" / f"{image.task_id}{src.suffix.lower() or '.png'}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        label = "".join(r.line() + "\n" for r in image.regions)
        write_atomic(out_dir / "labels" / "train" / f"{image.task_id}.txt", label, sync=False)  # rebuilt each run
    content = yaml.safe_load(data_yaml.read_text())
    root = Path(str(content.get("path") or data_yaml.parent))
    human = content["train"] if isinstance(content["train"], list) else [content["train"]]
    content["train"] = [str(root / t) for t in human] + [str(out_dir / "images" / "train")]
    content["val"] = str(root / content["val"]) if isinstance(content["val"], str) else content["val"]
    data = out_dir / "data.yaml"
    write_atomic(data, yaml.safe_dump(content, sort_keys=False))
    return data
