"""labelloop.labelstudio.media against real servers: a local HTTP server (faults served, not mocked), real
files, a real Label Studio (uploads, Local Storage, S3 presign through moto)."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import http.server
import io
import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpcore
import httpx
import pytest
from PIL import Image

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.stack import free_port
from labelloop.dev.synthetic import make_sample
from labelloop.labelstudio.media import (
    CachedImage,
    ImageCache,
    MediaConfig,
    MediaError,
    media_path_refusal,
    presign_path,
)
from labelloop.settings import Settings

# A served file -----------------------------------------------------------------------------


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def noisy_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buf, "PNG")
    return buf.getvalue()


# The upright picture: four colored quadrants, wider than tall.
UPRIGHT_SIZE = (64, 40)
QUADRANTS = {"tl": (255, 0, 0), "tr": (0, 255, 0), "bl": (0, 0, 255), "br": (255, 255, 255)}
# How the stored pixels relate to the upright picture for each EXIF orientation (EXIF 2.32,
# tag 0x0112): the camera stored the picture transformed, the viewer undoes it.
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # displayed after a 90 degree clockwise turn
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # displayed after a 90 degree counter-clockwise turn
}


def upright_picture() -> Image.Image:
    w, h = UPRIGHT_SIZE
    im = Image.new("RGB", UPRIGHT_SIZE)
    for name, box in {
        "tl": (0, 0, w // 2, h // 2),
        "tr": (w // 2, 0, w, h // 2),
        "bl": (0, h // 2, w // 2, h),
        "br": (w // 2, h // 2, w, h),
    }.items():
        im.paste(QUADRANTS[name], box)
    return im


def exif_jpeg(orientation: int) -> bytes:
    stored = upright_picture()
    method = STORED_AS[orientation]
    if method is not None:
        stored = stored.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def assert_upright(path: Path) -> None:
    with Image.open(path) as im:
        assert im.size == UPRIGHT_SIZE
        rgb = im.convert("RGB")
        w, h = UPRIGHT_SIZE
        points = {"tl": (w // 4, h // 4), "tr": (3 * w // 4, h // 4), "bl": (w // 4, 3 * h // 4)}
        points["br"] = (3 * w // 4, 3 * h // 4)
        for name, xy in points.items():
            got = rgb.getpixel(xy)
            assert isinstance(got, tuple)
            assert all(abs(a - b) < 40 for a, b in zip(got, QUADRANTS[name], strict=True)), (name, got)


# The HTTP server ---------------------------------------------------------------------------


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.hits: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self.presigned: dict[str, str] = {}  # cloud URI -> the URL a presign request redirects to

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def paths(self) -> list[str]:
        return [h["path"] for h in self.hits]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "text/plain", length: bool = True, **hdrs: str):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for k, v in hdrs.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: C901 - one route table
        srv = self.server
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        with srv.lock:
            srv.hits.append(
                {"host": self.headers.get("Host"), "path": self.path, "auth": self.headers.get("Authorization")}
            )
            count = srv.counts[parts.path] = srv.counts.get(parts.path, 0) + 1
        name = parts.path.rsplit("/", 1)[-1]
        if parts.path.startswith(("/img/", "/data/")) and name in srv.files:
            body, ctype = srv.files[name]
            return self._send(200, body, ctype)
        if parts.path.startswith("/data/local-files") and "d" in query and query["d"][-1] in srv.files:
            body, ctype = srv.files[query["d"][-1]]
            return self._send(200, body, ctype)
        if parts.path.startswith("/nolen/") and name in srv.files:  # body ends when the connection closes
            return self._send(200, srv.files[name][0], srv.files[name][1], length=False)
        if parts.path == "/corrupt.jpg":
            return self._send(200, b"\xff\xd8\xff\xe0 this is not a jpeg", "image/jpeg")
        if parts.path == "/login.png":
            return self._send(200, b"<html>please log in</html>", "text/html")
        if parts.path == "/truncated.png":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(srv.files["a.png"][0][:100])
            self.close_connection = True
            return None
        if parts.path == "/slow.png":
            time.sleep(3)
            return self._send(200, srv.files["a.png"][0], "image/png")
        if parts.path == "/drip.png":  # headers at once, then 50 bytes every 0.1 s
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(60):
                    self.wfile.write(b"\0" * 50)
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            return None
        if parts.path.startswith("/flaky/"):  # 503 twice, then the image
            if count <= 2:
                return self._send(503, b"busy")
            return self._send(200, srv.files[name][0], "image/png")
        if parts.path.startswith("/limited/"):  # 429 once (Retry-After: 0), then the image
            if count <= 1:
                return self._send(429, b"slow down", Retry_After="0")
            return self._send(200, srv.files[name][0], "image/png")
        if parts.path == "/always503.png":
            return self._send(503, b"down")
        if parts.path == "/redirect":
            return self._send(302, b"", Location=query["to"][0])
        if parts.path == "/storage-data/uploaded/" and query.get("filepath", [""])[-1].rsplit("/", 1)[-1] in srv.files:
            body, ctype = srv.files[query["filepath"][-1].rsplit("/", 1)[-1]]
            return self._send(200, body, ctype)
        if re.fullmatch(r"/(tasks|projects)/\d+/(presign|resolve)/", parts.path) and "fileuri" in query:
            uri = base64.urlsafe_b64decode(query["fileuri"][0]).decode()  # as Label Studio: 303 to a signed URL
            if uri in srv.presigned:
                return self._send(303, b"", Location=srv.presigned[uri])
        if parts.path == "/loop":
            return self._send(307, b"", Location="/loop")
        return self._send(404, b"not found")


@contextlib.contextmanager
def serving() -> Iterator[Server]:
    """A new server on loopback (a free port), serving a.png and b.png, until the block ends."""
    srv = Server()
    srv.files = {"a.png": (png_bytes(48, 32), "image/png"), "b.png": (png_bytes(20, 30, (200, 10, 10)), "image/png")}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def http_server() -> Iterator[Server]:
    with serving() as srv:
        srv.files["noisy.png"] = (noisy_png(64, 64), "image/png")
        for n in range(1, 9):
            srv.files[f"exif{n}.jpg"] = (exif_jpeg(n), "image/jpeg")
        yield srv


@pytest.fixture
def server(http_server: Server) -> Server:
    """The module's server with its request log and counters cleared."""
    with http_server.lock:
        http_server.hits.clear()
        http_server.counts.clear()
        http_server.presigned.clear()
    return http_server


class Network:
    """What the ``network`` fixture adds and saw: names only the test resolves (successive
    answers, the last one repeated), routes from made-up public addresses to loopback, and
    every lookup and every address a socket was connected to."""

    def __init__(self) -> None:
        self.names: dict[str, list[list[str]]] = {}
        self.routes: dict[str, str] = {}
        self.lookups: list[str] = []
        self.connects: list[tuple[str, int]] = []


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> Network:
    """Fault injection at the two edges of the network: the resolver knows the names in
    ``names`` too, and sockets reach loopback only: an address in ``routes`` is routed to a
    loopback server, any other one is unreachable, so no test packet leaves the machine
    whatever the code under test tries."""
    import labelloop.labelstudio.media_guard as guard_mod

    net = Network()
    resolve, connect = guard_mod._resolve, httpcore.SyncBackend.connect_tcp
    # Threads an earlier test left running (a Label Studio request ending by its own timeout)
    # are not this test's: their connects go through but are not recorded.
    older = {t.ident for t in threading.enumerate()} - {threading.get_ident()}

    def lookup(host: str, port: int) -> list[str]:
        net.lookups.append(host)
        answers = net.names.get(host)
        if answers is None:
            return resolve(host, port)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def connect_tcp(self: httpcore.SyncBackend, host: str, port: int, *args: Any, **kw: Any) -> Any:
        if threading.get_ident() not in older:
            net.connects.append((host, port))
        target = net.routes.get(host, host)
        if target not in ("127.0.0.1", "::1", "localhost"):
            raise httpcore.ConnectError(f"test network: {host} is unreachable (only loopback is)")
        return connect(self, target, port, *args, **kw)

    monkeypatch.setattr(guard_mod, "_resolve", lookup)
    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", connect_tcp)
    return net


