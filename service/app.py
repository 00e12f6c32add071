"""The receiver: Label Studio's ML backend protocol over HTTP, built by ``create_app(settings)``.

Routes (https://labelstud.io/guide/ml_create):
    GET  /, /health   liveness, {"status": "UP"}
    POST /setup       {"model_version": <served version>}; validates the label config
    POST /predict     {"results": [...]}: one item per task, computed by a predict worker
    POST /webhook     records the event in Redis and enqueues it by task name (``service.webhook``)
    GET  /metrics     Prometheus text format
    GET  /versions    model version names (Label Studio's model version list)
    GET  /projects/{id}  the project page (HTML: learning curve, per-class metrics, progress)
    GET  /projects/{id}/versions, /projects/{id}/status
    GET  /projects/{id}/versions/{version}/files/{name}  a version's weights or export, streamed
    POST /projects/{id}/promote {"version": "vN"}, /projects/{id}/rollback

Every request passes ``service.frontdoor`` (Host allow-list, cross-site POSTs refused) and
``service.limits`` (requests in flight bounded, 503 beyond) before its route.

The receiver never imports torch or ultralytics; run it with ``labelloop serve`` (uvicorn with
the header timeout of ``service.connections``) or
``uvicorn --factory service.app:create_app_from_env``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import celery.exceptions
import redis
import redis.asyncio as aioredis
import structlog
from celery import Celery
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from labelloop import keys
from labelloop.errors import BadRequestError, ForbiddenError, LabelloopError, RegistryError, UnavailableError
from labelloop.events import project_webhook
from labelloop.events.ledger import PROJECTS_KEY
from labelloop.names import (
    QUEUE_EVENTS,
    QUEUE_PREANNOTATE,
    QUEUE_PREDICT,
    QUEUE_TRAIN,
    TASK_FIRST_PICKS,
    TASK_PREANNOTATE,
    TASK_PREDICT,
)
from labelloop.registry.model_export import download_path
from labelloop.registry.notify import serve_when_warm
from labelloop.registry.params import ProjectParams, parse_extra_params, preannotates, train_spec
from labelloop.registry.params import load as load_params
from labelloop.registry.params import store as store_params
from labelloop.registry.store import UNTRAINED, Registry
from labelloop.settings import Settings
from service.auth import AuthError, check_model, placeholder_credentials
from service.events import EventRecorder
from service.frontdoor import FrontDoor
from service.limits import InFlightLimit
from service.metrics import Metrics
from service.page import project_view, render
from service.projects import LabelStudioProjects
from service.protocol import PredictRequest, SetupRequest, parse_project_id
from service.resp import RespClient
from service.webhook import Receive, Scope, Send, WebhookEndpoint, error_response
from workers.celery_app import create_celery

log = structlog.get_logger("service.app")

QUEUES = (QUEUE_EVENTS, QUEUE_TRAIN, QUEUE_PREDICT, QUEUE_PREANNOTATE)
# /setup queues a project's first picks at most this often (seconds): Label Studio calls /setup
# whenever a task is opened; the job itself skips when every unlabeled task has its first pick.
FIRST_PICKS_EVERY_S = 60


@dataclass
class AppState:
    """Everything a request handler needs, built once in the lifespan."""

    settings: Settings
    redis: aioredis.Redis
    celery: Celery
    registry: Registry
    recorder: EventRecorder
    label_studio: LabelStudioProjects
    metrics: Metrics
    webhook: WebhookEndpoint


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.labelloop  # Starlette's State holds Any
    return state


async def _json_body(request: Request) -> Any:
    """Read and parse a JSON body, refusing oversized ones before reading them.

    Raises:
        HTTPException: 413 over the size limit, 415 not declared JSON (Label Studio's requests
            are ``application/json``), 400 invalid JSON.
    """
    limit = _state(request).settings.max_body_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"body over {limit} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HTTPException(415, "body must be application/json")
    raw = await _body(request, limit)
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"invalid JSON: {exc}") from None


async def _body(request: Request, limit: int) -> bytes:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise HTTPException(413, f"body over {limit} bytes")
    return bytes(raw)


def _is_form(request: Request) -> bool:
    """Whether the body is an HTML form's (the project page's promote and rollback buttons)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype == "application/x-www-form-urlencoded"


