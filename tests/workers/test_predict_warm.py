"""A predict worker loads the served models when it starts, not on the first ``/predict``
(``workers.warmup``, ``labelloop.jobs.prediction.Predictors.warm``).

The worker tests run the real ``labelloop worker --queues predict`` under
``tests/workers/cuda_guard.py`` (every ``torch.cuda`` call recorded by process), on a registry
holding a real yolov8n version, and read its JSON log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from labelloop.dev.stack import Stack, wait_until
from labelloop.jobs.prediction import ServedProject, served_projects, warm_plan
from labelloop.names import QUEUE_PREDICT, TASK_PREDICT
from labelloop.registry.store import Registry
from tests.factories import make_settings, publish_version, settings_env
from tests.workers.test_cuda_fork import untrained_weights_in_child
from workers.celery_app import create_celery

GUARD = Path(__file__).with_name("cuda_guard.py")
CONFIG = json.loads((Path(__file__).parents[1] / "fixtures/label-studio/ml_predict_request.json").read_text())
MISSING_IMAGE = [{"id": 1, "data": {"image": "http://127.0.0.1:9/missing.jpg"}}]


@pytest.mark.parametrize(
    ("served", "limit", "expected"),
    [
        ([], 4, []),
        ([(1, "v1", "2026-01-01T00:00:00Z"), (2, "v3", "2026-01-02T00:00:00Z")], 4, [2, 1]),
        ([(1, "v1", "2026-01-03T00:00:00Z"), (2, "v3", "2026-01-02T00:00:00Z")], 4, [1, 2]),
        ([(1, "v1", "2026-01-01T00:00:00Z"), (2, "v1", "2026-01-02T00:00:00Z"), (3, "v1", "")], 2, [2, 1]),
        ([(5, "v1", "2026-01-01T00:00:00Z"), (7, "v2", "2026-01-01T00:00:00Z")], 4, [7, 5]),
        ([(1, "v1", "2026-01-01T00:00:00Z")], 0, []),
    ],
)
def test_warm_plan_takes_the_most_recently_served_first_up_to_the_cache_size(
    served: list[tuple[int, str, str]], limit: int, expected: list[int]
) -> None:
    """The warm-up loads the newest served projects first (ties: higher id), at most ``limit``."""
    plan = warm_plan([ServedProject(*p) for p in served], limit)
    assert [p.project_id for p in plan] == expected


def test_served_projects_are_those_with_a_current_version_and_its_last_change(tmp_path: Path) -> None:
    """Projects with a served version are listed with it and the time CURRENT last moved; a
    project whose only version was rejected is not."""
    registry = Registry(tmp_path / "models")
    publish_version(registry, 3)
    publish_version(registry, 3)
    publish_version(registry, 4, promote=False)
    publish_version(registry, 5)
    found = {p.project_id: p for p in served_projects(registry)}
    assert sorted(found) == [3, 5]
    assert found[3].version == "v2"
    assert found[3].served_at == registry.history(3)[-1]["at"] != ""


@pytest.fixture(scope="module")
def yolo_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised yolov8n saved as a .pt (``untrained_weights_in_child``)."""
    return untrained_weights_in_child(tmp_path_factory.mktemp("weights"))


def _start_worker(tmp_path: Path, redis_url: str, pool: str = "prefork", **env: str) -> tuple[Stack, int, Path]:
    """A real ``labelloop worker --queues predict`` (one pool process) under the CUDA guard;
    returns its stack, its main process's pid and the guard's log."""
    cuda_log = tmp_path / "cuda.log"
    stack = Stack(
        tmp_path,
        settings_env(tmp_path, redis_url=redis_url, label_studio=("http://127.0.0.1:9", "not-a-real-token"), **env),
    )
    worker = ["worker", "--queues", QUEUE_PREDICT, "--concurrency", "1", "--pool", pool]
    argv = [sys.executable, str(GUARD), str(cuda_log), *worker]
    proc = stack.start("worker", argv)
    return stack, proc.pid, cuda_log


def _predict(tmp_path: Path, redis_url: str, project_id: int) -> dict[str, Any]:
    app = create_celery(make_settings(tmp_path, redis_url=redis_url))
    answer = app.send_task(TASK_PREDICT, args=[project_id, CONFIG["label_config"], MISSING_IMAGE], queue=QUEUE_PREDICT)
    result: dict[str, Any] = answer.get(timeout=240)
    return result


def _index(events: list[dict[str, Any]], predicate: Any) -> list[int]:
    return [i for i, e in enumerate(events) if predicate(e)]


def _received(e: dict[str, Any]) -> bool:
    return str(e.get("event", "")).startswith(f"Task {TASK_PREDICT}[") and "received" in str(e.get("event"))


