"""Predict workers load the served models when they start, not on the first ``/predict``.

A worker that consumes the ``predict`` queue (``labelloop.names``) runs
``labelloop.jobs.prediction.Predictors.warm`` in a daemon thread of each process that takes tasks,
so the process takes tasks at once and a ``/predict`` that comes during the warm-up waits for the
same load (``ModelCache.model_for``'s first-load lock) instead of loading again:

- prefork pool: in each pool child, on Celery's ``worker_process_init`` (sent in the child after the
  fork). The main process, which forks the children, never imports torch or Ultralytics: CUDA
  cannot be used in a child forked after it was initialised.
- solo pool: the same signal, sent in the worker's only process when its pool starts.
- threads (and other in-process) pools: no ``worker_process_init``; on ``worker_ready``, in the
  worker's only process.

Which queues the worker consumes is read on ``worker_init`` (after ``--queues`` was applied), in
the main process, before any fork. ``LABELLOOP_PREDICT_WARM=false`` turns it off (logged as
``predict_warm_off``). Source: Celery's signals, https://docs.celeryq.dev/en/stable/userguide/signals.html.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import structlog
from celery import Celery, signals

from labelloop.names import QUEUE_PREDICT

log = structlog.get_logger(__name__)

THREAD_NAME = "predict-warm"


def consumed_queues(app: Celery) -> set[str]:
    """The queue names a worker of ``app`` consumes: ``--queues`` once the worker applied it, else
    the app's default queues."""
    return set(app.amqp.queues.consume_from or {})


def _warm(app: Celery) -> None:
    """The warm-up thread's body: ``Predictors.warm`` of the app's jobs (the ones its tasks use);
    whatever it raises is logged, never the worker's end."""
    from workers.tasks import jobs

    try:
        jobs(app).prediction.predictors.warm()
    except Exception as exc:
        log.warning("predict_warm_failed", error_type=type(exc).__name__, error=str(exc)[:500])


def install_predict_warmup(app: Celery) -> None:
    """Connect the signals that warm a predict worker of ``app`` (see the module docstring); a
    worker of another app, or one that does not consume ``predict``, is left alone."""
    state: dict[str, Any] = {"predict": False, "warmed": set()}

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if sender is None or sender.app is not app:  # sender: the starting WorkController
            return
        state["predict"] = QUEUE_PREDICT in consumed_queues(app)
        if state["predict"] and not app.conf.labelloop_settings.predict_warm:
            state["predict"] = False
            log.info("predict_warm_off", setting="LABELLOOP_PREDICT_WARM")

    def start(**_: Any) -> None:
        """Start the warm-up thread, once per process."""
        if not state["predict"] or os.getpid() in state["warmed"]:
            return
        state["warmed"].add(os.getpid())
        threading.Thread(target=_warm, args=(app,), name=THREAD_NAME, daemon=True).start()

    def on_ready(sender: Any = None, **_: Any) -> None:
        from celery.concurrency.prefork import TaskPool as Prefork

        # A prefork worker's main process only forks: its children warm themselves.
        if state["predict"] and not isinstance(getattr(sender, "pool", None), Prefork):
            start()

    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_process_init.connect(start, weak=False)
    signals.worker_ready.connect(on_ready, weak=False)
