"""Pre-annotate a whole project with a newly promoted version, in bounded batches that stop as
soon as a newer version is served.

Every task with no annotation and no prediction from that version (the task list is read page
by page with the fields needed, ``labelloop.labelstudio.task_pages``, so a retried run imports no task's
prediction twice) is predicted in batches of ``batch_size`` (each batch one batched
``model.predict`` call) and the predictions are imported with label-studio-sdk
(``projects.import_predictions``), each with ``model_version`` and ``score`` set, so Label
Studio's "Uncertainty sampling" serves the least certain tasks first
(https://labelstud.io/guide/active_learning). Optionally the project's displayed model version
becomes the new one.

Superseding: a run holds a generation (``Generation.claim``, an INCR of
``labelloop:project:<id>:preannotate:generation``) and goes on only while it holds the newest
one and the registry still serves its version. Both are checked before the task list is read,
before each batch is predicted and before it is imported, so a promotion, a rollback or a newer
run stops an older run within one batch and no prediction of an old version reaches Label Studio
after that. Task arguments stay ``(project_id, version)``: a run decides for itself whether it is
still wanted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import structlog

from labelloop.errors import RegistryError
from labelloop.labelstudio import retired_predictions, task_pages
from labelloop.labelstudio.region_check import RegionCheck
from labelloop.labelstudio.sampling import FIRST_PICKS_VERSION, delete_predictions, follow_labelloop
from labelloop.ls_json import Task
from labelloop.registry.params import ProjectParams, train_spec
from labelloop.registry.params import load as load_params
from labelloop.serving import diversity
from labelloop.serving.generation import Generation, superseded_by
from labelloop.serving.picks import Pick, cluster_offset, import_picks, ranked_picks
from labelloop.serving.predictor import Predictor
from labelloop.serving.spool import Spool
from labelloop.task_types.informativeness import NO_DETECTION, prediction_score
from labelloop.task_types.labels import TrainSpec

__all__ = [
    "MAX_LABELED_EMBEDDED",
    "Generation",
    "Pick",
    "cluster_offset",
    "drop_first_picks",
    "drop_retired",
    "import_picks",
    "preannotate_project",
    "ranked_picks",
    "superseded_by",
]

log = structlog.get_logger(__name__)

MAX_LABELED_EMBEDDED = 1000  # annotated tasks embedded for the coverage order (a seeded sample above)
NO_CANDIDATE_SCORE = prediction_score(NO_DETECTION)  # a task's score when its image shows no candidate box


def drop_first_picks(client: Any, project_id: int) -> None:
    """Delete the project's first picks once a version's predictions have replaced them in every
    unlabeled task (annotators then see one prediction per task, the version's); a failure is
    logged, never fails the pre-annotation."""
    try:
        delete_predictions(client, project_id, FIRST_PICKS_VERSION)
    except Exception as exc:  # leftover empty predictions are clutter, not harm
        log.warning("first_picks_delete_failed", project_id=project_id, error=str(exc)[:300])


def drop_retired(client: Any, predictor: Predictor, project_id: int) -> None:
    """Delete the predictions of the versions retention removed (``labelloop.labelstudio.retired_predictions``);
    a failure is logged, never fails the pre-annotation (the next one sweeps again)."""
    try:
        retired_predictions.sweep(client, predictor.registry, project_id)
    except Exception as exc:  # stale predictions are clutter, not harm
        log.warning("retired_predictions_delete_failed", project_id=project_id, error=str(exc)[:300])


@dataclass
class Outcome:
    """What a pre-annotation did (``preannotate_project`` returns it as a ``PreannotateOutcome``).

    ``tasks``: tasks to predict; ``imported``: predictions imported; ``batches``: import batches;
    ``stopped``: None when every task was done, else why (``superseded_by``); ``mode``:
    "coverage", "uncertainty", "none" (no task had an image), or None when stopped before ranking.
    """

    version: str
    tasks: int = 0
    imported: int = 0
    batches: int = 0
    stopped: str | None = None
    mode: str | None = None

    def record(self) -> PreannotateOutcome:
        """The outcome as the Celery task's JSON result."""
        return PreannotateOutcome(
            version=self.version,
            tasks=self.tasks,
            imported=self.imported,
            batches=self.batches,
            stopped=self.stopped,
            mode=self.mode,
        )


class PreannotateOutcome(TypedDict):
    """``Outcome``'s fields as JSON: the pre-annotate Celery task's result."""

    version: str
    tasks: int
    imported: int
    batches: int
    stopped: str | None
    mode: str | None


@dataclass
class _Predicted:
    """The predict stage's output, one entry per task in ``todo`` order (regions on disk)."""

    spool: Spool = field(default_factory=Spool)
    vectors: list[npt.NDArray[np.float32] | None] = field(default_factory=list)
    found: list[bool] = field(default_factory=list)  # whether the task's image shows a candidate box
    uncertainty: list[float] = field(default_factory=list)


@dataclass
class _Run:
    """One pre-annotation of ``version``: the three stages share its state and its stop check."""

    client: Any
    predictor: Predictor
    project_id: int
    version: str
    batch_size: int
    hostname: str | None
    api_key: str | None
    params: ProjectParams
    spec: TrainSpec
    generation: Generation | None
    set_model_version: bool
    set_sampling: bool
    on_progress: Callable[[int, int], None] | None
    listing: task_pages.Listing  # todo: the tasks to predict; labeled: a sample of annotated ones
    label_config: str  # the project's, for the region check before each write

    def stop(self) -> str | None:
        return superseded_by(self.predictor, self.project_id, self.version, self.generation)

    def predict(self, into: _Predicted, outcome: Outcome) -> None:
        """Predict and embed the listing's ``todo`` ``batch_size`` at a time (one Ultralytics batch each) until
        done or stopped (``outcome.stopped``)."""
        imgsz, todo = self.params.imgsz, self.listing.todo
        for number, start in enumerate(range(0, len(todo), self.batch_size)):
            if (why := self.stop()) is not None:
                outcome.stopped = why
                return
            batch = todo[start : start + self.batch_size]
            t0 = time.monotonic()
            results = self.predictor.predict(
                self.project_id,
                self.spec,
                batch,
                self.hostname,
                self.api_key,
                imgsz=imgsz,
                version=self.version,
                score_strategy=self.params.score_strategy,
                show_conf=self.params.show_conf,
                full_video=True,  # whole videos here, off the request path (labelloop.serving.video)
            )
            into.vectors += self._embed(batch)
            for r in results:
                into.spool.append(r["result"])
                into.found.append(bool(r["result"]) or float(r["score"]) > NO_CANDIDATE_SCORE)
                into.uncertainty.append(1.0 - float(r["score"]))
            log.info(
                "preannotate_predicted",
                version=self.version,
                batch=number,
                tasks=len(batch),
                done=len(into.found),
                total=len(todo),
                predict_s=round(time.monotonic() - t0, 3),
            )

    def _embed(self, tasks: list[Task]) -> list[npt.NDArray[np.float32] | None]:
        return self.predictor.embed(
            self.project_id, self.spec, tasks, self.hostname, self.api_key, self.version, imgsz=self.params.imgsz
        )

    def rank(self, got: _Predicted, budget: int) -> tuple[list[Pick], str]:
        """Rank the predicted tasks (``ranked_picks``): by uncertainty within clusters once the
        version is informative (``diversity.informative``: at least half of the tasks have a
        candidate box and its validation mAP50 is above ``diversity.INFORMATIVE_VAL`` with 95%
        confidence), else by coverage; the embeddings of the listing's ``labeled`` (annotated
        tasks) count as covering their clusters in both. Returns the picks in rank order and the mode."""
        t0, labeled = time.monotonic(), self.listing.labeled
        score, count = self.validation()
        informative = diversity.informative(got.found, score, count)
        labeled_vectors: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(labeled), self.batch_size):
            labeled_vectors += [v for v in self._embed(labeled[start : start + self.batch_size]) if v is not None]
        picks, mode = ranked_picks(
            [t["id"] for t in self.listing.todo],
            got.vectors,
            labeled_vectors,
            got.uncertainty if informative else None,
            int(self.params.train_every_n or budget),
            cluster_offset(self.version),
        )
        log.info(
            "preannotate_ranked",
            version=self.version,
            mode=mode,
            tasks=len(picks),
            with_candidate=sum(got.found),
            val_score=None if score is None else round(score, 4),
            val_objects=count,
            labeled=len(labeled_vectors),
            seconds=round(time.monotonic() - t0, 3),
        )
        return picks, mode

    def validation(self) -> tuple[float | None, int]:
        """The version's validation score (``diversity.val_score`` of its manifest's ``metrics``) and
        how many objects it was measured on (the promotion gate's ``val_objects``, 0 when not
        recorded); ``(None, 0)`` when its manifest cannot be read."""
        try:
            manifest = self.predictor.registry.get(self.project_id, self.version).manifest
        except RegistryError:
            return None, 0
        promotion = manifest.get("promotion")
        count = promotion.get("val_objects") if isinstance(promotion, dict) else None
        return diversity.val_score(manifest.get("metrics")), count if isinstance(count, int) else 0

    def import_ranked(self, picks: list[Pick], got: _Predicted, outcome: Outcome) -> None:
        """Import ``picks`` in rank order (``import_picks``); once the first batch is in, the
        project follows labelloop's version (and order, with ``set_sampling``)."""

        def follow() -> None:
            if self.set_model_version or self.set_sampling:
                root = self.predictor.registry.root
                follow_labelloop(self.client, root, self.project_id, self.version, self.set_sampling)

        index = {t["id"]: i for i, t in enumerate(self.listing.todo)}
        written = import_picks(
            self.client,
            self.project_id,
            self.version,
            picks,
            lambda task_id: got.spool[index[task_id]],
            self.batch_size,
            self.stop,
            follow,
            self.on_progress,
            with_cluster=self.set_sampling,
            check=RegionCheck(self.label_config),
        )
        outcome.imported, outcome.batches, outcome.stopped = written.imported, written.batches, written.stopped