def _check_origin(request: Request, form: bool) -> None:
    """Refuse a state change another site asks a browser to make.

    A browser sends the Basic credentials it holds (the project page makes it hold them) with a
    request any site makes it send, so a request a browser marks as coming from elsewhere
    (``Origin`` not the receiver's host, ``Sec-Fetch-Site`` not same-origin) is refused, and a
    form must carry ``Origin``. Label Studio and ``curl`` send neither header.

    Raises:
        ForbiddenError: the request comes from another origin (or a form without ``Origin``).
    """
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site", "same-origin")
    if (
        site != "same-origin"
        or (form and not origin)
        or (origin is not None and urlsplit(origin).netloc != request.headers.get("host"))
    ):
        raise ForbiddenError("refused: posted from another site than this receiver's project page (Origin header)")


async def _form_body(request: Request) -> dict[str, str]:
    """The fields of an HTML form posted from the receiver's own pages (``_check_origin``).

    Raises:
        ForbiddenError: the form does not come from the receiver's origin.
        HTTPException: 413 over the size limit, 400 not UTF-8.
    """
    _check_origin(request, form=True)
    raw = await _body(request, _state(request).settings.max_body_bytes)
    try:
        fields = parse_qs(raw.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise HTTPException(400, "form is not UTF-8") from None
    return {k: v[-1] for k, v in fields.items()}


async def health(request: Request) -> JSONResponse:
    st = _state(request)
    if st.settings.auth_health:
        _auth(request, check_model)
    return JSONResponse({"status": "UP", "model_class": "labelloop.YOLO", "model_dir": "registry"})


async def setup(request: Request) -> JSONResponse:
    """Return the served model version of the project; no model is loaded here."""
    st = _state(request)
    _auth(request, check_model)
    body = await _json_body(request)
    req = SetupRequest.model_validate(body)
    project_id = parse_project_id(req.project)
    params = parse_extra_params(req.extra_params)
    # Parsing the label config (XML) and reading the project's files block: in a thread.
    await run_in_threadpool(train_spec, req.label_config, params)
    if params != await run_in_threadpool(load_params, st.settings.models_dir, project_id):
        await _check_setup_caller(st, project_id, req.access_token)
    # An unconfirmed project gets no files either (a project directory makes it known).
    if await _remember_if_confirmed(st, project_id, req.access_token) and await run_in_threadpool(
        store_params, st.settings.models_dir, project_id, params
    ):
        log.info("project_params_stored", project_id=project_id, **params.model_dump(exclude_none=True))
    current = await run_in_threadpool(st.registry.current_name, project_id)
    version = current or UNTRAINED
    log.info("setup", project_id=project_id, version=version)
    if current is None:
        await _queue_first_picks(st, project_id, params)
    return JSONResponse({"model_version": version})


async def _remember_if_confirmed(st: AppState, project_id: int, access_token: str | None) -> bool:
    """Make the project known (webhooks taken, reconciliation walks it) when Label Studio confirms
    it: it is known already, the ``/setup`` access_token or labelloop's own token reads it on
    ``LABEL_STUDIO_URL``. Credentials alone cannot make up project ids; without a Label Studio
    configured there is nothing to ask, and they decide. Returns whether the project is known;
    never fails ``/setup``."""
    if st.settings.label_studio_url:
        known = False
        with anyio.move_on_after(st.settings.redis_timeout_s):
            try:
                known = bool(await st.redis.sismember(PROJECTS_KEY, str(project_id)))
            except (RedisError, OSError):
                pass
        if known:
            return True
        if not await st.label_studio.confirms(project_id, access_token):
            log.info("project_not_confirmed", project_id=project_id, label_studio=st.settings.label_studio_url)
            return False
    await st.recorder.remember_project(project_id)
    return True


async def _queue_first_picks(st: AppState, project_id: int, params: ProjectParams) -> None:
    """Queue the first picks of a project with no version yet (``labelloop.serving.first_picks``), at most
    every ``FIRST_PICKS_EVERY_S`` per project (a Redis key set NX with that TTL); never fails
    ``/setup``: a Redis or broker error is logged and the next ``/setup`` tries again."""
    if not st.settings.label_studio_url or not params.effective(st.settings)["first_picks"]:
        return
    try:
        if not await st.redis.set(keys.first_picks_queued(project_id), "1", nx=True, ex=FIRST_PICKS_EVERY_S):
            return

        def send() -> None:
            st.celery.send_task(TASK_FIRST_PICKS, args=[project_id], queue=QUEUE_PREANNOTATE)

        await anyio.to_thread.run_sync(send)
        log.info("first_picks_queued", project_id=project_id)
    except Exception as exc:  # the project is connected either way; first picks come at a later /setup
        log.warning("first_picks_not_queued", project_id=project_id, error=str(exc)[:200])


async def _check_setup_caller(st: AppState, project_id: int, access_token: str | None) -> None:
    """Only the project's own ML backend connection changes its extra params: Label Studio sends
    its project creator's token in ``/setup`` (``access_token``, a legacy token), and that token
    must read the project on ``LABEL_STUDIO_URL``. Without a Label Studio configured there is
    nothing to ask (and nothing to train on): the credentials alone decide.

    Raises:
        ForbiddenError: the token is missing or cannot read the project.
    """
    if not st.settings.label_studio_url:
        return
    if not access_token or not await st.label_studio.token_reads(project_id, access_token):
        raise ForbiddenError(
            f"extra params not stored: the /setup access_token cannot read project {project_id} at "
            f"{st.settings.label_studio_url} (Label Studio sends its project creator's legacy token: "
            "legacy tokens must be enabled in the organization's access token settings)"
        )


async def predict(request: Request) -> JSONResponse:
    """Ask a predict worker for regions, one result item per task, in order.

    The worker predicts in chunks of ``LABELLOOP_PREDICT_BATCH`` and answers with what is ready at
    ``LABELLOOP_PREDICT_DEADLINE_S`` (``labelloop.serving.selection``: ``[]`` for a task not reached). The
    wait for its answer takes a thread of its own limiter (``_predict_limiter``), never one of the
    pool the registry routes share.

    Errors (Label Studio 1.23.2, ``ml.models.MLBackend._get_predictions_from_ml_backend``, logs any
    4xx or 5xx as ``Error occurred: <status> ... for url`` and saves no prediction; the body's reason
    stays in labelloop's log and in the response for other callers):
        413: more tasks than ``LABELLOOP_PREDICT_MAX_TASKS``, refused before anything is queued.
        503: no worker answered within ``LABELLOOP_PREDICT_TIMEOUT_S``, or the worker failed (died,
            out of memory, over its time limit), with the reason.
    """
    st = _state(request)
    t0 = time.perf_counter()
    _auth(request, check_model)
    body = await _json_body(request)
    req = PredictRequest.model_validate(body)
    if req.project is not None:
        project_id = parse_project_id(req.project)
    elif req.tasks and req.tasks[0].project:
        project_id = int(req.tasks[0].project)
    else:
        raise BadRequestError("project is missing")
    train_spec(req.label_config, load_params(st.settings.models_dir, project_id))
    if not req.tasks:
        return JSONResponse({"results": []})
    limit = st.settings.predict_max_tasks
    if len(req.tasks) > limit:
        raise HTTPException(
            413,
            f"{len(req.tasks)} tasks in one /predict: over LABELLOOP_PREDICT_MAX_TASKS ({limit}). Retrieve "
            "predictions for a smaller selection; the pre-annotation queue predicts every unlabeled task of the "
            "project after each promotion (it takes a project, not a list of task ids)",
        )
    tasks = [{"id": t.id, "data": t.data} for t in req.tasks]

    def call() -> Any:
        timeout = st.settings.predict_timeout_s
        # Nobody waits for the answer after the timeout: a worker that takes the task later
        # discards it (expires), one that holds it already is told so (revoke).
        try:
            result = st.celery.send_task(
                TASK_PREDICT, args=[project_id, req.label_config, tasks], queue=QUEUE_PREDICT, expires=timeout
            )
        except Exception as exc:
            raise UnavailableError(f"predict task not queued ({type(exc).__name__}: {str(exc)[:200]})") from None
        try:
            return result.get(timeout=timeout, propagate=True)
        except celery.exceptions.TimeoutError:
            result.revoke()
            log.warning("predict_timed_out", project_id=project_id, task_id=result.id, timeout_s=timeout)
            raise UnavailableError(f"no predict worker answered within {timeout:g} s; request withdrawn") from None
        except LabelloopError:
            raise
        except Exception as exc:
            raise UnavailableError(_predict_failure(exc, project_id)) from None
        finally:
            result.forget()

    out = await anyio.to_thread.run_sync(call, limiter=_predict_limiter(request))
    results = out["results"]
    if len(results) != len(tasks):
        raise UnavailableError("predict worker returned a wrong number of results")
    seconds = time.perf_counter() - t0
    st.metrics.predict_seconds.observe(seconds)
    log.info(
        "predicted",
        project_id=project_id,
        tasks=len(tasks),
        ready=sum(1 for r in results if r),
        version=next((r["model_version"] for r in results if r), None),
        seconds=seconds,
    )
    return JSONResponse({"results": results})


def _predict_limiter(request: Request) -> anyio.CapacityLimiter:
    """The threads ``/predict`` waits in (one per request, up to ``LABELLOOP_MAX_CONCURRENT_REQUESTS``),
    apart from anyio's default limiter: predictions waiting on a busy or stopped worker never hold
    the threads of ``/versions``, promote or rollback. Made on first use, in the event loop."""
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "predict_limiter", None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(_state(request).settings.max_concurrent_requests)
        request.app.state.predict_limiter = limiter
    return limiter


def _predict_failure(exc: Exception, project_id: int) -> str:
    """The reason a predict task failed in its worker, for a 503 (never a traceback)."""
    name = type(exc).__name__
    if name == "WorkerLostError":
        why = "the predict worker died while predicting (killed, or out of memory)"
    elif "OutOfMemory" in name or isinstance(exc, MemoryError):
        why = "the predict worker ran out of memory; lower LABELLOOP_PREDICT_BATCH"
    elif name in ("TimeLimitExceeded", "SoftTimeLimitExceeded"):
        why = "the predict worker went over its time limit"
    else:
        why = "the predict worker failed"
    log.warning("predict_failed", project_id=project_id, error_type=name, error=str(exc)[:200])
    return f"{why} ({name}: {str(exc)[:200]})"


class _WebhookRoute:
    """``/webhook`` in Starlette's routing: a plain ASGI app (``service.webhook``), so Starlette
    answers other methods with 405. Routing costs nothing measurable here (``bench.receiver``:
    36.6x the official backend's webhook throughput with it, 38.5x answering before it)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["app"].state.labelloop.webhook(scope, receive, send)


async def versions(request: Request) -> JSONResponse:
    """Label Studio's ``GET /versions``: version names (it sends no project; ``?project=`` narrows)."""
    st = _state(request)
    _auth(request, check_model)
    project = request.query_params.get("project")
    only = parse_project_id(project) if project else None

    def read() -> list[str]:
        projects = [only] if only is not None else st.registry.projects()
        return sorted({n for p in projects for n in st.registry.version_names(p)}, key=lambda n: int(n[1:]))

    return JSONResponse({"versions": await run_in_threadpool(read)})


async def project_versions(request: Request) -> JSONResponse:
    """Versions of a project with status, metrics and parent; the served one first in ``current``."""
    st = _state(request)
    _auth(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])

    def read() -> dict[str, Any]:
        # The index (one small file) and one history read, in a thread: never every manifest on the loop.
        summaries = st.registry.summaries(project_id)
        statuses = st.registry.statuses(project_id, {e["version"]: e.get("status") or "rejected" for e in summaries})
        items = [
            {
                "version": e["version"],
                "status": statuses[e["version"]],
                "parent": e.get("parent"),
                "created_at": e.get("created_at"),
                "metrics": e.get("metrics"),
                "dataset_size": e.get("dataset_size"),
                "promotion": e.get("promotion"),
                "annotations": e.get("annotations"),
            }
            for e in summaries
        ]
        return {"current": st.registry.current_name(project_id), "versions": items}

    return JSONResponse(await run_in_threadpool(read))