def config(srv: Server | None = None, **kw: Any) -> MediaConfig:
    """Fast limits; the test server's host allowed (as 127.0.0.1:<port>)."""
    base: dict[str, Any] = {
        "label_studio_url": None,
        "api_key": None,
        "allow_hosts": (f"127.0.0.1:{srv.port}",) if srv else (),
        "timeout_s": 2.0,
        "retries": 2,
        "backoff_s": 0.01,
    }
    return MediaConfig(**{**base, **kw})


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def files_in(directory: Path) -> list[str]:
    """The cache's files, and its temp files as ``.tmp/<name>``."""
    if not directory.exists():
        return []
    names = sorted(n for n in os.listdir(directory) if n != ".tmp")
    tmp = directory / ".tmp"
    return names + sorted(f".tmp/{n}" for n in os.listdir(tmp)) if tmp.exists() else names


NAME = r"-[0-9a-f]{16}-v2\."  # <task id>-<sha1(url)[:16]>-v<CACHE_VERSION>.<ext>


# Plain URLs, cache ---------------------------------------------------------------------------


def test_fetch_then_cache_hit_without_request(server: Server, cache_dir: Path) -> None:
    """A first get downloads the image to one file <task id>-<sha1(url)[:16]>-v2.<ext>; later gets, in this process
    or a new one, hit the cache without a request, and a new URL for the same task is downloaded."""
    url = f"http://127.0.0.1:{server.port}/img/a.png"
    with ImageCache(cache_dir, config(server)) as cache:
        first = cache.get(7, url)
        assert first.downloaded and (first.width, first.height) == (48, 32)
        assert first.path.read_bytes() == server.files["a.png"][0]  # no orientation: original bytes
        assert re.fullmatch(f"7{NAME}png", first.path.name)
        assert first.path.parent == cache_dir
        assert files_in(cache_dir) == [first.path.name]  # one file, no sidecar, no temp file left

        second = cache.get(7, url)
        assert second == CachedImage(first.path, 48, 32, downloaded=False)
        assert len(server.hits) == 1

        other = cache.get(7, f"http://127.0.0.1:{server.port}/img/b.png")  # same task, new URL
        assert other.downloaded and other.path != first.path and (other.width, other.height) == (20, 30)
        assert len(server.hits) == 2

    with ImageCache(cache_dir, config(server)) as again:  # a new process reuses the files
        assert again.get(7, url) == CachedImage(first.path, 48, 32, downloaded=False)  # size from the header
    assert len(server.hits) == 2
    assert not [n for n in files_in(cache_dir) if n.startswith(".tmp/")]


def test_cache_stays_under_its_cap_evicting_the_least_recently_used(server: Server, cache_dir: Path) -> None:
    """With cache_max_bytes the cache folder stays under the cap: storing an image evicts the least recently used
    ones (a hit counts as a use), and opening a cache with a smaller cap evicts down to it."""
    url = f"http://127.0.0.1:{server.port}/img/noisy.png"
    size = len(server.files["noisy.png"][0])

    def tasks() -> set[int]:
        return {int(n.split("-")[0]) for n in files_in(cache_dir) if not n.startswith(".tmp/")}

    with ImageCache(cache_dir, config(server, cache_max_bytes=int(size * 3.5))) as cache:
        for task_id in (1, 2, 3):
            cache.get(task_id, url)
        assert not cache.get(1, url).downloaded  # a hit: task 1 is now the most recently used
        for task_id in (4, 5):
            cache.get(task_id, url)
        assert tasks() == {1, 4, 5}
    assert sum(p.stat().st_size for p in cache_dir.iterdir() if p.is_file()) <= size * 3.5
    with ImageCache(cache_dir, config(server, cache_max_bytes=int(size * 1.5))):
        assert tasks() == {5}


def test_cache_names_never_come_from_task_data(server: Server, cache_dir: Path) -> None:
    """Cache file names come from the task id and a hash of the URL, never from the URL's path (a traversal stays in
    the cache folder); a task id that is not an int is refused."""
    server.files["..%2F..%2Fevil.png"] = server.files["a.png"]
    with ImageCache(cache_dir, config(server)) as cache:
        got = cache.get(3, f"http://127.0.0.1:{server.port}/img/..%2F..%2Fevil.png")
        assert got.path.parent == cache_dir and re.fullmatch(f"3{NAME}png", got.path.name)
        with pytest.raises(ValueError):
            cache.get("../x", "/data/upload/1/a.png")  # type: ignore[arg-type]


def test_host_not_allowed_makes_no_request(server: Server, cache_dir: Path) -> None:
    """A URL whose host (and port, when allow_hosts names one) is not allowed is refused before any request; a host
    allowed without a port is allowed on every port."""
    with ImageCache(cache_dir, config(server)) as cache:
        with pytest.raises(MediaError, match="host not allowed"):
            cache.get(1, f"http://localhost:{server.port}/img/a.png")
        with pytest.raises(MediaError, match="host not allowed"):
            cache.get(1, f"http://127.0.0.1:{server.port + 1}/img/a.png")  # another port of an allowed host
    with ImageCache(cache_dir, config(None)) as cache:
        with pytest.raises(MediaError, match="host not allowed"):
            cache.get(1, f"http://127.0.0.1:{server.port}/img/a.png")
    assert server.hits == []
    with ImageCache(cache_dir, config(None, allow_hosts=("localhost",))) as cache:  # any port of the host
        assert cache.get(1, f"http://localhost:{server.port}/img/a.png").width == 48
    assert server.paths() == ["/img/a.png"]


def test_redirects(server: Server, cache_dir: Path) -> None:
    """A redirect on the same host is followed, one to a host not allowed is refused without asking it, and a loop
    fails; Label Studio's presign redirect may go to an allowed host, without the API key."""
    base, other = f"http://127.0.0.1:{server.port}", f"http://localhost:{server.port}"
    with ImageCache(cache_dir, config(server)) as cache:
        assert cache.get(1, f"{base}/redirect?to=/img/a.png").width == 48  # same host
        assert server.paths() == ["/redirect?to=/img/a.png", "/img/a.png"]

        server.hits.clear()
        with pytest.raises(MediaError, match="host not allowed: localhost"):
            cache.get(2, f"{base}/redirect?to={other}/img/a.png")
        assert server.paths() == [f"/redirect?to={other}/img/a.png"]  # the target was never asked

        with pytest.raises(MediaError, match="redirects"):
            cache.get(3, f"{base}/loop")

    # Label Studio's own redirects (presigned URLs) may leave its host; its key stays behind
    # (to a host that is not allowed: test_presigned_redirect_to_a_public_host_...)
    server.hits.clear()
    server.presigned["s3://bucket/b.png"] = f"{other}/img/b.png"
    ls = config(None, label_studio_url=base, api_key="legacy-key", allow_hosts=("localhost",))
    with ImageCache(cache_dir / "ls", ls) as cache:
        assert cache.get(4, "s3://bucket/b.png").width == 20
    assert [(h["host"], h["auth"]) for h in server.hits] == [
        (f"127.0.0.1:{server.port}", "Token legacy-key"),
        (f"localhost:{server.port}", None),
    ]


# Where requests may go ---------------------------------------------------------------------


