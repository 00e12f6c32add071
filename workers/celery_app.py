"""The Celery app factory: broker and results in Redis, one queue per kind of work.

Queues: ``events`` (webhook events -> trigger policy), ``train`` (one training at a time per
worker), ``predict`` (inference with models kept loaded). Tasks are routed by name, so the
receiver can ``send_task`` without importing any task code.
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings

TASK_HANDLE_EVENT = "labelloop.handle_event"
TASK_TRAIN = "labelloop.train"
TASK_PREDICT = "labelloop.predict"
TASK_RECONCILE = "labelloop.reconcile"
TASK_PREANNOTATE = "labelloop.preannotate"

QUEUE_EVENTS = "events"
QUEUE_TRAIN = "train"
QUEUE_PREDICT = "predict"

ROUTES = {
    TASK_HANDLE_EVENT: {"queue": QUEUE_EVENTS},
    TASK_TRAIN: {"queue": QUEUE_TRAIN},
    TASK_PREDICT: {"queue": QUEUE_PREDICT},
    TASK_RECONCILE: {"queue": QUEUE_EVENTS},
    TASK_PREANNOTATE: {"queue": QUEUE_PREDICT},
}


def create_celery(settings: Settings, with_tasks: bool = False) -> Celery:
    """Build the Celery app from settings.

    Args:
        settings: the process's settings; kept on ``app.conf.labelloop_settings``.
        with_tasks: register the task bodies (workers); the receiver only sends by name.
    """
    app = Celery("labelloop", broker=settings.redis_url, backend=settings.redis_url, set_as_current=False)
    # Redis redelivers an unacknowledged message after the visibility timeout: keep it
    # longer than the longest training so a running training is never handed out twice.
    visibility = settings.train_time_limit_s + 600
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
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility,
            "socket_connect_timeout": 1,
            "socket_timeout": 5,
        },
        result_backend_transport_options={"visibility_timeout": visibility},
        redis_socket_connect_timeout=1,
        redis_socket_timeout=5,
        labelloop_settings=settings,
        beat_schedule={
            "reconcile": {"task": TASK_RECONCILE, "schedule": float(settings.reconcile_interval_s)},
        },
    )
    if with_tasks:
        from workers.tasks import register_tasks

        register_tasks(app)
    return app
