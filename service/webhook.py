"""``POST /webhook`` as a plain ASGI endpoint, and the one mapping of errors to responses.

The webhook is the receiver's hot path (Label Studio sends one per annotation, gives it 1 s and
never retries), so it is a plain ASGI endpoint in Starlette's routing that does only what the
contract needs: one pass over the headers,
a credential from the headers before any byte of the body is read (``service.auth.check_either``:
an unauthenticated body is never read or parsed), the body read with the size limit enforced
and refused at its first byte unless it opens a JSON object, ``orjson`` parsing, the credential
the action needs, pydantic validation, one Redis round trip (``EventRecorder``), prebuilt
responses.

Memory is bounded: at most ``max_body_bytes`` per request, and bodies over ``LARGE_BODY_BYTES``
are parsed and handled ``LARGE_BODY_SLOTS`` at a time (parsed JSON takes up to ~30 times its
text: a crafted 1 MiB body is ~30 MiB of Python objects); the number of requests in flight is
bounded in the app (``service.limits``: 503 beyond it, and a refused webhook's gap).
Every error maps to the same JSON answer the other routes give (``error_response``); nothing
escapes as a 500 with a traceback.

Logging: refusals (``auth_failed``, ``request_rejected``) and failures (``request_failed``) are
logged one by one; accepted and duplicate events at DEBUG one by one, and at INFO as a
``webhooks`` summary at most every ``SUMMARY_EVERY_S`` seconds (a JSON line per event costs
more CPU than the rest of the request).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import anyio
import orjson
import structlog
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from labelloop.errors import BadRequestError, LabelloopError, UnavailableError, UnknownProjectError
from labelloop.events.changes import LOGGED_ACTIONS
from labelloop.settings import Settings
from service.auth import AuthError, any_configured, check_annotation_webhook, check_either, check_model
from service.events import EventRecorder
from service.metrics import Metrics
from service.protocol import ACCEPTED_ACTIONS, TRAIN_EVENTS, WebhookEvent

log = structlog.get_logger("service.app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Response = tuple[int, list[tuple[bytes, bytes]], bytes]

SUMMARY_EVERY_S = 10.0
PATH = "/webhook"
LARGE_BODY_BYTES = 64 * 1024
LARGE_BODY_SLOTS = 2


def validation_reason(exc: ValidationError) -> list[dict[str, str]]:
    """Each pydantic error as ``{"field": "a.b.0.c", "error": "..."}``."""
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "error": e["msg"]} for e in exc.errors()]


def error_response(exc: Exception, path: str) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """``(status, JSON body, extra headers)`` for an error raised while handling ``path``; logs it."""
    if isinstance(exc, HTTPException):
        log.info("request_rejected", path=path, status=exc.status_code, error=exc.detail)
        return exc.status_code, {"error": exc.detail}, dict(exc.headers) if exc.headers else None
    if isinstance(exc, ValidationError):
        details = validation_reason(exc)
        log.info("request_rejected", path=path, status=422, error="invalid request", details=details)
        return 422, {"error": "invalid request", "details": details}, None
    if isinstance(exc, AuthError):
        log.info("auth_failed", path=path, reason=str(exc))
        headers = {"WWW-Authenticate": 'Basic realm="labelloop"'} if exc.basic else None
        return 401, {"error": str(exc)}, headers
    if isinstance(exc, LabelloopError):
        if exc.status_code >= 500:
            log.warning("request_failed", path=path, error_type=type(exc).__name__, error=str(exc))
        else:
            log.info("request_rejected", path=path, status=exc.status_code, error=str(exc))
        return exc.status_code, {"error": str(exc)}, None
    log.error("request_crashed", path=path, exc_info=exc)
    return 500, {"error": "internal error"}, None


def json_bytes(content: Any) -> bytes:
    """JSON as Starlette's ``JSONResponse`` renders it (compact, UTF-8)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def _response(
    status: int, body: bytes, extra: dict[str, str] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    for name, value in (extra or {}).items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return status, headers, body


_ACCEPTED = _response(201, json_bytes({"status": "accepted"}))
_DUPLICATE = _response(200, json_bytes({"status": "duplicate"}))
_UNKNOWN = _response(200, json_bytes({"status": "Unknown event"}))
_NOT_AN_EVENT_ERROR = "body must be a JSON object with a string 'action'"
_NOT_AN_EVENT = _response(422, json_bytes({"error": _NOT_AN_EVENT_ERROR}))


def _project_of(body: Any) -> int | None:
    """The project id a webhook body names (``project.id``, a positive integer), else None."""
    project = body.get("project") if isinstance(body, dict) else None
    pid = project.get("id") if isinstance(project, dict) else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**63 else None


