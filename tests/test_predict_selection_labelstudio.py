"""A "Retrieve Predictions" selection cut short by the predict deadline, against a real Label Studio
1.23.2: the tasks labelloop answered ``[]`` for get no prediction, and retrieving the same
selection again predicts only them (Label Studio asks only for tasks without a prediction of the
backend's model version)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.stack import Stack, free_port
from labelloop.dev.synthetic import make_sample
from labelloop.registry.store import Registry
from tests.factories import connect_backend, image_project, publish_version, settings_env
from tests.labelloop.test_selection import untrained_weights

BATCH = 2
TASKS = 6


@contextmanager
def served_project(
    label_studio: tuple[str, str], work: Path, title: str, tasks: int, **env: str
) -> Iterator[tuple[LabelStudioAPI, Stack, str, int, list[int]]]:
    """A Label Studio project of ``tasks`` images served v1 (an untrained yolov8n, boxes at
    ``LABELLOOP_PREDICT_CONF`` 0.99: none) by labelloop's receiver and one predict worker, with
    ``env`` over the settings; yields the API, the stack, the receiver's URL, the project and its
    task ids, and stops the stack after."""
    api = LabelStudioAPI(*label_studio)
    project_id, task_ids = image_project(api, title, [make_sample(s, 160, 120) for s in range(tasks)])
    registry = Registry(work / "models")
    publish_version(registry, project_id, untrained_weights(work))
    registry.set_current(project_id, "v1")
    settings = settings_env(work, label_studio=label_studio, LABELLOOP_IMGSZ="160", LABELLOOP_PREDICT_CONF="0.99")
    stack = Stack(work, {**settings, **env})
    try:
        stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port())
        url = stack.start_receiver(free_port())
        stack.start_worker("predict")
        connect_backend(api, project_id, url)
        yield api, stack, url, project_id, task_ids
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
def connected(
    label_studio: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LabelStudioAPI, int, list[int]]]:
    """A project of 6 images served v1 (``served_project``) by a predict worker that predicts chunks
    of 2 and starts no chunk after the first (deadline 1 ms)."""
    work = tmp_path_factory.mktemp("selection-ls")
    env = {"LABELLOOP_PREDICT_BATCH": str(BATCH), "LABELLOOP_PREDICT_DEADLINE_S": "0.001"}
    with served_project(label_studio, work, "labelloop selection", TASKS, **env) as (api, _, _, project_id, task_ids):
        yield api, project_id, task_ids


def _retrieve_all(api: LabelStudioAPI, project_id: int) -> Any:
    resp = httpx.post(
        f"{api.url}/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project_id},
        headers={"Authorization": f"Token {api.token}"},
        json={"selectedItems": {"all": True, "excluded": []}},
        timeout=120,
    )
    resp.raise_for_status()
    return resp.json()


@pytest.mark.labelstudio
def test_a_selection_cut_by_the_deadline_is_finished_by_retrieving_it_again(
    connected: tuple[LabelStudioAPI, int, list[int]],
) -> None:
    """Each "Retrieve Predictions" of all 6 tasks predicts the next chunk of 2 (the deadline cuts the
    rest): 2, 4, then 6 tasks hold one prediction of v1 each, never two."""
    api, project_id, task_ids = connected
    for round_ in (1, 2, 3):
        _retrieve_all(api, project_id)
        held = {t: [p["model_version"] for p in api.sdk_predictions(t)] for t in task_ids}
        assert sorted(len(v) for v in held.values()) == [0] * (TASKS - BATCH * round_) + [1] * (BATCH * round_), held
        assert all(v in ([], ["v1"]) for v in held.values()), held