async def version_file(request: Request) -> Response:
    """A version's weights or a finished export's file (``labelloop.registry.model_export.downloads``),
    streamed: ``GET /projects/{id}/versions/{version}/files/weights.pt`` or ``.../files/onnx/weights.onnx``;
    404 for a version retention removed or a format not exported yet. The file is opened before the
    answer starts, so a retention that removes the version meanwhile does not cut it short."""
    st = _state(request)
    _auth(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])
    version, name = request.path_params["version"], request.path_params["name"]

    def open_file() -> tuple[Any, int]:
        fh = download_path(st.registry, project_id, version, name).open("rb")
        return fh, os.fstat(fh.fileno()).st_size

    fh, size = await run_in_threadpool(open_file)

    def chunks() -> Iterator[bytes]:
        with fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk

    filename = f"project{project_id}-{version}-{name.replace('/', '-')}"
    headers = {"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


CHUNK_BYTES = 1 << 20  # a download is streamed in chunks of this size (bounded memory per download)


async def promote(request: Request) -> Response:
    """Serve a given version: ``POST /projects/{id}/promote`` with ``{"version": "v3"}``, or the
    project page's form (``version=v3``; answered with a redirect back to the page)."""
    st = _state(request)
    _auth(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])
    form = _is_form(request)
    _check_origin(request, form)
    body = await (_form_body(request) if form else _json_body(request))
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str):
        raise BadRequestError('body must be {"version": "v<N>"}')
    await anyio.to_thread.run_sync(lambda: _serve(st, project_id, version, "promoted by operator"))
    return _back_to_page(project_id) if form else JSONResponse({"model_version": version})