def ls_config(ls: Server, **kw: Any) -> MediaConfig:
    """Label Studio at ``ls`` (a loopback origin, trusted as Label Studio's), legacy key ``legacy-key``."""
    return config(None, label_studio_url=f"http://127.0.0.1:{ls.port}", api_key="legacy-key", **kw)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fc00::1", "a private address"),
        ("169.254.169.254", "a cloud metadata service address"),
        ("fd00:ec2::254", "a cloud metadata service address"),
        ("100.100.100.200", "a cloud metadata service address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),
        ("0.0.0.0", "the unspecified address"),
        ("::", "the unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("::7f00:1", "a reserved address"),
        ("100.64.0.1", "in the shared address space 100.64.0.0/10"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("::ffff:169.254.169.254", "a cloud metadata service address"),
        ("::ffff:10.0.0.1", "a private address"),
        ("64:ff9b::a9fe:a9fe", "a cloud metadata service address"),
        ("2002:7f00:1::", "a loopback address"),
        ("192.0.2.1", "a private address"),
        ("2001:db8::1", "a private address"),
        ("93.184.216.34", None),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_internal_addresses(address: str, reason: str | None) -> None:
    """Every non-global address is internal, with its reason; an IPv4 address carried in an
    IPv6 one is judged as that IPv4 address; global unicast addresses are not internal."""
    from labelloop.labelstudio.media_guard import _internal_reason

    assert _internal_reason(address) == reason


def test_label_studio_redirect_to_another_loopback_origin_is_refused(
    server: Server, cache_dir: Path, network: Network
) -> None:
    """A presigned URL that Label Studio redirects to may not point at another loopback service
    (another port): refused, naming the host but not the query, and that service gets no request."""
    with serving() as internal:
        server.presigned["s3://bucket/a.png"] = f"http://127.0.0.1:{internal.port}/secret?X-Amz-Signature=s3cr3t"
        with ImageCache(cache_dir, ls_config(server)) as cache:
            with pytest.raises(
                MediaError, match=f"address not allowed: 127.0.0.1:{internal.port} is a loopback"
            ) as err:
                cache.get(1, "s3://bucket/a.png")
        assert "s3cr3t" not in str(err.value) and "/secret" not in str(err.value)
        assert internal.hits == []
    assert [(h["path"], h["auth"]) for h in server.hits] == [(presign_path(1, "s3://bucket/a.png"), "Token legacy-key")]
    assert network.connects == [("127.0.0.1", server.port)]  # Label Studio's own origin only


@pytest.mark.parametrize(
    "host", ["localhost", "internal.example", "[::ffff:127.0.0.1]", "2130706433", "127.1", "[::1]", "0.0.0.0"]
)
def test_a_host_resolving_to_loopback_is_refused(server: Server, cache_dir: Path, network: Network, host: str) -> None:
    """A host that is neither Label Studio's origin nor allowed is refused when its one lookup
    gives loopback, whatever its spelling (a name, IPv4-mapped IPv6, integer or short IPv4, 0.0.0.0)."""
    network.names["internal.example"] = [["127.0.0.1"]]
    with serving() as internal:
        server.presigned["s3://bucket/a.png"] = f"http://{host}:{internal.port}/secret"
        with ImageCache(cache_dir, ls_config(server)) as cache:
            with pytest.raises(MediaError, match="address not allowed: .*(loopback|unspecified)"):
                cache.get(1, "s3://bucket/a.png")
        assert internal.hits == []
    assert network.connects == [("127.0.0.1", server.port)]


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("169.254.169.254", "169.254.169.254:80 is a cloud metadata"),
        ("metadata.google.internal", "metadata.google.internal:80 resolves to 169.254.169.254, a cloud metadata"),
        ("[::ffff:169.254.169.254]", "cloud metadata"),
        ("[fd00:ec2::254]", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("[fe80::1]", "link-local"),
        ("10.0.0.5", "private"),
        ("[fc00::5]", "private"),
        ("100.64.0.1", "shared address space"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("[64:ff9b::a00:5]", "private"),
    ],
)
def test_redirect_to_an_internal_address_is_refused_before_connecting(
    server: Server, cache_dir: Path, network: Network, target: str, reason: str
) -> None:
    """A Label Studio redirect to the cloud metadata service (link-local 169.254.169.254, by
    address or by a name resolving to it) or to any other internal address is refused before a
    connection is attempted."""
    network.names["metadata.google.internal"] = [["169.254.169.254"]]
    server.presigned["s3://bucket/meta"] = f"http://{target}/latest/meta-data/iam/?recursive=true"
    with ImageCache(cache_dir, ls_config(server, retries=0)) as cache:
        with pytest.raises(MediaError, match="address not allowed: .*" + re.escape(reason)) as err:
            cache.get(1, "s3://bucket/meta")
    assert "recursive" not in str(err.value)
    assert network.connects == [("127.0.0.1", server.port)]


def test_allowed_hosts_may_be_internal_and_are_connected_at_their_resolved_address(
    server: Server, cache_dir: Path, network: Network
) -> None:
    """A host in allow_hosts may resolve to loopback (a MinIO on a private network), directly and
    after a Label Studio redirect: each connection is made to the address of its own lookup,
    with the host's name in the Host header and no API key."""
    network.names["minio.internal"] = [["127.0.0.1"]]
    minio = f"minio.internal:{server.port}"
    server.presigned["s3://bucket/b.png"] = f"http://{minio}/img/b.png?X-Amz-Signature=s"
    with ImageCache(cache_dir, ls_config(server, allow_hosts=("minio.internal",))) as cache:
        assert cache.get(1, f"http://{minio}/img/a.png").width == 48
        assert cache.get(2, "s3://bucket/b.png").width == 20
    assert [(h["host"], h["path"], h["auth"]) for h in server.hits] == [
        (minio, "/img/a.png", None),
        (f"127.0.0.1:{server.port}", presign_path(2, "s3://bucket/b.png"), "Token legacy-key"),
        (minio, "/img/b.png?X-Amz-Signature=s", None),
    ]
    # the test server closes every connection (HTTP/1.0): one lookup, then one connect, per request
    assert network.lookups == ["minio.internal", "127.0.0.1", "minio.internal"]
    assert network.connects == [("127.0.0.1", server.port)] * 3


def test_presigned_redirect_to_a_public_host_connects_to_the_address_checked(
    server: Server, cache_dir: Path, network: Network
) -> None:
    """A Label Studio redirect may go to a host that is not allowed when it resolves to a public
    address: the socket goes to the address that was checked, without a second lookup, so a name
    that answers a public address first and loopback next (DNS rebinding) never reaches
    loopback; the API key stays behind."""
    with serving() as bucket:  # the cloud storage, at a made-up public address routed to loopback
        network.names["bucket.s3.example"] = [["93.184.216.34"], ["127.0.0.1"]]
        network.routes["93.184.216.34"] = "127.0.0.1"
        host = f"bucket.s3.example:{bucket.port}"
        server.presigned["s3://bucket/a.png"] = f"http://{host}/img/a.png?X-Amz-Signature=s"
        with ImageCache(cache_dir, ls_config(server)) as cache:
            assert cache.get(1, "s3://bucket/a.png").width == 48
            with pytest.raises(MediaError, match=f"{host} resolves to 127.0.0.1, a loopback address"):
                cache.get(2, "s3://bucket/a.png")  # another task: fetched again, and the name now answers loopback
        assert [(h["host"], h["path"], h["auth"]) for h in bucket.hits] == [
            (host, "/img/a.png?X-Amz-Signature=s", None)
        ]
    assert network.lookups.count("bucket.s3.example") == 2
    assert [c for c in network.connects if c[1] == bucket.port] == [("93.184.216.34", bucket.port)]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/api/users/", "not a Label Studio media path"),
        ("/api/projects/1/export?exportType=JSON", "not a Label Studio media path"),
        ("/user/login/", "not a Label Studio media path"),
        ("/data/upload/", "not a Label Studio media path"),
        ("/data/local-filesX/?d=a.png", "not a Label Studio media path"),
        ("/tasks/x/presign/?fileuri=eA==", "not a Label Studio media path"),
        ("/%61pi/users/", "not a Label Studio media path"),
        ("/tasks/1/presign/", "presign URL has no \\?fileuri="),
        ("/storage-data/uploaded/", "storage-data URL has no \\?filepath="),
        ("/data/upload/../../api/users/", "escapes"),
        ("/data/upload/%2e%2e/api", "escapes"),
        ("/data/upload/1/..%2F..%2F..%2Fapi/users/", "escapes"),
        ("/data/upload/%252e%252e/%252e%252e/api/users/", "escapes"),
        ("/data/upload/1/./a.png", "escapes"),
        ("/data/upload/..\\..\\api/users/", "escapes"),
        ("/data/upload//etc/passwd", "escapes"),
        ("//evil.example/data/upload/1/a.png", "escapes"),
        ("/data/upload/%2525252525252e/x", "percent-encoded more than 3 times"),
    ],
)
def test_api_key_goes_only_to_label_studio_media_paths(server: Server, cache_dir: Path, path: str, reason: str) -> None:
    """A task path, or a URL on Label Studio's origin, that is not one of its media paths once
    percent-decoded (its API, a traversal out of /data/upload/) is refused before any request."""
    ls = f"http://127.0.0.1:{server.port}"
    with ImageCache(cache_dir, ls_config(server)) as cache:
        for url in (path, ls + path):
            with pytest.raises(MediaError, match=reason) as err:
                cache.get(1, url)
            assert "exportType" not in str(err.value)
    assert server.hits == []


def test_label_studio_media_paths_are_fetched_with_the_api_key(server: Server, cache_dir: Path) -> None:
    """Uploads, Local Storage files, uploads in cloud storage and resolved cloud URIs (a
    redirect to Label Studio itself included) are requested with the API key, under a base path
    too; outside the base path, nothing is requested."""
    server.presigned["s3://bucket/b.png"] = "/data/upload/1/b.png"
    fileuri = base64.urlsafe_b64encode(b"s3://bucket/b.png").decode()
    with ImageCache(cache_dir, ls_config(server)) as cache:
        assert cache.get(1, "/data/upload/1/a.png").width == 48
        assert cache.get(2, "/data/local-files/?d=b.png").width == 20
        assert cache.get(3, "/storage-data/uploaded/?filepath=upload/1/a.png").width == 48
        assert cache.get(4, f"/projects/1/resolve/?fileuri={fileuri}").width == 20
        assert cache.get(5, "s3://bucket/b.png").width == 20
    assert [(h["path"], h["auth"]) for h in server.hits] == [
        ("/data/upload/1/a.png", "Token legacy-key"),
        ("/data/local-files/?d=b.png", "Token legacy-key"),
        ("/storage-data/uploaded/?filepath=upload/1/a.png", "Token legacy-key"),
        (f"/projects/1/resolve/?fileuri={fileuri}", "Token legacy-key"),
        ("/data/upload/1/b.png", "Token legacy-key"),
        (presign_path(5, "s3://bucket/b.png"), "Token legacy-key"),
        ("/data/upload/1/b.png", "Token legacy-key"),
    ]

    server.hits.clear()
    base = f"http://127.0.0.1:{server.port}/ls"
    with ImageCache(cache_dir / "sub", config(None, label_studio_url=base, api_key="legacy-key")) as cache:
        with pytest.raises(MediaError, match="HTTP 404"):
            cache.get(6, "/data/upload/1/a.png")  # the fake Label Studio serves no /ls/ paths
        with pytest.raises(MediaError, match="not under Label Studio's base path /ls"):
            cache.get(7, f"http://127.0.0.1:{server.port}/api/users/")
    assert [(h["path"], h["auth"]) for h in server.hits] == [("/ls/data/upload/1/a.png", "Token legacy-key")]


def test_a_redirect_to_label_studio_api_is_refused(server: Server, cache_dir: Path) -> None:
    """An allowed image host that redirects to Label Studio's API is refused: the API key never
    goes with a request for a path another host chose, unless it is a media path."""
    with serving() as images:
        api = f"http://127.0.0.1:{server.port}/api/users/"
        with ImageCache(cache_dir, ls_config(server, allow_hosts=(f"127.0.0.1:{images.port}",))) as cache:
            with pytest.raises(MediaError, match="not a Label Studio media path"):
                cache.get(1, f"http://127.0.0.1:{images.port}/redirect?to={api}")
        assert images.paths() == [f"/redirect?to={api}"]
    assert server.hits == []


def test_proxies_from_the_environment_are_not_used(
    server: Server, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY, HTTPS_PROXY and ALL_PROXY are ignored: through a proxy, the proxy would choose
    the address, past the check."""
    with serving() as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
            monkeypatch.setenv(name.lower(), f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with ImageCache(cache_dir, config(server)) as cache:
            assert cache.get(1, f"http://127.0.0.1:{server.port}/img/a.png").width == 48
        assert proxy.hits == []
    assert server.paths() == ["/img/a.png"]


def test_http_errors_retries_and_backoff(server: Server, cache_dir: Path) -> None:
    """A 4xx is not retried; 503, 429 and dropped connections are retried ``retries`` times with doubling backoff;
    corrupt and non-image bodies are refused, and no temp file is left."""
    base = f"http://127.0.0.1:{server.port}"
    with ImageCache(cache_dir, config(server, retries=2)) as cache:
        with pytest.raises(MediaError, match="HTTP 404") as err:
            cache.get(1, f"{base}/img/missing.png")
        assert err.value.status == 404 and server.counts["/img/missing.png"] == 1  # 4xx: no retry

        assert cache.get(2, f"{base}/flaky/a.png").downloaded  # 503, 503, 200
        assert server.counts["/flaky/a.png"] == 3

        assert cache.get(3, f"{base}/limited/b.png").width == 20  # 429 (Retry-After: 0), 200
        assert server.counts["/limited/b.png"] == 2

        with pytest.raises(MediaError, match="HTTP 503.*after 3 attempts") as err:
            cache.get(4, f"{base}/always503.png")
        assert err.value.status == 503 and server.counts["/always503.png"] == 3

        with pytest.raises(MediaError, match="corrupt image"):
            cache.get(5, f"{base}/corrupt.jpg")  # a JPEG header, then garbage
        with pytest.raises(MediaError, match="not an image"):
            cache.get(6, f"{base}/login.png")

        with pytest.raises(MediaError, match="corrupt image|RemoteProtocolError|after 3 attempts"):
            cache.get(7, f"{base}/truncated.png")
        assert server.counts["/truncated.png"] == 3  # a dropped connection is retried

    dead = free_port()
    t0 = time.monotonic()
    with ImageCache(cache_dir, config(None, allow_hosts=("127.0.0.1",), retries=2, backoff_s=0.05)) as cache:
        with pytest.raises(MediaError, match="ConnectError.*after 3 attempts"):
            cache.get(8, f"http://127.0.0.1:{dead}/a.png")
    assert time.monotonic() - t0 >= 0.05 + 0.1  # backoff 0.05 s, then 0.1 s
    assert not [n for n in files_in(cache_dir) if n.startswith(".tmp/")]


def test_timeouts(server: Server, cache_dir: Path) -> None:
    """No response within timeout_s, or a download that takes longer in all, fails as timed out, is not retried and
    leaves no file."""
    base = f"http://127.0.0.1:{server.port}"
    with ImageCache(cache_dir, config(server, timeout_s=0.5)) as cache:
        t0 = time.monotonic()
        with pytest.raises(MediaError, match="timed out"):
            cache.get(1, f"{base}/slow.png")  # no response within the timeout
        with pytest.raises(MediaError, match="timed out"):
            cache.get(2, f"{base}/drip.png")  # every read is quick, the download is not
        assert time.monotonic() - t0 < 2.5
    assert server.counts["/slow.png"] == 1 and server.counts["/drip.png"] == 1  # timeouts are not retried
    assert files_in(cache_dir) == []


def test_size_limit_while_streaming(server: Server, cache_dir: Path) -> None:
    """A body over max_bytes is refused, from its Content-Length or counted while streaming without one; a smaller
    image still downloads."""
    base = f"http://127.0.0.1:{server.port}"
    assert len(server.files["noisy.png"][0]) > 4096
    with ImageCache(cache_dir, config(server, max_bytes=4096)) as cache:
        with pytest.raises(MediaError, match="larger than 4096"):
            cache.get(1, f"{base}/img/noisy.png")  # announced by Content-Length
        with pytest.raises(MediaError, match="larger than 4096"):
            cache.get(2, f"{base}/nolen/noisy.png")  # counted while streaming
        assert cache.get(3, f"{base}/img/a.png").downloaded
    assert server.counts["/nolen/noisy.png"] == 1


def test_failed_downloads_leave_no_files(server: Server, cache_dir: Path) -> None:
    """A truncated, corrupt, oversized or missing download leaves no file in the cache, temp files included."""
    base = f"http://127.0.0.1:{server.port}"
    with ImageCache(cache_dir, config(server, retries=0, max_bytes=4096)) as cache:
        for i, path in enumerate(["/truncated.png", "/corrupt.jpg", "/nolen/noisy.png", "/img/nope.png"]):
            with pytest.raises(MediaError):
                cache.get(i, base + path)
    assert files_in(cache_dir) == []


def test_decompression_bomb(server: Server, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image over Pillow's MAX_IMAGE_PIXELS is refused as a decompression bomb both where Pillow would only warn and
    where it raises; one at the limit is stored."""
    server.files["bomb.png"] = (png_bytes(3000, 3000, (0, 0, 0)), "image/png")
    url = f"http://127.0.0.1:{server.port}/img/bomb.png"
    with ImageCache(cache_dir, config(server)) as cache:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000 * 3000 - 1)  # Pillow would only warn
        with pytest.raises(MediaError, match="decompression bomb"):
            cache.get(1, url)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000 * 1000)  # Pillow raises
        with pytest.raises(MediaError, match="decompression bomb"):
            cache.get(1, url)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000 * 3000)
        assert cache.get(1, url).width == 3000
    assert len(files_in(cache_dir)) == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_once(server: Server, cache_dir: Path, orientation: int) -> None:
    """A JPEG with any EXIF orientation (1-8) is stored upright as JPEG, with orientation 1 and the displayed width and
    height; orientation 1 is kept byte for byte, and the next get is a cache hit."""
    raw = server.files[f"exif{orientation}.jpg"][0]
    with Image.open(io.BytesIO(raw)) as im:
        stored_size = im.size
        assert im.getexif()[0x0112] == orientation
    assert stored_size == (UPRIGHT_SIZE[::-1] if orientation >= 5 else UPRIGHT_SIZE)

    url = f"http://127.0.0.1:{server.port}/img/exif{orientation}.jpg"
    with ImageCache(cache_dir, config(server)) as cache:
        got = cache.get(orientation, url)
        assert (got.width, got.height) == UPRIGHT_SIZE  # width and height swap back for 5-8
        assert got.path.suffix == ".jpg"
        assert_upright(got.path)
        with Image.open(got.path) as im:
            assert im.format == "JPEG"
            assert im.getexif().get(0x0112, 1) == 1  # applied once: a viewer will not turn it again
        if orientation == 1:
            assert got.path.read_bytes() == raw  # nothing to do: not re-encoded
        assert cache.get(orientation, url) == CachedImage(got.path, *UPRIGHT_SIZE, downloaded=False)


