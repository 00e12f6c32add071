"""Self-training's rule, pure: which images qualify as pseudo-labels (``qualifies``), how many
(``cap_for``), which first (``choose``), and which unlabeled tasks to predict (``unlabeled_pool``)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from labelloop.dataset.splits import val_score
from labelloop.ls_json import Task


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


def _count(task: Task, key: str) -> int:
    counter: Any = task.get(key)  # Label Studio's JSON: an int, or anything when malformed
    try:
        return int(counter or 0)
    except (TypeError, ValueError):
        return 1  # unreadable: treat as annotated, never pseudo-label it


def unlabeled_pool(
    tasks: Iterable[Task],
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
    val_fraction``, as ``labelloop.dataset.splits.assign_splits``), so no image a version trained on
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