async def rollback(request: Request) -> Response:
    """Serve the version served before the current one: ``POST /projects/{id}/rollback`` (the
    project page's form is answered with a redirect back to the page)."""
    st = _state(request)
    _auth(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])
    form = _is_form(request)
    _check_origin(request, form)
    if form:
        await _form_body(request)
    version = await run_in_threadpool(st.registry.rollback_target, project_id)
    await anyio.to_thread.run_sync(lambda: _serve(st, project_id, version, "rollback"))
    return _back_to_page(project_id) if form else JSONResponse({"model_version": version})


def _back_to_page(project_id: int) -> RedirectResponse:
    return RedirectResponse(f"/projects/{project_id}", status_code=303)


async def project_status(request: Request) -> JSONResponse:
    """Served version, running training (epoch, epochs, metrics) and pre-annotation progress."""
    st = _state(request)
    _auth(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])
    training, preannotation = await _progress(st, project_id)
    version = await run_in_threadpool(st.registry.served_name, project_id)
    return JSONResponse(
        {
            "project_id": project_id,
            "model_version": version,
            "training": training,
            "preannotation": preannotation,
        }
    )


async def project_page(request: Request) -> HTMLResponse:
    """The project page (``service.page``): HTML, behind the same credentials as the other project routes."""
    st = _state(request)
    _auth(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])
    view = await run_in_threadpool(project_view, st.registry, project_id)
    view.training, view.preannotation = await _progress(st, project_id)
    with anyio.move_on_after(st.settings.redis_timeout_s), contextlib.suppress(RedisError, OSError):
        view.webhook = project_webhook.parse(await st.redis.get(project_webhook.state_key(project_id)))
    view.base_url = str(request.base_url)
    return HTMLResponse(render(view), headers={"Content-Security-Policy": PAGE_POLICY})


