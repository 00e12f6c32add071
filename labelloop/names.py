"""Celery task and queue names: the wire contract between the receiver, the workers and the
messages already queued (never rename one).

Queues: ``events`` (webhook events -> trigger policy), ``train`` (one training at a time per
worker), ``predict`` (``/predict``'s inference with models kept loaded), ``preannotate`` (whole-project
pre-annotation after a promotion, the first picks of a project with no version yet, and a
``/predict`` selection over ``LABELLOOP_PREDICT_MAX_TASKS`` written into Label Studio, on its own
workers so that it never queues ahead of ``/predict``). Tasks are routed by name, so the
receiver sends them without importing any task code. ``/predict`` sends ``TASK_PREDICT`` with an
expiry equal to its timeout (``LABELLOOP_PREDICT_TIMEOUT_S``): a worker that takes it later, when
nobody waits for the answer any more, discards it.
"""

from __future__ import annotations

TASK_HANDLE_EVENT = "labelloop.handle_event"
TASK_TRAIN = "labelloop.train"
TASK_PREDICT = "labelloop.predict"
TASK_RECONCILE = "labelloop.reconcile"
TASK_PREANNOTATE = "labelloop.preannotate"
TASK_FIRST_PICKS = "labelloop.first_picks"
TASK_WRITE_SELECTION = "labelloop.write_selection"

QUEUE_EVENTS = "events"
QUEUE_TRAIN = "train"
QUEUE_PREDICT = "predict"
QUEUE_PREANNOTATE = "preannotate"

ROUTES = {
    TASK_HANDLE_EVENT: {"queue": QUEUE_EVENTS},
    TASK_TRAIN: {"queue": QUEUE_TRAIN},
    TASK_PREDICT: {"queue": QUEUE_PREDICT},
    TASK_RECONCILE: {"queue": QUEUE_EVENTS},
    TASK_PREANNOTATE: {"queue": QUEUE_PREANNOTATE},
    TASK_FIRST_PICKS: {"queue": QUEUE_PREANNOTATE},
    TASK_WRITE_SELECTION: {"queue": QUEUE_PREANNOTATE},
}
