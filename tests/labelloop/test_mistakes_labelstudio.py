"""labelloop.quality.mistakes against a real Label Studio and a real trained version: scores in the task data,
the mistakes tab worst first, annotations untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import make_sample
from labelloop.jobs.jobs import Jobs
from labelloop.labelstudio import client as labelstudio
from labelloop.labelstudio.media import MediaConfig
from labelloop.labelstudio.tabs import MISTAKES_TAB_TITLE, ensure_tab, mistakes_tab_data
from labelloop.quality.mistakes import QUALITY_KEY, SUSPECTED_KEY, score_project
from labelloop.quality.mistakes_report import read_report
from labelloop.registry.store import Registry
from labelloop.serving.predictor import Predictor
from tests.factories import image_project, make_settings, publish_version, served_image_project

CLASSIFY_CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="choice" toName="image"><Choice value="cat"/><Choice value="dog"/></Choices></View>"""


def _annotations(client: Any, project_id: int) -> dict[int, tuple[Any, str]]:
    """Per annotation id: its result and updated_at as Label Studio stores them."""
    out = {}
    for task in client.tasks.list(project=project_id, fields="all"):
        for a in task.annotations or []:
            a = a if isinstance(a, dict) else a.dict()
            out[int(a["id"])] = (a["result"], str(a["updated_at"]))
    return out


def _predictor(registry: Registry, trained: dict, tmp_path: Path) -> Predictor:
    media = MediaConfig(None, None, allow_hosts=("127.0.0.1",))
    return Predictor(registry, "yolov8n.yaml", trained["work"] / "yolo", tmp_path / "cache", 160, 0.0, media=media)


