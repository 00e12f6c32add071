"""The Celery app factory: broker and results in Redis, one queue per kind of work
(``labelloop.names``: tasks are routed by name, so the receiver sends them without importing
any task code; the workers' app includes ``workers.tasks``).
"""

from __future__ import annotations

from celery import Celery

from labelloop.names import (
    QUEUE_EVENTS,
    QUEUE_PREANNOTATE,
    QUEUE_PREDICT,
    QUEUE_TRAIN,
    ROUTES,
    TASK_HANDLE_EVENT,
    TASK_PREANNOTATE,
    TASK_PREDICT,
    TASK_RECONCILE,
    TASK_TRAIN,
)
from labelloop.settings import Settings
from workers.warmup import install_predict_warmup

# Seconds between kombu's sweeps for deliveries past the visibility timeout.
RESTORE_INTERVAL_S = 5
# Seconds a training has after its soft time limit to clean up before Celery kills it.
HARD_LIMIT_GRACE_S = 120

__all__ = [
    "QUEUE_EVENTS",
    "QUEUE_PREANNOTATE",
    "QUEUE_PREDICT",
    "QUEUE_TRAIN",
    "TASK_HANDLE_EVENT",
    "TASK_PREANNOTATE",
    "TASK_PREDICT",
    "TASK_RECONCILE",
    "TASK_TRAIN",
    "create_celery",
]


def create_celery(settings: Settings, with_tasks: bool = False) -> Celery:
    """Build the Celery app from settings.

    Args:
        settings: the process's settings; kept on ``app.conf.labelloop_settings``.
        with_tasks: include ``workers.tasks`` (workers); the receiver only sends by name. A
            worker of such an app that consumes ``predict`` loads the served models as it starts
            (``workers.warmup``).
    """
    include = ["workers.tasks"] if with_tasks else []
    app = Celery(
        "labelloop", broker=settings.redis_url, backend=settings.redis_url, set_as_current=False, include=include
    )
    # Redis redelivers an unacknowledged message after the visibility timeout. Short, so that a
    # training whose worker was killed runs again within a minute: the running training keeps
    # its own delivery fresh (workers.tasks.train), every other task is acknowledged when it
    # starts, prefetching is off (nothing waits unacknowledged behind a long task), retries wait
    # less than it, and kombu sweeps for expired deliveries every RESTORE_INTERVAL_S.
    visibility = settings.train_redelivery_s
    app.conf.update(
        task_routes=ROUTES,
        task_default_queue=QUEUE_EVENTS,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility,
            "unacked_restore_interval": RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 1,
            "socket_timeout": 5,
        },
        result_backend_transport_options={"visibility_timeout": visibility},
        redis_socket_connect_timeout=1,
        redis_socket_timeout=5,
        labelloop_settings=settings,
        # A training's limits, from settings (the task itself is defined at import): the soft
        # limit stops and cleans up the run (build, train and validate together, plus the longest
        # quiet-period wait before them, so waiting never costs a run its time); the hard one
        # only catches a run that ignores it.
        task_annotations={
            TASK_TRAIN: {
                "soft_time_limit": settings.train_time_limit_s + settings.train_max_delay_s,
                "time_limit": settings.train_time_limit_s + settings.train_max_delay_s + HARD_LIMIT_GRACE_S,
            }
        },
        beat_schedule={
            "reconcile": {"task": TASK_RECONCILE, "schedule": float(settings.reconcile_interval_s)},
        },
    )
    if with_tasks:
        install_predict_warmup(app)
    return app
