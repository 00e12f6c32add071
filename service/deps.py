"""What every route of the receiver shares: the app state built once in the lifespan
(``AppState``: settings, Redis, Celery, registry, event recorder, Label Studio, metrics), the
credential check that counts failures, and the request bodies read with their limits.

Route modules (``service.routes_*``) take these from here and nothing from each other;
``service.app`` builds the state and wires the routes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from celery import Celery
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request

from labelloop.errors import ForbiddenError
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from service.auth import AuthError
from service.events import EventRecorder
from service.metrics import Metrics
from service.projects import LabelStudioProjects
from service.webhook import WebhookEndpoint

CredentialCheck = Callable[[Headers, Settings], None]


@dataclass
class AppState:
    """Everything a request handler needs, built once in the lifespan (``service.app``).

    ``redis`` is the receiver's one asyncio client (``service.redis_client``), shared with the
    webhook path's ``recorder``; blocking Redis work in threads uses ``labelloop.redis_client``.
    """

    settings: Settings
    redis: aioredis.Redis
    celery: Celery
    registry: Registry
    recorder: EventRecorder
    label_studio: LabelStudioProjects
    metrics: Metrics
    webhook: WebhookEndpoint


def state(request: Request) -> AppState:
    """The app state of the receiver ``request`` came to."""
    st: AppState = request.app.state.labelloop  # Starlette's State holds Any
    return st


def authorize(request: Request, check: CredentialCheck) -> None:
    """Run ``check`` (``service.auth.check_model``, ...) on the request's headers; a failure is
    counted in ``labelloop_auth_failures_total`` by route template and credential kind.

    Raises:
        AuthError: missing or wrong credential (401, ``WWW-Authenticate`` for Basic).
    """
    st = state(request)
    try:
        check(request.headers, st.settings)
    except AuthError as exc:
        # The route's template, never the raw path (one series per path a client sends).
        route = getattr(request.scope.get("route"), "path", "(other)")
        st.metrics.auth_failures.labels(route=route, kind="basic" if exc.basic else "secret").inc()
        raise


async def json_body(request: Request) -> Any:
    """Read and parse a JSON body, refusing oversized ones before reading them.

    Raises:
        HTTPException: 413 over ``LABELLOOP_MAX_BODY_BYTES``, 415 not declared JSON (Label Studio's
            requests are ``application/json``), 400 invalid JSON.
    """
    limit = state(request).settings.max_body_bytes
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


def is_form(request: Request) -> bool:
    """Whether the body is an HTML form's (the project page's promote and rollback buttons)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype == "application/x-www-form-urlencoded"


def check_origin(request: Request, form: bool) -> None:
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


async def form_body(request: Request) -> dict[str, str]:
    """The fields of an HTML form posted from the receiver's own pages (``check_origin``); a
    field given twice keeps its last value.

    Raises:
        ForbiddenError: the form does not come from the receiver's origin.
        HTTPException: 413 over the size limit, 400 not UTF-8.
    """
    check_origin(request, form=True)
    raw = await _body(request, state(request).settings.max_body_bytes)
    try:
        fields = parse_qs(raw.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise HTTPException(400, "form is not UTF-8") from None
    return {k: v[-1] for k, v in fields.items()}


def json_or_none(raw: bytes | str | None) -> Any:
    """A JSON value Redis holds (progress records, ...), None when absent or unreadable."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
