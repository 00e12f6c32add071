"""Label Studio's own label stream (``GET /api/projects/{id}/next/``, "Label All Tasks") serves
labelloop's top task, before the first version (first picks) and after it (a pre-annotation),
against a real Label Studio 1.23.2 and real Redis; the sampling change is logged and reversible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog.testing

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import make_sample
from labelloop.jobs.jobs import Jobs
from labelloop.labelstudio.sampling import FIRST_PICKS_VERSION, UNCERTAINTY, restore, stored
from labelloop.ls_json import Prediction
from labelloop.registry.params import ProjectParams, store
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from tests.factories import image_project, make_settings, publish_version

TASKS = 16


def _settings(label_studio: tuple[str, str], redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        redis_url=redis_url,
        label_studio=label_studio,
        imgsz=160,
        preannotate_batch=5,
        train_every_n=4,
    )


def _predictions(api: LabelStudioAPI, pid: int, version: str) -> dict[int, Prediction]:
    """The project's predictions of ``version`` by task id (``GET /api/predictions/?project=``)."""
    resp = httpx.get(
        f"{api.url}/api/predictions/", params={"project": pid}, headers={"Authorization": f"Token {api.token}"}
    )
    resp.raise_for_status()
    return {int(p["task"]): p for p in resp.json() if p["model_version"] == version}


def _next(api: LabelStudioAPI, pid: int) -> int:
    """The task Label Studio's label stream serves the (real) token user next."""
    resp = httpx.get(f"{api.url}/api/projects/{pid}/next/", headers={"Authorization": f"Token {api.token}"})
    resp.raise_for_status()
    return int(resp.json()["id"])


def _project(api: LabelStudioAPI, title: str) -> tuple[int, list[int]]:
    """A project of ``TASKS`` generated images, none annotated."""
    return image_project(api, title, [make_sample(700 + i, 160, 120) for i in range(TASKS)])


