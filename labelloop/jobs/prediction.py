"""The predict job (Label Studio's ``/predict``) and the worker's one ``Predictor``, built on first use
and shared with the pre-annotation (``labelloop.jobs.preannotation``), and the warm-up that loads the
served models of the most recently served projects when a predict worker starts (``Predictors.warm``;
``workers.warmup`` runs it in each pool child)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import structlog

from labelloop.labelstudio import client as labelstudio
from labelloop.labelstudio.media import MediaConfig
from labelloop.labelstudio.region_check import RegionCheck
from labelloop.ls_json import Prediction, Task
from labelloop.registry.params import load as load_params
from labelloop.registry.params import train_spec
from labelloop.registry.store import Registry
from labelloop.serving.predictor import Predictor
from labelloop.serving.selection import SelectionWritten, deadline_s, predict_selection, write_selection
from labelloop.serving.video import VideoOptions
from labelloop.settings import Settings
from labelloop.task_types.informativeness import Strategy
from labelloop.task_types.labels import TrainSpec

log = structlog.get_logger(__name__)


class _PredictOptions(TypedDict):
    """A project's options for ``predict_selection`` and ``write_selection``."""

    imgsz: int | None
    score_strategy: Strategy | None
    show_conf: float | None


class PredictResponse(TypedDict):
    """Label Studio's ``/predict`` response body: one item per task, in the tasks' order."""

    results: list[Prediction | list[Any]]


@dataclass(frozen=True)
class ServedProject:
    """A project with a served version: its ``CURRENT`` and when it last moved.

    Attributes:
        project_id: the Label Studio project id.
        version: the served version's name (``CURRENT``).
        served_at: UTC ``%Y-%m-%dT%H:%M:%SZ`` of the last change of ``CURRENT`` in the project's
            history (``labelloop.registry.history``); "" when the history has none.
    """

    project_id: int
    version: str
    served_at: str


def served_projects(registry: Registry) -> list[ServedProject]:
    """Every registry project that has a served version, in project id order (one ``CURRENT`` read
    and one history read per project)."""
    out = []
    for project_id in registry.projects():
        version = registry.current_name(project_id)
        if version is None:
            continue
        history = registry.history(project_id)
        out.append(ServedProject(project_id, version, str(history[-1].get("at", "")) if history else ""))
    return out


def warm_plan(served: list[ServedProject], limit: int) -> list[ServedProject]:
    """The projects a predict worker loads when it starts: the most recently served first (by
    ``served_at``; a tie: the higher project id first, the newer project), at most ``limit``
    (``LABELLOOP_PREDICT_CACHE_PROJECTS``: what the predictor keeps loaded, so the warm-up drops none)."""
    ordered = sorted(served, key=lambda p: (p.served_at, p.project_id), reverse=True)
    return ordered[: max(0, limit)]


class WarmOutcome(TypedDict):
    """What ``Predictors.warm`` loaded: ``projects`` and their ``versions`` (same order, in load
    order: the most recently served last), the ``failed`` project ids (their load raised; logged,
    skipped), ``seconds``."""

    projects: list[int]
    versions: list[str]
    failed: list[int]
    seconds: float