def test_other_formats_are_stored_as_png(server: Server, cache_dir: Path) -> None:
    """An image in a format the cache does not keep as it is (GIF) is stored as a PNG of the same size."""
    buf = io.BytesIO()
    Image.new("P", (12, 9), 3).save(buf, "GIF")
    server.files["c.gif"] = (buf.getvalue(), "image/gif")
    with ImageCache(cache_dir, config(server)) as cache:
        got = cache.get(1, f"http://127.0.0.1:{server.port}/img/c.gif")
        assert got.path.suffix == ".png" and (got.width, got.height) == (12, 9)
        with Image.open(got.path) as im:
            assert im.format == "PNG" and im.size == (12, 9)


# Local files ---------------------------------------------------------------------------------


def test_local_files_read_from_document_root(server: Server, cache_dir: Path, tmp_path: Path) -> None:
    """/data/local-files/?d= paths are read from document_root without a request, traversals and symlinks out of it
    refused; other files are fetched from Label Studio, and without a root a traversal is refused before any request."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.png").write_bytes(png_bytes(33, 22))
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(5, 5))
    (root / "sub" / "link.png").symlink_to(secret)
    ls = f"http://127.0.0.1:{server.port}"  # stands in for Label Studio: a request would show up
    cfg = config(None, label_studio_url=ls, api_key="k", document_root=root)
    with ImageCache(cache_dir, cfg) as cache:
        got = cache.get(1, "/data/local-files/?d=sub/x.png")
        assert got.downloaded and (got.width, got.height) == (33, 22)
        assert got.path.read_bytes() == (root / "sub" / "x.png").read_bytes()
        assert cache.get(2, f"{ls}/data/local-files/?d=sub%2Fx.png").width == 33  # full URL on the LS host
        assert cache.get(3, "/data/local-files/?d=/sub/x.png").width == 33  # as LS: relative to the root
        for bad in [
            "/data/local-files/?d=../../etc/passwd",
            "/data/local-files/?d=sub/../../secret.png",
            "/data/local-files/?d=%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "/data/local-files/?d=sub/link.png",  # a symlink out of the root
            f"{ls}/data/local-files/?d=../secret.png",
        ]:
            with pytest.raises(MediaError, match="escapes the document root"):
                cache.get(4, bad)
        with pytest.raises(MediaError, match="no \\?d="):
            cache.get(5, "/data/local-files/")
        assert server.hits == []

        # Not under this root: Label Studio may still have it
        server.files["there.png"] = server.files["b.png"]
        assert cache.get(6, "/data/local-files/?d=there.png").width == 20
        assert [(h["path"], h["auth"]) for h in server.hits] == [("/data/local-files/?d=there.png", "Token k")]

    with ImageCache(cache_dir, config(None, document_root=root)) as cache:
        with pytest.raises(MediaError, match="not found under the document root"):
            cache.get(7, "/data/local-files/?d=sub/none.png")
    # Without a document root, traversal is refused before asking Label Studio
    server.hits.clear()
    with ImageCache(cache_dir, config(None, label_studio_url=ls, api_key="k")) as cache:
        with pytest.raises(MediaError, match="escapes"):
            cache.get(8, "/data/local-files/?d=../../etc/passwd")
    assert server.hits == []
    assert not [n for n in files_in(cache_dir) if n.startswith(".tmp/")]


def test_uploads_read_from_mounted_media_dir(server: Server, cache_dir: Path, tmp_path: Path) -> None:
    """/data/upload/<rel> is read from <media_dir>/upload/<rel> without a request; traversal is refused;
    a file that is not there is downloaded from Label Studio."""
    media = tmp_path / "media"
    (media / "upload" / "3").mkdir(parents=True)
    (media / "upload" / "3" / "ab12-x.png").write_bytes(png_bytes(41, 17))
    (tmp_path / "secret.png").write_bytes(png_bytes(5, 5))
    ls = f"http://127.0.0.1:{server.port}"
    with ImageCache(cache_dir, config(None, label_studio_url=ls, api_key="k", media_dir=media)) as cache:
        got = cache.get(1, "/data/upload/3/ab12-x.png")
        assert got.downloaded and (got.width, got.height) == (41, 17)
        assert cache.get(2, f"{ls}/data/upload/3/ab12-x.png").width == 41  # full URL on the LS host
        for bad in ["/data/upload/../../secret.png", "/data/upload/3/%2e%2e/%2e%2e/%2e%2e/secret.png"]:
            with pytest.raises(MediaError, match="escapes"):
                cache.get(3, bad)
        assert server.hits == []
        server.files["other.png"] = server.files["b.png"]
        assert cache.get(4, "/data/upload/3/other.png").width == 20
        assert [h["path"] for h in server.hits] == ["/data/upload/3/other.png"]


def noisy_jpeg(progressive: bool = False) -> bytes:
    """A JPEG with real entropy-coded data (seeded noise)."""
    rnd = random.Random(3)
    im = Image.frombytes("RGB", (64, 48), bytes(rnd.randrange(256) for _ in range(64 * 48 * 3)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, progressive=progressive)
    return buf.getvalue()


def broken_jpegs() -> dict[str, bytes]:
    """Truncated JPEGs, and JPEGs with garbage in their entropy-coded data; each one is refused by
    a full decode (checked here), and must be by the cache."""
    out = {}
    for kind, raw in {"baseline": noisy_jpeg(), "progressive": noisy_jpeg(progressive=True)}.items():
        mid = len(raw) // 2
        out[f"{kind}-truncated.jpg"] = raw[: len(raw) * 6 // 10]
        out[f"{kind}-no-end.jpg"] = raw[:-2]
        out[f"{kind}-garbage.jpg"] = raw[:mid] + b"\xff" * 200 + raw[mid + 200 :]
    for data in out.values():
        with pytest.raises(OSError), Image.open(io.BytesIO(data)) as im:
            im.load()
    return out


def test_corrupt_or_truncated_jpeg_is_refused(server: Server, cache_dir: Path, tmp_path: Path) -> None:
    """A JPEG kept as it is gets a cheaper (1/8 scale) decode, which still reads all of its data:
    truncated or garbled ones are refused from disk and from HTTP, and leave nothing behind."""
    broken = broken_jpegs()
    upload = tmp_path / "media" / "upload" / "1"
    upload.mkdir(parents=True)
    for name, data in broken.items():
        (upload / name).write_bytes(data)
        server.files[name] = (data, "image/jpeg")
    (upload / "good.jpg").write_bytes(noisy_jpeg())
    with ImageCache(cache_dir, config(server, media_dir=tmp_path / "media")) as cache:
        for i, name in enumerate(broken):
            with pytest.raises(MediaError, match="corrupt image"):
                cache.get(i, f"/data/upload/1/{name}")
            with pytest.raises(MediaError, match="corrupt image"):
                cache.get(i, f"http://127.0.0.1:{server.port}/img/{name}")
        assert files_in(cache_dir) == []
        good = cache.get(99, "/data/upload/1/good.jpg")
        assert (good.width, good.height) == (64, 48) and good.path.read_bytes() == noisy_jpeg()


def test_uploads_are_hard_linked_else_copied(
    server: Server, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload kept as it is becomes the cache file by a hard link (no copy); one that must be
    turned is re-encoded (the upload is left alone); when the filesystem refuses the link
    (another filesystem, protected_hardlinks), it is copied. Local Storage files are always
    copied: the user may rewrite them in place; so is a JPEG with bytes after its end marker,
    which Ultralytics may rewrite in place."""
    media, root = tmp_path / "media", tmp_path / "root"
    (media / "upload" / "2").mkdir(parents=True)
    root.mkdir()
    up = media / "upload" / "2"
    (up / "straight.jpg").write_bytes(exif_jpeg(1))
    (up / "turned.jpg").write_bytes(exif_jpeg(6))
    (up / "other.png").write_bytes(png_bytes(21, 13))
    (up / "again.png").write_bytes(png_bytes(22, 14))
    (up / "trailer.jpg").write_bytes(exif_jpeg(1) + b"\0" * 16)  # decodes; Ultralytics would rewrite it
    (root / "local.png").write_bytes(png_bytes(23, 15))
    cfg = config(None, media_dir=media, document_root=root)
    with ImageCache(cache_dir, cfg) as cache:
        straight = cache.get(1, "/data/upload/2/straight.jpg")
        assert straight.path.samefile(up / "straight.jpg") and straight.downloaded
        assert (straight.width, straight.height) == UPRIGHT_SIZE

        trailer = cache.get(5, "/data/upload/2/trailer.jpg")
        assert not trailer.path.samefile(up / "trailer.jpg")
        assert trailer.path.read_bytes() == (up / "trailer.jpg").read_bytes()

        turned = cache.get(2, "/data/upload/2/turned.jpg")
        assert not turned.path.samefile(up / "turned.jpg")
        assert (turned.width, turned.height) == UPRIGHT_SIZE
        assert_upright(turned.path)
        assert (up / "turned.jpg").read_bytes() == exif_jpeg(6)

        local = cache.get(3, "/data/local-files/?d=local.png")
        assert not local.path.samefile(root / "local.png")
        assert local.path.read_bytes() == (root / "local.png").read_bytes()

        calls: list[int] = []
        for code, name in [(errno.EXDEV, "other.png"), (errno.EPERM, "again.png")]:

            def refuse(*args: Any, code: int = code, **kw: Any) -> None:
                calls.append(code)
                raise OSError(code, os.strerror(code))

            monkeypatch.setattr(os, "link", refuse)
            copied = cache.get(4, f"/data/upload/2/{name}")
            assert not copied.path.samefile(up / name) and copied.path.read_bytes() == (up / name).read_bytes()
        assert calls == [errno.EXDEV, errno.EPERM]
        monkeypatch.undo()
    assert not [n for n in files_in(cache_dir) if n.startswith(".tmp/")]


