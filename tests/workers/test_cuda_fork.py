"""CUDA is never entered in a Celery worker's main process, the one that forks the pool children.

The real ``labelloop worker`` runs under ``tests/workers/cuda_guard.py``, which records every
call into ``torch.cuda`` (and torch's C entry points) with the calling process's pid.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labelloop.dev.stack import Stack, wait_until
from labelloop.names import QUEUE_PREDICT, TASK_PREDICT
from tests.factories import make_settings, settings_env
from workers.celery_app import create_celery

GUARD = Path(__file__).with_name("cuda_guard.py")
CONFIG = json.loads((Path(__file__).parents[1] / "fixtures/label-studio/ml_predict_request.json").read_text())


def untrained_weights_in_child(tmp_path: Path) -> Path:
    """A randomly initialised yolov8n saved as a .pt in ``tmp_path`` (offline: built from Ultralytics'
    YAML), in a child process so that the test process never imports torch."""
    weights = tmp_path / "base.pt"
    code = (
        "import sys\nfrom pathlib import Path\nfrom labelloop.yolo_env import prepare_ultralytics\n"
        "prepare_ultralytics(Path(sys.argv[2]))\nfrom ultralytics.models import YOLO\n"
        "YOLO('yolov8n.yaml').save(sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(weights), str(tmp_path / "yolo")], check=True, timeout=300)
    return weights


@pytest.mark.slow
def test_a_workers_main_process_never_enters_cuda_while_its_children_do(tmp_path: Path, redis_url: str) -> None:
    """A predict+train worker forks its pool children and serves a prediction (whose child loads a
    model and picks its device through torch.cuda) without one torch.cuda call in the main process."""
    weights = untrained_weights_in_child(tmp_path)
    log = tmp_path / "cuda.log"
    env = settings_env(
        tmp_path,
        redis_url=redis_url,
        label_studio=("http://127.0.0.1:9", "not-a-real-token"),
        LABELLOOP_BASE_MODEL=str(weights),
        LABELLOOP_DEVICE="",  # the default: the pool child asks torch.cuda which device to use
    )
    stack = Stack(tmp_path, env)
    argv = [sys.executable, str(GUARD), str(log), "worker", "--queues", "predict,train", "--concurrency", "2"]
    worker = stack.start("worker", argv)
    try:
        wait_until(lambda: " ready." in stack.log_tail("worker", 100_000), 120, "worker")
        app = create_celery(make_settings(tmp_path, redis_url=redis_url))
        tasks = [{"id": 1, "data": {"image": "http://127.0.0.1:9/missing.jpg"}}]
        answer = app.send_task(TASK_PREDICT, args=[1, CONFIG["label_config"], tasks], queue=QUEUE_PREDICT)
        result = answer.get(timeout=240)
        assert result["results"][0]["model_version"] == "base", stack.log_tail("worker")
        events = [line.split(" ", 1) for line in log.read_text().splitlines()]
        children = {pid for pid, event in events if event.startswith("cuda") and int(pid) != worker.pid}
        assert children, "the guard saw no torch.cuda call in the pool child that loaded the model"
        in_main = [event for pid, event in events if int(pid) == worker.pid]
        assert "fork" in in_main  # the main process is the one that forked the pool
        assert [event for event in in_main if event != "fork"] == []
    finally:
        stack.stop_all()