class Predictors:
    """The worker's ``Predictor`` (``labelloop.serving.predictor``), built once from the settings
    and subscribed to served-version changes (``Predictor.listen``).

    Built under a lock on first use: a predict worker's warm-up thread (``warm``) and its first
    task may ask for it at the same time, and must share one.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._predictor: Predictor | None = None
        self._lock = threading.Lock()

    @property
    def predictor(self) -> Predictor:
        """The one ``Predictor`` of this process, built on first use (imports nothing heavy: the
        Ultralytics import happens at the first model load)."""
        with self._lock:
            if self._predictor is None:
                self._predictor = self._build()
            return self._predictor

    def _build(self) -> Predictor:
        s = self.settings
        p = Predictor(
            Registry(s.models_dir),
            s.base_model,
            s.paths.yolo_config_dir,
            Path(s.cache_dir).absolute(),
            s.imgsz,
            s.predict_conf,
            s.device,
            media=MediaConfig.from_settings(s),
            cache_projects=s.predict_cache_projects,
            score_strategy=s.score_strategy,
            show_conf=s.show_conf,
            video=VideoOptions.from_settings(s),
        )
        p.listen(s.redis_url)
        return p

    def warm(self) -> WarmOutcome:
        """Load the served versions of the most recently served projects (``warm_plan``, at most
        ``LABELLOOP_PREDICT_CACHE_PROJECTS``; loaded oldest first, so the most recently served is the
        cache's most recently used) as ``/predict`` would
        (``Predictor.model_for``: a request for a project that is loading waits for that load and
        never loads it again), so the first ``/predict`` after a start spends its
        ``LABELLOOP_PREDICT_DEADLINE_S`` on predicting. Call it in a pool child, never in a process
        that forks (it initialises CUDA).

        A project whose load raises is logged (``predict_warm_failed``) and skipped; logs
        ``predict_warm`` with the outcome. The predictor is not built when no project is served.
        """
        t0 = time.monotonic()
        plan = warm_plan(served_projects(Registry(self.settings.models_dir)), self.settings.predict_cache_projects)
        out: WarmOutcome = {"projects": [], "versions": [], "failed": [], "seconds": 0.0}
        if plan:
            predictor = self.predictor
            for served in reversed(plan):  # the newest last: the predictor's cache keeps it longest
                t1 = time.monotonic()
                try:
                    loaded = predictor.model_for(served.project_id)
                except Exception as exc:  # one project's weights never stop the worker or the others
                    out["failed"].append(served.project_id)
                    log.warning(
                        "predict_warm_failed",
                        project_id=served.project_id,
                        version=served.version,
                        error_type=type(exc).__name__,
                        error=str(exc)[:500],
                        seconds=round(time.monotonic() - t1, 3),
                    )
                    continue
                if loaded is not None:
                    out["projects"].append(served.project_id)
                    out["versions"].append(loaded.version)
        out["seconds"] = round(time.monotonic() - t0, 3)
        log.info("predict_warm", **out)
        return out


class PredictJob:
    """Regions for Label Studio tasks with a project's served version.

    Args:
        settings: the worker's settings.
        predictors: the worker's shared ``Predictor``.
    """

    def __init__(self, settings: Settings, predictors: Predictors) -> None:
        self.settings = settings
        self.predictors = predictors

    def predict(
        self, project_id: int, label_config: str, tasks: list[Task], expires: datetime | None = None
    ) -> PredictResponse:
        """Regions for Label Studio tasks with the project's served version: ``{"results": [...]}``,
        one item per task in order (Label Studio's ``/predict`` response), predicted in chunks of
        ``LABELLOOP_PREDICT_BATCH`` until ``LABELLOOP_PREDICT_DEADLINE_S`` (``labelloop.serving.selection``:
        a task left by the deadline gets ``[]``), or until ``expires`` draws near (the predict task's
        expiry: when the receiver stops waiting; ``labelloop.serving.selection.deadline_s``).

        Raises:
            UnavailableError: out of memory on a chunk.
        """
        s = self.settings
        spec, options = self._project(project_id, label_config)
        results = predict_selection(
            self.predictors.predictor,
            project_id,
            spec,
            tasks,
            s.label_studio_url,
            s.api_key,
            s.predict_batch,
            deadline_s(s.predict_deadline_s, expires, datetime.now(UTC)),
            **options,
        )
        return {"results": results}

    def _project(self, project_id: int, label_config: str) -> tuple[TrainSpec, _PredictOptions]:
        """The project's ``TrainSpec`` for ``label_config`` and its predict options (imgsz,
        score strategy, display threshold) from its stored params."""
        params = load_params(self.settings.models_dir, project_id)
        options: _PredictOptions = {
            "imgsz": params.effective(self.settings)["imgsz"],
            "score_strategy": params.score_strategy,
            "show_conf": params.show_conf,
        }
        return train_spec(label_config, params), options

    def write_selection(self, project_id: int, label_config: str, tasks: list[Task]) -> SelectionWritten:
        """A ``/predict`` selection over ``LABELLOOP_PREDICT_MAX_TASKS``, handed to the pre-annotation
        queue: predicted with the project's served version in chunks of ``LABELLOOP_PREDICT_BATCH``
        and written into Label Studio as predictions (``labelloop.serving.selection.write_selection``).

        Raises:
            LabelStudioUnavailable, LabelStudioError: writing to Label Studio failed.
            UnavailableError: out of memory on a chunk.
        """
        s = self.settings
        spec, options = self._project(project_id, label_config)
        with labelstudio.calling(s.label_studio_url, f"writing a selection's predictions into project {project_id}"):
            return write_selection(
                labelstudio.client(s.label_studio_url, s.api_key),
                self.predictors.predictor,
                project_id,
                spec,
                tasks,
                s.label_studio_url,
                s.api_key,
                s.predict_batch,
                check=RegionCheck(label_config),
                **options,
            )
