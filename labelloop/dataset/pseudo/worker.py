"""The train worker's half of self-training (no torch here): decide whether pseudo-labels apply,
list and fetch the unlabeled pool, and write the child's job (``labelloop.dataset.pseudo.job``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import structlog

from labelloop.dataset.pseudo.job import PseudoJob
from labelloop.dataset.pseudo.rule import cap_for, unlabeled_pool
from labelloop.ls_json import Task
from labelloop.manifest import PseudoLabels
from labelloop.registry.params import EffectiveParams

if TYPE_CHECKING:
    from labelloop.dataset.report import BuildResult
    from labelloop.labelstudio.client import Connection
    from labelloop.labelstudio.media_types import MediaConfig
    from labelloop.registry.store import ModelVersion

log = structlog.get_logger(__name__)

# Unlabeled images predicted per pseudo-label slot (the cap): enough to choose the confident ones
# from, without predicting a 100,000-task pool on every training.
POOL_PER_SLOT = 4


@dataclass(frozen=True)
class PseudoSource:
    """What ``prepare`` reads (``labelloop.jobs.datasets.pseudo_source`` builds it from ``Settings``).

    Attributes:
        label_studio: Label Studio's URL and token (the SDK client is made on first use).
        images_dir: the image cache dataset builds use (``<cache_dir>/images``).
        media: the image downloads' configuration (``LABELLOOP_MEDIA_*``).
        conf: a pseudo-label's minimum confidence (``LABELLOOP_PSEUDO_CONF``, 0..1).
        low_conf: below it a prediction is background (``LABELLOOP_PREDICT_CONF``, 0..1).
        ratio: pseudo-labels per human-labelled train image at most (``LABELLOOP_PSEUDO_RATIO``).
        pool: unlabeled tasks predicted at most (``LABELLOOP_PSEUDO_POOL``).
    """

    label_studio: Connection
    images_dir: Path
    media: MediaConfig
    conf: float
    low_conf: float
    ratio: float
    pool: int


@dataclass
class Prepared:
    """What ``prepare`` decided: the child's job (None: no pseudo-labels this time) and the
    manifest record when nothing will run."""

    job: PseudoJob | None
    record: PseudoLabels | None


@dataclass
class _Decision:
    """The thresholds recorded with every outcome, and what is known so far."""

    conf: float
    low_conf: float
    ratio: float
    version: str | None = None
    cap: int | None = None

    def skip(self, reason: str) -> Prepared:
        log.info("pseudo_labels_skipped", reason=reason)
        record = PseudoLabels(applied=False, skipped=reason, conf=self.conf, low_conf=self.low_conf)
        record.ratio, record.version, record.cap = self.ratio, self.version, self.cap
        return Prepared(None, record)


def prepare(
    source: PseudoSource,
    project_id: int,
    built: BuildResult,
    parent: ModelVersion | None,
    params: EffectiveParams,
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
        record)`` when it is on but does not apply (``record.skipped`` says why); else the
        child's job (``TrainingJob.pseudo``). A Label Studio failure while listing the tasks skips
        pseudo-labels for this training rather than failing it.
    """
    if not params["pseudo_labels"]:
        return Prepared(None, None)
    spec = built.spec
    decision = _Decision(source.conf, source.low_conf, source.ratio)
    if spec.task != "detect":
        return decision.skip(f"not applicable to {spec.task} (detect only)")
    if parent is None:
        return decision.skip("no served version")
    served = parent.record
    decision.version = parent.name
    if (served.task or "detect") != "detect" or (served.from_name or spec.from_name) != spec.from_name:
        return decision.skip("the served version was trained for another task or control tag")
    served_names = served.class_names()
    missing = [label for label in spec.labels if label not in served_names.values()]
    if missing:
        # It would teach its ignorance of these labels as background.
        return decision.skip(f"the served version does not know {', '.join(missing)}")
    cap = decision.cap = cap_for(built.report.images["train"], source.ratio)
    if cap < 1:
        return decision.skip("cap is 0")
    dataset_ids = {label: i for i, label in built.names.items()}
    class_ids = {str(k): dataset_ids[v] for k, v in served_names.items() if v in spec.labels and v in dataset_ids}
    annotated = {int(t["id"]) for t in built.tasks}
    try:
        pool = unlabeled_pool(
            list_unlabeled(source.label_studio, project_id),
            annotated,
            spec.value_key,
            params["val_fraction"],
            min(source.pool, POOL_PER_SLOT * cap),
            seed=parent.name,
        )
    except Exception as exc:  # LabelStudioUnavailable, LabelStudioError: train on human labels only
        return decision.skip(f"listing the unlabeled tasks failed: {str(exc)[:200]}")
    if not pool:
        return decision.skip("no unlabeled task to predict")
    images = fetch_images(source.images_dir, source.media, pool)
    if not images:
        return decision.skip("no unlabeled image could be fetched")
    job = PseudoJob(
        weights=str(parent.weights),
        out_dir=str(Path(out_dir).absolute()),
        class_ids=class_ids,
        cap=cap,
        pool=len(pool),
        images=[(task_id, str(path)) for task_id, path in images],
        conf=decision.conf,
        low_conf=decision.low_conf,
        ratio=decision.ratio,
        version=parent.name,
    )
    log.info("pseudo_labels_prepared", version=parent.name, pool=len(pool), images=len(images), cap=cap)
    return Prepared(job, None)


def list_unlabeled(label_studio: Connection, project_id: int) -> list[Task]:
    """The project's tasks with no annotation and no skip, from Label Studio's task list
    (``GET /api/tasks/?project=`` with Data Manager filters on ``tasks:total_annotations`` and
    ``tasks:cancelled_annotations``; tasks only, no annotations or predictions).

    Raises:
        LabelStudioUnavailable, LabelStudioError: see ``labelloop.labelstudio.client.calling``.
    """
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
    client = label_studio.client()
    with label_studio.calling(f"listing project {project_id}'s unlabeled tasks"):
        items: Any = client.tasks.list(
            project=project_id, fields="task_only", query=json.dumps(query), resolve_uri=False, page_size=500
        )
        return [  # the SDK's tasks as Label Studio's JSON
            cast(Task, item.model_dump(mode="json", exclude_unset=True) if hasattr(item, "model_dump") else dict(item))
            for item in items
        ]


def fetch_images(images_dir: Path, media: MediaConfig, pool: Sequence[tuple[int, str]]) -> list[tuple[int, Path]]:
    """The pool's upright images from the image cache in ``images_dir`` (``labelloop.labelstudio.media.ImageCache``,
    the one dataset builds use); a task whose image cannot be fetched is left out."""
    from labelloop.labelstudio.media import CachedImage, ImageCache

    with ImageCache(images_dir, media) as cache:
        got = cache.get_many(list(pool))
    out = []
    for task_id, _ in pool:
        image = got.get(task_id)
        if isinstance(image, CachedImage):
            out.append((task_id, image.path))
    return out
