"""labelloop workers: Celery tasks that export, build datasets, train, publish and predict.

Importing this package (or ``workers.registry``/``workers.labels``) never imports torch or
ultralytics; only ``workers.training`` and ``workers.predictor`` do, inside functions.
"""