class WebhookEndpoint:
    """Validate, record in Redis and enqueue a Label Studio webhook; answer in a millisecond."""

    def __init__(self, settings: Settings, recorder: EventRecorder, metrics: Metrics) -> None:
        self.settings = settings
        self.recorder = recorder
        self.metrics = metrics
        self.limit = settings.max_body_bytes
        self._stdlib_log = logging.getLogger("service.app")
        # The checks pass everything when no credential is set.
        self._auth_needed = any_configured(settings)
        self._large = anyio.Semaphore(LARGE_BODY_SLOTS)
        self._summary: dict[str, int] = {}
        self._summary_at: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self._handle(scope, receive)
        except Exception as exc:
            status, content, extra = error_response(exc, PATH)
            response = _response(status, json_bytes(content), extra)
        if response is None:  # the client went away
            return
        status, headers, body = response
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> Response | None:
        """The response to send, or None when the client disconnected; raises for error answers.

        A webhook refused before its body is parsed (413, 415, 422, 400; 408 when the body does
        not come in time, ``service.limits.BodyDeadline``) may be an annotation
        Label Studio will never resend: it leaves a gap in Redis (``EventRecorder.record_refusal``)
        when it carried a valid credential (``record_refusal_if_credentialed``); a 401 leaves none.
        """
        try:
            raw = await self._read(scope, receive)
        except (HTTPException, AuthError):
            await self.record_refusal_if_credentialed(scope, "body")
            raise
        if raw is None:
            return None
        if len(raw) <= LARGE_BODY_BYTES:
            return await self._parsed(scope, raw)
        async with self._large:
            return await self._parsed(scope, raw)

    async def record_refusal_if_credentialed(self, scope: Scope, reason: Literal["busy", "host", "body"]) -> None:
        """A webhook refused before its body was read (its project unknown; ``reason``: busy, host
        or body): bump the refused counter (every change log then reads Label Studio) and count it
        in ``labelloop_webhooks_refused_unread_total``, but only when the request carried a valid
        credential (or none is configured): an unauthenticated request is not Label Studio's, and
        must neither invalidate every project's change log (issue 21, item 8) nor raise an alert."""
        if self._auth_needed:
            try:
                check_either(Headers(scope=scope), self.settings)
            except AuthError:
                return
        self.metrics.webhooks_refused_unread.labels(reason=reason).inc()
        await self.recorder.record_refusal(None)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        """The body, checked for size, type and a credential; None when the client disconnected."""
        length = ctype = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = length if length is not None else value
            elif name == b"content-type":
                ctype = ctype if ctype is not None else value
        limit = self.limit
        if length is not None and length.isdigit() and int(length) > limit:
            raise HTTPException(413, f"body over {limit} bytes")
        media = ctype.decode("latin-1").split(";")[0].strip().lower() if ctype is not None else ""
        if media != "application/json" and not media.endswith("+json"):
            raise HTTPException(415, "body must be application/json")

        # No byte of an unauthenticated body is read: either credential, from the headers alone.
        self._auth(scope, check_either)
        message = await receive()
        if message["type"] != "http.request":
            return None
        raw = message.get("body", b"")
        if raw and raw.lstrip()[:1] not in (b"{", b""):
            raise HTTPException(422, _NOT_AN_EVENT_ERROR)
        if message.get("more_body", False):
            buf = bytearray(raw)
            while True:
                if len(buf) > limit:
                    raise HTTPException(413, f"body over {limit} bytes")
                message = await receive()
                if message["type"] != "http.request":
                    return None
                buf += message.get("body", b"")
                if not message.get("more_body", False):
                    break
            raw = bytes(buf)
        if len(raw) > limit:
            raise HTTPException(413, f"body over {limit} bytes")
        return bytes(raw)

    async def _parsed(self, scope: Scope, raw: bytes) -> Response:
        """Parse, authorise for the action, validate, record and enqueue."""
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            self.metrics.count_event("(none)", "rejected")
            await self.recorder.record_refusal(None)
            raise HTTPException(400, f"invalid JSON: {exc}") from None

        metrics = self.metrics
        action = body.get("action") if isinstance(body, dict) else None
        if not isinstance(action, str):
            metrics.count_event("(none)", "rejected")
            log.info("request_rejected", path=PATH, status=422, error=_NOT_AN_EVENT_ERROR)
            await self.recorder.record_refusal(_project_of(body))
            return _NOT_AN_EVENT
        if action not in ACCEPTED_ACTIONS:
            metrics.count_event("other", "ignored")
            return _UNKNOWN
        try:
            self._auth(scope, check_model if action in TRAIN_EVENTS else check_annotation_webhook)
            event = WebhookEvent.model_validate(body)
            event.check()
        except (AuthError, ValidationError, BadRequestError) as exc:
            if not isinstance(exc, AuthError):
                metrics.count_event(action, "rejected")
            if action in LOGGED_ACTIONS:  # a refused START_TRAINING changes no data
                await self.recorder.record_refusal(_project_of(body))
            raise
        t0 = time.perf_counter()
        try:
            outcome = await self.recorder.record_and_enqueue(event, body)
        except UnavailableError:
            metrics.count_event(action, "unavailable")
            raise
        except UnknownProjectError:
            metrics.count_event(action, "unknown project")
            raise
        metrics.enqueue_seconds.observe(time.perf_counter() - t0)
        metrics.count_event(action, outcome)
        self._log_accepted(event, outcome)
        return _ACCEPTED if outcome == "accepted" else _DUPLICATE

    def _auth(self, scope: Scope, check: Callable[[Headers, Settings], None]) -> None:
        if not self._auth_needed:
            return
        try:
            check(Headers(scope=scope), self.settings)
        except AuthError as exc:
            self.metrics.auth_failures.labels(route=PATH, kind="basic" if exc.basic else "secret").inc()
            raise

    def _log_accepted(self, event: WebhookEvent, outcome: str) -> None:
        if self._stdlib_log.isEnabledFor(logging.DEBUG):
            log.debug("webhook", project_id=event.project.id, action=event.action, outcome=outcome)
        summary = self._summary
        summary[outcome] = summary.get(outcome, 0) + 1
        now = time.monotonic()
        last = self._summary_at
        if last is None or now - last >= SUMMARY_EVERY_S:
            log.info("webhooks", since_s=round(now - last, 1) if last is not None else None, **summary)
            self._summary = {}
            self._summary_at = now
