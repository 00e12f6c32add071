"""labelloop.labelstudio.auth: Label Studio's legacy token and personal access token on httpx clients,
sync and async, against a Label Studio faked with ``httpx.MockTransport`` (its token refresh endpoint
as ``label_studio/jwt_auth`` answers it), then through the media cache and the receiver's project
check."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from labelloop.labelstudio.auth import LabelStudioAuth, TokenRefreshError, is_personal_access_token
from labelloop.labelstudio.media import ImageCache, MediaConfig, MediaError
from service.projects import LabelStudioProjects
from tests.factories import make_settings

LS = "http://ls.test:8080"
LEGACY = "0123456789abcdef0123456789abcdef01234567"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


# A personal access token as Label Studio makes one: a JWT refresh token (signature not checked here)
PAT = ".".join((_b64({"alg": "HS256", "typ": "JWT"}), _b64({"token_type": "refresh", "exp": 4102444800}), "c2ln"))


class FakeLabelStudio:
    """Label Studio's token refresh endpoint and one API path, with a log of what it was sent.

    ``POST /api/token/refresh/`` with ``{"refresh": PAT}`` answers a new access token
    (``access-1``, ``access-2``...), anything else 401 (as simplejwt's ``TokenRefreshView``);
    ``refuse_refresh`` makes it answer 401 to everything. Other paths answer 200 to
    ``Token <LEGACY>`` or ``Bearer <the latest access token>``, else 401 (always 401 for the
    ``refused_paths``); ``expire()`` makes the access tokens given so far expired.
    """

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.issued = 0
        self.valid: str | None = None
        self.refuse_refresh = False
        self.refused_paths: set[str] = set()
        self.lock = threading.Lock()

    def expire(self) -> None:
        self.valid = None

    def refreshes(self) -> int:
        return sum(r.url.path == "/api/token/refresh/" for r in self.requests)

    def auths(self, path: str) -> list[str | None]:
        return [r.headers.get("authorization") for r in self.requests if r.url.path == path]

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            # a copy: the auth sets the retry's header on the same request object
            self.requests.append(
                httpx.Request(
                    request.method,
                    request.url,
                    headers=request.headers.copy(),
                    content=request.content,
                    extensions=dict(request.extensions),
                )
            )
            if request.url.path.endswith("/api/token/refresh/"):
                body = json.loads(request.content or b"{}")
                if self.refuse_refresh or body.get("refresh") != PAT:
                    return httpx.Response(
                        401, json={"detail": "Token is invalid or expired", "code": "token_not_valid"}
                    )
                self.issued += 1
                self.valid = f"access-{self.issued}"
                return httpx.Response(200, json={"access": self.valid})
            auth = request.headers.get("authorization")
            ok = auth == f"Token {LEGACY}" or (self.valid is not None and auth == f"Bearer {self.valid}")
            ok = ok and request.url.path not in self.refused_paths
            return httpx.Response(200 if ok else 401, json={"id": 1} if ok else {"detail": "no"})

    async def ahandle(self, request: httpx.Request) -> httpx.Response:
        return self.handle(request)


@pytest.fixture
def ls() -> FakeLabelStudio:
    return FakeLabelStudio()


def sync_client(ls: FakeLabelStudio, key: str, base: str = LS, timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(auth=LabelStudioAuth(base, key), transport=httpx.MockTransport(ls.handle), timeout=timeout)


# Which token is which ------------------------------------------------------------------------


def test_personal_access_tokens_are_told_from_legacy_tokens() -> None:
    """A JWT is a personal access token; a legacy token (40 hex characters), any three dotted words or a
    JWT with an unreadable header is not."""
    assert is_personal_access_token(PAT)
    assert not is_personal_access_token(LEGACY)
    assert not is_personal_access_token("a.b.c")
    assert not is_personal_access_token("!!!." + PAT.split(".", 1)[1])
    assert not is_personal_access_token(_b64({"typ": "JWT"}) + ".e30.sig")  # no alg: not a JWT header


# Sync flow -----------------------------------------------------------------------------------


def test_legacy_token_is_sent_as_token(ls: FakeLabelStudio) -> None:
    """A legacy token goes as ``Authorization: Token <key>`` and is never exchanged."""
    with sync_client(ls, LEGACY) as client:
        assert client.get(f"{LS}/api/projects/1/").status_code == 200
        assert client.get(f"{LS}/api/projects/2/").status_code == 200
    assert ls.auths("/api/projects/1/") == [f"Token {LEGACY}"]
    assert ls.refreshes() == 0


def test_personal_access_token_is_exchanged_once_and_cached(ls: FakeLabelStudio) -> None:
    """A personal access token is exchanged at POST /api/token/refresh/ for an access token, sent as Bearer,
    and the access token is reused by later requests; the refresh token itself never goes to the API."""
    with sync_client(ls, PAT) as client:
        for n in range(3):
            assert client.get(f"{LS}/api/projects/{n}/").status_code == 200
    assert ls.refreshes() == 1
    refresh = ls.requests[0]
    assert (refresh.method, refresh.url.path, json.loads(refresh.content)) == (
        "POST",
        "/api/token/refresh/",
        {"refresh": PAT},
    )
    assert [ls.auths(f"/api/projects/{n}/") for n in range(3)] == [["Bearer access-1"]] * 3
    assert all(PAT not in (r.headers.get("authorization") or "") for r in ls.requests)


def test_expired_access_token_is_refreshed_on_401_and_the_request_retried_once(ls: FakeLabelStudio) -> None:
    """A 401 to a cached access token makes one new exchange and one retry; a second 401 is returned as it
    is (no loop)."""
    with sync_client(ls, PAT) as client:
        assert client.get(f"{LS}/api/projects/1/").status_code == 200
        ls.expire()
        assert client.get(f"{LS}/api/projects/2/").status_code == 200
        assert ls.auths("/api/projects/2/") == ["Bearer access-1", "Bearer access-2"]
        assert ls.refreshes() == 2

        ls.refused_paths.add("/api/projects/3/")
        assert client.get(f"{LS}/api/projects/3/").status_code == 401
    assert [r.url.path for r in ls.requests[-3:]] == ["/api/projects/3/", "/api/token/refresh/", "/api/projects/3/"]


def test_failing_refresh_is_a_clear_error(ls: FakeLabelStudio) -> None:
    """A refused exchange raises TokenRefreshError with Label Studio's status, naming the endpoint and the
    setting to check; the API request is not sent."""
    ls.refuse_refresh = True
    with sync_client(ls, PAT) as client, pytest.raises(TokenRefreshError) as err:
        client.get(f"{LS}/api/projects/1/")
    assert err.value.status == 401
    assert "/api/token/refresh/" in str(err.value) and "LABEL_STUDIO_API_KEY" in str(err.value)
    assert [r.url.path for r in ls.requests] == ["/api/token/refresh/"]

    empty = httpx.MockTransport(lambda request: httpx.Response(200, json={"detail": "no access here"}))
    with httpx.Client(auth=LabelStudioAuth(LS, PAT), transport=empty) as client:
        with pytest.raises(TokenRefreshError, match="without an access token"):
            client.get(f"{LS}/api/projects/1/")


def test_token_goes_to_label_studio_origin_only(ls: FakeLabelStudio) -> None:
    """Requests to another host, another port or another scheme than Label Studio's get no Authorization
    header and cause no exchange."""
    with sync_client(ls, PAT) as client:
        for url in ("http://media.test:8080/a.png", "http://ls.test:9000/a.png", "https://ls.test:8080/a.png"):
            client.get(url)
    assert [r.headers.get("authorization") for r in ls.requests] == [None, None, None]
    assert ls.refreshes() == 0
    with sync_client(ls, LEGACY) as client:
        client.get("http://ls.test/a.png")  # port 80, not 8080
    assert ls.requests[-1].headers.get("authorization") is None


def test_refresh_follows_the_base_path_and_the_request_timeout(ls: FakeLabelStudio) -> None:
    """With a base path the exchange is POST <base>/api/token/refresh/, sent with the timeout of the
    request it authenticates (a request the auth builds gets none from the client)."""
    with sync_client(ls, PAT, base=f"{LS}/ls/", timeout=1.5) as client:
        assert client.get(f"{LS}/ls/api/projects/1/").status_code == 200
    refresh = ls.requests[0]
    assert refresh.url == httpx.URL(f"{LS}/ls/api/token/refresh/")
    assert refresh.extensions["timeout"] == ls.requests[1].extensions["timeout"] == httpx.Timeout(1.5).as_dict()


def test_concurrent_requests_share_one_exchange(ls: FakeLabelStudio) -> None:
    """Eight threads starting at once with a personal access token cause one exchange, not eight."""
    slow = ls.handle

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/token/refresh/":
            time.sleep(0.05)
        return slow(request)

    with httpx.Client(auth=LabelStudioAuth(LS, PAT), transport=httpx.MockTransport(handler)) as client:
        codes: list[int] = []
        threads = [
            threading.Thread(target=lambda n=n: codes.append(client.get(f"{LS}/api/projects/{n}/").status_code))
            for n in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == [200] * 8
    assert ls.refreshes() == 1


# Async flow ----------------------------------------------------------------------------------


def test_async_flow_exchanges_caches_and_refreshes(ls: FakeLabelStudio) -> None:
    """On an AsyncClient: legacy token as Token; a personal access token exchanged once, cached, refreshed
    on a 401 with one retry; a refused exchange raises TokenRefreshError; other origins get no header."""

    async def run() -> None:
        transport = httpx.MockTransport(ls.ahandle)
        async with httpx.AsyncClient(auth=LabelStudioAuth(LS, LEGACY), transport=transport) as client:
            assert (await client.get(f"{LS}/api/projects/1/")).status_code == 200
        async with httpx.AsyncClient(auth=LabelStudioAuth(LS, PAT), transport=transport) as client:
            assert (await client.get(f"{LS}/api/projects/2/")).status_code == 200
            assert (await client.get(f"{LS}/api/projects/3/")).status_code == 200
            ls.expire()
            assert (await client.get(f"{LS}/api/projects/4/")).status_code == 200
            await client.get("http://other.test/api/projects/5/")
            ls.expire()
            ls.refuse_refresh = True
            with pytest.raises(TokenRefreshError):
                await client.get(f"{LS}/api/projects/6/")

    asyncio.run(run())
    assert ls.auths("/api/projects/1/") == [f"Token {LEGACY}"]
    assert ls.auths("/api/projects/2/") == ls.auths("/api/projects/3/") == ["Bearer access-1"]
    assert ls.auths("/api/projects/4/") == ["Bearer access-1", "Bearer access-2"]
    assert ls.auths("/api/projects/5/") == [None]
    assert ls.auths("/api/projects/6/") == ["Bearer access-2"]
    assert ls.refreshes() == 3


def test_receiver_project_check_uses_the_auth(ls: FakeLabelStudio, tmp_path: Path) -> None:
    """The receiver's project check (service.projects) reads a project with a personal access token,
    refreshes it after a 401, and answers False (never raises) when the exchange is refused."""
    settings = make_settings(tmp_path, label_studio=(LS, PAT))

    async def run() -> list[bool]:
        projects = LabelStudioProjects(settings, transport=httpx.MockTransport(ls.ahandle))
        try:
            first = await projects.readable(1)
            ls.expire()
            second = await projects.readable(2)
            ls.expire()
            ls.refuse_refresh = True
            third = await projects.readable(3)
            setup = await projects.token_reads(4, LEGACY)
        finally:
            await projects.close()
        return [first, second, third, setup]

    assert asyncio.run(run()) == [True, True, False, True]
    assert ls.auths("/api/projects/2/") == ["Bearer access-1", "Bearer access-2"]
    assert ls.auths("/api/projects/4/") == [f"Token {LEGACY}"]


# Through the media cache -----------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (9, 99, 199)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def ls_server() -> Iterator[tuple[str, FakeLabelStudio]]:
    """The fake Label Studio on a real loopback HTTP server: the media cache's guarded client cannot
    take a mock transport."""
    fake = FakeLabelStudio()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = httpx.Request(method, f"http://127.0.0.1{self.path}", headers=dict(self.headers), content=body)
            resp = fake.handle(request)
            payload = _png(24, 16) if resp.status_code == 200 and method == "GET" else resp.content
            self.send_response(resp.status_code)
            self.send_header("Content-Type", "image/png" if method == "GET" else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", fake
    finally:
        srv.shutdown()
        srv.server_close()


def test_media_cache_uses_the_personal_access_token(ls_server: tuple[str, FakeLabelStudio], tmp_path: Path) -> None:
    """Task images on Label Studio are fetched with the exchanged access token (one exchange for several
    images), an expired one is refreshed on 401, and a refused exchange is a MediaError with its status."""
    url, fake = ls_server
    config = MediaConfig(label_studio_url=url, api_key=PAT, retries=0, timeout_s=5)
    with ImageCache(tmp_path / "cache", config) as cache:
        got = cache.get_many([(n, f"/data/upload/1/{n}.png") for n in range(3)])
        assert all(not isinstance(g, MediaError) and g.width == 24 for g in got.values())
        assert fake.refreshes() == 1
        fake.expire()
        assert cache.get(3, "/data/upload/1/3.png").height == 16
        assert fake.auths("/data/upload/1/3.png") == ["Bearer access-1", "Bearer access-2"]
        fake.expire()
        fake.refuse_refresh = True
        with pytest.raises(MediaError, match="refused the personal access token") as err:
            cache.get(4, "/data/upload/1/4.png")
        assert err.value.status == 401
    assert all(PAT not in (r.headers.get("authorization") or "") for r in fake.requests)
