"""``GET /metrics``: the receiver's Prometheus metrics (``service.metrics``), in the text format.

Each scrape refreshes what the receiver reads rather than counts: served versions and their
mAP50 (from the registry, in a thread), queue depths, pre-annotation backlog, the projects'
Label Studio webhook checks and Redis memory (from Redis, within ``LABELLOOP_REDIS_TIMEOUT_S``;
a Redis that does not answer leaves them as the last scrape saw them).
"""

from __future__ import annotations

from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from labelloop import keys
from labelloop.errors import RegistryError
from labelloop.events import project_webhook
from labelloop.names import QUEUE_EVENTS, QUEUE_PREANNOTATE, QUEUE_PREDICT, QUEUE_TRAIN
from labelloop.registry.store import Registry
from service.auth import check_model
from service.deps import authorize, json_or_none, state

QUEUES = (QUEUE_EVENTS, QUEUE_TRAIN, QUEUE_PREDICT, QUEUE_PREANNOTATE)


async def metrics(request: Request) -> Response:
    st = state(request)
    if st.settings.auth_health:
        authorize(request, check_model)
    served = await run_in_threadpool(_served_map50, st.registry)
    st.metrics.set_served_versions({p: name for p, (name, _) in served.items()})
    st.metrics.set_served_map50({p: m for p, (_, m) in served.items() if m is not None})
    depths: dict[str, int] = {}
    waiting = dict.fromkeys(served, 0)
    with anyio.move_on_after(st.settings.redis_timeout_s):
        try:
            for queue in QUEUES:
                depths[queue] = int(await st.redis.llen(queue))
            if served:
                raw = await st.redis.mget([keys.preannotation(p) for p in served])
                for project_id, record in zip(served, raw, strict=True):
                    waiting[project_id] = _waiting(json_or_none(record))
            known = sorted(int(p) for p in await st.redis.smembers(keys.PROJECTS))
            checks = await st.redis.mget([project_webhook.state_key(p) for p in known]) if known else []
            st.metrics.set_project_webhooks_ok(
                {
                    p: c.ok
                    for p, r in zip(known, checks, strict=True)
                    if (c := project_webhook.parse(r)) and c.ok is not None
                }
            )
            memory = await st.redis.info("memory")
            st.metrics.redis_used_memory.set(int(memory.get("used_memory", 0)))
            st.metrics.redis_maxmemory.set(int(memory.get("maxmemory", 0)))
        except (RedisError, OSError):
            pass
    st.metrics.set_queue_depths(depths)
    st.metrics.set_preannotation_waiting(waiting)
    return Response(generate_latest(st.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _waiting(record: Any) -> int:
    """Tasks a pre-annotation record (``{"done", "total"}``) has still to do; 0 when none runs."""
    if not isinstance(record, dict):
        return 0
    done, total = record.get("done", 0), record.get("total", 0)
    if not isinstance(done, int) or not isinstance(total, int):
        return 0
    return max(0, total - done)


def _served_map50(registry: Registry) -> dict[int, tuple[str, float | None]]:
    """Project id -> (served version, its mAP50 or None) for every project that serves one
    (blocking: one CURRENT and one manifest read per project)."""
    served: dict[int, tuple[str, float | None]] = {}
    for project_id in registry.projects():
        name = registry.current_name(project_id)
        if name is None:
            continue
        try:
            metrics = registry.find(project_id, name).manifest.get("metrics")
        except RegistryError:  # CURRENT names a version that is not there: no mAP50 to report
            metrics = None
        value = metrics.get("map50") if isinstance(metrics, dict) else None
        served[project_id] = (name, float(value) if isinstance(value, int | float) else None)
    return served


def routes() -> list[Route]:
    """``/metrics``, in Starlette's routing."""
    return [Route("/metrics", metrics, methods=["GET"])]
