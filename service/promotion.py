"""Serve a version an operator chose, then queue its pre-annotation: the one way the receiver's
``POST /projects/{id}/promote`` and ``/rollback`` and ``labelloop models promote`` and
``rollback`` serve a version.

The version is served once the predict workers have it loaded (``labelloop.registry.notify.
serve_when_warm``, at most its timeout), and the project's pre-annotation with it is queued when
the project pre-annotates (``labelloop.registry.params.preannotates``), superseding a running
one. A broker that refuses the pre-annotation does not undo the serving: it is logged and said
in the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog
from celery import Celery

from labelloop import redis_client
from labelloop.names import QUEUE_PREANNOTATE, TASK_PREANNOTATE
from labelloop.registry.notify import serve_when_warm
from labelloop.registry.params import preannotates
from labelloop.registry.store import Registry
from labelloop.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Served:
    """What ``serve`` did.

    Attributes:
        warm: every live predict process had the version loaded before it was served.
        preannotation: "queued", "off" (the project does not pre-annotate) or "not queued" (the
            broker refused it: ``error`` says why).
        error: the broker's error, at most 200 characters; empty unless "not queued".
    """

    warm: bool
    preannotation: Literal["queued", "off", "not queued"]
    error: str = ""


def serve(settings: Settings, registry: Registry, celery: Celery, project_id: int, version: str, reason: str) -> Served:
    """Serve ``version`` of ``project_id`` once warm, then queue its pre-annotation (blocking:
    run it in a thread from the event loop). ``reason`` goes into the serving history and the log
    ("promoted by operator", "rollback").

    Raises:
        VersionNotFoundError: no such version (nothing is served or queued).
    """
    client = redis_client.client(settings.redis_url, "cli")
    warm = serve_when_warm(client, registry, project_id, version, reason=reason)
    log.info("version_served", project_id=project_id, version=version, reason=reason, workers_warm=warm)
    if not preannotates(settings.models_dir, settings, project_id):
        return Served(warm, "off")
    try:  # the version is served either way; its pre-annotation supersedes the running one
        celery.send_task(TASK_PREANNOTATE, args=[project_id, version], queue=QUEUE_PREANNOTATE)
    except Exception as exc:
        log.warning("preannotate_not_sent", project_id=project_id, version=version, error=str(exc)[:200])
        return Served(warm, "not queued", f"{type(exc).__name__}: {str(exc)[:200]}")
    return Served(warm, "queued")