def preannotate_project(
    client: Any,
    predictor: Predictor,
    project_id: int,
    version: str,
    batch_size: int,
    hostname: str | None,
    api_key: str | None,
    set_model_version: bool,
    on_progress: Callable[[int, int], None] | None = None,
    generation: Generation | None = None,
    set_sampling: bool = False,
    budget: int = 10,
) -> PreannotateOutcome:
    """Predict the project's unlabeled tasks with ``version``, rank them, and import the predictions
    in rank order (the one to label first first).

    Three stages: **predict** every task without a prediction of ``version``, ``batch_size`` at a
    time (one Ultralytics batch each), keeping each task's regions (on disk, ``Spool``), whether it
    has a candidate box, its informativeness and its backbone embedding (``Predictor.embed``);
    **rank** them with ``labelloop.serving.diversity`` (by uncertainty within clusters once the
    version is informative, ``diversity.informative``, else by coverage; the annotated tasks'
    embeddings count as covering their clusters in both);
    **import** in rank order (``labelloop.serving.picks.import_picks``): each prediction's ``score``
    is its rank in [0, 1] and its ``cluster`` its k-means cluster (plus ``cluster_offset``). Once
    the first batch is in, the project's model version becomes ``version`` (``set_model_version``
    or ``set_sampling``) and, with ``set_sampling``, its sampling "Uncertainty sampling"
    (``labelloop.labelstudio.sampling``): Label Studio's label stream then serves labelloop's order.

    First the retired versions' predictions leave Label Studio (``drop_retired``); tasks are read
    page by page (``labelloop.labelstudio.task_pages``), skipping those that hold a prediction of
    ``version`` (a retry imports none twice). Stops (``stopped``, see ``superseded_by``) before the
    first Label Studio read, each batch's prediction, ranking and each batch's import. Logs
    ``preannotate_started``, ``_predicted`` and ``_batch`` per batch, ``_ranked``, ``_superseded``
    when stopped and ``preannotated`` at the end.

    Returns:
        ``Outcome.record()``: ``{"version", "tasks", "imported", "batches", "stopped", "mode"}``.
    """
    outcome = Outcome(version)
    if (why := superseded_by(predictor, project_id, version, generation)) is not None:
        outcome.stopped = why
        log.info("preannotate_superseded", version=version, imported=0, why=why)
        return outcome.record()
    log.info("preannotate_started", version=version, generation=generation.number if generation else None)
    project = client.projects.get(id=project_id)
    params = load_params(predictor.registry.root, project_id)
    spec = train_spec(project.label_config, params)
    drop_retired(client, predictor, project_id)
    listing = task_pages.for_version(client, project_id, version, max_labeled=MAX_LABELED_EMBEDDED)
    run = _Run(
        client, predictor, project_id, version, batch_size, hostname, api_key, params, spec, generation,
        set_model_version, set_sampling, on_progress, listing, project.label_config,
    )  # fmt: skip
    outcome.tasks = len(listing.todo)
    if on_progress is not None:
        on_progress(0, len(listing.todo))
    got = _Predicted()
    try:
        run.predict(got, outcome)
        if outcome.stopped is None:
            outcome.stopped = run.stop()
        if outcome.stopped is None:
            picks, outcome.mode = run.rank(got, budget)
            run.import_ranked(picks, got, outcome)
    finally:
        got.spool.close()
    if outcome.stopped is not None:
        log.info("preannotate_superseded", version=version, imported=outcome.imported, why=outcome.stopped)
    elif version != FIRST_PICKS_VERSION:
        drop_first_picks(client, project_id)
    log.info("preannotated", **asdict(outcome))  # version, tasks, imported, batches, stopped, mode
    return outcome.record()
