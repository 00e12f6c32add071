"""Pre-annotation against a real Label Studio 1.23.2 and a really trained model: the task list is
read in bounded pages without predictions or annotations, a retried run imports no task's
prediction twice, and the predictions of versions retention removed leave Label Studio."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from labelloop.labelstudio import task_pages
from labelloop.labelstudio.media import MediaConfig
from labelloop.registry.store import Registry
from labelloop.serving.preannotate import preannotate_project
from labelloop.serving.predictor import Predictor
from tests.factories import publish_version, served_image_project

PAGE = 7


def _client(url: str, token: str, sent: list[httpx.Request]) -> Any:
    """A label-studio-sdk client whose every request is recorded in ``sent``."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=token, httpx_client=httpx.Client(event_hooks={"request": [sent.append]}))


def _predictor(tmp_path: Path, weights: str, project_id: int, versions: int) -> Predictor:
    """A predictor over a registry holding ``versions`` promoted copies of ``weights`` (the last served)."""
    registry = Registry(tmp_path / "models")
    for _ in range(versions):
        publish_version(registry, project_id, weights)
    media = MediaConfig(label_studio_url=None, api_key=None, allow_hosts=("127.0.0.1",))
    return Predictor(registry, "yolov8n.yaml", tmp_path / "yolo", tmp_path / "cache", 160, 0.01, media=media)


def _versions(client: Any, project_id: int) -> dict[int, Counter[str]]:
    """Model versions of the predictions Label Studio stores, counted per task id."""
    return {
        int(t.id): Counter(str(getattr(p, "model_version", None)) for p in t.predictions or [])
        for t in client.tasks.list(project=project_id, fields="all")
    }


def _run(client: Any, predictor: Predictor, project_id: int, version: str) -> dict[str, Any]:
    return preannotate_project(client, predictor, project_id, version, 8, None, None, False)


@pytest.mark.labelstudio
def test_task_list_is_paged_without_predictions_and_a_retry_imports_nothing_twice(
    label_studio: tuple[str, str],
    trained: dict,
    image_server: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With 30 tasks (4 annotated, 5 already holding a v1 prediction from a run cut short), every
    GET /api/tasks/ asks for one page of at most 7 tasks with fields=task_only (6 requests), the
    run imports v1 into the 21 other unlabeled tasks only, and its retry imports nothing: each
    unlabeled task ends with exactly one v1 prediction, each annotated task with none."""
    url, token = label_studio
    base_url, _ = image_server
    sent: list[httpx.Request] = []
    client = _client(url, token, sent)
    project_id, ids = served_image_project(client, "labelloop pages", base_url, 30, annotate=4)
    predictor = _predictor(tmp_path, trained["result"]["best"], project_id, 1)
    cut_short = ids[4:9]
    client.projects.import_predictions(
        id=project_id, request=[{"task": t, "result": [], "score": 0.5, "model_version": "v1"} for t in cut_short]
    )
    monkeypatch.setattr(task_pages, "PAGE_SIZE", PAGE)
    sent.clear()

    first = _run(client, predictor, project_id, "v1")

    listed = [parse_qs(urlparse(str(r.url)).query) for r in sent if urlparse(str(r.url)).path == "/api/tasks/"]
    assert all(q.get("fields") == ["task_only"] and int(q["page_size"][0]) <= PAGE for q in listed), listed
    assert len(listed) == math.ceil(30 / PAGE) + math.ceil(len(cut_short) / PAGE)
    assert (first["tasks"], first["imported"], first["stopped"]) == (21, 21, None)
    sent.clear()
    retry = _run(client, predictor, project_id, "v1")
    assert (retry["tasks"], retry["imported"]) == (0, 0)
    assert not [r for r in sent if r.method == "POST"], "the retry posted to Label Studio"
    stored = _versions(client, project_id)
    assert all(stored[t]["v1"] == 0 for t in ids[:4])
    assert all(stored[t]["v1"] == 1 for t in ids[4:]), {t: stored[t] for t in ids[4:]}


@pytest.mark.labelstudio
def test_predictions_of_versions_retention_removed_leave_label_studio(
    label_studio: tuple[str, str], trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """After retention deleted v1 (v3 served, v2 its rollback target), the next pre-annotation
    deletes every v1 prediction from Label Studio and keeps those of v2 and of another ML backend."""
    url, token = label_studio
    base_url, _ = image_server
    client = _client(url, token, [])
    project_id, ids = served_image_project(client, "labelloop pages", base_url, 6)
    predictor = _predictor(tmp_path, trained["result"]["best"], project_id, 3)
    client.projects.import_predictions(
        id=project_id,
        request=[
            {"task": t, "result": [], "score": 0.5, "model_version": v} for t in ids for v in ("v1", "v2", "other")
        ],
    )
    assert predictor.registry.prune(project_id, keep_last=1) == ["v1"]

    outcome = _run(client, predictor, project_id, "v3")

    assert outcome["imported"] == 6
    stored = _versions(client, project_id)
    assert all(stored[t] == Counter({"v2": 1, "other": 1, "v3": 1}) for t in ids), stored
