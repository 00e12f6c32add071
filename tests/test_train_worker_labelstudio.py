"""Trainings under real faults with a real Label Studio, Redis, Celery workers and ultralytics
training: the whole train worker SIGKILLed mid-epoch, Label Studio refusing connections."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from labelloop import keys
from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.dev.synthetic import make_sample
from labelloop.jobs.jobs import Jobs
from labelloop.jobs.progress import ProgressStore
from labelloop.redis_client import client as redis_client
from labelloop.registry.store import Registry
from tests.conftest import TRAIN_ENV
from tests.factories import image_project, make_settings, settings_env
from workers.celery_app import create_celery

pytestmark = pytest.mark.labelstudio


def test_a_killed_train_worker_s_run_is_redelivered_and_completes(
    label_studio: tuple[str, str], tmp_path: Path
) -> None:
    """SIGKILL of the whole train worker (main process and pool child, as a deploy's SIGKILL after
    SIGTERM) mid-epoch: a new worker gets the run again within a minute of being ready, and it
    publishes exactly one version for that run and releases the project."""
    api = LabelStudioAPI(*label_studio)
    samples = [make_sample(200 + seed, 160, 120) for seed in range(8)]
    project_id, _ = image_project(api, "labelloop whole worker killed", samples, annotate=len(samples))
    stack = Stack(tmp_path, {})
    try:
        redis_url = stack.start_redis(free_port())
        # The broker's visibility timeout (what the whole worker's SIGKILL waits for) at 20 s, not 45.
        env = {**TRAIN_ENV, "LABELLOOP_EPOCHS": "12", "LABELLOOP_TRAIN_REDELIVERY_S": "20"}
        stack.env.update(settings_env(tmp_path, redis_url=redis_url, label_studio=label_studio, **env))
        stack.start_worker("train")
        settings = make_settings(tmp_path, redis_url=redis_url)
        app = create_celery(settings)
        jobs = Jobs(settings, lambda name, args, queue: app.send_task(name, args=args, queue=queue))
        assert jobs.handle_event(project_id, "START_TRAINING", []) == "started"
        client = redis_client(redis_url, "cli")
        run_id = bytes(client.get(keys.training_lock(project_id)) or b"").decode()
        store = ProgressStore(client)
        wait_until(lambda: 1 <= (store.get(project_id) or {}).get("epoch", 0) < 8, 180, "training under way", 0.05)
        killed = store.get(project_id) or {}
        stack.stop("worker-train", sig=signal.SIGKILL)
        registry = Registry(tmp_path / "models")
        assert registry.list_versions(project_id) == []
        stack.start_worker("train", name="worker-train-new")
        ready_at = time.monotonic()

        def redelivered() -> bool:
            progress = store.get(project_id) or {}
            return progress.get("run_id") == run_id and progress.get("pid") not in (None, killed["pid"])

        try:
            wait_until(redelivered, 90, "the redelivered run", 0.2)
            redelivered_s = time.monotonic() - ready_at
            print(f"redelivered {redelivered_s:.1f} s after the new worker was ready")
            wait_until(lambda: len(registry.list_versions(project_id)) == 1, 300, "the published version", 1.0)
            wait_until(lambda: not jobs.trigger().state(project_id).training, 60, "the project released")
        except TimeoutError:
            pytest.fail("the redelivered training did not finish\n" + stack.log_tail("worker-train-new"))
        assert redelivered_s < 60
        [version] = registry.list_versions(project_id)
        assert version.manifest["run_id"] == killed["run_id"] == run_id
        assert version.manifest["train_args"]["epochs"] == 12
    finally:
        stack.stop_all()


class Forwarder:
    """A TCP forwarder on loopback ``port`` to ``target`` (host, port), started on demand: until
    then the port refuses connections (Label Studio down)."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.server: socket.socket | None = None

    def start(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.server is not None
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def test_a_training_that_finds_label_studio_down_is_retried_and_publishes(
    label_studio: tuple[str, str], tmp_path: Path
) -> None:
    """Label Studio refusing connections when a training starts (a transient error) does not drop
    the request: the run hands its lock back, is retried with backoff, and publishes once Label
    Studio answers again."""
    ls_url, token = label_studio
    api = LabelStudioAPI(ls_url, token)
    samples = [make_sample(300 + seed, 160, 120) for seed in range(8)]
    project_id, _ = image_project(api, "labelloop Label Studio down", samples, annotate=len(samples))
    parsed = urllib.parse.urlsplit(ls_url)
    forwarder = Forwarder(free_port(), (parsed.hostname or "127.0.0.1", int(parsed.port or 80)))
    stack = Stack(tmp_path, {})
    try:
        redis_url = stack.start_redis(free_port())
        down = (f"http://127.0.0.1:{forwarder.port}", token)  # refuses connections until the forwarder starts
        stack.env.update(settings_env(tmp_path, redis_url=redis_url, label_studio=down, **TRAIN_ENV))
        stack.start_worker("train")
        settings = make_settings(tmp_path, redis_url=redis_url)
        app = create_celery(settings)
        jobs = Jobs(settings, lambda name, args, queue: app.send_task(name, args=args, queue=queue))
        assert jobs.handle_event(project_id, "START_TRAINING", []) == "started"
        wait_until(lambda: '"training_retrying"' in stack.log_tail("worker-train", 1_000_000), 120, "a retry", 0.1)
        forwarder.start()
        registry = Registry(tmp_path / "models")
        try:
            wait_until(lambda: len(registry.list_versions(project_id)) == 1, 300, "the published version", 1.0)
            wait_until(lambda: not jobs.trigger().state(project_id).training, 60, "the project released")
        except TimeoutError:
            pytest.fail("the retried training did not publish\n" + stack.log_tail("worker-train"))
        assert '"training_failed"' not in stack.log_tail("worker-train", 1_000_000)
    finally:
        stack.stop_all()
        forwarder.stop()