def test_upload_symlinks_and_size_limit(cache_dir: Path, tmp_path: Path) -> None:
    """A symlink in the media folder is followed only when it stays inside it; the size limit
    applies to uploads read from disk; a link target swapped for a symlink is refused."""
    from labelloop.labelstudio.media_sources import LocalFile

    media = tmp_path / "media"
    up = media / "upload" / "1"
    up.mkdir(parents=True)
    (up / "real.png").write_bytes(png_bytes(31, 7))
    (up / "inside.png").symlink_to(up / "real.png")
    (media / "upload" / "dir").symlink_to(up)
    (tmp_path / "secret.png").write_bytes(png_bytes(5, 5))
    (up / "outside.png").symlink_to(tmp_path / "secret.png")
    (up / "big.png").write_bytes(noisy_png(64, 64))
    with ImageCache(cache_dir, config(None, media_dir=media, max_bytes=4096)) as cache:
        assert cache.get(1, "/data/upload/1/inside.png").width == 31
        assert cache.get(2, "/data/upload/dir/real.png").width == 31
        with pytest.raises(MediaError, match="escapes the media folder"):
            cache.get(3, "/data/upload/1/outside.png")
        with pytest.raises(MediaError, match="not found under the media folder"):
            cache.get(4, "/data/upload/1/missing.png")
        with pytest.raises(MediaError, match="larger than 4096"):
            cache.get(5, "/data/upload/1/big.png")
        swapped = LocalFile(up / "outside.png", "1/outside.png", "the media folder", link=True)
        with pytest.raises(MediaError, match="not a regular file"):
            cache.store.put_local("6-0000000000000000-v2", swapped)
    assert [n for n in files_in(cache_dir) if not n.startswith(("1-", "2-"))] == []


