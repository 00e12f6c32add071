"""A "Retrieve Predictions" selection over ``LABELLOOP_PREDICT_MAX_TASKS``, against a real Label
Studio 1.23.2: ``/predict`` hands it to the pre-annotation queue at once (202, queued once however
often it is retrieved meanwhile), and the pre-annotation worker writes one prediction of the served
version into every task of it, in chunks of ``LABELLOOP_PREDICT_BATCH``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from labelloop import keys
from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.stack import Stack, wait_until
from labelloop.dev.synthetic import LABEL_CONFIG
from tests.test_predict_selection_labelstudio import _retrieve_all, served_project

BATCH = 2
MAX_TASKS = 4
TASKS = 6


@pytest.fixture(scope="module")
def connected(
    label_studio: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LabelStudioAPI, Stack, str, int, list[int]]]:
    """A Label Studio project of 6 images served v1 (an untrained yolov8n) by labelloop's receiver and
    one predict worker, at most 4 tasks per /predict; no pre-annotation worker yet."""
    work = tmp_path_factory.mktemp("selection-queued")
    env = {
        "LABELLOOP_PREDICT_BATCH": str(BATCH),
        "LABELLOOP_PREDICT_MAX_TASKS": str(MAX_TASKS),
        "LABELLOOP_LOG_JSON": "true",
    }
    with served_project(label_studio, work, "labelloop big selection", TASKS, **env) as served:
        yield served


@pytest.mark.labelstudio
def test_a_selection_over_predict_max_tasks_is_written_by_the_preannotation_queue_once(
    connected: tuple[LabelStudioAPI, Stack, str, int, list[int]],
) -> None:
    """Two "Retrieve Predictions" of all 6 tasks queue one job and store nothing themselves; the
    pre-annotation worker, started then, writes one v1 prediction into each of the 6 tasks in 3
    chunks; a third retrieve afterwards sends Label Studio's backend nothing new, and a /predict of the
    same tasks twice over (12 items) writes none more: still one each."""
    api, stack, url, project_id, task_ids = connected
    queue = redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])
    try:
        _retrieve_all(api, project_id)
        _retrieve_all(api, project_id)
        queued = [e for e in stack.events("receiver") if e.get("event") == "selection_queued"]
        assert [(e["tasks"], e["fresh"]) for e in queued] == [(TASKS, True), (TASKS, False)], queued
        assert queue.llen("preannotate") == 1
        assert all(api.sdk_predictions(t) == [] for t in task_ids)

        stack.start_worker("preannotate")

        def held() -> dict[int, list[str]]:
            return {t: [p["model_version"] for p in api.sdk_predictions(t)] for t in task_ids}

        wait_until(lambda: all(held().values()), 120, "every task of the selection holds a prediction")
        key = keys.selection_queued(project_id, keys.selection_digest(task_ids))
        wait_until(lambda: not queue.exists(key), 30, "the selection's job ended")
        written = [e for e in stack.events("worker-preannotate") if e.get("event") == "selection_written"]
        assert [(e["tasks"], e["written"], e["version"], e["stopped"]) for e in written] == [(TASKS, TASKS, "v1", None)]
        chunks = [e["tasks"] for e in stack.events("worker-preannotate") if e.get("event") == "predict_chunk"]
        assert chunks == [BATCH] * (TASKS // BATCH), chunks
        _retrieve_all(api, project_id)
        auth = {"Authorization": f"Token {api.token}"}
        tasks = [httpx.get(f"{api.url}/api/tasks/{t}", headers=auth, timeout=30).json() for t in task_ids]
        tasks = [{"id": t["id"], "data": t["data"]} for t in tasks]
        body = {"tasks": tasks * 2, "project": f"{project_id}.1", "label_config": LABEL_CONFIG}
        resp = httpx.post(f"{url}/predict", json=body, timeout=60)
        assert resp.status_code == 202 and resp.json()["queued"] == 2 * TASKS, resp.text
        wait_until(
            lambda: len([e for e in stack.events("worker-preannotate") if e.get("event") == "selection_written"]) == 2,
            120,
            "the second selection's job ended",
        )
        again = [e for e in stack.events("worker-preannotate") if e.get("event") == "selection_written"][-1]
        assert (again["unique"], again["held"], again["written"]) == (TASKS, TASKS, 0), again
        assert held() == {t: ["v1"] for t in task_ids}
    finally:
        queue.close()
