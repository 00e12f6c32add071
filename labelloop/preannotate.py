"""Pre-annotate a whole project with a newly promoted version, in bounded batches that stop as
soon as a newer version is served.

Every task with no annotation and no prediction from that version is predicted in batches of
``batch_size`` (each batch one batched ``model.predict`` call) and the predictions are imported
with label-studio-sdk (``projects.import_predictions``), each with ``model_version`` and
``score`` set, so Label Studio's "Uncertainty sampling" serves the least certain tasks first
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from labelloop import keys
from labelloop.params import load as load_params
from labelloop.params import train_spec
from labelloop.predictor import Predictor

log = structlog.get_logger(__name__)

# A generation key outlives any run (a week); losing it only lets an older run go on until the
# registry's CURRENT moves.
GENERATION_TTL_S = 7 * 86400


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
    "newer_run" (a newer run claimed the project), or None to go on."""
    if predictor.registry.current_name(project_id) != version:
        return "version"
    if generation is not None and not generation.newest():
        return "newer_run"
    return None


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
) -> dict[str, Any]:
    """Predict and import predictions for the project's unlabeled tasks, ``batch_size`` at a time;
    a batch's import into Label Studio runs in a thread while the next batch is predicted.

    Stops (``stopped`` names why, see ``superseded_by``) before the first Label Studio read,
    before each batch's prediction and before its import, as soon as ``version`` is no longer
    served or a newer run holds the project: no work is spent on, and nothing is imported from,
    an old version after that. Logs ``preannotate_started``, then ``preannotate_batch`` per batch
    (version, batch, tasks, done, total, predict_s, import_s), ``preannotate_superseded`` when
    stopped and ``preannotated`` at the end. Long because the supersede checks, the import in
    flight and the progress reports share one loop's state.

    Returns:
        ``{"version", "tasks", "imported", "batches", "stopped"}`` (``stopped``: None when
        every task was done, else "version" or "newer_run").
    """
    outcome: dict[str, Any] = {"version": version, "tasks": 0, "imported": 0, "batches": 0, "stopped": None}
    if (why := superseded_by(predictor, project_id, version, generation)) is not None:
        outcome["stopped"] = why
        log.info("preannotate_superseded", version=version, imported=0, why=why)
        return outcome
    log.info("preannotate_started", version=version, generation=generation.number if generation else None)
    project = client.projects.get(id=project_id)
    params = load_params(predictor.registry.root, project_id)
    spec = train_spec(project.label_config, params)
    todo = tasks_to_predict(list(client.tasks.list(project=project_id, fields="all")), version)
    outcome["tasks"] = len(todo)
    if on_progress is not None:
        on_progress(0, len(todo))
    # One import into Label Studio runs while the next batch is predicted (at most one in flight).
    pending: tuple[Future[Any], dict[str, Any]] | None = None

    def finish() -> None:
        nonlocal pending
        if pending is None:
            return
        future, info = pending
        pending = None
        future.result()  # an import's error is the run's error
        outcome["imported"] += info["tasks"]
        outcome["batches"] += 1
        log.info(
            "preannotate_batch",
            version=version,
            done=outcome["imported"],
            total=len(todo),
            import_s=round(time.monotonic() - info.pop("sent"), 3),
            **info,
        )
        if on_progress is not None:
            on_progress(outcome["imported"], len(todo))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="preannotate-import") as imports:
        for number, start in enumerate(range(0, len(todo), batch_size)):
            if (why := superseded_by(predictor, project_id, version, generation)) is not None:
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
                imgsz=params.imgsz,
                version=version,
                score_strategy=params.score_strategy,
                show_conf=params.show_conf,
            )
            predict_s = round(time.monotonic() - t0, 3)
            finish()
            if (why := superseded_by(predictor, project_id, version, generation)) is not None:
                outcome["stopped"] = why
                break
            request = [
                {"task": t["id"], "result": r["result"], "score": r["score"], "model_version": r["model_version"]}
                for t, r in zip(batch, results, strict=True)
            ]
            future = imports.submit(client.projects.import_predictions, id=project_id, request=request)
            pending = (future, {"batch": number, "tasks": len(batch), "predict_s": predict_s, "sent": time.monotonic()})
        finish()
    if outcome["stopped"] is not None:
        log.info("preannotate_superseded", version=version, imported=outcome["imported"], why=outcome["stopped"])
    elif set_model_version:
        client.projects.update(id=project_id, model_version=version)
    log.info(
        "preannotated",
        version=version,
        tasks=len(todo),
        imported=outcome["imported"],
        batches=outcome["batches"],
        stopped=outcome["stopped"],
    )
    return outcome
