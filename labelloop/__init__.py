"""labelloop's core: everything the receiver, the Celery workers and the command line share,
knowing neither Starlette nor Celery.

The process shells sit on top and import from here, never the other way round:

- ``service``: the receiver (Starlette under uvicorn) and the command line;
- ``workers``: the Celery app and its tasks (thin shells around ``labelloop.jobs.jobs``).

Importing this package (or ``labelloop.registry.store``/``labelloop.task_types.labels``) never imports torch or
ultralytics; only the modules that run it do, inside functions: the training child
(``labelloop.training.child``, ``labelloop.training.threshold``, ``labelloop.dataset.pseudo.child``),
``/predict`` (``labelloop.serving.model_loader``, ``labelloop.serving.inference``) and model exports
(``labelloop.registry.model_export``).
"""
