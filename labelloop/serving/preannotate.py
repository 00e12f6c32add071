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

import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
import structlog

from labelloop import keys
from labelloop.events import retired_projects
from labelloop.labelstudio import retired_predictions, task_pages
from labelloop.labelstudio.sampling import FIRST_PICKS_VERSION, delete_predictions, follow_labelloop
from labelloop.registry.params import load as load_params
from labelloop.registry.params import train_spec
from labelloop.serving import diversity
from labelloop.serving.predictor import Predictor
from labelloop.task_types.informativeness import NO_DETECTION, prediction_score

log = structlog.get_logger(__name__)

# A generation key outlives any run (a week); losing it only lets an older run go on until the
# registry's CURRENT moves.
GENERATION_TTL_S = 7 * 86400
CLUSTER_STRIDE = 1000  # above diversity.MAX_CLUSTERS: see cluster_offset
IMPORT_THREADS = 4  # concurrent POST /api/predictions/ of one batch
MAX_LABELED_EMBEDDED = 1000  # annotated tasks embedded for the coverage order (a seeded sample above)
NO_CANDIDATE_SCORE = prediction_score(NO_DETECTION)  # a task's score when its image shows no candidate box


def tasks_to_predict(tasks: list[Any], version: str) -> list[dict[str, Any]]:
    """``[{"id", "data"}]`` of the tasks that have no annotation and no prediction from ``version``."""
    out = []
    for task in tasks:
        if (getattr(task, "total_annotations", 0) or 0) > 0:
            continue
        versions = {p.get("model_version") for p in (getattr(task, "predictions", None) or []) if isinstance(p, dict)}
        versions |= set(filter(None, (getattr(task, "predictions_model_versions", "") or "").split(",")))
        if version in {v.strip() for v in versions if v}:
            continue
        out.append({"id": int(task.id), "data": dict(task.data or {})})
    return out


@dataclass(frozen=True)
class Generation:
    """A pre-annotation run's claim on its project (see the module docstring).

    ``number`` is None when Redis could not be reached: the run then stops only when the
    registry moves on.
    """

    client: redis.Redis
    project_id: int
    number: int | None

    @classmethod
    def claim(cls, client: redis.Redis, project_id: int) -> Generation:
        """Become the project's newest run (older runs stop at their next check)."""
        key = keys.preannotation_generation(project_id)
        try:
            with client.pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, GENERATION_TTL_S)
                number = int(pipe.execute()[0])
        except redis.RedisError as exc:
            log.warning("preannotate_generation_unavailable", project_id=project_id, error=str(exc)[:200])
            number = None
        return cls(client, project_id, number)

    def newest(self) -> bool:
        """Whether no newer run has claimed the project since (True when Redis is unreachable)."""
        if self.number is None:
            return True
        try:
            raw = self.client.get(keys.preannotation_generation(self.project_id))
        except redis.RedisError:
            return True
        return raw is None or int(raw) == self.number


def superseded_by(predictor: Predictor, project_id: int, version: str, generation: Generation | None) -> str | None:
    """Why a run of ``version`` must stop now: "version" (the registry serves another one),
    "newer_run" (a newer run claimed the project), "project_retired" (deleted in Label Studio,
    ``labelloop.events.retired_projects``; known with a generation's Redis only), or None to go on."""
    if predictor.registry.current_name(project_id) != version:
        return "version"
    if generation is not None and not generation.newest():
        return "newer_run"
    if generation is not None and generation.number is not None and _retired(generation.client, project_id):
        return "project_retired"
    return None


def _retired(client: redis.Redis, project_id: int) -> bool:
    try:
        return retired_projects.is_retired(client, project_id)
    except redis.RedisError:
        return False


def cluster_offset(version: str) -> int:
    """What a version adds to its predictions' ``cluster``: ``N * CLUSTER_STRIDE`` for ``vN``, 0 for
    the first picks. Label Studio counts the clusters an annotator solved from
    ``Max(predictions__cluster)`` over all of a task's predictions, whatever their model version:
    a newer version's clusters being larger, a task counts in its newest prediction's cluster."""
    return int(version[1:]) * CLUSTER_STRIDE if version[:1] == "v" and version[1:].isdigit() else 0


