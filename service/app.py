"""The receiver: Label Studio's ML backend protocol over HTTP, built by ``create_app(settings)``.

This module wires; the routes answer, one module per concern, each a ``routes()`` list:
``service.routes_ml_backend`` (Label Studio's ML backend protocol: ``/``, ``/health``,
``/setup``, ``/predict``, ``/webhook``), ``service.routes_projects`` (the registry:
``/versions``, ``/projects/{id}`` pages, status, model files, promote, rollback) and
``service.routes_metrics`` (``/metrics``). What they share is built here, once, into
``service.deps.AppState``; they take it from ``service.deps`` and nothing from each other.

Every request passes ``service.frontdoor`` (Host allow-list, cross-site POSTs refused) and
``service.limits`` (requests in flight bounded, 503 beyond; 408 to a body that does not come in
time) before its route. Errors become
responses in one place (``service.webhook.error_response``).

The receiver never imports torch or ultralytics; run it with ``labelloop serve`` (uvicorn with
the header timeout of ``service.connections``) or
``uvicorn --factory service.app:create_app_from_env``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from labelloop.errors import LabelloopError
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from service import redis_client, routes_metrics, routes_ml_backend, routes_projects
from service.auth import placeholder_credentials
from service.deps import AppState
from service.events import EventRecorder
from service.frontdoor import FrontDoor
from service.limits import BodyDeadline, InFlightLimit
from service.metrics import Metrics
from service.projects import LabelStudioProjects
from service.webhook import Scope, WebhookEndpoint, error_response
from workers.celery_app import create_celery


async def _refused_busy(scope: Scope) -> None:
    """A request the in-flight limit refused (``service.limits``): counted, and a webhook's gap is
    recorded as any other webhook refused before its body was read."""
    st: AppState | None = getattr(scope["app"].state, "labelloop", None)
    if st is None:
        return
    webhook = scope["path"] == "/webhook"
    st.metrics.refused_busy.labels(route="webhook" if webhook else "other").inc()
    if webhook:
        await st.webhook.record_refusal_if_credentialed(scope, "busy")


async def _refused_host(scope: Scope) -> None:
    """A request refused for its Host header (``service.frontdoor``): a webhook's gap is recorded
    as any other webhook refused before its body was read (a misconfigured allow-list loses no
    annotation)."""
    st: AppState | None = getattr(scope["app"].state, "labelloop", None)
    if st is not None and scope["path"] == "/webhook":
        await st.webhook.record_refusal_if_credentialed(scope, "host")


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    status, content, headers = error_response(exc, request.url.path)
    return JSONResponse(content, status_code=status, headers=headers)


class Receiver(Starlette):
    """The receiver's Starlette app (``POST /webhook`` is a plain ASGI endpoint in its routing)."""


def create_app(settings: Settings) -> Receiver:
    """Build the receiver for ``settings``; connections open in the lifespan, not here.

    Raises:
        ValueError, OSError: ``LABELLOOP_REDIS_URL`` has TLS options that cannot be honoured
            (``service.redis_client.check_tls_options``), at start-up.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis_client.client(
            settings.redis_url, settings.redis_timeout_s, max_connections=2 * settings.max_concurrent_requests
        )
        celery = create_celery(settings)
        registry = Registry(settings.models_dir)
        label_studio = LabelStudioProjects(settings)
        recorder = EventRecorder(
            client,
            celery,
            has_versions=lambda p: p in registry.projects(),
            label_studio=label_studio,
            change_log_bytes=settings.change_log_project_bytes,
            deadline_s=settings.redis_timeout_s * 2,
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
            await label_studio.close()
            await client.aclose()

    return Receiver(
        routes=[*routes_ml_backend.routes(), *routes_metrics.routes(), *routes_projects.routes()],
        middleware=[
            Middleware(FrontDoor, allowed_hosts=settings.allowed_hosts, on_host_refused=_refused_host),
            Middleware(InFlightLimit, limit=settings.max_concurrent_requests, on_refused=_refused_busy),
            Middleware(BodyDeadline, timeout_s=settings.body_timeout_s),
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
