"""labelloop workers: the Celery app (``workers.celery_app``) and its tasks (``workers.tasks``),
thin shells that take ids, bind log context and call one plain function of ``labelloop.jobs.jobs``.

Importing this package never imports torch or ultralytics.
"""