class _Spool:
    """Predicted ``result`` lists kept in a temporary file until they are imported (JSON lines;
    memory holds one offset and length per task, not its regions). Reads are positional
    (``os.pread``), so the import threads may read it at once."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._spans: list[tuple[int, int]] = []
        self._end = 0

    def append(self, result: list[Any]) -> None:
        line = json.dumps(result).encode()
        written = 0
        while written < len(line):
            written += os.pwrite(self._file.fileno(), line[written:], self._end + written)
        self._spans.append((self._end, len(line)))
        self._end += len(line)

    def __getitem__(self, index: int) -> list[Any]:
        offset, length = self._spans[index]
        return list(json.loads(os.pread(self._file.fileno(), length, offset)))

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Pick:
    """One task's prediction as imported: ``score`` is its rank in [0, 1] (low = label first)."""

    task: int
    score: float
    cluster: int | None


def ranked_picks(
    task_ids: list[int],
    vectors: list[npt.NDArray[np.float32] | None],
    labeled_vectors: list[npt.NDArray[np.float32]],
    uncertainty: list[float] | None,
    budget: int,
    offset: int,
) -> tuple[list[Pick], str]:
    """Order tasks with ``labelloop.serving.diversity.rank``; returns their picks in rank order and the
    mode. Tasks without a vector (image unavailable) come last, with no cluster."""
    rows = [i for i, v in enumerate(vectors) if v is not None]
    if not rows:
        mode = "none"
        order: list[int] = []
        clusters: dict[int, int] = {}
    else:
        present = [v for v in vectors if v is not None]
        x = np.stack(present + list(labeled_vectors)).astype(np.float64)
        labeled = np.array([False] * len(rows) + [True] * len(labeled_vectors))
        u = None
        if uncertainty is not None:
            u = np.array([uncertainty[i] for i in rows] + [0.0] * len(labeled_vectors))
        ranking = diversity.rank(x, labeled, u, budget=budget)
        mode = ranking.mode
        order = [rows[r] for r in ranking.order]
        clusters = {rows[r]: int(ranking.cluster[r]) for r in ranking.order}
    order += [i for i, v in enumerate(vectors) if v is None]
    scores = diversity.rank_scores(list(range(len(order))), len(order))
    picks = [
        Pick(task_ids[i], float(scores[r]), None if i not in clusters else offset + clusters[i])
        for r, i in enumerate(order)
    ]
    return picks, mode


