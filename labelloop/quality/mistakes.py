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

**Report.** ``mistakes.json`` in the project's registry directory (``labelloop.quality.mistakes_report``): every
scored task, worst first, with its issues and boxes in percent, for the page's drawings.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypedDict

import structlog

from labelloop.labelstudio.export import export_tasks, select_annotation
from labelloop.ls_json import Annotation, Task
from labelloop.quality.label_quality import SUPPORTED_TASKS, Box, boxes_from_result, score_tasks
from labelloop.quality.mistakes_report import read_report, write_report
from labelloop.quality.records import IssueRecord, MistakesReport, ScoredTask
from labelloop.registry.params import load as load_params
from labelloop.registry.params import train_spec
from labelloop.serving.predictor import Predictor
from labelloop.task_types.labels import TrainSpec

log = structlog.get_logger(__name__)

QUALITY_KEY = "labelloop_label_quality"
SUSPECTED_KEY = "labelloop_suspected"
PREDICT_CONF = 0.01  # keep low-confidence boxes: cleanlab's scores use them (its documented advice)
SHOWN_ISSUES = 3  # issues written into a task's ``labelloop_suspected``


class ToScore(TypedDict):
    """A task to score: its id, its ``data`` (for the image) and the annotation judged."""

    id: int
    data: dict[str, Any]
    annotation: Annotation


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
) -> MistakesReport:
    """Score every annotated task of the project, write the scores into the tasks' ``data`` and
    keep the report (``mistakes.json``).

    Blocking (Label Studio export, Ultralytics predictions). Tasks whose annotation and judging
    version are the same as in the last report keep their score and are not predicted again (an
    edited annotation, a new ``updated_at``, is). Logs ``label_mistakes_scored``.

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
    report: MistakesReport = {"project_id": project_id, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    versions = registry.list_versions(project_id)
    task_type = str(versions[-1].manifest.get("task") or spec.task) if versions else spec.task
    if task_type not in SUPPORTED_TASKS:
        reason = f"label mistakes are scored for detection (RectangleLabels) only; this project trains {task_type}"
        report.update({"supported": False, "reason": reason, "scored": 0, "unscored": 0, "predicted": 0, "tasks": []})
        write_report(registry, project_id, report)
        return report
    tasks: dict[int, Task] = {int(t["id"]): t for t in export_tasks(client, project_id)}
    chosen: dict[int, Annotation] = {tid: a for tid, t in tasks.items() if (a := select_annotation(t)) is not None}
    judges = pick_versions(
        {tid: int(a["id"]) for tid, a in chosen.items()}, [(v.name, set(v.annotations())) for v in versions]
    )
    rows, todo = _kept_rows(read_report(registry, project_id)["tasks"], judges, chosen)
    for version, ids in todo.items():
        batch: list[ToScore] = [{"id": tid, "data": dict(tasks[tid]["data"]), "annotation": chosen[tid]} for tid in ids]
        rows += score_with(predictor, project_id, spec, batch, version, hostname, api_key, params.imgsz, batch_size)
    rows.sort(key=lambda r: (r["score"], r["task"]))
    written = write_scores(client, tasks, rows)
    report.update(
        {
            "supported": True,
            "reason": None,
            "scored": len(rows),
            "unscored": sum(1 for v in judges.values() if v is None),
            "predicted": sum(len(i) for i in todo.values()),
            "tasks": rows,
        }
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


def _kept_rows(
    last: list[ScoredTask], judges: dict[int, str | None], chosen: Mapping[int, Annotation]
) -> tuple[list[ScoredTask], dict[str, list[int]]]:
    """The last report's rows still valid (same task, annotation, ``updated_at`` and judging
    version), and the task ids to predict again per judging version."""
    previous = {(r["task"], r["annotation"], r.get("updated_at"), r["version"]): r for r in last}
    rows: list[ScoredTask] = []
    todo: dict[str, list[int]] = defaultdict(list)
    for tid, version in judges.items():
        if version is None:
            continue
        kept = previous.get((tid, int(chosen[tid]["id"]), chosen[tid].get("updated_at"), version))
        if kept is not None:
            rows.append(kept)
        else:
            todo[version].append(tid)
    return rows, todo


def score_with(
    predictor: Predictor,
    project_id: int,
    spec: TrainSpec,
    tasks: list[ToScore],
    version: str,
    hostname: str | None,
    api_key: str | None,
    imgsz: int | None,
    batch_size: int,
) -> list[ScoredTask]:
    """Predict ``tasks`` (``[{"id", "data", "annotation"}]``) with ``version`` at ``PREDICT_CONF``,
    ``batch_size`` images per Ultralytics batch, and score each annotation against its predictions
    (``label_quality.score_tasks``).

    Returns:
        one report row per task, in order: ``{"task", "annotation", "updated_at", "version", "score",
        "issues", "boxes"}``.
    """
    pairs: list[tuple[list[Box], list[Box]]] = []
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start : start + batch_size]
        predicted = predictor.predict(
            project_id,
            spec,
            [{"id": t["id"], "data": t["data"]} for t in chunk],
            hostname,
            api_key,
            imgsz=imgsz,
            version=version,
            show_conf=PREDICT_CONF,
        )
        for task, pred in zip(chunk, predicted, strict=True):
            annotated = boxes_from_result(task["annotation"].get("result") or [])
            pairs.append((annotated, boxes_from_result(pred["result"], scored=True)))
    return [
        {
            "task": task["id"],
            "annotation": int(task["annotation"]["id"]),
            "updated_at": task["annotation"].get("updated_at"),
            "version": version,
            "score": round(quality.score, 4),
            "issues": [i.record() for i in quality.issues],
            "boxes": quality.boxes,
        }
        for task, quality in zip(tasks, score_tasks(pairs, spec.labels), strict=True)
    ]


def suspected_text(issues: list[IssueRecord]) -> str:
    """The tasks' ``labelloop_suspected``: its worst ``SHOWN_ISSUES`` issues, ``"; "``-joined."""
    parts = []
    for i in issues[:SHOWN_ISSUES]:
        what = f"{i['label']} (model: {i['predicted']})" if i.get("predicted") else i["label"]
        parts.append(f"{i['kind']}: {what} at x={i['region']['x']:.1f}% y={i['region']['y']:.1f}%")
    return "; ".join(parts)


def write_scores(client: Any, tasks: Mapping[int, Task], rows: list[ScoredTask]) -> int:
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
