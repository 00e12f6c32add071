"""Who may knock: the Host allow-list and the cross-site refusal of every POST, as pure ASGI
middleware in front of every route.

Host (DNS rebinding): a page on a name the attacker controls, re-pointed at 127.0.0.1, makes a
browser send requests to a receiver on loopback under the attacker's name. The receiver answers
only the names in ``LABELLOOP_ALLOWED_HOSTS`` (``*``: any); when that is empty, any name when it
listens beyond loopback (docker-compose, k8s and Label Studio reach it by service names and pod
addresses) and only ``localhost``, ``127.0.0.1`` and ``[::1]`` when it listens on loopback (the
demo). Refused: 400 with the reason. Liveness (``/``, ``/health``) is exempt: probes use
addresses.

Cross-site POST: a browser marks a request another site makes it send (``Origin`` not the
receiver's host, ``Sec-Fetch-Site`` other than ``same-origin``) and would send the Basic
credentials it holds with it; such a POST is refused with 403 on every route before anything is
read. Label Studio (python-requests) and ``curl`` send neither header. The project page's forms
must also carry ``Origin`` (``service.app._check_origin``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Collection
from urllib.parse import urlsplit

import structlog
from starlette.datastructures import Headers

from service.webhook import Receive, Scope, Send, json_bytes

log = structlog.get_logger("service.app")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
CROSS_SITE = "refused: posted from another site than this receiver (Origin / Sec-Fetch-Site header)"


def host_name(host: str) -> str:
    """The name of a ``Host`` header without its port, lower case: ``[::1]:9090`` -> ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".")


def is_loopback(address: str) -> bool:
    """Whether a listening address (``scope["server"][0]``) is a loopback one."""
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address == "localhost"


def cross_site(headers: Headers) -> bool:
    """Whether a browser marks the request as sent from another origin than the receiver's."""
    origin = headers.get("origin")
    return headers.get("sec-fetch-site", "same-origin") != "same-origin" or (
        origin is not None and urlsplit(origin).netloc != headers.get("host")
    )


class FrontDoor:
    """Refuse foreign ``Host`` names (400) and cross-site POSTs (403) before any route runs.

    Args:
        app: the ASGI app it wraps.
        allowed_hosts: ``LABELLOOP_ALLOWED_HOSTS`` (names without port; ``*``: any; empty: the
            default above).
        exempt: paths whose Host is not checked (liveness).
        on_host_refused: awaited with the scope of a request refused for its Host (a Label Studio
            whose webhooks name a host missing from the list: ``service.app`` records the gap).
            A cross-site POST is never Label Studio's: nothing is recorded for it.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        allowed_hosts: Collection[str] = (),
        exempt: Collection[str] = ("/", "/health"),
        on_host_refused: Callable[[Scope], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.allowed = frozenset(h.lower() for h in allowed_hosts)
        self.exempt = frozenset(exempt)
        self.on_host_refused = on_host_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["path"] not in self.exempt and not self._host_allowed(scope, headers):
            reason = (
                f"Host {headers.get('host', '(none)')[:100]!r} is not served here: set LABELLOOP_ALLOWED_HOSTS "
                "(on loopback only localhost, 127.0.0.1 and [::1] are)"
            )
            if self.on_host_refused is not None:
                await self.on_host_refused(scope)
            await _answer(send, scope, 400, reason)
            return
        if scope["method"] == "POST" and cross_site(headers):
            await _answer(send, scope, 403, CROSS_SITE)
            return
        await self.app(scope, receive, send)

    def _host_allowed(self, scope: Scope, headers: Headers) -> bool:
        name = host_name(headers.get("host", ""))
        if self.allowed:
            return "*" in self.allowed or name in self.allowed
        server = scope.get("server")
        if server and is_loopback(str(server[0])):
            return name in LOOPBACK_NAMES
        return True


async def _answer(send: Send, scope: Scope, status: int, reason: str) -> None:
    log.info("request_rejected", path=scope["path"][:200], status=status, error=reason)
    body = json_bytes({"error": reason})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
