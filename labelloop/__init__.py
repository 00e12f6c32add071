"""labelloop's core: everything the receiver, the Celery workers and the command line share,
knowing neither Starlette nor Celery.

The process shells sit on top and import from here, never the other way round:

- ``service``: the receiver (Starlette under uvicorn) and the command line;
- ``workers``: the Celery app and its tasks (thin shells around ``labelloop.jobs.jobs``).

Importing this package (or ``labelloop.registry.store``/``labelloop.task_types.labels``) never imports torch or
ultralytics; only ``labelloop.training.child`` and ``labelloop.serving.predictor`` do, inside functions.
"""