def import_picks(
    client: Any,
    project_id: int,
    version: str,
    picks: list[Pick],
    results: Callable[[int], list[Any]],
    batch_size: int,
    stop: Callable[[], str | None],
    after_first_batch: Callable[[], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    with_cluster: bool = True,
) -> tuple[int, str | None]:
    """Write ``picks`` into Label Studio in rank order, ``batch_size`` at a time, each prediction
    with its ``result`` (``results(task id)``), ``score``, ``cluster`` and ``version``.

    Label Studio's prediction import (``/api/projects/{id}/import/predictions``,
    ``data_import/api.py`` in 1.23.2) drops ``cluster``, so each prediction is one ``POST
    /api/predictions/`` (``IMPORT_THREADS`` at a time, about 25x slower than the bulk import).
    Without ``with_cluster`` (the project's sampling is left alone, so Label Studio's cluster
    balancing is not used) a batch is one bulk import, with ``score`` and ``version`` only.
    ``stop()`` is asked before each batch; ``after_first_batch`` runs once the top tasks are in
    (the label stream can follow them from then on). Logs ``preannotate_batch`` per batch.

    Returns:
        ``(imported, stopped)``: ``stopped`` is ``stop()``'s reason, or None.
    """
    imported = 0
    with ThreadPoolExecutor(max_workers=IMPORT_THREADS, thread_name_prefix="preannotate-import") as pool:
        for number, start in enumerate(range(0, len(picks), batch_size)):
            if (why := stop()) is not None:
                return imported, why
            batch = picks[start : start + batch_size]
            t0 = time.monotonic()

            def create(pick: Pick) -> None:
                client.predictions.create(
                    task=pick.task,
                    result=results(pick.task),
                    score=pick.score,
                    model_version=version,
                    **({"cluster": pick.cluster} if pick.cluster is not None else {}),
                )

            if with_cluster:
                list(pool.map(create, batch))  # a failed request is the run's error
            else:
                request = [
                    {"task": p.task, "result": results(p.task), "score": p.score, "model_version": version}
                    for p in batch
                ]
                client.projects.import_predictions(id=project_id, request=request)
            imported += len(batch)
            log.info(
                "preannotate_batch",
                version=version,
                batch=number,
                tasks=len(batch),
                done=imported,
                total=len(picks),
                import_s=round(time.monotonic() - t0, 3),
            )
            if number == 0 and after_first_batch is not None:
                after_first_batch()
            if on_progress is not None:
                on_progress(imported, len(picks))
    return imported, None


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


def labeled_sample(tasks: list[Any]) -> list[dict[str, Any]]:
    """Up to ``MAX_LABELED_EMBEDDED`` annotated tasks (``{"id", "data"}``), a seeded sample."""
    labeled = [{"id": int(t.id), "data": dict(t.data or {})} for t in tasks if (t.total_annotations or 0) > 0]
    if len(labeled) <= MAX_LABELED_EMBEDDED:
        return labeled
    keep = np.random.default_rng(0).choice(len(labeled), MAX_LABELED_EMBEDDED, replace=False)
    return [labeled[i] for i in sorted(keep)]


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
) -> dict[str, Any]:
    """Predict the project's unlabeled tasks with ``version``, rank them, and import the predictions
    in rank order (the one to label first first).

    Three stages: **predict** every task without a prediction of ``version``, ``batch_size`` at a
    time (one Ultralytics batch each), keeping each task's regions (on disk), whether it has a
    candidate box, its informativeness and its backbone embedding (``Predictor.embed``);
    **rank** them with ``labelloop.serving.diversity`` (by uncertainty within clusters once at least half
    of them have a candidate box, else by coverage with the annotated tasks' embeddings too);
    **import** in rank order (``import_picks``): each prediction's ``score`` is its rank in [0, 1]
    and its ``cluster`` its k-means cluster (plus ``cluster_offset``). Once the first batch is
    in, the project's model version becomes ``version`` (``set_model_version`` or
    ``set_sampling``) and, with ``set_sampling``, its sampling "Uncertainty sampling"
    (``labelloop.labelstudio.sampling``): Label Studio's label stream then serves labelloop's order.

    First the predictions of the versions retention removed leave Label Studio (``drop_retired``);
    the task list is read page by page without predictions (``labelloop.labelstudio.task_pages``), and the
    tasks that hold a prediction of ``version`` already are skipped (a retry imports none twice).

    Stops (``stopped`` names why, see ``superseded_by``) before the first Label Studio read,
    before each batch's prediction, before ranking and before each batch's import, as soon as
    ``version`` is no longer served or a newer run holds the project. Logs ``preannotate_started``,
    ``preannotate_predicted`` per predicted batch, ``preannotate_ranked``, ``preannotate_batch``
    per imported batch, ``preannotate_superseded`` when stopped and ``preannotated`` at the end.
    Long because the supersede checks of the three stages share one run's state.

    Returns:
        ``{"version", "tasks", "imported", "batches", "stopped", "mode"}`` (``stopped``: None when
        every task was done, else "version" or "newer_run"; ``mode``: "coverage", "uncertainty"
        or None when stopped before ranking).
    """
    outcome: dict[str, Any] = {
        "version": version,
        "tasks": 0,
        "imported": 0,
        "batches": 0,
        "stopped": None,
        "mode": None,
    }

    def stop() -> str | None:
        return superseded_by(predictor, project_id, version, generation)

    if (why := stop()) is not None:
        outcome["stopped"] = why
        log.info("preannotate_superseded", version=version, imported=0, why=why)
        return outcome
    log.info("preannotate_started", version=version, generation=generation.number if generation else None)
    project = client.projects.get(id=project_id)
    params = load_params(predictor.registry.root, project_id)
    spec = train_spec(project.label_config, params)
    drop_retired(client, predictor, project_id)
    listing = task_pages.for_version(client, project_id, version, max_labeled=MAX_LABELED_EMBEDDED)
    todo = listing.todo
    outcome["tasks"] = len(todo)
    imgsz = params.imgsz
    if on_progress is not None:
        on_progress(0, len(todo))
    spool = _Spool()
    vectors: list[npt.NDArray[np.float32] | None] = []
    found: list[bool] = []
    uncertainty: list[float] = []
    try:
        for number, start in enumerate(range(0, len(todo), batch_size)):
            if (why := stop()) is not None:
                outcome["stopped"] = why
                break
            batch = todo[start : start + batch_size]
            t0 = time.monotonic()
            results = predictor.predict(
                project_id,
                spec,
                batch,
                hostname,
                api_key,
                imgsz=imgsz,
                version=version,
                score_strategy=params.score_strategy,
                show_conf=params.show_conf,
                full_video=True,  # whole videos here, off the request path (labelloop.serving.video)
            )
            vectors += predictor.embed(project_id, spec, batch, hostname, api_key, version, imgsz=imgsz)
            for r in results:
                spool.append(r["result"])
                found.append(bool(r["result"]) or float(r["score"]) > NO_CANDIDATE_SCORE)
                uncertainty.append(1.0 - float(r["score"]))
            log.info(
                "preannotate_predicted",
                version=version,
                batch=number,
                tasks=len(batch),
                done=len(found),
                total=len(todo),
                predict_s=round(time.monotonic() - t0, 3),
            )
        if outcome["stopped"] is None and (why := stop()) is not None:
            outcome["stopped"] = why
        if outcome["stopped"] is None:
            t0 = time.monotonic()
            informative = diversity.informative(found)
            labeled: list[npt.NDArray[np.float32]] = []
            if not informative:
                sample = listing.labeled
                for start in range(0, len(sample), batch_size):
                    got = predictor.embed(
                        project_id, spec, sample[start : start + batch_size], hostname, api_key, version, imgsz=imgsz
                    )
                    labeled += [v for v in got if v is not None]
            budget_n = int(params.train_every_n or budget)
            picks, mode = ranked_picks(
                [t["id"] for t in todo],
                vectors,
                labeled,
                uncertainty if informative else None,
                budget_n,
                cluster_offset(version),
            )
            outcome["mode"] = mode
            log.info(
                "preannotate_ranked",
                version=version,
                mode=mode,
                tasks=len(picks),
                with_candidate=sum(found),
                labeled=len(labeled),
                seconds=round(time.monotonic() - t0, 3),
            )
            index = {t["id"]: i for i, t in enumerate(todo)}

            def follow() -> None:
                if set_model_version or set_sampling:
                    follow_labelloop(client, predictor.registry.root, project_id, version, set_sampling)

            imported, why = import_picks(
                client,
                project_id,
                version,
                picks,
                lambda task_id: spool[index[task_id]],
                batch_size,
                stop,
                follow,
                on_progress,
                with_cluster=set_sampling,
            )
            outcome.update(imported=imported, batches=-(-imported // batch_size), stopped=why)
    finally:
        spool.close()
    if outcome["stopped"] is not None:
        log.info("preannotate_superseded", version=version, imported=outcome["imported"], why=outcome["stopped"])
    elif version != FIRST_PICKS_VERSION:
        drop_first_picks(client, project_id)
    log.info(
        "preannotated",
        version=version,
        tasks=len(todo),
        imported=outcome["imported"],
        batches=outcome["batches"],
        stopped=outcome["stopped"],
        mode=outcome["mode"],
    )
    return outcome