@pytest.mark.slow
def test_a_predict_worker_loads_the_served_model_at_start_and_its_first_predict_loads_nothing(
    tmp_path: Path, redis_url: str, yolo_weights: Path
) -> None:
    """A fresh predict worker's pool child loads project 1's served version in the background as it
    starts (``predict_warm``), skips project 2 whose weights do not load (logged), never enters CUDA
    in the main process, and its first ``/predict`` for project 1 is answered without a load."""
    registry = Registry(tmp_path / "models")
    publish_version(registry, 1, yolo_weights)
    publish_version(registry, 2)  # bytes that are no model: served, newest, and fails to load
    stack, main_pid, cuda_log = _start_worker(tmp_path, redis_url)
    try:
        wait_until(lambda: any(e["event"] == "predict_warm" for e in stack.events("worker")), 240, "predict_warm")
        warm = next(e for e in stack.events("worker") if e["event"] == "predict_warm")
        assert (warm["projects"], warm["versions"], warm["failed"]) == ([1], ["v1"], [2]), stack.log_tail("worker")
        failed = [e for e in stack.events("worker") if e["event"] == "predict_warm_failed"]
        assert [e["project_id"] for e in failed] == [2]

        result = _predict(tmp_path, redis_url, 1)
        assert result["results"][0]["model_version"] == "v1", stack.log_tail("worker")

        events = stack.events("worker")
        loads = _index(events, lambda e: e["event"] == "model_loaded" and e.get("project_id") == 1)
        warm_at = _index(events, lambda e: e["event"] == "predict_warm")
        task_at = _index(events, _received)
        chunk = next(e for e in events if e["event"] == "predict_chunk")
        print(f"warm-up {warm['seconds']} s; first predict_chunk {chunk['seconds']} s")
        assert len(loads) == 1 and len(task_at) == 1, stack.log_tail("worker")
        assert loads[0] < warm_at[0] < task_at[0]  # the one load was the warm-up's, before the task came

        guarded = [line.split(" ", 1) for line in cuda_log.read_text().splitlines()]
        assert any(int(pid) != main_pid and event.startswith("cuda") for pid, event in guarded)
        assert [event for pid, event in guarded if int(pid) == main_pid and event != "fork"] == []
    finally:
        stack.stop_all()


@pytest.mark.slow
def test_with_predict_warm_off_a_predict_worker_loads_nothing_until_the_first_predict(
    tmp_path: Path, redis_url: str, yolo_weights: Path
) -> None:
    """``LABELLOOP_PREDICT_WARM=false``: the worker logs ``predict_warm_off``, loads no model as it
    starts, and its first ``/predict`` loads the served version inside the task."""
    registry = Registry(tmp_path / "models")
    publish_version(registry, 1, yolo_weights)
    stack, _, _ = _start_worker(tmp_path, redis_url, LABELLOOP_PREDICT_WARM="false")
    try:
        wait_until(lambda: " ready." in stack.log_tail("worker", 100_000), 240, "worker")
        events = stack.events("worker")
        assert any(e["event"] == "predict_warm_off" for e in events), stack.log_tail("worker")

        result = _predict(tmp_path, redis_url, 1)
        assert result["results"][0]["model_version"] == "v1", stack.log_tail("worker")

        events = stack.events("worker")
        assert not any(e["event"] == "predict_warm" for e in events)
        loads = _index(events, lambda e: e["event"] == "model_loaded" and e.get("project_id") == 1)
        task_at = _index(events, _received)
        chunk = next(e for e in events if e["event"] == "predict_chunk")
        print(f"cold first predict_chunk {chunk['seconds']} s")
        assert len(loads) == 1 and len(task_at) == 1, stack.log_tail("worker")
        assert task_at[0] < loads[0]  # loaded by the task itself
    finally:
        stack.stop_all()


@pytest.mark.slow
def test_a_predict_that_comes_during_the_warm_up_shares_its_load(
    tmp_path: Path, redis_url: str, yolo_weights: Path
) -> None:
    """A ``/predict`` queued before the worker even starts is answered with the served version, and
    the worker loads that version once: the task and the warm-up wait for the same load."""
    registry = Registry(tmp_path / "models")
    publish_version(registry, 1, yolo_weights)
    app = create_celery(make_settings(tmp_path, redis_url=redis_url))
    answer = app.send_task(TASK_PREDICT, args=[1, CONFIG["label_config"], MISSING_IMAGE], queue=QUEUE_PREDICT)
    stack, _, _ = _start_worker(tmp_path, redis_url)
    try:
        assert answer.get(timeout=240)["results"][0]["model_version"] == "v1", stack.log_tail("worker")
        wait_until(lambda: any(e["event"] == "predict_warm" for e in stack.events("worker")), 240, "predict_warm")
        events = stack.events("worker")
        warm = next(e for e in events if e["event"] == "predict_warm")
        assert (warm["projects"], warm["versions"]) == ([1], ["v1"])
        loads = [e for e in events if e["event"] == "model_loaded" and e.get("project_id") == 1]
        assert len(loads) == 1, stack.log_tail("worker")
    finally:
        stack.stop_all()


@pytest.mark.slow
def test_a_threads_pool_predict_worker_warms_in_its_only_process(
    tmp_path: Path, redis_url: str, yolo_weights: Path
) -> None:
    """A ``--pool threads`` predict worker (no pool child, no ``worker_process_init``) loads the
    served version once it is ready (``worker_ready``), once."""
    registry = Registry(tmp_path / "models")
    publish_version(registry, 1, yolo_weights)
    stack, _, _ = _start_worker(tmp_path, redis_url, pool="threads")
    try:
        wait_until(lambda: any(e["event"] == "predict_warm" for e in stack.events("worker")), 240, "predict_warm")
        result = _predict(tmp_path, redis_url, 1)
        assert result["results"][0]["model_version"] == "v1", stack.log_tail("worker")
        events = stack.events("worker")
        assert [e["projects"] for e in events if e["event"] == "predict_warm"] == [[1]]
        assert len([e for e in events if e["event"] == "model_loaded"]) == 1, stack.log_tail("worker")
    finally:
        stack.stop_all()
