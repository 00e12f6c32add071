"""The annotations the model disagrees with: score every annotated task of a project, write the
scores where Label Studio's Data Manager can sort on them, and keep a report for the project page.

**Which version judges an annotation.** A model trained on an annotation learns it, mistakes
included, so it cannot judge it. Each annotated task is scored with the **newest version whose
training set does not hold that annotation** (``ModelVersion.annotations``, the annotation ids
each version was trained on): as every version is trained on all the annotations saved before
it, that is the version that was served, or being trained, when the annotation was saved, the
best model that never saw it (``pick_versions``). An annotation that every version was trained
on (the first ones, before ``v1``) is not scored and is counted in ``unscored``; cross-fitting
(training k models on k folds) would score those too at k trainings' cost, which labelloop does
not spend on every promotion (bench/mistakes does it once, with two folds).

**Where the scores go.** Label Studio 1.23.2's Data Manager sorts on task fields, on the
average ``predictions_score`` of the project's model version only (``annotate_predictions_score``
in ``data_manager/managers.py``) and on ``data.*`` keys, numerically when the tab says the column
is a Number (``apply_ordering``). So each scored task gets two keys in its ``data``:
``labelloop_label_quality`` (``Quality.score``, 4 decimals; low: likely mistaken) and
``labelloop_suspected`` (its worst issues, one line each). The annotations and predictions
are never written; the task's other ``data`` keys are sent back as they were read.

**Report.** ``mistakes.json`` in the project's registry directory (``read_report``): every
scored task, worst first, with its issues and boxes in percent, for the page's drawings.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from labelloop.export import export_tasks, select_annotation
from labelloop.files import write_atomic
from labelloop.label_quality import SUPPORTED_TASKS, Box, boxes_from_result, score_tasks
from labelloop.params import load as load_params
from labelloop.params import train_spec
from labelloop.predictor import Predictor
from labelloop.registry import Registry

log = structlog.get_logger(__name__)

QUALITY_KEY = "labelloop_label_quality"
SUSPECTED_KEY = "labelloop_suspected"
REPORT = "mistakes.json"
PREDICT_CONF = 0.01  # keep low-confidence boxes: cleanlab's scores use them (its documented advice)
SHOWN_ISSUES = 3  # issues written into a task's ``labelloop_suspected``


def pick_versions(annotations: dict[int, int], trained: list[tuple[str, set[str]]]) -> dict[int, str | None]:
    """Per task, the version that judges its annotation (see the module docstring).

    Args:
        annotations: task id -> the id of the annotation labelloop trains on (``select_annotation``).
        trained: ``(version name, annotation ids it was trained on as text)``, oldest first.

    Returns:
        task id -> the newest version not trained on that annotation, or None when every
        version was.
    """
    return {
        task: next((name for name, ids in reversed(trained) if str(annotation) not in ids), None)
        for task, annotation in annotations.items()
    }


def score_project(
    client: Any,
    predictor: Predictor,
    project_id: int,
    hostname: str | None,
    api_key: str | None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Score every annotated task of the project, write the scores into the tasks' ``data`` and
    keep the report (``mistakes.json``).

    Blocking (Label Studio export, Ultralytics predictions on CPU or GPU). Tasks whose annotation
    and judging version are the same as in the last report keep their score and are not
    predicted again. Logs ``label_mistakes_scored``.

    Returns:
        the report: ``{"project_id", "at", "supported", "reason", "scored", "unscored", "predicted",
        "tasks": [{"task", "annotation", "version", "score", "issues", "boxes"}, ...]}``,
        tasks worst first. ``supported`` is False (with ``reason``) for a label config that is
        not detection (``label_quality.SUPPORTED_TASKS``): nothing is scored or written.

    Raises:
        label-studio-sdk / httpx errors (call it inside ``labelstudio.calling``).
    """
    t0 = time.monotonic()
    registry = predictor.registry
    params = load_params(registry.root, project_id)
    project = client.projects.get(id=project_id)
    spec = train_spec(project.label_config, params)
    report: dict[str, Any] = {"project_id": project_id, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    versions = registry.list_versions(project_id)
    task_type = str(versions[-1].manifest.get("task") or spec.task) if versions else spec.task
    if task_type not in SUPPORTED_TASKS:
        reason = (
            f"label mistakes are scored for detection (RectangleLabels) only; this project trains {task_type}: "
            "cleanlab's ObjectLab is defined for axis-aligned boxes"
        )
        report.update(supported=False, reason=reason, scored=0, unscored=0, predicted=0, tasks=[])
        write_report(registry, project_id, report)
        return report
    tasks = {int(t["id"]): t for t in export_tasks(client, project_id)}
    chosen = {tid: a for tid, t in tasks.items() if (a := select_annotation(t)) is not None}
    judges = pick_versions(
        {tid: int(a["id"]) for tid, a in chosen.items()}, [(v.name, set(v.annotations())) for v in versions]
    )
    previous = {(r["task"], r["annotation"], r["version"]): r for r in read_report(registry, project_id)["tasks"]}
    rows: list[dict[str, Any]] = []
    todo: dict[str, list[int]] = defaultdict(list)
    for tid, version in judges.items():
        if version is None:
            continue
        kept = previous.get((tid, int(chosen[tid]["id"]), version))
        if kept is not None:
            rows.append(kept)
        else:
            todo[version].append(tid)
    for version, ids in todo.items():
        pairs: list[tuple[list[Box], list[Box]]] = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            batch = [{"id": tid, "data": dict(tasks[tid]["data"])} for tid in chunk]
            predicted = predictor.predict(
                project_id, spec, batch, hostname, api_key, imgsz=params.imgsz, version=version, show_conf=PREDICT_CONF
            )
            for tid, pred in zip(chunk, predicted, strict=True):
                annotated = boxes_from_result(chosen[tid].get("result") or [])
                pairs.append((annotated, boxes_from_result(pred["result"], scored=True)))
        for tid, quality in zip(ids, score_tasks(pairs, spec.labels), strict=True):
            rows.append(
                {
                    "task": tid,
                    "annotation": int(chosen[tid]["id"]),
                    "version": version,
                    "score": round(quality.score, 4),
                    "issues": [asdict(i) for i in quality.issues],
                    "boxes": quality.boxes,
                }
            )
    rows.sort(key=lambda r: (r["score"], r["task"]))
    written = write_scores(client, tasks, rows)
    report.update(
        supported=True,
        reason=None,
        scored=len(rows),
        unscored=sum(1 for v in judges.values() if v is None),
        predicted=sum(len(i) for i in todo.values()),
        tasks=rows,
    )
    write_report(registry, project_id, report)
    log.info(
        "label_mistakes_scored",
        project_id=project_id,
        scored=len(rows),
        predicted=report["predicted"],
        unscored=report["unscored"],
        written=written,
        seconds=round(time.monotonic() - t0, 3),
    )
    return report


def suspected_text(issues: list[dict[str, Any]]) -> str:
    """The tasks' ``labelloop_suspected``: its worst ``SHOWN_ISSUES`` issues, ``"; "``-joined."""
    parts = []
    for i in issues[:SHOWN_ISSUES]:
        what = f"{i['label']} (model: {i['predicted']})" if i.get("predicted") else i["label"]
        parts.append(f"{i['kind']}: {what} at x={i['region']['x']:.1f}% y={i['region']['y']:.1f}%")
    return "; ".join(parts)


def write_scores(client: Any, tasks: dict[int, dict[str, Any]], rows: list[dict[str, Any]]) -> int:
    """Set ``labelloop_label_quality`` and ``labelloop_suspected`` in each scored task's ``data``
    (``PATCH /api/tasks/{id}`` with the whole ``data``, label-studio-sdk ``tasks.update``), only
    where they changed. Annotations and predictions are not sent.

    Returns:
        the number of tasks written.
    """
    written = 0
    for row in rows:
        data = dict(tasks[row["task"]].get("data") or {})
        want = {QUALITY_KEY: row["score"], SUSPECTED_KEY: suspected_text(row["issues"])}
        if all(data.get(k) == v for k, v in want.items()):
            continue
        client.tasks.update(id=str(row["task"]), data={**data, **want})
        written += 1
    return written


def report_path(registry: Registry, project_id: int) -> Path:
    return registry.project_dir(project_id) / REPORT


def write_report(registry: Registry, project_id: int, report: dict[str, Any]) -> None:
    """Replace the project's ``mistakes.json`` atomically."""
    path = report_path(registry, project_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report))


def read_report(registry: Registry, project_id: int) -> dict[str, Any]:
    """The project's last report, or an empty one (``{"tasks": []}``) when none can be read."""
    try:
        data = json.loads(report_path(registry, project_id).read_text())
    except (OSError, ValueError):
        return {"tasks": []}
    return data if isinstance(data, dict) and isinstance(data.get("tasks"), list) else {"tasks": []}
