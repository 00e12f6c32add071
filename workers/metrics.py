"""Prometheus metrics of a Celery worker, served by the worker's main process.

Prefork children count tasks; prometheus-client's multiprocess mode (one directory per worker,
``PROMETHEUS_MULTIPROC_DIR``) lets the main process serve the sum. The directory must be set
before prometheus-client is imported, so ``prepare_multiprocess_dir`` runs first thing in
``labelloop worker``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import redis
import structlog
from celery import Celery, signals

from labelloop import redis_client
from labelloop.events.ledger import Ledger
from labelloop.jobs import locks
from labelloop.names import TASK_TRAIN
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from labelloop.training.runs import host_name

log = structlog.get_logger(__name__)

LOCKS_WITHOUT_OWNER = "labelloop_project_locks_without_owner"


def prepare_multiprocess_dir(root: Path, name: str) -> Path:
    """Create an empty metrics directory for this worker, ``<root>/<name>-<host name>-<pid>``
    (workers on several hosts may share ``root``), and export ``PROMETHEUS_MULTIPROC_DIR``."""
    path = Path(root).absolute() / f"{name}-{host_name()}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


class LocksWithoutOwner:
    """The gauge ``labelloop_project_locks_without_owner``: projects whose training lock no
    delivery holds and no message of its run keeps (``labelloop.jobs.locks``), read from Redis at each
    scrape (every worker serves the same value; none when Redis does not answer)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_client.client(settings.redis_url, "worker")

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        try:
            projects = Ledger(self.redis).projects() | set(Registry(self.settings.models_dir).projects())
            found = locks.without_owner(self.redis, projects, self.settings.train_lock_orphan_s)
        except redis.RedisError as exc:
            log.warning("metrics_locks_unreadable", error_type=type(exc).__name__)
            return
        yield GaugeMetricFamily(
            LOCKS_WITHOUT_OWNER,
            "Projects whose training lock has no live owner (no delivery runs its run, no message of it waits): "
            "trainings there only set a follow-up flag until the reconciliation reaps the lock.",
            value=len(found),
        )


def install_worker_metrics(app: Celery, port: int) -> None:
    """Count tasks by name and state, time them, count given-up training runs, report training
    locks without owner (``LocksWithoutOwner``), and serve ``/metrics`` on ``port`` once the
    worker has started."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server

    tasks = Counter("labelloop_worker_tasks_total", "Tasks finished, by task name and state.", ["task", "state"])
    seconds = Histogram(
        "labelloop_worker_task_seconds",
        "Task run time in seconds, by task name.",
        ["task"],
        buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400),
    )
    given_up = Counter(
        "labelloop_worker_trainings_given_up_total",
        "Training runs given up because their deliveries kept dying with their worker.",
    )
    started: dict[str, float] = {}

    def prerun(task_id: str | None = None, **_: Any) -> None:
        if task_id:
            started[task_id] = time.perf_counter()

    def postrun(
        task_id: str | None = None, task: Any = None, state: str | None = None, retval: Any = None, **_: Any
    ) -> None:
        name = getattr(task, "name", "unknown")
        tasks.labels(task=name, state=(state or "unknown").lower()).inc()
        if name == TASK_TRAIN and isinstance(retval, dict) and retval.get("status") == "given_up":
            given_up.inc()
        t0 = started.pop(task_id or "", None)
        if t0 is not None:
            seconds.labels(task=name).observe(time.perf_counter() - t0)

    def serve(**_: Any) -> None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(LocksWithoutOwner(app.conf.labelloop_settings))
        start_http_server(port, registry=registry)

    def child_exit(pid: int | None = None, **_: Any) -> None:
        if pid is not None:
            multiprocess.mark_process_dead(pid)

    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)
    signals.worker_ready.connect(serve, weak=False)
    signals.worker_process_shutdown.connect(child_exit, weak=False)
