"""Label Studio authentication as an ``httpx.Auth``: one token handling for every httpx client.

Label Studio 1.23 takes two kinds of API key (``LABEL_STUDIO_API_KEY``):

- a legacy token (40 hex characters), sent as ``Authorization: Token <key>``
  (``label_studio/jwt_auth/auth.py``, ``TokenAuthenticationPhaseout``);
- a personal access token, a JWT *refresh* token, which is never sent to the API itself: it is
  exchanged at ``POST /api/token/refresh/`` (``{"refresh": <token>}`` -> 200 ``{"access":
  <access token>}``, 401 when the token is expired, blacklisted or unknown;
  ``label_studio/jwt_auth/urls.py`` ``DecoratedTokenRefreshView``, simplejwt's
  ``TokenRefreshView``) for a short-lived access token sent as ``Authorization: Bearer
  <access>``.

``LabelStudioAuth`` does both. The access token is exchanged on first use, cached, and exchanged
again once when Label Studio answers 401 to it (it expired); the request is then sent once more.
The token goes only to Label Studio's origin (scheme, host and port of ``base_url``): a request
to any other origin passes through without an ``Authorization`` header, so a client that follows
a redirect to a presigned URL, or fetches media from another host, never leaks it.

Where it is used, and why:

- ``labelloop.labelstudio.media_fetch`` (task images and videos): on the guarded media client,
  whose connections, redirects and paths are checked by labelloop (``media_guard``); the SDK's
  client could not be guarded.
- ``service.projects`` (the receiver's project checks, async): a bare ``httpx.AsyncClient`` with a
  0.5 s timeout; importing the SDK in the receiver would cost its start-up for one GET.
- Not in ``labelloop.labelstudio.client``: label-studio-sdk 2.x handles the key itself
  (``label_studio_sdk/tokens/client_ext.py`` ``TokensClientExt``: a legacy token as ``Token``, a
  personal access token exchanged at the same endpoint, cached, and exchanged again before the
  access token's ``exp``), so the SDK client keeps its own handling.

Errors: a refused exchange raises ``TokenRefreshError`` (a ``LabelStudioError``, HTTP status in
``status``); a network failure during it raises httpx's own error, as the request would.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import AsyncGenerator, Generator
from urllib.parse import urlsplit

import httpx

from labelloop.errors import LabelStudioError

REFRESH_PATH = "/api/token/refresh/"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class TokenRefreshError(LabelStudioError):
    """Label Studio did not exchange the personal access token for an access token.

    Attributes:
        status: the HTTP status of ``POST /api/token/refresh/`` (401: expired, revoked or unknown
            token), or None when a 200 carried no access token.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def is_personal_access_token(token: str) -> bool:
    """True for a JWT (Label Studio's personal access token), False for a legacy token.

    A JWT is three base64url segments joined by dots, the first a JSON header naming its ``alg``
    (RFC 7519); the signature is not checked here, Label Studio does that.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(header, dict) and "alg" in header


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    scheme = url.scheme.lower()
    return scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(scheme)


class LabelStudioAuth(httpx.Auth):
    """``Authorization`` for Label Studio's API on any httpx client, sync or async.

    Args:
        base_url: Label Studio's base URL (``http://127.0.0.1:8080``, or with a base path
            ``http://host/ls``); the token is sent to its origin only, and the exchange is
            ``POST <base_url>/api/token/refresh/``.
        api_key: a legacy token or a personal access token (see the module docstring).

    The exchange request is made through the same client, with the timeout of the request it
    authenticates. Concurrent sync requests share one exchange (a lock); async ones may exchange
    in parallel on a cold start (harmless: each answer is a valid access token).

    Example:
        >>> client = httpx.Client(auth=LabelStudioAuth("http://127.0.0.1:8080", key))  # doctest: +SKIP
    """

    def __init__(self, base_url: str, api_key: str) -> None:
        split = urlsplit(base_url)
        if split.scheme.lower() not in _DEFAULT_PORTS or not split.hostname:
            raise ValueError(f"Label Studio's base URL must be an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(httpx.URL(self.base_url))
        self._api_key = api_key
        self._pat: bool | None = None
        self._access: str | None = None
        self._lock = threading.Lock()

    @property
    def personal_access_token(self) -> bool:
        """True when the key is a personal access token (decided on first use)."""
        if self._pat is None:
            self._pat = is_personal_access_token(self._api_key)
        return self._pat

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """httpx's sync flow (overridden, not ``auth_flow``: only the exchange's body is read,
        never the body of the request authenticated, which may be a streamed image).

        Raises:
            TokenRefreshError: the exchange was refused.
        """
        if not self._applies(request):
            yield request
            return
        if not self.personal_access_token:
            request.headers["Authorization"] = f"Token {self._api_key}"
            yield request
            return
        rejected: str | None = None
        for _ in range(2):  # the first try, and one more after a 401 with a new access token
            with self._lock:
                if self._access is None or self._access == rejected:
                    exchange = yield self._refresh_request(request)
                    exchange.read()
                    self._access = self._accept(exchange)
                access = self._access
            request.headers["Authorization"] = f"Bearer {access}"
            response = yield request
            if response.status_code != 401:
                return
            rejected = access

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """httpx's async flow: as ``sync_auth_flow``.

        Raises:
            TokenRefreshError: the exchange was refused.
        """
        if not self._applies(request):
            yield request
            return
        if not self.personal_access_token:
            request.headers["Authorization"] = f"Token {self._api_key}"
            yield request
            return
        rejected: str | None = None
        for _ in range(2):  # as in sync_auth_flow; a threading lock must not be held across an await
            if self._access is None or self._access == rejected:
                exchange = yield self._refresh_request(request)
                await exchange.aread()
                self._access = self._accept(exchange)
            access = self._access
            request.headers["Authorization"] = f"Bearer {access}"
            response = yield request
            if response.status_code != 401:
                return
            rejected = access

    def _applies(self, request: httpx.Request) -> bool:
        """True for a request to Label Studio's origin, when there is a key to send."""
        return bool(self._api_key) and _origin(request.url) == self._origin

    def _refresh_request(self, request: httpx.Request) -> httpx.Request:
        """``POST /api/token/refresh/``, with the timeout of ``request`` (a request built here
        gets none from the client)."""
        extensions = {"timeout": request.extensions["timeout"]} if "timeout" in request.extensions else {}
        return httpx.Request(
            "POST", self.base_url + REFRESH_PATH, json={"refresh": self._api_key}, extensions=extensions
        )

    @staticmethod
    def _accept(response: httpx.Response) -> str:
        """The access token of a read refresh response.

        Raises:
            TokenRefreshError: not a 200 carrying ``{"access": "<token>"}``.
        """
        if response.status_code != 200:
            raise TokenRefreshError(
                f"Label Studio refused the personal access token (POST {REFRESH_PATH}: HTTP "
                f"{response.status_code}): check LABEL_STUDIO_API_KEY (expired or revoked?)",
                response.status_code,
            )
        try:
            access = response.json().get("access")
        except (ValueError, AttributeError):
            access = None
        if not isinstance(access, str) or not access:
            raise TokenRefreshError(f"Label Studio's POST {REFRESH_PATH} answered 200 without an access token")
        return access