# The page runs no script, loads nothing, posts forms only to the receiver and may not be framed
# (its buttons act with the browser's credentials: no clickjacking).
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'"


async def _progress(st: AppState, project_id: int) -> tuple[Any, Any]:
    """The running training's and pre-annotation's progress records from Redis (None when absent
    or when Redis does not answer in time: they are a cache)."""
    training = preannotation = None
    with anyio.move_on_after(st.settings.redis_timeout_s * 2):
        try:
            raw = await st.redis.mget(keys.progress(project_id), keys.preannotation(project_id))
            training, preannotation = (_json_or_none(r) for r in raw)
        except (RedisError, OSError):
            pass
    return training, preannotation


def _json_or_none(raw: bytes | str | None) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


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


def _serve(st: AppState, project_id: int, version: str, reason: str) -> None:
    """Serve ``version`` once the predict workers have it loaded (blocking; run in a thread)."""
    client = redis.Redis.from_url(st.settings.redis_url, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        warm = serve_when_warm(client, st.registry, project_id, version, reason=reason)
    finally:
        client.close()
    log.info("version_served", project_id=project_id, version=version, reason=reason, workers_warm=warm)
    if preannotates(st.settings, project_id):
        try:  # the version is served either way; its pre-annotation supersedes the running one
            st.celery.send_task(TASK_PREANNOTATE, args=[project_id, version], queue=QUEUE_PREANNOTATE)
        except Exception as exc:
            log.warning("preannotate_not_sent", project_id=project_id, version=version, error=str(exc)[:200])


async def metrics(request: Request) -> Response:
    st = _state(request)
    if st.settings.auth_health:
        _auth(request, check_model)
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
                    waiting[project_id] = _waiting(_json_or_none(record))
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


def _auth(request: Request, check: Callable[[Headers, Settings], None]) -> None:
    st = _state(request)
    try:
        check(request.headers, st.settings)
    except AuthError as exc:
        # The route's template, never the raw path (one series per path a client sends).
        route = getattr(request.scope.get("route"), "path", "(other)")
        st.metrics.auth_failures.labels(route=route, kind="basic" if exc.basic else "secret").inc()
        raise


async def _refused_busy(scope: Scope) -> None:
    """A request the in-flight limit refused (``service.limits``): counted, and a webhook's gap is
    recorded as any other webhook refused before its body was read."""
    st: AppState | None = getattr(scope["app"].state, "labelloop", None)
    if st is None:
        return
    webhook = scope["path"] == "/webhook"
    st.metrics.refused_busy.labels(route="webhook" if webhook else "other").inc()
    if webhook:
        await st.webhook.record_refusal_if_credentialed(scope)


async def _refused_host(scope: Scope) -> None:
    """A request refused for its Host header (``service.frontdoor``): a webhook's gap is recorded
    as any other webhook refused before its body was read (a misconfigured allow-list loses no
    annotation)."""
    st: AppState | None = getattr(scope["app"].state, "labelloop", None)
    if st is not None and scope["path"] == "/webhook":
        await st.webhook.record_refusal_if_credentialed(scope)


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    status, content, headers = error_response(exc, request.url.path)
    return JSONResponse(content, status_code=status, headers=headers)


class Receiver(Starlette):
    """The receiver's Starlette app (``POST /webhook`` is a plain ASGI endpoint in its routing)."""


def create_app(settings: Settings) -> Receiver:
    """Build the receiver for ``settings``; connections open in the lifespan, not here."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            health_check_interval=10,
        )
        # The webhook path's own client: one pipelined connection (service.resp).
        resp = RespClient(
            settings.redis_url, connect_timeout=settings.redis_timeout_s, timeout=settings.redis_timeout_s * 2
        )
        celery = create_celery(settings)
        registry = Registry(settings.models_dir)
        label_studio = LabelStudioProjects(settings)
        recorder = EventRecorder(
            resp,
            celery,
            has_versions=lambda p: p in registry.projects(),
            label_studio=label_studio,
            change_log_bytes=settings.change_log_project_bytes,
        )
        await recorder.start()
        metrics = Metrics(CollectorRegistry())
        webhook = WebhookEndpoint(settings, recorder, metrics)
        app.state.labelloop = AppState(
            settings=settings,
            redis=client,
            celery=celery,
            registry=registry,
            recorder=recorder,
            label_studio=label_studio,
            metrics=metrics,
            webhook=webhook,
        )
        try:
            yield
        finally:
            await resp.close()
            await label_studio.close()
            await client.aclose()

    return Receiver(
        routes=[
            Route("/", health, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/setup", setup, methods=["POST"]),
            Route("/predict", predict, methods=["POST"]),
            Route("/webhook", _WebhookRoute(), methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/versions", versions, methods=["GET"]),
            Route("/projects/{project_id}", project_page, methods=["GET"]),
            Route("/projects/{project_id}/versions", project_versions, methods=["GET"]),
            Route("/projects/{project_id}/versions/{version}/files/{name:path}", version_file, methods=["GET"]),
            Route("/projects/{project_id}/promote", promote, methods=["POST"]),
            Route("/projects/{project_id}/rollback", rollback, methods=["POST"]),
            Route("/projects/{project_id}/status", project_status, methods=["GET"]),
        ],
        middleware=[
            Middleware(FrontDoor, allowed_hosts=settings.allowed_hosts, on_host_refused=_refused_host),
            Middleware(InFlightLimit, limit=settings.max_concurrent_requests, on_refused=_refused_busy),
        ],
        exception_handlers={
            HTTPException: _on_error,
            ValidationError: _on_error,
            LabelloopError: _on_error,
            Exception: _on_error,
        },
        lifespan=lifespan,
    )


def create_app_from_env() -> Receiver:
    """uvicorn entry point: settings from the environment, logging configured once."""
    from labelloop.logconfig import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json, process="receiver")
    if names := placeholder_credentials(settings):
        raise SystemExit(f"labelloop: error: {', '.join(names)} still hold the example's placeholder (CHANGE-ME)")
    return create_app(settings)