@pytest.mark.labelstudio
def test_label_stream_serves_the_first_pick_before_the_first_version(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """Before any version, the first-picks job imports one empty prediction per unlabeled task
    (distinct rank scores, a cluster each) and switches the project to uncertainty sampling, logging
    the previous sampling: /next/ then serves the task labelloop ranks first (not the lowest id). A
    second run finds nothing new; restoring puts the previous sampling back; a task imported later
    makes the next run rank everything again."""
    api = LabelStudioAPI(*label_studio)
    pid, ids = _project(api, "first picks")
    api.annotate(ids[0], make_sample(700, 160, 120).ls_result())
    jobs = Jobs(_settings(label_studio, redis_url, tmp_path), lambda *a: None)
    with structlog.testing.capture_logs() as logs:
        outcome = jobs.first_picks(pid, lambda meta: None)
    assert outcome["status"] == "done" and outcome["imported"] == TASKS - 1, outcome
    preds = _predictions(api, pid, FIRST_PICKS_VERSION)
    assert sorted(preds) == ids[1:]
    scores = sorted(p["score"] for p in preds.values())
    assert scores[0] == 0.0 and scores[-1] == 1.0 and len(set(scores)) == TASKS - 1
    assert all(p["result"] == [] and isinstance(p["cluster"], int) for p in preds.values())
    assert len({p["cluster"] for p in preds.values()}) >= 4  # k = 1 annotated + budget 4
    top = min(preds, key=lambda t: preds[t]["score"])
    project: Any = api.sdk.projects.get(id=pid)
    assert project.sampling == UNCERTAINTY and project.model_version == FIRST_PICKS_VERSION
    [event] = [e for e in logs if e["event"] == "sampling_set"]
    assert event["previous"] == "Sequential sampling"
    assert _next(api, pid) == top

    assert jobs.first_picks(pid, lambda meta: None)["status"] == "unchanged"
    models_dir = jobs.settings.models_dir
    assert stored(models_dir, pid)["previous"] == "Sequential sampling"
    assert restore(api.sdk, models_dir, pid) == "Sequential sampling"
    assert api.sdk.projects.get(id=pid).sampling == "Sequential sampling"
    assert restore(api.sdk, models_dir, pid) is None  # nothing left to restore

    api.import_images(pid, [make_sample(800, 160, 120)])
    again = jobs.first_picks(pid, lambda meta: None)
    assert again["status"] == "done" and again["imported"] == TASKS
    assert len(_predictions(api, pid, FIRST_PICKS_VERSION)) == TASKS  # the earlier picks were replaced
    assert api.sdk.projects.get(id=pid).sampling == UNCERTAINTY


@pytest.mark.labelstudio
def test_set_sampling_false_leaves_the_project_alone(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """With the extra param "set_sampling": false the first picks are imported (and the model version
    set), but the project's sampling stays as it was and nothing is recorded to restore."""
    api = LabelStudioAPI(*label_studio)
    pid, _ = _project(api, "first picks, sampling left alone")
    settings = _settings(label_studio, redis_url, tmp_path)
    store(settings.models_dir, pid, ProjectParams(set_sampling=False))
    assert Jobs(settings, lambda *a: None).first_picks(pid, lambda meta: None)["status"] == "done"
    project: Any = api.sdk.projects.get(id=pid)
    assert project.sampling == "Sequential sampling" and project.model_version == FIRST_PICKS_VERSION
    assert stored(settings.models_dir, pid) == {}


@pytest.mark.labelstudio
@pytest.mark.parametrize("val_map50", [0.3, 0.95])
def test_label_stream_serves_labelloop_top_task_after_the_first_version(
    label_studio: tuple[str, str], trained: dict, redis_url: str, tmp_path: Path, val_map50: float
) -> None:
    """After first picks, a pre-annotation of a trained v1 imports ranked predictions (a score and a
    cluster above v1's offset on each), deletes the first picks and moves the project's model version
    to v1: /next/ serves v1's top task; the first-picks job does nothing any more. The order is by
    coverage while v1's validation mAP50 is not above 0.5 with 95% confidence over its validation
    objects (``diversity.informative``: 0.3 on 100 objects), by uncertainty when it is (0.95 on 100) and
    half of the tasks have a candidate box; the annotated tasks' embeddings count in both."""
    api = LabelStudioAPI(*label_studio)
    pid, ids = _project(api, f"after v1, val mAP50 {val_map50}")
    settings = _settings(label_studio, redis_url, tmp_path)
    jobs = Jobs(settings, lambda *a: None)
    assert jobs.first_picks(pid, lambda meta: None)["status"] == "done"
    for i in range(4):
        api.annotate(ids[i], make_sample(700 + i, 160, 120).ls_result())
    registry = Registry(settings.models_dir)
    publish_version(
        registry, pid, trained["result"]["best"], metrics={"map50": val_map50}, promotion={"val_objects": 100}
    )
    registry.set_current(pid, "v1")
    with structlog.testing.capture_logs() as logs:
        outcome = jobs.preannotate(pid, "v1", lambda meta: None)
    assert outcome["stopped"] is None and outcome["imported"] == TASKS - 4, outcome
    [ranked] = [e for e in logs if e["event"] == "preannotate_ranked"]
    informative = val_map50 >= 0.5 and 2 * ranked["with_candidate"] >= TASKS - 4
    assert ranked["mode"] == outcome["mode"] == ("uncertainty" if informative else "coverage"), ranked
    assert (ranked["val_score"], ranked["val_objects"], ranked["labeled"]) == (val_map50, 100, 4), ranked
    preds = _predictions(api, pid, "v1")
    assert sorted(preds) == ids[4:]
    assert len({p["score"] for p in preds.values()}) == TASKS - 4
    assert all(p["cluster"] >= 1000 for p in preds.values())
    assert _predictions(api, pid, FIRST_PICKS_VERSION) == {}  # replaced: one prediction per task, v1's
    top = min(preds, key=lambda t: preds[t]["score"])
    project: Any = api.sdk.projects.get(id=pid)
    assert project.model_version == "v1" and project.sampling == UNCERTAINTY
    assert _next(api, pid) == top
    assert jobs.first_picks(pid, lambda meta: None)["stopped"] == "version"


@pytest.mark.labelstudio
def test_first_picks_read_the_task_list_in_pages_without_predictions(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """The first picks read the task list page by page with fields=task_only (never fields=all,
    which carries every prediction of every version), and still rank every unlabeled task."""
    from label_studio_sdk import LabelStudio

    from labelloop.labelstudio import task_pages
    from labelloop.labelstudio.media import ImageCache, MediaConfig
    from labelloop.serving.first_picks import first_picks

    api = LabelStudioAPI(*label_studio)
    pid, ids = _project(api, "first picks pages")
    api.annotate(ids[0], make_sample(700, 160, 120).ls_result())
    settings = _settings(label_studio, redis_url, tmp_path)
    sent: list[httpx.Request] = []
    url, token = label_studio
    client = LabelStudio(base_url=url, api_key=token, httpx_client=httpx.Client(event_hooks={"request": [sent.append]}))
    images = ImageCache(tmp_path / "images", MediaConfig.from_settings(settings))
    with images:
        old = task_pages.PAGE_SIZE
        task_pages.PAGE_SIZE = 6  # 16 tasks: three pages
        try:
            outcome = first_picks(client, images, Registry(settings.models_dir), pid, 5, 4, False)
        finally:
            task_pages.PAGE_SIZE = old
    assert outcome["status"] == "done" and outcome["imported"] == TASKS - 1, outcome
    listed = [r for r in sent if r.method == "GET" and r.url.path.rstrip("/") == "/api/tasks"]
    assert listed and all(r.url.params.get("fields") == "task_only" for r in listed), [str(r.url) for r in listed]
    assert max(int(r.url.params["page_size"]) for r in listed) == 6


@pytest.mark.labelstudio
def test_predictions_label_studio_drops_are_counted_and_the_stream_follows_the_first_stored(
    label_studio: tuple[str, str], tmp_path: Path
) -> None:
    """Label Studio 1.23.2's bulk prediction import drops a prediction whose result its label config
    refuses (a box 150 % high) and still answers 201: import_picks counts what it stored, logs the
    shortfall, and makes the project follow the version only after a batch of which something was
    stored (a project ``model_version`` no prediction carries is a 400, which ended a video
    pre-annotation in a full test run)."""
    from labelloop.labelstudio.sampling import follow_labelloop
    from labelloop.serving.picks import Pick, import_picks

    api = LabelStudioAPI(*label_studio)
    pid, ids = image_project(api, "rejected predictions", [make_sample(900 + i, 160, 120) for i in range(4)])
    bad = make_sample(900, 160, 120).ls_result()
    bad[0]["value"] = {**bad[0]["value"], "height": 150.0}  # type: ignore[dict-item]
    good = {ids[2]}
    followed: list[int] = []

    def follow() -> None:
        followed.append(len(_predictions(api, pid, "v1")))
        follow_labelloop(api.sdk, tmp_path, pid, "v1", set_sampling=False)

    picks = [Pick(t, i / 3, None) for i, t in enumerate(ids)]
    results = {t: make_sample(900 + i, 160, 120).ls_result() if t in good else bad for i, t in enumerate(ids)}
    with structlog.testing.capture_logs() as logs:
        written = import_picks(
            api.sdk, pid, "v1", picks, results.__getitem__, 2, lambda: None, follow, with_cluster=False
        )
    # Two bulk imports of 2 tasks each, one prediction stored: both batches count.
    assert (written.imported, written.batches, written.stopped) == (1, 2, None)
    assert sorted(_predictions(api, pid, "v1")) == [ids[2]]
    assert followed == [1] and api.sdk.projects.get(id=pid).model_version == "v1"
    rejected = [(e["batch"], e["rejected"]) for e in logs if e["event"] == "preannotate_rejected"]
    assert rejected == [(0, 2), (1, 1)]


@pytest.mark.labelstudio
@pytest.mark.parametrize("with_cluster", [False, True], ids=["bulk-import", "one-post-each"])
def test_refused_regions_are_dropped_before_the_write_and_the_rest_is_stored(
    label_studio: tuple[str, str], tmp_path: Path, with_cluster: bool
) -> None:
    """With a ``RegionCheck`` (what a pre-annotation passes) a region the label config refuses is
    left out before the write, a bulk import (the project's sampling left alone: it would drop the
    task's prediction) or one ``POST /api/predictions/`` per task (with the cluster: Label Studio
    1.23.2 would store the region as it is): every task keeps a prediction, with its other regions
    as predicted, and nothing is counted as rejected."""
    from labelloop.labelstudio.region_check import RegionCheck
    from labelloop.serving.picks import Pick, import_picks

    api = LabelStudioAPI(*label_studio)
    samples = [make_sample(950 + i, 160, 120) for i in range(3)]
    pid, ids = image_project(api, "refused regions", samples)
    results = {}
    for t, sample in zip(ids, samples, strict=True):
        good = sample.ls_result()
        tall = {**good[0], "id": "tall", "value": {**good[0]["value"], "height": 150.0}}
        results[t] = [*good, tall]
    picks = [Pick(t, i / 2, None) for i, t in enumerate(ids)]
    project: Any = api.sdk.projects.get(id=pid)
    with structlog.testing.capture_logs() as logs:
        written = import_picks(
            api.sdk,
            pid,
            "v1",
            picks,
            results.__getitem__,
            2,
            lambda: None,
            with_cluster=with_cluster,
            check=RegionCheck(project.label_config),
        )
    assert (written.imported, written.batches, written.stopped) == (3, 2, None)
    stored = _predictions(api, pid, "v1")
    assert sorted(stored) == ids
    for t, sample in zip(ids, samples, strict=True):
        assert [r["value"] for r in stored[t]["result"]] == [r["value"] for r in sample.ls_result()]
    refused = [e for e in logs if e["event"] == "prediction_regions_refused"]
    assert sorted(e["task"] for e in refused) == ids and all(e["refused"] == 1 for e in refused)
    assert not [e for e in logs if e["event"] == "preannotate_rejected"]
