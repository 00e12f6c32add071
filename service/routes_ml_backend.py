"""Label Studio's ML backend protocol (https://labelstud.io/guide/ml_create).

Routes:
    GET  /, /health   liveness, {"status": "UP"}
    POST /setup       {"model_version": <served version>}; validates the label config
    POST /predict     {"results": [...]}: one item per task, computed by a predict worker
    POST /webhook     records the event in Redis and enqueues it by task name (``service.webhook``)

No model is loaded here: ``/setup`` reads the registry, ``/predict`` waits for a predict worker.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import celery.exceptions
import structlog
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labelloop import keys
from labelloop.errors import BadRequestError, ForbiddenError, LabelloopError, UnavailableError
from labelloop.events.ledger import PROJECTS_KEY
from labelloop.names import QUEUE_PREANNOTATE, QUEUE_PREDICT, TASK_FIRST_PICKS, TASK_PREDICT, TASK_WRITE_SELECTION
from labelloop.registry.params import ProjectParams, parse_extra_params, train_spec
from labelloop.registry.params import load as load_params
from labelloop.registry.params import store as store_params
from labelloop.registry.store import UNTRAINED
from service.auth import check_model
from service.deps import AppState, authorize, json_body, state
from service.protocol import PredictRequest, SetupRequest, parse_project_id
from service.webhook import Receive, Scope, Send

log = structlog.get_logger("service.app")

# /setup queues a project's first picks at most this often (seconds): Label Studio calls /setup
# whenever a task is opened; the job itself skips when every unlabeled task has its first pick.
FIRST_PICKS_EVERY_S = 60
# A selection handed to the pre-annotation queue is not queued again for this long (seconds) while
# its job has not ended (the job clears it): Label Studio's "Retrieve Predictions" may be clicked twice.
SELECTION_QUEUED_S = 1800


async def health(request: Request) -> JSONResponse:
    """Liveness: ``{"status": "UP", ...}``; behind Basic auth only with ``LABELLOOP_AUTH_HEALTH``."""
    if state(request).settings.auth_health:
        authorize(request, check_model)
    return JSONResponse({"status": "UP", "model_class": "labelloop.YOLO", "model_dir": "registry"})


async def setup(request: Request) -> JSONResponse:
    """Return the served model version of the project; no model is loaded here."""
    st = state(request)
    authorize(request, check_model)
    body = await json_body(request)
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
        202: more tasks than ``LABELLOOP_PREDICT_MAX_TASKS``: handed to the pre-annotation queue
            (``_hand_to_preannotation``), ``{"results": [], "queued": n, "detail": ...}``.
        413: more tasks than ``LABELLOOP_PREDICT_MAX_TASKS`` and nothing that could write them into
            Label Studio later (no ``LABEL_STUDIO_URL``, or no version served yet).
        503: no worker answered within ``LABELLOOP_PREDICT_TIMEOUT_S``, or the worker failed (died,
            out of memory, over its time limit), with the reason.
    """
    st = state(request)
    t0 = time.perf_counter()
    authorize(request, check_model)
    body = await json_body(request)
    req = PredictRequest.model_validate(body)
    if req.project is not None:
        project_id = parse_project_id(req.project)
    elif req.tasks and req.tasks[0].project:
        project_id = int(req.tasks[0].project)
    else:
        raise BadRequestError("project is missing")
    # Reading the project's params and parsing the label config (XML) block: in a thread.
    await run_in_threadpool(lambda: train_spec(req.label_config, load_params(st.settings.models_dir, project_id)))
    if not req.tasks:
        return JSONResponse({"results": []})
    tasks = [{"id": t.id, "data": t.data} for t in req.tasks]
    if len(tasks) > st.settings.predict_max_tasks:
        return await _hand_to_preannotation(st, project_id, req.label_config, tasks)

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


async def _hand_to_preannotation(
    st: AppState, project_id: int, label_config: str, tasks: list[dict[str, Any]]
) -> JSONResponse:
    """A selection over ``LABELLOOP_PREDICT_MAX_TASKS``: queued once (``keys.selection_queued``, while
    it waits or runs) as ``labelloop.write_selection`` on the pre-annotation queue, which predicts it
    in chunks and writes the predictions into Label Studio (``labelloop.serving.selection.write_selection``);
    answers 202 at once, with no results: Label Studio 1.23.2 stores none from this answer (it logs
    "results field must be a list with at least one item") and shows the written predictions as they
    arrive. Without ``LABEL_STUDIO_URL``, or with no served version, nothing could write them: 413
    with the reason."""
    limit = st.settings.predict_max_tasks
    over = f"{len(tasks)} tasks in one /predict: over LABELLOOP_PREDICT_MAX_TASKS ({limit})"
    if not st.settings.label_studio_url:
        raise HTTPException(413, f"{over}; the pre-annotation queue cannot take them: no LABEL_STUDIO_URL to write to")
    if await run_in_threadpool(st.registry.current_name, project_id) is None:
        raise HTTPException(
            413, f"{over}; the pre-annotation queue cannot take them: project {project_id} has no version served yet"
        )
    key = keys.selection_queued(project_id, keys.selection_digest([int(t["id"]) for t in tasks]))
    try:
        with anyio.fail_after(st.settings.redis_timeout_s):
            fresh = bool(await st.redis.set(key, "1", nx=True, ex=SELECTION_QUEUED_S))
    except (RedisError, OSError, TimeoutError) as exc:
        raise UnavailableError(f"selection not queued: Redis failed ({type(exc).__name__}: {str(exc)[:200]})") from None
    if fresh:
        try:
            args = [project_id, label_config, tasks]
            await run_in_threadpool(st.celery.send_task, TASK_WRITE_SELECTION, args=args, queue=QUEUE_PREANNOTATE)
        except Exception as exc:
            with anyio.move_on_after(st.settings.redis_timeout_s, shield=True):
                try:
                    await st.redis.delete(key)  # the next "Retrieve Predictions" may queue it
                except (RedisError, OSError):
                    pass
            raise UnavailableError(f"selection not queued ({type(exc).__name__}: {str(exc)[:200]})") from None
    detail = (
        f"{over}: {'queued' if fresh else 'already queued'} on the pre-annotation queue; its predictions "
        "appear in Label Studio as each chunk is written"
    )
    log.info("selection_queued", project_id=project_id, tasks=len(tasks), fresh=fresh)
    return JSONResponse({"results": [], "queued": len(tasks), "detail": detail}, status_code=202)


def _predict_limiter(request: Request) -> anyio.CapacityLimiter:
    """The threads ``/predict`` waits in (one per request, up to ``LABELLOOP_MAX_CONCURRENT_REQUESTS``),
    apart from anyio's default limiter: predictions waiting on a busy or stopped worker never hold
    the threads of ``/versions``, promote or rollback. Made on first use, in the event loop."""
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "predict_limiter", None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(state(request).settings.max_concurrent_requests)
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


def routes() -> list[Route]:
    """The ML backend protocol's routes, in Starlette's routing."""
    return [
        Route("/", health, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/setup", setup, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/webhook", _WebhookRoute(), methods=["POST"]),
    ]
