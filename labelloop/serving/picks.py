"""A pre-annotation's picks: the ranked order of its tasks (``labelloop.serving.diversity``) and their
import into Label Studio in that order, each prediction with its rank as ``score`` and its cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from labelloop.serving import diversity

log = structlog.get_logger(__name__)

CLUSTER_STRIDE = 1000  # above diversity.MAX_CLUSTERS: see cluster_offset
IMPORT_THREADS = 4  # concurrent POST /api/predictions/ of one batch

#: ``check(result) -> (kept regions, errors)``: ``labelloop.labelstudio.region_check.RegionCheck``.
Check = Callable[[list[Any]], tuple[list[Any], list[str]]]


def cluster_offset(version: str) -> int:
    """What a version adds to its predictions' ``cluster``: ``N * CLUSTER_STRIDE`` for ``vN``, 0 for
    the first picks. Label Studio counts the clusters an annotator solved from
    ``Max(predictions__cluster)`` over all of a task's predictions, whatever their model version:
    a newer version's clusters being larger, a task counts in its newest prediction's cluster."""
    return int(version[1:]) * CLUSTER_STRIDE if version[:1] == "v" and version[1:].isdigit() else 0


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


@dataclass(frozen=True)
class Imported:
    """What ``import_picks`` wrote: ``imported`` predictions Label Studio stored, in ``batches``
    batches written (each a bulk import or one ``POST`` per prediction; a batch Label Studio
    stored none of counts); ``stopped`` is ``stop()``'s reason, or None."""

    imported: int
    batches: int
    stopped: str | None


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
    check: Check | None = None,
) -> Imported:
    """Write ``picks`` into Label Studio in rank order, ``batch_size`` at a time, each prediction
    with its ``result`` (``results(task id)``), ``score``, ``cluster`` and ``version`` (``_write``).
    ``check`` (``labelloop.labelstudio.region_check.RegionCheck``) drops, before they are written,
    the regions Label Studio's label config refuses (logged ``prediction_regions_refused``): a bulk
    import drops the task's whole prediction for one, and one ``POST /api/predictions/`` per
    prediction stores it unchecked in Label Studio 1.23.2 (``tasks/serializers.py`` validates only
    behind the feature flag ``fflag_feat_utc_210_prediction_validation_15082025``; with it, a 400
    that fails the run).

    ``stop()`` is asked before each batch; ``after_first_batch`` runs once the top tasks are in, at
    the first batch of which Label Studio stored a prediction (the label stream can follow them from
    then on: Label Studio refuses a project ``model_version`` no prediction carries). Logs
    ``preannotate_batch`` per batch.

    Returns:
        the predictions stored, the batches written and why it stopped (``Imported``).
    """
    imported = batches = 0
    followed = False
    written = _checked(results, check, version)
    with ThreadPoolExecutor(max_workers=IMPORT_THREADS, thread_name_prefix="preannotate-import") as pool:
        for number, start in enumerate(range(0, len(picks), batch_size)):
            if (why := stop()) is not None:
                return Imported(imported, batches, why)
            batch = picks[start : start + batch_size]
            t0 = time.monotonic()
            created = _write(client, project_id, version, batch, written, pool if with_cluster else None)
            if created < len(batch):
                log.warning(
                    "preannotate_rejected",
                    version=version,
                    batch=number,
                    rejected=len(batch) - created,
                    tasks=[p.task for p in batch],
                    reason="Label Studio's import dropped results its label config refuses (its log says which)",
                )
            imported += created
            batches += 1
            log.info(
                "preannotate_batch",
                version=version,
                batch=number,
                tasks=len(batch),
                done=imported,
                total=len(picks),
                import_s=round(time.monotonic() - t0, 3),
            )
            if after_first_batch is not None and not followed and created > 0:
                after_first_batch()
                followed = True
            if on_progress is not None:
                on_progress(imported, len(picks))
    return Imported(imported, batches, None)


def _checked(results: Callable[[int], list[Any]], check: Check | None, version: str) -> Callable[[int], list[Any]]:
    """``results`` with ``check``'s refused regions left out, each task's refusal logged."""
    if check is None:
        return results

    def result(task: int) -> list[Any]:
        regions = results(task)
        kept, errors = check(regions)
        if errors:
            log.warning(
                "prediction_regions_refused",
                version=version,
                task=task,
                refused=len(regions) - len(kept),
                error=errors[0][:300],
            )
        return kept

    return result


def _write(
    client: Any,
    project_id: int,
    version: str,
    batch: list[Pick],
    results: Callable[[int], list[Any]],
    pool: ThreadPoolExecutor | None,
) -> int:
    """Write one batch's predictions; returns how many Label Studio stored.

    Label Studio's prediction import (``/api/projects/{id}/import/predictions``,
    ``data_import/api.py`` in 1.23.2) drops ``cluster``, so with a ``pool`` each prediction is one
    ``POST /api/predictions/`` (``IMPORT_THREADS`` at a time, about 25x slower than the bulk
    import; a refused one is the run's error). Without one (the project's sampling is left alone,
    so Label Studio's cluster balancing is not used) the batch is one bulk import, with ``score``
    and ``version`` only; that import drops a prediction whose result its label config refuses and
    answers 201 with the number it ``created`` (``_create_legacy``), which is what this returns.
    """
    if pool is not None:

        def create(pick: Pick) -> None:
            client.predictions.create(
                task=pick.task,
                result=results(pick.task),
                score=pick.score,
                model_version=version,
                **({"cluster": pick.cluster} if pick.cluster is not None else {}),
            )

        list(pool.map(create, batch))  # a failed request is the run's error
        return len(batch)
    request = [{"task": p.task, "result": results(p.task), "score": p.score, "model_version": version} for p in batch]
    answer = client.projects.import_predictions(id=project_id, request=request)
    created = getattr(answer, "created", None)
    return created if isinstance(created, int) else len(batch)
