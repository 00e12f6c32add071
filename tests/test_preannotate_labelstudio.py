"""Pre-annotation end to end: a real Label Studio, real Redis, the receiver and real Celery workers
(``predict`` and ``preannotate`` apart), a promotion in the middle of a run."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.dev.synthetic import LABEL_CONFIG
from labelloop.jobs.progress import ProgressStore
from labelloop.labelstudio import client as labelstudio
from labelloop.names import QUEUE_PREANNOTATE, TASK_PREANNOTATE
from labelloop.redis_client import client as redis_client
from labelloop.registry.notify import serve_when_warm
from labelloop.registry.store import Registry
from tests.factories import make_settings, publish_version, served_image_project, settings_env
from workers.celery_app import create_celery

TASKS = 120
BATCH = 2


def stored_versions(client: Any, project_id: int) -> dict[int, list[str]]:
    """Model versions of the predictions Label Studio stores, per task id."""
    out: dict[int, list[str]] = {}
    for task in client.tasks.list(project=project_id, fields="all"):
        # label-studio-sdk gives each prediction as a model object (LseTaskPredictionsItem).
        out[int(task.id)] = [str(getattr(p, "model_version", None)) for p in task.predictions or []]
    return out


@pytest.mark.labelstudio
def test_a_promotion_supersedes_a_running_preannotation(
    label_studio: tuple[str, str], trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """A pre-annotation runs on the preannotate worker in batches of 2 (predicted, ranked, then
    imported in rank order) while /predict is answered by the predict worker; promoting v2 during
    v1's import stops v1's batches (none after its superseded event, no v1 prediction imported
    after it) without waiting for the preannotate worker to warm v2, and v2's run then predicts
    every task into Label Studio."""
    ls_url, token = label_studio
    base_url, _ = image_server
    client = labelstudio.client(ls_url, token)
    project_id, _ = served_image_project(client, "labelloop preannotate", base_url, TASKS)
    registry = Registry(tmp_path / "models")
    for _ in range(2):
        publish_version(registry, project_id, trained["result"]["best"])
    registry.set_current(project_id, "v1")
    env = settings_env(
        tmp_path,
        label_studio=label_studio,
        LABELLOOP_IMGSZ="160",
        LABELLOOP_MEDIA_ALLOW_HOSTS="127.0.0.1",
        LABELLOOP_PREANNOTATE_BATCH=str(BATCH),
        LABELLOOP_LOG_JSON="true",
    )
    stack = Stack(tmp_path, env)
    try:
        redis_url = stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port())
        url = stack.start_receiver(free_port())
        stack.start_worker("predict")
        stack.start_worker(QUEUE_PREANNOTATE)
        body = {
            "tasks": [{"id": 1, "data": {"image": f"{base_url}/img1.png"}}],
            "project": f"{project_id}.1",
            "label_config": LABEL_CONFIG,
        }
        assert httpx.post(f"{url}/predict", json=body, timeout=120).status_code == 200  # v1 loaded there
        app = create_celery(make_settings(tmp_path, redis_url=redis_url))
        app.send_task(TASK_PREANNOTATE, args=[project_id, "v1"])  # routed by name to its queue
        r = redis_client(redis_url, "cli")

        def v1_batches() -> int:
            return sum(
                1
                for e in stack.events("worker-preannotate")
                if e.get("event") == "preannotate_batch" and e.get("version") == "v1"
            )

        wait_until(lambda: v1_batches() >= 1, 180, "v1's first batch")
        # /predict is answered by the predict worker while the pre-annotation is still running.
        resp = httpx.post(f"{url}/predict", json=body, timeout=120)
        assert resp.status_code == 200 and resp.json()["results"][0]["model_version"] == "v1"
        running = ProgressStore(r).preannotation(project_id)
        assert running is not None and running["version"] == "v1" and running["done"] < running["total"] == TASKS
        # What Jobs.train does after a promotion: serve the new version, then pre-annotate with it.
        promoted_at = time.time()
        # Every process serving /predict warms v2 first; the preannotate worker is not one of them
        # (it would never report warm, and each promotion would wait for it until the timeout).
        assert serve_when_warm(r, registry, project_id, "v2", reason="promoted", timeout_s=60)
        app.send_task(TASK_PREANNOTATE, args=[project_id, "v2"])

        def v2_finished() -> bool:
            return any(
                e.get("event") == "preannotated" and e.get("version") == "v2"
                for e in stack.events("worker-preannotate")
            )

        wait_until(v2_finished, 300, "v2's pre-annotation")
        # The record is cleared when the job returns, just after its "preannotated" event.
        wait_until(lambda: ProgressStore(r).preannotation(project_id) is None, 30, "v2's progress record cleared")
    finally:
        stack.stop_all()

    log = stack.events("worker-preannotate")
    v1 = [e for e in log if e.get("version") == "v1" and str(e.get("event", "")).startswith("preannotate")]
    [stop] = [i for i, e in enumerate(v1) if e["event"] == "preannotate_superseded"]
    assert v1[stop]["why"] == "version" and 0 < v1[stop]["imported"] < TASKS
    # started, every task predicted, ranked, its imported batches, superseded, the end: no v1
    # batch after the superseded event.
    imported_batches = [e["event"] for e in v1].count("preannotate_batch")
    assert [e["event"] for e in v1] == [
        "preannotate_started",
        *["preannotate_predicted"] * (TASKS // BATCH),
        "preannotate_ranked",
        *["preannotate_batch"] * imported_batches,
        "preannotate_superseded",
        "preannotated",
    ]
    v2 = [e for e in log if e.get("version") == "v2" and e.get("event") == "preannotate_batch"]
    assert len(v2) == TASKS // BATCH and all(e["tasks"] == BATCH for e in v2)
    [done] = [e for e in log if e.get("event") == "preannotated" and e.get("version") == "v2"]
    assert done["stopped"] is None and done["imported"] == TASKS and done["batches"] == TASKS // BATCH
    [v1_done] = [e for e in log if e.get("event") == "preannotated" and e.get("version") == "v1"]
    assert v1_done["batches"] == imported_batches and v1_done["imported"] == v1[stop]["imported"]
    # Runs only on the preannotate worker; the predict worker answered /predict alone.
    predict_log = stack.log_tail("worker-predict", 10_000_000)
    assert f"Task {TASK_PREANNOTATE}[" not in predict_log and "preannotate_batch" not in predict_log
    assert f"Task {TASK_PREANNOTATE}[" in stack.log_tail("worker-preannotate", 10_000_000)
    stored = stored_versions(client, project_id)
    assert len(stored) == TASKS and all(v.count("v2") == 1 for v in stored.values()), stored
    assert sum(v.count("v1") for v in stored.values()) == v1[stop]["imported"]
    # The newer run started soon after the promotion (generous bound for a busy 2-core machine).
    first_v2 = min(
        e["timestamp"] for e in log if e.get("version") == "v2" and e.get("event") == "preannotate_predicted"
    )
    assert datetime.fromisoformat(first_v2.replace("Z", "+00:00")).timestamp() - promoted_at < 60