def test_old_cache_format_is_fetched_again(server: Server, cache_dir: Path) -> None:
    """Version 1 entries (image + ``.json`` sidecar) are never used: the image is fetched again
    under a version 2 name."""
    url = f"http://127.0.0.1:{server.port}/img/a.png"
    old_key = f"7-{hashlib.sha1(url.encode()).hexdigest()[:16]}"
    cache_dir.mkdir()
    (cache_dir / f"{old_key}.png").write_bytes(png_bytes(5, 5))
    sidecar = {"v": 1, "url": url, "ext": "png", "width": 5, "height": 5, "format": "PNG", "orientation": 1}
    (cache_dir / f"{old_key}.json").write_text(json.dumps(sidecar))
    with ImageCache(cache_dir, config(server)) as cache:
        got = cache.get(7, url)
        assert got.downloaded and (got.width, got.height) == (48, 32)
        assert got.path.name.startswith(old_key + "-v2.")
        assert cache.get(7, url) == CachedImage(got.path, 48, 32, downloaded=False)
    assert len(server.hits) == 1


def test_hit_on_a_damaged_file_fetches_again(server: Server, cache_dir: Path) -> None:
    """A cached file that no longer decodes is not a hit: the image is downloaded again to the same path."""
    url = f"http://127.0.0.1:{server.port}/img/a.png"
    with ImageCache(cache_dir, config(server)) as cache:
        first = cache.get(1, url)
        first.path.write_bytes(b"not an image any more")
        again = cache.get(1, url)
        assert again.downloaded and again.path == first.path and (again.width, again.height) == (48, 32)
    assert len(server.hits) == 2


