"""Pre-annotate a whole project with a newly promoted version.

Every task with no annotation and no prediction from that version is predicted in batches and
the predictions are imported with label-studio-sdk (``projects.import_predictions``), each with
``model_version`` and ``score`` set, so Label Studio's "Uncertainty sampling" serves the least
certain tasks first (https://labelstud.io/guide/active_learning). Optionally the project's
displayed model version becomes the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from labelloop.params import load as load_params
from labelloop.params import train_spec
from labelloop.predictor import Predictor

log = structlog.get_logger(__name__)


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
) -> dict[str, Any]:
    """Predict and import predictions for the project's unlabeled tasks.

    Stops early (``stopped: true``) when the served version is no longer ``version`` (a newer
    promotion or a rollback happened meanwhile): those predictions would carry another version.

    Returns:
        ``{"version", "tasks", "imported", "stopped"}``.
    """
    project = client.projects.get(id=project_id)
    params = load_params(predictor.registry.root, project_id)
    spec = train_spec(project.label_config, params)
    todo = tasks_to_predict(list(client.tasks.list(project=project_id, fields="all")), version)
    imported = 0
    stopped = False
    for start in range(0, len(todo), batch_size):
        if predictor.registry.current_name(project_id) != version:
            stopped = True
            break
        batch = todo[start : start + batch_size]
        results = predictor.predict(
            project_id, spec, batch, hostname, api_key, imgsz=params.imgsz, score_strategy=params.score_strategy
        )
        request = [
            {"task": t["id"], "result": r["result"], "score": r["score"], "model_version": r["model_version"]}
            for t, r in zip(batch, results, strict=True)
            if r["model_version"] == version
        ]
        if len(request) < len(batch):
            stopped = True
            break
        client.projects.import_predictions(id=project_id, request=request)
        imported += len(request)
        if on_progress is not None:
            on_progress(imported, len(todo))
    if set_model_version and not stopped:
        client.projects.update(id=project_id, model_version=version)
    log.info("preannotated", version=version, tasks=len(todo), imported=imported, stopped=stopped)
    return {"version": version, "tasks": len(todo), "imported": imported, "stopped": stopped}
