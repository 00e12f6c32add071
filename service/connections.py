"""uvicorn's HTTP protocol with a header timeout: a connection that has not sent a complete
request head within ``header_timeout_s`` seconds is closed.

uvicorn times out only idle keep-alive connections (``timeout_keep_alive``, after a response);
a connection that never sends its request line stays open for ever, and each one holds a file
descriptor and a slot of any connection limit. ``labelloop serve`` passes this class (bound to
``LABELLOOP_HEADER_TIMEOUT_S`` with ``functools.partial``) as uvicorn's ``http=``. A closed
connection never reached the app: it carried no complete request, so there is nothing to record.

Requests in flight are bounded in the app instead (``service.limits``), and so is the time a
request that has sent its head may take to send its body (``service.limits.BodyDeadline``: 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger(__name__)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that closes a connection whose request head is not complete within
    ``header_timeout_s`` seconds of the connection (first request) or of the request's first
    byte (later requests on a keep-alive connection; between requests uvicorn's own keep-alive
    timeout applies).

    Args:
        header_timeout_s: seconds a client has to send a whole request head (request line and
            headers); the rest are uvicorn's arguments.
    """

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.debug("connection_timed_out", client=self.client, header_timeout_s=self.header_timeout_s)
            self.transport.close()
