"""The pre-annotation jobs: a newly promoted version's predictions into Label Studio, and before
a project's first version the first picks (``labelloop.serving.first_picks``); with them the
Data Manager tabs they keep (``labelloop.labelstudio.tabs``) and the label-mistake scoring that
follows a pre-annotation (``labelloop.quality.mistakes``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import structlog

from labelloop.jobs.prediction import Predictors
from labelloop.jobs.progress import PreannotationProgress, ProgressStore
from labelloop.labelstudio import client as labelstudio
from labelloop.labelstudio.media import ImageCache, MediaConfig
from labelloop.labelstudio.sampling import FIRST_PICKS_VERSION
from labelloop.labelstudio.tabs import ensure_tab, mistakes_tab_data
from labelloop.quality.mistakes import score_project
from labelloop.registry.params import load as load_params
from labelloop.registry.store import Registry
from labelloop.serving.first_picks import FirstPicksOutcome, first_picks
from labelloop.serving.preannotate import Generation, PreannotateOutcome, preannotate_project
from labelloop.settings import Settings

log = structlog.get_logger(__name__)

PreannotationReport = Callable[[PreannotationProgress], None]


class PreannotationJob:
    """Pre-annotation and first picks of one worker.

    Args:
        settings: the worker's settings.
        client: the worker's Redis client (progress records, pre-annotation generations).
        predictors: the worker's shared ``Predictor``.
    """

    def __init__(self, settings: Settings, client: redis.Redis, predictors: Predictors) -> None:
        self.settings = settings
        self.redis = client
        self.predictors = predictors

    def _reporter(self, project_id: int, version: str, report: PreannotationReport) -> Callable[[int, int], None]:
        """``on_progress(done, total)``: to ``report`` and to the progress record."""
        progress = ProgressStore(self.redis)

        def on_progress(done: int, total: int) -> None:
            meta: PreannotationProgress = {"project_id": project_id, "version": version, "done": done, "total": total}
            report(meta)
            progress.set_preannotation(project_id, meta)

        return on_progress

    def preannotate(self, project_id: int, version: str, report: PreannotationReport) -> PreannotateOutcome:
        """Predict every unlabeled task of a project with a newly promoted version into Label Studio,
        in batches of ``LABELLOOP_PREANNOTATE_BATCH``; ``report`` gets ``{"project_id", "version",
        "done", "total"}`` after each batch (also kept in ``ProgressStore.preannotation``).

        The run claims the project's newest generation first, so it supersedes any older run, and
        stops between batches once another version is served or a newer run starts (see
        ``labelloop.serving.preannotate``).

        Returns:
            ``preannotate_project``'s outcome.
        """
        s = self.settings
        progress = ProgressStore(self.redis)
        generation = Generation.claim(self.redis, project_id)
        on_progress = self._reporter(project_id, version, report)
        try:
            with labelstudio.calling(s.label_studio_url, f"pre-annotating project {project_id}"):
                client = labelstudio.client(s.label_studio_url, s.api_key)
                effective = load_params(s.models_dir, project_id).effective(s)
                if effective["informative_tab"]:
                    self.informative_tab(client, project_id)
                outcome = preannotate_project(
                    client,
                    self.predictors.predictor,
                    project_id,
                    version,
                    s.preannotate_batch,
                    s.label_studio_url,
                    s.api_key,
                    s.set_project_model_version,
                    on_progress,
                    generation,
                    set_sampling=effective["set_sampling"],
                    budget=effective["train_every_n"],
                )
        finally:
            progress.clear_preannotation(project_id, version)
        # After the pre-annotation's progress ended: scoring the annotations is advice that follows it.
        if s.label_mistakes and outcome["stopped"] is None:
            self.label_mistakes(client, project_id)
        return outcome

    def first_picks(self, project_id: int, report: PreannotationReport) -> FirstPicksOutcome:
        """Before a project's first version, order its unlabeled tasks by coverage of the images and
        import them as predictions of ``labelloop-first-picks`` (``labelloop.serving.first_picks``);
        ``report`` gets ``{"project_id", "version", "done", "total"}`` after each imported batch.

        Does nothing when the project has a served version, first picks are off
        (``LABELLOOP_FIRST_PICKS`` / extra param ``first_picks``) or every unlabeled task has its
        first pick already. Claims the project's pre-annotation generation: a version's
        pre-annotation started later stops it.

        Returns:
            ``labelloop.serving.first_picks.first_picks``'s outcome, or ``{"status": "off"}``.
        """
        s = self.settings
        effective = load_params(s.models_dir, project_id).effective(s)
        if not effective["first_picks"]:
            return FirstPicksOutcome(status="off")
        progress = ProgressStore(self.redis)
        generation = Generation.claim(self.redis, project_id)
        version = FIRST_PICKS_VERSION
        on_progress = self._reporter(project_id, version, report)
        images = ImageCache(Path(s.cache_dir).absolute() / "images", MediaConfig.from_settings(s))
        try:
            with images, labelstudio.calling(s.label_studio_url, f"ordering the first picks of project {project_id}"):
                client = labelstudio.client(s.label_studio_url, s.api_key)
                if effective["informative_tab"]:
                    self.informative_tab(client, project_id)
                return first_picks(
                    client,
                    images,
                    Registry(s.models_dir),
                    project_id,
                    s.preannotate_batch,
                    effective["train_every_n"],
                    effective["set_sampling"],
                    generation,
                    on_progress,
                )
        finally:
            progress.clear_preannotation(project_id, version)

    def informative_tab(self, client: Any, project_id: int) -> None:
        """Keep the project's Data Manager tab "labelloop: most informative first" (``labelloop.labelstudio.tabs``);
        a failure is logged, never fails the pre-annotation it comes with."""
        try:
            view_id, what = ensure_tab(client, project_id)
            log.info("informative_tab", project_id=project_id, view_id=view_id, change=what)
        except Exception as exc:  # the tab is a convenience; predictions matter more
            log.warning("informative_tab_failed", project_id=project_id, error=str(exc)[:500])

    def label_mistakes(self, client: Any, project_id: int) -> None:
        """Score the project's annotations and keep its tab "labelloop: possible label mistakes"
        (``labelloop.quality.mistakes``); a failure is logged, never fails the pre-annotation it follows."""
        s = self.settings
        try:
            report = score_project(
                client, self.predictors.predictor, project_id, s.label_studio_url, s.api_key, s.preannotate_batch
            )
            if not report["supported"]:
                log.info("label_mistakes_unsupported", project_id=project_id, reason=report["reason"])
                return
            view_id, what = ensure_tab(client, project_id, mistakes_tab_data())
            log.info("label_mistakes_tab", project_id=project_id, view_id=view_id, change=what, scored=report["scored"])
        except Exception as exc:  # the queue is advice; the pre-annotation matters more
            log.warning("label_mistakes_failed", project_id=project_id, error=str(exc)[:500])