@pytest.mark.labelstudio
def test_annotations_scored_by_a_version_not_trained_on_them_and_listed_worst_first(
    label_studio: tuple[str, str], trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """Each annotation is judged by the newest version not trained on it (the others are counted
    unscored), its score and suspected issues land in the task data, the mistakes tab lists the
    annotated tasks by ascending score with unscored ones last, no annotation changes, and a second
    run predicts nothing again but an edited annotation."""
    ls_url, token = label_studio
    base_url, _ = image_server
    client = labelstudio.client(ls_url, token)
    pid, tasks = served_image_project(client, "mistakes", base_url, 7)
    ann = {}
    for i, tid in enumerate(tasks[:6]):
        result = make_sample(i, 160, 120).ls_result()
        if i == 4:  # a class swap
            result[0]["value"]["rectanglelabels"] = [
                "disc" if result[0]["value"]["rectanglelabels"] == ["square"] else "square"
            ]
        ann[tid] = int(client.annotations.create(id=tid, result=result, was_cancelled=False).id)
    before = _annotations(client, pid)

    registry = Registry(tmp_path / "models")
    for trained_on in (tasks[:3], tasks[:6]):
        publish_version(registry, pid, trained["result"]["best"], annotations={str(ann[t]): "x" for t in trained_on})
    predictor = _predictor(registry, trained, tmp_path)

    report = score_project(client, predictor, pid, None, None, batch_size=2)
    assert report["supported"] and report["scored"] == 3 and report["unscored"] == 3 and report["predicted"] == 3
    assert {r["task"]: r["version"] for r in report["tasks"]} == {t: "v1" for t in tasks[3:6]}
    scores = [r["score"] for r in report["tasks"]]
    assert scores == sorted(scores) and all(0.0 <= s <= 1.0 for s in scores)
    assert read_report(registry, pid)["tasks"] == report["tasks"]

    data = {int(t.id): dict(t.data) for t in client.tasks.list(project=pid, fields="task_only")}
    for r in report["tasks"]:
        assert data[r["task"]][QUALITY_KEY] == r["score"] and isinstance(data[r["task"]][SUSPECTED_KEY], str)
        assert data[r["task"]]["image"] == f"{base_url}/img{tasks.index(r['task'])}.png"
    assert all(QUALITY_KEY not in data[t] for t in tasks[:3] + tasks[6:])
    assert _annotations(client, pid) == before

    view_id, what = ensure_tab(client, pid, mistakes_tab_data())
    assert what == "created"
    listed = [int(t.id) for t in client.tasks.list(project=pid, view=view_id, fields="task_only")]
    assert set(listed) == set(tasks[:6])  # annotated only
    assert [data[t].get(QUALITY_KEY) for t in listed[:3]] == scores  # worst first
    assert set(listed[3:]) == set(tasks[:3])  # unscored last
    assert ensure_tab(client, pid, mistakes_tab_data()) == (view_id, "unchanged")
    titles = [(v.data or {}).get("title") for v in client.views.list(project=pid)]
    assert titles.count(MISTAKES_TAB_TITLE) == 1

    again = score_project(client, predictor, pid, None, None, batch_size=2)
    assert again["predicted"] == 0 and again["tasks"] == report["tasks"]
    client.annotations.update(id=ann[tasks[3]], result=make_sample(3, 160, 120).ls_result()[:1])
    edited = score_project(client, predictor, pid, None, None, batch_size=2)
    assert edited["predicted"] == 1 and edited["scored"] == 3


@pytest.mark.labelstudio
def test_classification_project_says_it_is_not_scored(
    label_studio: tuple[str, str], trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """A project that is not detection gets a report saying why, and no task data is written."""
    ls_url, token = label_studio
    base_url, _ = image_server
    client = labelstudio.client(ls_url, token)
    pid, (task_id,) = served_image_project(client, "mistakes-classify", base_url, 1, label_config=CLASSIFY_CONFIG)
    client.annotations.create(
        id=task_id,
        result=[{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}],
        was_cancelled=False,
    )
    registry = Registry(tmp_path / "models")
    report = score_project(client, _predictor(registry, trained, tmp_path), pid, None, None)
    assert report["supported"] is False and "detection" in report["reason"] and report["tasks"] == []
    assert read_report(registry, pid)["supported"] is False
    (task,) = list(client.tasks.list(project=pid, fields="task_only"))
    assert QUALITY_KEY not in task.data


@pytest.mark.labelstudio
@pytest.mark.parametrize("enabled", [True, False])
def test_preannotation_job_scores_annotations_and_keeps_the_tab(
    label_studio: tuple[str, str], trained: dict, redis_url: str, tmp_path: Path, enabled: bool
) -> None:
    """After a version's pre-annotation the job scores the annotated tasks and keeps the mistakes tab;
    with LABELLOOP_LABEL_MISTAKES off it does neither."""
    api = LabelStudioAPI(*label_studio)
    samples = [make_sample(800 + i, 160, 120) for i in range(5)]
    pid, ids = image_project(api, f"mistakes-job-{enabled}", samples, annotate=3)
    settings = make_settings(
        tmp_path,
        redis_url=redis_url,
        label_studio=label_studio,
        imgsz=160,
        preannotate_batch=2,
        label_mistakes=enabled,
    )
    publish_version(Registry(settings.models_dir), pid, trained["result"]["best"])
    with structlog.testing.capture_logs() as logs:
        assert Jobs(settings, lambda *a: None).preannotate(pid, "v1", lambda meta: None)["stopped"] is None
    data = {int(t.id): dict(t.data) for t in api.sdk.tasks.list(project=pid, fields="task_only")}
    titles = [(v.data or {}).get("title") for v in api.sdk.views.list(project=pid)]
    if enabled:
        assert [t for t in ids if QUALITY_KEY in data[t]] == ids[:3]
        assert titles.count(MISTAKES_TAB_TITLE) == 1
        assert [e["scored"] for e in logs if e["event"] == "label_mistakes_tab"] == [3]
    else:
        assert not any(QUALITY_KEY in d for d in data.values()) and MISTAKES_TAB_TITLE not in titles
