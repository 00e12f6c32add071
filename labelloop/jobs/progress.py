"""Training progress and cancellation per project, in Redis (a cache: losing it loses nothing).

Keys: ``labelloop:project:<id>:progress`` (JSON ``TrainingProgress``; expires a day after its last
update), ``labelloop:project:<id>:cancel`` (the run id to cancel), and
``labelloop:project:<id>:preannotate`` (JSON ``PreannotationProgress`` of the running
pre-annotation).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Required, TypedDict, Unpack, cast

import redis

from labelloop import keys

if TYPE_CHECKING:
    from labelloop.training.job import EpochProgress

TTL_S = 86400


class RunStage(TypedDict, total=False):
    """What a running training reports about itself (every field optional).

    Attributes:
        stage: "waiting for a quiet period", "preparing" or "training".
        task_id: the Celery task id of the delivery running it.
        pid: the worker process running it.
        epoch, epochs: the Ultralytics epoch just finished (1-based) and the planned epochs.
        metrics: Ultralytics' validation metrics after that epoch, by Ultralytics' own keys
            (``"metrics/mAP50-95(B)"``, ...; ``labelloop.training.child``).
        losses: the epoch's mean training losses (``"train/box_loss"``, ...).
    """

    stage: str
    task_id: str | None
    pid: int
    epoch: int
    epochs: int
    metrics: dict[str, float]
    losses: dict[str, float]


class TrainingProgress(RunStage, total=False):
    """The progress record of a project's running training: its ``RunStage`` fields merged over the
    run, plus ``run_id``, ``started_at`` and ``updated_at`` (epoch seconds)."""

    run_id: Required[str]
    started_at: float
    updated_at: float


class PreannotationProgress(TypedDict):
    """A running pre-annotation (or first-picks import): ``done`` of ``total`` unlabeled tasks of
    ``project_id`` predicted with ``version``."""

    project_id: int
    version: str
    done: int
    total: int


class ProgressStore:
    """The progress records of trainings and pre-annotations, and cancel requests, in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @staticmethod
    def _key(project_id: int, what: str) -> str:
        return keys.project(project_id, what)

    def update(self, project_id: int, run_id: str, **fields: Unpack[RunStage]) -> TrainingProgress:
        """Merge ``fields`` into the run's progress record (a new record when another run's is
        there) and return it."""
        before = self.get(project_id)
        if before is None or before.get("run_id") != run_id:
            before = {"run_id": run_id, "started_at": time.time()}
        current: TrainingProgress = {**before, **fields, "updated_at": time.time()}
        self.redis.set(self._key(project_id, "progress"), json.dumps(current), ex=TTL_S)
        return current

    def get(self, project_id: int) -> TrainingProgress | None:
        """The project's running training's record, or None."""
        raw = self.redis.get(self._key(project_id, "progress"))
        return cast(TrainingProgress, json.loads(raw)) if raw else None

    def clear(self, project_id: int, run_id: str) -> None:
        """Remove ``run_id``'s progress record (another run's stays) and any cancel request."""
        current = self.get(project_id)
        if current is not None and current.get("run_id") == run_id:
            self.redis.delete(self._key(project_id, "progress"))
        self.redis.delete(self._key(project_id, "cancel"))

    def set_preannotation(self, project_id: int, meta: PreannotationProgress | None) -> None:
        """Record (or, with None, clear) a running pre-annotation's progress."""
        key = self._key(project_id, "preannotate")
        if meta is None:
            self.redis.delete(key)
        else:
            self.redis.set(key, json.dumps(meta), ex=TTL_S)

    def clear_preannotation(self, project_id: int, version: str) -> None:
        """Clear the pre-annotation record if it is ``version``'s (a newer run's record stays)."""
        current = self.preannotation(project_id)
        if current is not None and current.get("version") == version:
            self.redis.delete(self._key(project_id, "preannotate"))

    def preannotation(self, project_id: int) -> PreannotationProgress | None:
        """The project's running pre-annotation's progress, or None."""
        raw = self.redis.get(self._key(project_id, "preannotate"))
        return cast(PreannotationProgress, json.loads(raw)) if raw else None

    def request_cancel(self, project_id: int) -> str | None:
        """Ask the running training of a project to stop; returns its run id, or None if none runs."""
        progress = self.get(project_id)
        if not progress:
            return None
        self.redis.set(self._key(project_id, "cancel"), progress["run_id"], ex=TTL_S)
        return str(progress["run_id"])

    def cancel_requested(self, project_id: int, run_id: str) -> bool:
        """Whether a cancel of ``run_id`` was requested (``request_cancel``)."""
        # redis-py types a reply as bytes | str; without decode_responses it is bytes.
        raw = cast(bytes | None, self.redis.get(self._key(project_id, "cancel")))
        return raw is not None and raw.decode() == run_id


def stage_of(report: EpochProgress) -> RunStage:
    """The ``RunStage`` fields of an epoch report from the training child
    (``labelloop.training.process.train_in_child``'s ``on_progress``: epoch, epochs, metrics,
    losses); a key the report lacks (a child of another version) is left out."""
    stage: RunStage = {}
    if "epoch" in report:
        stage["epoch"] = int(report["epoch"])
    if "epochs" in report:
        stage["epochs"] = int(report["epochs"])
    if "metrics" in report:
        stage["metrics"] = {str(k): float(v) for k, v in (report["metrics"] or {}).items()}
    if "losses" in report:
        stage["losses"] = {str(k): float(v) for k, v in (report["losses"] or {}).items()}
    return stage
