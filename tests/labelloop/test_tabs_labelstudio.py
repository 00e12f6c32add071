"""labelloop.labelstudio.tabs against a real Label Studio: the tab lists unlabeled tasks, most informative first."""

from __future__ import annotations

from typing import Any

import pytest

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import make_sample
from labelloop.labelstudio.tabs import TAB_TITLE, ensure_tab, tab_data
from labelloop.task_types.informativeness import detection_informativeness, most_informative_first, prediction_score
from tests.factories import image_project


def _tab_task_ids(api: LabelStudioAPI, pid: int, view_id: int) -> list[int]:
    return [int(t.id) for t in api.sdk.tasks.list(project=pid, view=view_id, fields="all")]


@pytest.mark.labelstudio
def test_tab_lists_unlabeled_tasks_most_informative_first(label_studio: tuple[str, str]) -> None:
    """Tasks with predictions of different scores appear in the tab by ascending score (the most informative first,
    one without a confident box on top, one without a prediction last), annotated tasks left out; a second call finds
    the same tab."""
    api = LabelStudioAPI(*label_studio)
    samples = [make_sample(300 + i, 64, 48) for i in range(7)]
    pid, ids = image_project(api, "tabs", samples)
    # box confidences per task, scored as labelloop's predictor scores them (least confidence)
    confs: dict[int, list[float]] = {ids[0]: [0.95], ids[1]: [0.9, 0.3], ids[2]: [], ids[3]: [0.6], ids[4]: [0.4]}
    scores = {t: prediction_score(detection_informativeness(c, None, "least_confidence")) for t, c in confs.items()}
    for task_id, s in scores.items():
        api.sdk.predictions.create(task=task_id, result=[], score=s, model_version="v1")
    # Label Studio scores a task by its predictions of the project's model version, which labelloop's
    # pre-annotation sets to the version it predicted with
    api.sdk.projects.update(id=pid, model_version="v1")
    api.annotate(ids[4], samples[4].ls_result())  # labelled: not in the tab any more
    api.annotate(ids[5], samples[5].ls_result())

    view_id, what = ensure_tab(api.sdk, pid)
    assert what == "created"
    want = [t for t in most_informative_first(scores) if t != ids[4]] + [ids[6]]  # no prediction: nulls last
    assert want[0] == ids[2]  # the image without a candidate box is the most informative
    assert _tab_task_ids(api, pid, view_id) == want

    assert ensure_tab(api.sdk, pid) == (view_id, "unchanged")
    titles = [(v.data or {}).get("title") for v in api.sdk.views.list(project=pid)]
    assert titles.count(TAB_TITLE) == 1


@pytest.mark.labelstudio
def test_edited_tab_is_restored_and_other_tabs_kept(label_studio: tuple[str, str]) -> None:
    """A tab whose ordering someone changed gets labelloop's filters and ordering back in place; other tabs stay."""
    api = LabelStudioAPI(*label_studio)
    pid, _ = image_project(api, "tabs-edited", [make_sample(400, 64, 48)])
    other: Any = api.sdk.views.create(project=pid, data={"title": "mine", "ordering": ["-tasks:id"]})
    view_id, _ = ensure_tab(api.sdk, pid)
    api.sdk.views.update(id=str(view_id), project=pid, data={**tab_data(), "ordering": ["-tasks:id"]})
    assert ensure_tab(api.sdk, pid) == (view_id, "updated")
    views = {int(v.id): v.data for v in api.sdk.views.list(project=pid)}
    assert views[view_id]["ordering"] == ["tasks:predictions_score"]
    assert views[int(other.id)]["ordering"] == ["-tasks:id"] and views[int(other.id)]["title"] == "mine"