def test_stale_temp_files_are_removed_by_change_time(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temp files a killed process left are removed a day later; a fresh hard link to an old
    upload (old modification time, new change time) is not."""
    with ImageCache(cache_dir, config(None)):
        pass
    old = tmp_path / "old-upload.png"
    old.write_bytes(png_bytes(4, 4))
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    os.link(old, cache_dir / ".tmp" / ".link-inflight")
    (cache_dir / ".tmp" / ".part-inflight.part").write_bytes(b"x")
    with ImageCache(cache_dir, config(None)):
        assert files_in(cache_dir) == [".tmp/.link-inflight", ".tmp/.part-inflight.part"]
    later = time.time() + 2 * 86400
    monkeypatch.setattr(time, "time", lambda: later)
    with ImageCache(cache_dir, config(None)):
        assert files_in(cache_dir) == []


def test_cpu_work_runs_on_at_most_cpu_count_threads(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading and decoding mounted files is limited to one thread per CPU, whatever
    ``threads`` is (more only fight over the GIL)."""
    import labelloop.labelstudio.media as media_mod
    import labelloop.labelstudio.media_image as image_mod

    up = tmp_path / "media" / "upload" / "1"
    up.mkdir(parents=True)
    for i in range(12):
        (up / f"{i}.png").write_bytes(png_bytes(10 + i, 10))
    active, peak, lock = [0], [0], threading.Lock()
    decode = image_mod._decode

    def counted(raw: Path) -> Any:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.01)
            return decode(raw)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(image_mod, "_decode", counted)
    monkeypatch.setattr(media_mod, "_cpu_count", lambda: 2)
    with ImageCache(cache_dir, config(None, media_dir=tmp_path / "media", threads=6)) as cache:
        out = cache.get_many([(i, f"/data/upload/1/{i}.png") for i in range(12)])
    assert all(isinstance(out[i], CachedImage) and out[i].width == 10 + i for i in range(12))  # type: ignore[union-attr]
    assert peak[0] == 2


def test_root_document_root_is_ignored(cache_dir: Path) -> None:
    """A document_root of / is ignored: local files are not read from it and, without LABEL_STUDIO_URL, are refused."""
    with ImageCache(cache_dir, config(None, document_root=Path("/"))) as cache:
        with pytest.raises(MediaError, match="LABEL_STUDIO_URL"):
            cache.get(1, "/data/local-files/?d=etc/hostname")


def test_unsupported_urls(cache_dir: Path) -> None:
    """An empty URL, a bare name and file:// or ftp:// URLs are unsupported, and Label Studio paths and s3:// URIs
    need LABEL_STUDIO_URL: each is refused with MediaError."""
    with ImageCache(cache_dir, config(None)) as cache:
        for url, reason in [
            ("", "no image URL"),
            ("img.png", "unsupported image URL"),
            ("file:///etc/passwd", "unsupported image URL"),
            ("ftp://example.com/a.png", "unsupported image URL"),
            ("/data/upload/1/a.png", "LABEL_STUDIO_URL"),
            ("s3://bucket/a.png", "LABEL_STUDIO_URL"),
        ]:
            with pytest.raises(MediaError, match=reason):
                cache.get(1, url)


def test_get_many_never_raises_for_one_image(server: Server, cache_dir: Path) -> None:
    """``get_many`` gives each task a CachedImage or its MediaError, calls on_done once per item, requests each URL
    once and hits the cache the second time."""
    base = f"http://127.0.0.1:{server.port}"
    items = [(i, f"{base}/img/a.png?i={i}") for i in range(6)]
    items += [(10, f"{base}/img/missing.png"), (11, f"{base}/corrupt.jpg"), (12, "http://blocked.example/x.png")]
    done: list[int] = []
    with ImageCache(cache_dir, config(server, threads=3)) as cache:
        out = cache.get_many(items, on_done=lambda: done.append(1))
        assert len(done) == len(items)
        assert all(isinstance(out[i], CachedImage) for i in range(6))
        assert isinstance(out[10], MediaError) and out[10].status == 404
        assert isinstance(out[11], MediaError) and isinstance(out[12], MediaError)
        again = cache.get_many(items[:6])
        assert all(isinstance(r, CachedImage) and not r.downloaded for r in again.values())
    assert server.counts["/img/a.png"] == 6
    assert cache.get_many([]) == {}


def test_config_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``MediaConfig.from_settings`` reads the Label Studio URL (trailing slash dropped) and API key, document root,
    allow_hosts (comma list, trimmed) and timeout, defaulting the rest; ``presign_path`` is the task's presign URL."""
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.example:8080/")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "abc")
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", str(tmp_path))
    monkeypatch.setenv("LABELLOOP_MEDIA_ALLOW_HOSTS", "images.example, cdn.example:8443 ,")
    monkeypatch.setenv("LABELLOOP_MEDIA_TIMEOUT_S", "5")
    # Settings built by hand: the test is about the values read from the environment.
    cfg = MediaConfig.from_settings(Settings())
    assert cfg.label_studio_url == "http://ls.example:8080" and cfg.api_key == "abc"
    assert cfg.document_root == tmp_path
    assert cfg.allow_hosts == ("images.example", "cdn.example:8443")
    assert (cfg.timeout_s, cfg.retries, cfg.threads, cfg.max_bytes) == (5.0, 3, 8, 100 * 1024 * 1024)
    assert (
        presign_path(5, "s3://b/k.png")
        == "/tasks/5/presign/?fileuri=" + base64.urlsafe_b64encode(b"s3://b/k.png").decode()
    )


# A real Label Studio --------------------------------------------------------------------------

LOCAL_CONFIG = '<View><Image name="image" value="$image"/></View>'


def ls_tasks(url: str, token: str, project_id: int) -> list[dict[str, Any]]:
    tasks: list[Any] = list(LabelStudioAPI(url, token).sdk.tasks.list(project=project_id))
    return [{"id": int(t.id), "data": dict(t.data)} for t in tasks]


def ls_post(url: str, token: str, path: str, body: Any) -> Any:
    resp = httpx.post(url + path, headers={"Authorization": f"Token {token}"}, json=body, timeout=60)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


@pytest.fixture(scope="module")
def ls(label_studio_local_files: tuple[str, str, Path]) -> tuple[str, str, Path]:
    return label_studio_local_files


@pytest.mark.labelstudio
def test_label_studio_uploads(ls: tuple[str, str, Path], cache_dir: Path) -> None:
    """Uploads to a real Label Studio are fetched byte for byte from their /data/upload/ path or full URL; a missing
    upload fails with its HTTP status, and a wrong API key with 401 naming LABEL_STUDIO_API_KEY."""
    url, token, _ = ls
    api = LabelStudioAPI(url, token)
    project = api.create_project("media uploads")
    samples = [make_sample(i, 80, 60) for i in range(3)]
    task_ids = api.import_images(project, samples)
    tasks = {t["id"]: t["data"]["image"] for t in ls_tasks(url, token, project)}
    assert all(tasks[t].startswith("/data/upload/") for t in task_ids)

    with ImageCache(cache_dir, config(None, label_studio_url=url, api_key=token)) as cache:
        out = cache.get_many([(t, tasks[t]) for t in task_ids])
        for t, sample in zip(task_ids, samples, strict=True):
            got = out[t]
            assert isinstance(got, CachedImage) and (got.width, got.height) == (80, 60)
            assert got.path.read_bytes() == sample.png
        assert cache.get(task_ids[0], url + tasks[task_ids[0]]).width == 80  # a full URL on the LS host
        # LS 1.23 answers 500 (not 404) for an upload it has no record of
        with pytest.raises(MediaError, match="HTTP (404|500)"):
            cache.get(task_ids[0], f"/data/upload/{project}/no-such-file.png")

    bad = config(None, label_studio_url=url, api_key="0" * 40, retries=1)
    with ImageCache(cache_dir / "bad", bad) as cache:
        with pytest.raises(MediaError, match="HTTP 401.*LABEL_STUDIO_API_KEY") as err:
            cache.get(task_ids[0], tasks[task_ids[0]])
        assert err.value.status == 401


@pytest.mark.labelstudio
def test_label_studio_personal_access_token(ls: tuple[str, str, Path], cache_dir: Path) -> None:
    """A Label Studio personal access token (a JWT refresh token) is exchanged for an access token; an expired one is
    refreshed on 401 and the request made again."""
    url, token, _ = ls
    resp = httpx.post(url + "/api/token/", headers={"Authorization": f"Token {token}"}, timeout=30)
    if resp.status_code == 409:
        pytest.skip("this Label Studio user already has a personal access token")
    assert resp.status_code == 201, resp.text
    pat = resp.json()["token"]
    api = LabelStudioAPI(url, token)
    project = api.create_project("media pat")
    task_ids = api.import_images(project, [make_sample(i, 40, 30) for i in range(2)])
    tasks = {t["id"]: t["data"]["image"] for t in ls_tasks(url, token, project)}

    with ImageCache(cache_dir, config(None, label_studio_url=url, api_key=pat)) as cache:
        assert cache.get(task_ids[0], tasks[task_ids[0]]).width == 40
        cache.fetcher.auth._access = "expired.access.token"  # type: ignore[union-attr]  # inject an expired token
        assert cache.get(task_ids[1], tasks[task_ids[1]]).width == 40  # 401 -> refreshed -> 200
        assert cache.fetcher.auth._access != "expired.access.token"  # type: ignore[union-attr]


