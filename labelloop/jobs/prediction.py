"""The predict job (Label Studio's ``/predict``) and the worker's one ``Predictor``, built on first use
and shared with the pre-annotation (``labelloop.jobs.preannotation``)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from labelloop.labelstudio.media import MediaConfig
from labelloop.ls_json import Prediction, Task
from labelloop.registry.params import load as load_params
from labelloop.registry.params import train_spec
from labelloop.registry.store import Registry
from labelloop.serving.predictor import Predictor
from labelloop.serving.selection import deadline_s, predict_selection
from labelloop.serving.video import VideoOptions
from labelloop.settings import Settings


class PredictResponse(TypedDict):
    """Label Studio's ``/predict`` response body: one item per task, in the tasks' order."""

    results: list[Prediction | list[Any]]


class Predictors:
    """The worker's ``Predictor`` (``labelloop.serving.predictor``), built on first use from the
    settings and subscribed to served-version changes (``Predictor.listen``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @functools.cached_property
    def predictor(self) -> Predictor:
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
        params = load_params(s.models_dir, project_id)
        spec = train_spec(label_config, params)
        imgsz = params.effective(s)["imgsz"]
        results = predict_selection(
            self.predictors.predictor,
            project_id,
            spec,
            tasks,
            s.label_studio_url,
            s.api_key,
            s.predict_batch,
            deadline_s(s.predict_deadline_s, expires, datetime.now(UTC)),
            imgsz=imgsz,
            score_strategy=params.score_strategy,
            show_conf=params.show_conf,
        )
        return {"results": results}
