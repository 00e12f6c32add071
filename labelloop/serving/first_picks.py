"""First picks: before a project's first version, Label Studio's label stream serves tasks that
cover the data instead of random ones or the lowest task ids.

A connected project with no served version (``/setup``) queues ``labelloop.serving.first_picks`` on the
``preannotate`` queue. The job reads the project's tasks; when some unlabeled task has no
prediction of ``FIRST_PICKS_VERSION`` yet (a new project, or tasks imported since), it fetches
every task's image through the guarded media path (``labelloop.labelstudio.media.ImageCache``), describes
each one without a model (``labelloop.serving.diversity.descriptor``), orders the unlabeled tasks by
coverage (``labelloop.serving.diversity.rank``, the annotated tasks counting as covering their cluster),
removes the earlier first picks, and imports one prediction per unlabeled task: an empty
``result``, the rank as ``score`` (low = label first), the ``cluster`` and the model version
``labelloop-first-picks`` (``labelloop.serving.preannotate.import_picks``). Then the project's model
version becomes ``labelloop-first-picks`` and its sampling "Uncertainty sampling"
(``labelloop.labelstudio.sampling``). When nothing is missing the job does nothing (Label Studio calls
``/setup`` often).

Superseding: the job holds a pre-annotation generation (``labelloop.serving.preannotate.Generation``),
so a version's pre-annotation started after it stops it, and it stops as soon as the registry
serves a version: first picks never overwrite the order of a trained model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Required, TypedDict

import numpy as np
import numpy.typing as npt
import structlog

from labelloop.labelstudio import task_pages
from labelloop.labelstudio.media import CachedImage, ImageCache
from labelloop.labelstudio.sampling import FIRST_PICKS_VERSION, delete_predictions, follow_labelloop
from labelloop.ls_json import Task
from labelloop.registry.params import load as load_params
from labelloop.registry.params import train_spec
from labelloop.registry.store import Registry
from labelloop.serving import diversity
from labelloop.serving.generation import Generation
from labelloop.serving.picks import import_picks, ranked_picks

log = structlog.get_logger(__name__)


def describe(
    images: ImageCache, tasks: list[Task], value_key: str, chunk: int = 64
) -> list[npt.NDArray[np.float32] | None]:
    """``diversity.descriptor`` of each task's image, in order (None where it cannot be fetched or
    decoded); images are fetched ``chunk`` at a time, so memory holds one chunk of images."""
    from PIL import Image

    out: list[npt.NDArray[np.float32] | None] = []
    for start in range(0, len(tasks), chunk):
        part = tasks[start : start + chunk]
        for task, image in zip(part, images.for_tasks(part, value_key), strict=True):
            task_id = int(task["id"])
            if not isinstance(image, CachedImage):
                out.append(None)
                continue
            try:
                with Image.open(image.path) as im:
                    im.draft("RGB", (128, 128))  # JPEG: decode at a reduced size, enough for a descriptor
                    out.append(diversity.descriptor(im))
            except OSError as exc:
                log.warning("first_picks_image_unreadable", task_id=task_id, error=str(exc)[:200])
                out.append(None)
    return out


@dataclass
class Outcome:
    """What a first-picks run did so far (``first_picks`` returns it as a dict, ``end``).

    ``started``: ``time.monotonic()`` at its start; ``tasks``: unlabeled tasks; ``imported``:
    predictions imported.
    """

    started: float
    tasks: int = 0
    imported: int = 0

    def seconds(self) -> float:
        """Seconds since the start, to the millisecond."""
        return round(time.monotonic() - self.started, 3)

    def end(self, status: str, stopped: str | None = None, at_start: bool = False) -> FirstPicksOutcome:
        """``{"status", "tasks", "imported", "stopped", "seconds"}`` (``seconds`` 0.0 ``at_start``)."""
        seconds = 0.0 if at_start else self.seconds()
        return FirstPicksOutcome(
            status=status, tasks=self.tasks, imported=self.imported, stopped=stopped, seconds=seconds
        )


class FirstPicksOutcome(TypedDict, total=False):
    """The first-picks Celery task's result: ``status`` (see ``first_picks``' Returns; "off" alone
    when first picks are off), unlabeled ``tasks``, predictions ``imported``, why it ``stopped``
    early (or None) and its wall ``seconds``."""

    status: Required[str]
    tasks: int
    imported: int
    stopped: str | None
    seconds: float


def first_picks(
    client: Any,
    images: ImageCache,
    registry: Registry,
    project_id: int,
    batch_size: int,
    budget: int,
    set_sampling: bool,
    generation: Generation | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> FirstPicksOutcome:
    """Rank a project's unlabeled tasks by coverage and import them as ``FIRST_PICKS_VERSION``
    predictions (see the module docstring). Long because each early end (superseded, nothing
    new, no image) returns its own outcome between the reads, the ranking and the import.

    Args:
        client: a label-studio-sdk ``LabelStudio`` client.
        images: the image cache (Label Studio's URL and token in its config).
        budget: tasks annotated before the first training (``train_every_n``): k of the k-means
            is annotated + budget.

    Returns:
        ``{"status", "tasks", "imported", "stopped", "seconds"}``; ``status`` "done",
        "unchanged" (every unlabeled task has its first pick), "no_images" (none could be
        fetched: nothing to order by), "not_applicable" (a video project), "stopped" (superseded: a version
        is served, or a newer run holds the project; ``stopped`` says which).
    """
    outcome = Outcome(time.monotonic())

    def stop() -> str | None:
        if registry.current_name(project_id) is not None:
            return "version"
        if generation is not None and not generation.newest():
            return "newer_run"
        return None

    if (why := stop()) is not None:
        log.info("first_picks_superseded", why=why, imported=0)
        return outcome.end("stopped", stopped=why, at_start=True)
    project = client.projects.get(id=project_id)
    spec = train_spec(project.label_config, load_params(registry.root, project_id))
    if spec.region_type == "videorectangle":  # videos are no images to describe (labelloop.dataset.video)
        log.info("first_picks_not_applicable", reason="video project")
        return outcome.end("not_applicable")
    # Page by page, without predictions or annotations (``labelloop.labelstudio.task_pages``).
    listing = task_pages.for_version(client, project_id, FIRST_PICKS_VERSION, keep_held=True)
    unlabeled = sorted([*listing.todo, *listing.held], key=lambda t: int(t["id"]))
    missing = listing.todo
    outcome.tasks = len(unlabeled)
    if not missing:
        log.info("first_picks_unchanged", tasks=len(unlabeled))
        return outcome.end("unchanged")
    log.info("first_picks_started", tasks=len(unlabeled), new=len(missing))
    vectors = describe(images, unlabeled, spec.value_key)
    labeled_vectors = [v for v in describe(images, listing.labeled, spec.value_key) if v is not None]
    if not any(v is not None for v in vectors):
        log.warning("first_picks_no_images", tasks=len(unlabeled))
        return outcome.end("no_images")
    picks, mode = ranked_picks([int(t["id"]) for t in unlabeled], vectors, labeled_vectors, None, budget, 0)
    log.info(
        "first_picks_ranked",
        mode=mode,
        tasks=len(picks),
        described=sum(v is not None for v in vectors),
        labeled=len(labeled_vectors),
        seconds=outcome.seconds(),
    )
    if (why := stop()) is not None:
        log.info("first_picks_superseded", why=why, imported=0)
        return outcome.end("stopped", stopped=why)

    def follow() -> None:
        follow_labelloop(client, registry.root, project_id, FIRST_PICKS_VERSION, set_sampling)

    delete_predictions(client, project_id, FIRST_PICKS_VERSION)  # scores are ranks: all of them anew
    written = import_picks(
        client, project_id, FIRST_PICKS_VERSION, picks, lambda _task: [], batch_size, stop, follow, on_progress
    )
    imported, why = written.imported, written.stopped
    outcome.imported = imported
    if why:
        log.info("first_picks_superseded", why=why, imported=imported)
    result = outcome.end("stopped" if why else "done", stopped=why)
    log.info("first_picks_done", tasks=len(picks), imported=imported, stopped=why, seconds=result["seconds"])
    return result
