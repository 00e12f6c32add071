"""labelloop's process shells on the HTTP side: the receiver (``service.app``: the Label Studio ML
backend protocol over HTTP, thin and fast) and the command line (``service.cli``).

The receiver: ``app`` wires what ``deps`` shares (settings, Redis, Celery, registry, auth) into
the routes (``routes_ml_backend``, ``routes_projects``, ``routes_metrics``); the webhook path is
``webhook`` -> ``events`` over ``redis_client``; ``frontdoor``, ``limits`` and ``connections``
guard the door; ``promotion`` serves a version an operator chose. The command line's operator
commands are ``ops_training``, ``ops_versions``, ``ops_status`` and ``ops_doctor``.
"""
