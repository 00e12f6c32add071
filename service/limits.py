"""The bounds on requests in flight, inside the app: pure ASGI middleware.

uvicorn's ``limit_concurrency`` counts open connections as well as requests, so idle sockets
alone make it answer 503 to everyone (issue 21, item 1); this counts only requests the app is
handling. Beyond ``limit`` a request is answered 503 with a reason and ``Retry-After`` before
any route runs, after ``on_refused`` (``service.app`` records a refused webhook's gap there).
Liveness (``exempt`` paths: ``/``, ``/health``) is never refused: a busy receiver is alive,
and a failed liveness probe would get it restarted. ``/predict`` (``separate`` paths) counts
against a bound of its own: a big "Retrieve Predictions" or many slow predictions never take
the places of webhooks and operators' registry routes, nor the other way round (issue 21, item 7).

A place is held until the route answers, and a route waits for its body: ``BodyDeadline`` bounds
that wait (``LABELLOOP_BODY_TIMEOUT_S``), so a client that sends a request head and then too
little of its body cannot hold a place for ever (the header timeout of ``service.connections``
ends with the head).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

import anyio
import structlog
from starlette.exceptions import HTTPException

from service.webhook import Message, Receive, Scope, Send, json_bytes

log = structlog.get_logger("service.app")

RETRY_AFTER_S = 1


class InFlightLimit:
    """Answer 503 beyond ``limit`` HTTP requests in flight (per process).

    Args:
        app: the ASGI app it wraps.
        limit: requests handled at once (``LABELLOOP_MAX_CONCURRENT_REQUESTS``).
        on_refused: awaited with the scope of each refused request (never raises into the answer).
        exempt: paths never refused (liveness).
        separate: paths counted against their own bound of ``limit`` (``/predict``).
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        limit: int,
        on_refused: Callable[[Scope], Awaitable[None]] | None = None,
        exempt: Collection[str] = ("/", "/health"),
        separate: Collection[str] = ("/predict",),
    ) -> None:
        self.app = app
        self.limit = limit
        self.on_refused = on_refused
        self.exempt = frozenset(exempt)
        self.separate = frozenset(separate)
        self.counts = {False: 0, True: 0}  # in flight, by "a separate path"
        reason = f"busy: {limit} requests in flight (LABELLOOP_MAX_CONCURRENT_REQUESTS); retry"
        self._body = json_bytes({"error": reason})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        own = scope["path"] in self.separate
        if self.counts[own] >= self.limit:
            await self._refuse(scope, send, self.counts[own])
            return
        self.counts[own] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.counts[own] -= 1

    async def _refuse(self, scope: Scope, send: Send, in_flight: int) -> None:
        log.warning("request_refused_busy", path=scope["path"], in_flight=in_flight, limit=self.limit)
        if self.on_refused is not None:
            try:
                await self.on_refused(scope)
            except Exception as exc:  # the 503 goes out either way
                log.warning("refusal_not_recorded", path=scope["path"], error=str(exc)[:200])
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": self._body})


class BodyDeadline:
    """Answer 408 to a request whose body is not all in ``timeout_s`` seconds after its head.

    While the body is incomplete, each ``receive`` the route awaits waits at most what is left of
    the deadline; past it, ``receive`` raises ``HTTPException(408)`` (with ``Connection: close``,
    RFC 9110 15.5.9) into the route, which answers it as any refusal before its body was read: a
    webhook records its gap when it carried a credential (``service.webhook``), other routes
    answer through ``service.webhook.error_response``. The route returns, so its place in flight
    is free again. Body bytes already received are handed over whatever the time: only waiting
    is bounded. Once the body is complete, ``receive`` (a wait for the disconnect) is unbounded.

    Args:
        app: the ASGI app it wraps.
        timeout_s: seconds from the request reaching the app (its head complete) to the body's
            last byte (``LABELLOOP_BODY_TIMEOUT_S``).
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.reason = f"request body not received within {timeout_s:g} s (LABELLOOP_BODY_TIMEOUT_S)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.timeout_s
        complete = False

        async def receive_by_deadline() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            message: Message | None = None
            with anyio.CancelScope(deadline=deadline):
                message = await receive()
            if message is None:
                raise HTTPException(408, self.reason, headers={"Connection": "close"})
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_by_deadline, send)
