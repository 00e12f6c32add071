"""A ``/predict`` selection predicted in bounded chunks, within a deadline.

Label Studio sends every task of a Data Manager "Retrieve Predictions" selection in one
``/predict`` (1.23.2: ``data_manager.actions.basic.retrieve_tasks_predictions`` ->
``ml.models.MLBackend.predict_tasks``, one ``make_predictions`` call). Predicting them as one
Ultralytics batch holds every image and activation at once: a big selection exhausts the predict
worker's memory. ``predict_selection`` predicts ``batch`` tasks per model call instead, and starts
no chunk after the deadline.

What Label Studio 1.23.2 does with the answer (``ml.models.MLBackend._get_predictions_from_ml_backend``):
each item of ``results`` is a prediction (a dict) or a list of predictions; a task whose item is
an empty list gets none, and the next "Retrieve Predictions" of the same selection asks only for
the tasks without a prediction of the current model version. So a selection cut short by the
deadline is finished by retrieving it again.

A selection over ``LABELLOOP_PREDICT_MAX_TASKS`` goes to the pre-annotation queue instead
(``write_selection``): predicted in the same chunks with no deadline, and written into Label
Studio as predictions the way a pre-annotation writes them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from labelloop.errors import UnavailableError
from labelloop.labelstudio.task_pages import holding
from labelloop.ls_json import Prediction, Task
from labelloop.registry.store import UNTRAINED
from labelloop.serving.picks import Check, Pick, import_picks
from labelloop.serving.predictor import Predictor
from labelloop.task_types.informativeness import Strategy
from labelloop.task_types.labels import TrainSpec

log = structlog.get_logger(__name__)

NOT_READY: list[Any] = []  # Label Studio's item for a task with no prediction (see the module docstring)
# Share of the time left before the receiver gives up (the predict task's ``expires``) that chunks
# may start in: the last chunk started needs the rest to finish and travel back.
EXPIRES_SHARE = 0.8
# Share of the deadline a selection's videos may spend tracking, all of them together (each video
# gets what the ones before it left; ``labelloop.serving.inference.Inference.track``): the rest is
# for fetching the videos, loading the model and the answer's way back. The same half as each
# video's own budget (``labelloop.serving.video.VideoOptions.from_settings``).
VIDEO_TRACK_SHARE = 0.5


def deadline_s(configured: float, expires: datetime | None, now: datetime) -> float:
    """Seconds from ``now`` after which a ``/predict`` starts no further chunk: ``configured``
    (``LABELLOOP_PREDICT_DEADLINE_S``), or less when the receiver stops waiting sooner (``expires``,
    the predict task's expiry, set to ``LABELLOOP_PREDICT_TIMEOUT_S`` after it was sent: time spent
    queued behind other predictions counts). Never negative; datetimes timezone-aware.

    Examples:
        >>> from datetime import timedelta, timezone
        >>> now = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> deadline_s(60.0, now + timedelta(seconds=20), now)
        16.0
    """
    if expires is None:
        return configured
    return max(0.0, min(configured, EXPIRES_SHARE * (expires - now).total_seconds()))


def predict_selection(
    predictor: Predictor,
    project_id: int,
    spec: TrainSpec,
    tasks: list[Task],
    hostname: str | None,
    api_key: str | None,
    batch: int,
    deadline_s: float,
    imgsz: int | None = None,
    score_strategy: Strategy | None = None,
    show_conf: float | None = None,
    version: str | None = None,
) -> list[Prediction | list[Any]]:
    """Predict ``tasks`` in chunks of ``batch`` (one ``Predictor.predict`` call, so one Ultralytics
    batch and one image download, per chunk), every chunk with the version the first one was
    predicted with; after ``deadline_s`` seconds (monotonic, from the call) no further chunk starts.

    Args:
        tasks: ``[{"id": int, "data": {...}}]`` as Label Studio sends them.
        batch: tasks per chunk (``LABELLOOP_PREDICT_BATCH``), >= 1.
        deadline_s: seconds after which no chunk starts (``LABELLOOP_PREDICT_DEADLINE_S``); the first
            chunk always runs. Video tasks stop tracking ``VIDEO_TRACK_SHARE`` of it after the call,
            all chunks' videos together (a video not reached by then gets no regions and
            ``predict_video_deferred``).
        version: the version to predict with (None: the served one at the first chunk).

    Returns:
        One item per task, in order: ``Predictor.predict``'s prediction dict, or ``[]`` (no
        prediction: Label Studio's list form) for a task whose chunk did not start before the
        deadline. Logs ``predict_chunk`` per chunk (``tasks``, ``seconds``, ``deadline_s``) and
        ``predict_deadline_reached`` when tasks were left.

    Raises:
        UnavailableError: the worker ran out of memory (``MemoryError``, ``torch.cuda.OutOfMemoryError``)
            on a chunk; the message names ``LABELLOOP_PREDICT_BATCH``.
    """
    t0 = time.monotonic()
    out: list[Prediction | list[Any]] = [NOT_READY] * len(tasks)
    for start in range(0, len(tasks), max(1, batch)):
        if start and time.monotonic() - t0 >= deadline_s:
            log.warning(
                "predict_deadline_reached",
                project_id=project_id,
                done=start,
                left=len(tasks) - start,
                deadline_s=deadline_s,
            )
            break
        chunk = tasks[start : start + batch]
        t1 = time.monotonic()
        try:
            results = predictor.predict(
                project_id,
                spec,
                chunk,
                hostname,
                api_key,
                imgsz=imgsz,
                score_strategy=score_strategy,
                version=version,
                show_conf=show_conf,
                video_until=t0 + VIDEO_TRACK_SHARE * deadline_s,
            )
        except Exception as exc:
            if not _out_of_memory(exc):
                raise
            _free_gpu_memory()
            log.error("predict_out_of_memory", project_id=project_id, tasks=len(chunk), error=str(exc)[:200])
            raise UnavailableError(
                f"predict worker out of memory on a chunk of {len(chunk)} tasks; lower LABELLOOP_PREDICT_BATCH"
            ) from None
        seconds = round(time.monotonic() - t1, 3)
        log.info("predict_chunk", project_id=project_id, tasks=len(chunk), seconds=seconds, deadline_s=deadline_s)
        out[start : start + len(chunk)] = results
        served = results[0]["model_version"] if results else None
        if version is None and served not in (None, UNTRAINED, "base"):
            version = served  # the later chunks too, even when a promotion swaps meanwhile
    return out


@dataclass(frozen=True)
class SelectionWritten:
    """What ``write_selection`` did: ``written`` predictions Label Studio stored, of ``tasks``;
    ``version`` they carry (None when none was served); ``stopped`` why it ended early, or None."""

    tasks: int
    written: int
    version: str | None
    stopped: str | None


def write_selection(
    client: Any,
    predictor: Predictor,
    project_id: int,
    spec: TrainSpec,
    tasks: list[Task],
    hostname: str | None,
    api_key: str | None,
    batch: int,
    check: Check | None = None,
    imgsz: int | None = None,
    score_strategy: Strategy | None = None,
    show_conf: float | None = None,
) -> SelectionWritten:
    """Predict a selection too big for one ``/predict`` and write it into Label Studio: ``batch``
    tasks per ``Predictor.predict`` call (``LABELLOOP_PREDICT_BATCH``), every chunk with the version
    the first one was predicted with, each chunk written as soon as it is predicted (one bulk
    ``POST /api/projects/{id}/import/predictions``, ``labelloop.serving.picks.import_picks``, the
    regions ``check`` refuses left out), with the prediction's own ``score``. A task id given twice
    is predicted once; a task that holds a prediction of that version already (one listing of the
    project, ``labelloop.labelstudio.task_pages.holding``, after the first chunk) gets none more.

    Writes nothing when the project has no served version (``stopped`` says so). Label Studio
    1.23.2's next "Retrieve Predictions" of the same selection asks only for the tasks that hold no
    prediction of the project's model version (``ml.models.MLBackend.predict_tasks``), so a
    selection cut short (a worker's death, a new version) is finished by retrieving it again.
    Logs ``selection_written``.

    Args:
        tasks: ``[{"id": int, "data": {...}}]`` as Label Studio sent them to ``/predict``.

    Raises:
        UnavailableError: out of memory on a chunk (see ``predict_selection``).
    """
    first: dict[int, Task] = {}
    for task in tasks:
        first.setdefault(task["id"], task)  # a repeated id: its first item, in the selection's order
    unique = list(first.values())
    written = 0
    version: str | None = None
    stopped: str | None = None
    held: set[int] = set()
    for start in range(0, len(unique), max(1, batch)):
        chunk = [t for t in unique[start : start + batch] if t["id"] not in held]
        if not chunk:
            continue
        results = predict_selection(
            predictor,
            project_id,
            spec,
            chunk,
            hostname,
            api_key,
            len(chunk),
            float("inf"),
            imgsz=imgsz,
            score_strategy=score_strategy,
            show_conf=show_conf,
            version=version,
        )
        predicted = [(t["id"], r) for t, r in zip(chunk, results, strict=True) if isinstance(r, dict)]
        served = predicted[0][1]["model_version"] if predicted else None
        if served in (None, UNTRAINED, "base"):
            stopped = "no served version"
            break
        if version is None:
            version = str(served)
            held = holding(client, project_id, version)
        written += _write_predicted(client, project_id, version, [(t, r) for t, r in predicted if t not in held], check)
    log.info(
        "selection_written",
        project_id=project_id,
        tasks=len(tasks),
        unique=len(unique),
        held=len(held),
        written=written,
        version=version,
        stopped=stopped,
    )
    return SelectionWritten(len(tasks), written, version, stopped)


def _write_predicted(
    client: Any, project_id: int, version: str, predicted: list[tuple[int, Prediction]], check: Check | None
) -> int:
    """One chunk's ``(task id, prediction)`` pairs into Label Studio as one bulk import; returns how
    many it stored."""
    if not predicted:
        return 0
    regions = {task: r["result"] for task, r in predicted}
    picks = [Pick(task, float(r.get("score") or 0.0), None) for task, r in predicted]
    imported = import_picks(
        client,
        project_id,
        version,
        picks,
        regions.__getitem__,
        len(picks),
        lambda: None,
        with_cluster=False,
        check=check,
    )
    return imported.imported


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a host or CUDA out-of-memory error (torch only looked up when imported)."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return isinstance(oom, type) and isinstance(exc, oom)


def _free_gpu_memory() -> None:
    """Give the failed chunk's cached CUDA blocks back, so the models this worker holds go on serving."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception as exc:  # freeing is best effort; the error is reported either way
        log.debug("cuda_empty_cache_failed", error=str(exc)[:200])