@pytest.mark.labelstudio
def test_label_studio_local_files(ls: tuple[str, str, Path], cache_dir: Path) -> None:
    """A Local Storage file is read from document_root without asking Label Studio (a wrong API key still works), or
    fetched through Label Studio, which answers 404 for a file no storage of the project covers."""
    url, token, root = ls
    (root / "sub").mkdir(exist_ok=True)
    (root / "outside").mkdir(exist_ok=True)
    (root / "sub" / "x.png").write_bytes(png_bytes(30, 20, (1, 2, 3)))
    (root / "outside" / "y.png").write_bytes(png_bytes(30, 20))
    project = LabelStudioAPI(url, token).create_project("media local files", LOCAL_CONFIG)
    ls_post(url, token, "/api/storages/localfiles", {"project": project, "path": str(root / "sub"), "title": "sub"})
    ls_post(
        url,
        token,
        f"/api/projects/{project}/import",
        [{"image": "/data/local-files/?d=sub/x.png"}, {"image": "/data/local-files/?d=outside/y.png"}],
    )
    tasks = {t["data"]["image"]: t["id"] for t in ls_tasks(url, token, project)}
    x, y = tasks["/data/local-files/?d=sub/x.png"], tasks["/data/local-files/?d=outside/y.png"]

    # From disk: a wrong key proves Label Studio was not asked
    disk = config(None, label_studio_url=url, api_key="0" * 40, document_root=root)
    with ImageCache(cache_dir / "disk", disk) as cache:
        got = cache.get(x, "/data/local-files/?d=sub/x.png")
        assert (got.width, got.height) == (30, 20)
        assert got.path.read_bytes() == (root / "sub" / "x.png").read_bytes()

    # Through Label Studio, which checks the project's Local Storage connections
    with ImageCache(cache_dir / "http", config(None, label_studio_url=url, api_key=token)) as cache:
        got = cache.get(x, "/data/local-files/?d=sub/x.png")
        assert got.downloaded and got.path.read_bytes() == (root / "sub" / "x.png").read_bytes()
        with pytest.raises(MediaError, match="HTTP 404"):
            cache.get(y, "/data/local-files/?d=outside/y.png")  # no storage of the project covers it


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    """An S3-compatible server (moto) on loopback; yields its endpoint URL."""
    server_mod = pytest.importorskip("moto.server")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.mark.labelstudio
@pytest.mark.parametrize("presign", [True, False])
def test_label_studio_cloud_presign(ls: tuple[str, str, Path], moto_s3: str, cache_dir: Path, presign: bool) -> None:
    """An s3:// task URI is fetched through Label Studio's presign URL, redirected to the S3 host (refused unless it is
    in allow_hosts) or streamed by Label Studio, then cached; a missing object fails with an HTTP error."""
    boto3 = pytest.importorskip("boto3")
    url, token, _ = ls
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    bucket = f"media-{str(presign).lower()}"
    s3 = boto3.client("s3", endpoint_url=moto_s3, **creds)
    s3.create_bucket(Bucket=bucket)
    body = png_bytes(36, 24, (9, 99, 199))
    s3.put_object(Bucket=bucket, Key="imgs/z.png", Body=body, ContentType="image/png")

    project = LabelStudioAPI(url, token).create_project(f"media s3 {presign}", LOCAL_CONFIG)
    storage = {"project": project, "bucket": bucket, "prefix": "imgs", "presign": presign, "s3_endpoint": moto_s3}
    ls_post(url, token, "/api/storages/s3", {**storage, **creds, "use_blob_urls": True, "title": "moto"})
    uri = f"s3://{bucket}/imgs/z.png"
    ls_post(url, token, f"/api/projects/{project}/import", [{"image": uri}])
    (task,) = ls_tasks(url, token, project)

    # Label Studio redirects to a presigned URL on the S3 host (presign=True) or streams it
    signed = httpx.get(url + presign_path(task["id"], uri), headers={"Authorization": f"Token {token}"})
    assert signed.status_code == (303 if presign else 200)

    if presign:  # the signed URL is on the S3 endpoint, a loopback address here: refused unless allowed
        with ImageCache(cache_dir / "refused", config(None, label_studio_url=url, api_key=token)) as cache:
            with pytest.raises(MediaError, match="address not allowed: 127.0.0.1:.* is a loopback address"):
                cache.get(task["id"], uri)
    s3_host = urlsplit(moto_s3).netloc
    with ImageCache(cache_dir, config(None, label_studio_url=url, api_key=token, allow_hosts=(s3_host,))) as cache:
        got = cache.get(task["id"], uri)
        assert got.downloaded and (got.width, got.height) == (36, 24)
        assert got.path.read_bytes() == body
        assert cache.get(task["id"], uri).downloaded is False
        with pytest.raises(MediaError, match="HTTP"):
            cache.get(task["id"], f"s3://{bucket}/imgs/missing.png")


def test_not_an_image_after_ultralytics_patched_pillow(tmp_path: Path) -> None:
    """Importing ultralytics replaces ``PIL.Image.open`` with a wrapper that tries to install a HEIF
    plugin on unknown files; a non-image is still a plain "not an image" (as in predict workers)."""
    from labelloop.labelstudio.media_image import _decode
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(tmp_path / "yolo")
    import ultralytics.utils.patches  # noqa: F401  (the patch applies on import)

    page = tmp_path / "login.png"
    page.write_bytes(b"<html>please log in</html>")
    with pytest.raises(MediaError, match="not an image"):
        _decode(page)


def test_generated_task_urls_reach_only_label_studio_media_and_allowed_hosts(
    server: Server, cache_dir: Path, network: Network
) -> None:
    """Generated task data values (schemes, internal hosts, Label Studio API paths, traversals,
    encodings) never reach an address other than Label Studio's and the allowed host, never send
    the API key outside Label Studio's media paths, and fail only as MediaError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    with serving() as internal:
        hosts = st.sampled_from(
            [
                f"127.0.0.1:{server.port}",
                f"127.0.0.1:{internal.port}",
                f"localhost:{internal.port}",
                "169.254.169.254",
                "10.0.0.1",
                "[::1]",
                "2130706433",
                "example.invalid",
            ]
        )
        paths = st.one_of(
            st.sampled_from(
                [
                    "/data/upload/1/a.png",
                    "/api/users/",
                    "/api/projects/1/export?exportType=JSON",
                    "/data/upload/../../api/users",
                    "/data/upload/%2e%2e/%2e%2e/api/users",
                    "/data/local-files/?d=../../etc/passwd",
                    "/tasks/1/presign/?fileuri=czM6Ly9iL2sucG5n",
                    "//evil.example/a.png",
                    "/a.png",
                ]
            ),
            st.text(alphabet="/.%2eafpi?=&\\", max_size=20).map(lambda t: "/" + t),
        )
        schemes = st.sampled_from(["http://", "https://", "file://", "ftp://", "s3://", "gopher://", ""])
        urls = st.one_of(paths, st.builds(lambda s, h, p: s + h + p, schemes, hosts, paths), st.text(max_size=30))

        with ImageCache(cache_dir, ls_config(server, retries=0, timeout_s=1.0)) as cache:

            @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
            @given(url=urls)
            def run(url: str) -> None:
                try:
                    cache.get(1, url)
                except MediaError:
                    pass

            run()
    assert internal.hits == []
    assert {port for _host, port in network.connects} <= {server.port}
    for hit in server.hits:
        if hit["auth"] is not None:
            path, _, query = hit["path"].partition("?")
            assert media_path_refusal(path, query) is None, hit["path"]
