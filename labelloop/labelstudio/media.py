"""Fetch the images tasks point at, for dataset builds and predictions: safely, once, upright.

A task's image URL is one of (Label Studio docs: https://labelstud.io/guide/storage,
https://labelstud.io/guide/tasks#Import-data):

- ``/data/upload/<project>/<file>``: a file uploaded to Label Studio; read from disk under
  ``media_dir`` (Label Studio's media folder, ``<LABEL_STUDIO_BASE_DATA_DIR>/media``, when it
  is mounted here), otherwise downloaded from the Label Studio URL with the API key.
- ``/data/local-files/?d=<path>``: a Local Storage file
  (https://labelstud.io/guide/storage#Local-storage); read from disk under
  ``document_root`` (Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``, when it is mounted here),
  otherwise downloaded from Label Studio with the API key.
- ``s3://``, ``gs://``, ``azure-blob://`` URIs of a project's cloud storage; resolved by Label
  Studio's presign endpoint ``GET /tasks/<task_id>/presign/?fileuri=<base64url(uri)>``, which
  redirects (303) to a signed URL, or streams the object itself when the storage has
  presigned URLs turned off.
- ``http(s)://`` URLs: on the Label Studio host (one of the media paths below, sent with the API
  key), or on a host listed in ``allow_hosts`` (sent without it). Any other host is refused
  before a request is made.

Guard rails: redirects are followed by hand (at most 5); a redirect Label Studio answers with
may go to any host (that is how presigned URLs work), any other must stay on allowed hosts.
Every connection goes through ``_GuardedBackend``: the host is resolved once and the socket is
connected to an address of that answer (no second lookup, so no DNS rebinding in between); a
host that is neither Label Studio's origin nor in ``allow_hosts`` (those are trusted to be
internal, e.g. a MinIO on a private network) must resolve to global addresses only: loopback,
private, link-local (cloud metadata, 169.254.169.254), shared (100.64.0.0/10), unspecified,
multicast and reserved ones are refused, IPv4 addresses inside IPv6 ones (``::ffff:a.b.c.d``,
NAT64, 6to4) included. Proxies from the environment and ``.netrc`` are ignored (through a proxy,
the proxy would choose the address). The API key is only ever sent to the Label Studio origin
(scheme, host and port), and there only for its media paths (``MEDIA_PATHS``), checked once
percent-decoded and refused with a ``.``, ``..`` or empty segment; a task path that is not one
of them is refused before any request. Each request has a
timeout for the whole download and a size limit enforced while streaming; connect errors, 5xx
and 429 are retried with exponential backoff. Images are decoded once (Pillow, a fixed list of
raster formats, ``Image.MAX_IMAGE_PIXELS`` as the decompression-bomb limit; a JPEG kept as it is
decodes at 1/8 scale, which still reads and checks all of its compressed data), EXIF orientation
is applied, and the upright image is stored under a name made of the task id and a hash of the
URL, never of task data, with an atomic write (temp file + ``os.replace``). An upload read from
the mounted media folder is hard-linked into the cache when it is on the same filesystem (Label
Studio never rewrites an upload), otherwise copied.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import errno
import hashlib
import ipaddress
import os
import posixpath
import random
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import httpcore
import httpx
import structlog
from PIL import Image, ImageOps, UnidentifiedImageError

from labelloop.labelstudio.cache_pins import Pins, evict, remove_stale_pins

if TYPE_CHECKING:
    from labelloop.settings import Settings

log = structlog.get_logger(__name__)

#: Formats Pillow may open (JPEG includes MPO; never EPS, which runs Ghostscript).
OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
#: Formats stored as downloaded (what Ultralytics reads), with the cache file extension.
KEEP_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
#: Label Studio's cloud storage URI schemes, resolved through its presign endpoint.
CLOUD_SCHEMES = ("s3:", "gs:", "azure-blob:")
MAX_REDIRECTS = 5
EXIF_ORIENTATION = 0x0112
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
#: Part of every cache file name; bumped when what a cache file means changes (version 1 kept
#: the size in a ``.json`` sidecar; its files are never used, so they are fetched again).
CACHE_VERSION = 2
#: Cache file extensions, in the order a lookup tries them.
_CACHE_EXTS = ("jpg", "png", "webp", "bmp", "tif")
#: Label Studio's paths that serve task media, the only ones requested with the API key: (name,
#: path once percent-decoded, query parameter it needs). Label Studio 1.23: ``data_import/urls.py``
#: (uploads; ``/storage-data/uploaded/`` when uploads are kept in cloud storage) and
#: ``io_storages/urls.py`` (Local Storage; cloud URIs resolved by ``/resolve/`` or the older
#: ``/presign/``, for a task or a project).
MEDIA_PATHS = (
    ("upload", re.compile(r"/data/upload/.+"), None),
    ("local-files", re.compile(r"/data/local-files/?"), "d"),
    ("storage-data", re.compile(r"/storage-data/uploaded/?"), "filepath"),
    ("presign", re.compile(r"/(?:tasks|projects)/[0-9]+/(?:presign|resolve)/?"), "fileuri"),
)
_MEDIA_PATHS_SHOWN = (
    "/data/upload/..., /data/local-files/?d=..., /storage-data/uploaded/?filepath=..., "
    "/tasks/<id>/presign/?fileuri=... and /projects/<id>/presign/?fileuri=... (or .../resolve/)"
)


@dataclass(frozen=True)
class MediaConfig:
    """Where task images come from and how they may be fetched.

    Attributes:
        label_studio_url: Label Studio base URL (``http://127.0.0.1:8080``); needed for
            ``/data/...`` paths and cloud URIs. None: only allowed plain URLs and local files.
        api_key: Label Studio legacy token (sent as ``Token <key>``) or personal access token
            (a JWT refresh token, exchanged at ``POST /api/token/refresh/`` for an access token
            sent as ``Bearer <access>``, exchanged again after a 401).
        document_root: Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT`` as mounted on this machine;
            ``/data/local-files/?d=<rel>`` is then read from ``<document_root>/<rel>`` (a path
            that resolves outside the root, symlinks included, is refused; a missing file is
            downloaded from Label Studio instead). ``/`` is ignored.
        media_dir: Label Studio's media folder (``<LABEL_STUDIO_BASE_DATA_DIR>/media``) as
            mounted on this machine; ``/data/upload/<rel>`` is then read from
            ``<media_dir>/upload/<rel>`` (same rules as ``document_root``), which saves Label
            Studio about 10 ms of CPU per image, and hard-linked into the cache when the
            filesystem allows it (else copied).
        allow_hosts: extra hosts plain http(s) URLs may point at: ``host`` (any port) or
            ``host:port``. They are trusted to be internal (a MinIO on a private network): they
            may resolve to loopback or private addresses, which any other host but Label
            Studio's may not, even after a Label Studio redirect.
        timeout_s: limit of one HTTP request, body included (seconds).
        retries: retries of a request after a connect error, a 5xx or a 429.
        threads: concurrent downloads in ``ImageCache.get_many``; reading mounted files and
            decoding run on at most one thread per CPU (more would only wait for the GIL).
        max_bytes: largest image accepted (bytes), checked while streaming.
        backoff_s: first retry delay (seconds); doubles with each retry.
        cache_max_bytes: size cap of the cache folder (bytes; 0: none): ``ImageCache.evict``
            removes the least recently used images above it, never those pinned by a running
            build or linked into a dataset (the cap is a target above that working set).
    """

    label_studio_url: str | None
    api_key: str | None
    document_root: Path | None = None
    media_dir: Path | None = None
    allow_hosts: tuple[str, ...] = ()
    timeout_s: float = 30.0
    retries: int = 3
    threads: int = 8
    max_bytes: int = 100 * 1024 * 1024
    backoff_s: float = 0.5
    cache_max_bytes: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaConfig:
        """The media configuration of labelloop's ``Settings`` (``LABELLOOP_MEDIA_*``,
        ``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``, ``LOCAL_FILES_DOCUMENT_ROOT``)."""
        hosts = tuple(h.strip() for h in settings.media_allow_hosts.split(",") if h.strip())
        return cls(
            label_studio_url=settings.label_studio_url,
            api_key=settings.api_key,
            document_root=settings.local_files_document_root,
            media_dir=settings.label_studio_media_dir,
            allow_hosts=hosts,
            timeout_s=settings.media_timeout_s,
            retries=settings.media_retries,
            threads=settings.media_threads,
            max_bytes=settings.media_max_bytes,
            cache_max_bytes=settings.cache_max_bytes,
        )


@dataclass(frozen=True)
class CachedImage:
    """An image in the cache.

    Attributes:
        path: the upright (EXIF orientation applied) image file in the cache directory (its
            pinned name, a hard link, inside ``ImageCache.pinned``).
        width: width in pixels after EXIF orientation, as the annotator saw it.
        height: height in pixels after EXIF orientation.
        downloaded: False when it came from the cache without fetching.
    """

    path: Path
    width: int
    height: int
    downloaded: bool


class MediaError(Exception):
    """Why a task's image is unusable: an HTTP status, a refused host or path, a timeout, a file
    that is not an image, a decompression bomb, an image over the size limit...

    Attributes:
        status: the HTTP status code when the reason is one, else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _LocalFile:
    """A task's image in a mounted folder: ``path`` resolved and under the folder, ``rel`` as
    the task names it and ``what`` the folder (for messages), ``link`` whether the cache may
    hard-link it."""

    path: Path
    rel: str
    what: str
    link: bool


class _Retry(Exception):
    """A transient failure of one attempt (connect error, 5xx, 429)."""

    def __init__(self, reason: str, status: int | None = None, after_s: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.after_s = after_s


# URL helpers -------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def _host_rule(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a URL -> (host, port or None for any port)."""
    parts = urlsplit(entry if "://" in entry else "//" + entry)
    if not parts.hostname:
        raise ValueError(f"not a host: {entry!r}")
    return parts.hostname.lower(), parts.port


def _shown(url: str) -> str:
    """A URL for messages: no query string (signatures), at most 200 characters."""
    parts = urlsplit(url)
    text = f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path
    if parts.query and not parts.scheme:  # task paths such as /data/local-files/?d=... keep their query
        text += "?" + parts.query
    return text if len(text) <= 200 else text[:197] + "..."


def _is_jwt(token: str) -> bool:
    """True for a personal access token (a JWT), False for a legacy token."""
    try:
        from label_studio_sdk._extensions.label_studio_tools.core.utils.io import is_jwt_well_formed

        return bool(is_jwt_well_formed(token))
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return token.count(".") == 2


def presign_path(task_id: int, uri: str) -> str:
    """Label Studio's presign path for a cloud URI of a task (1.23: ``io_storages/urls.py``;
    ``fileuri`` is base64url, as ``TaskResolveStorageUri`` decodes it)."""
    fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
    return f"/tasks/{int(task_id)}/presign/?fileuri={fileuri}"


def local_files_rel(url: str) -> str:
    """The ``?d=`` path of a ``/data/local-files/`` URL, decoded once, last value winning (as
    Label Studio's ``localfiles_data`` view reads it)."""
    values = parse_qs(urlsplit(url).query, keep_blank_values=True).get("d")
    return values[-1] if values else ""


def media_path_refusal(path: str, query: str = "") -> str | None:
    """Why a request for ``path`` (relative to Label Studio's base URL) must not be sent the API
    key, or None when it is one of Label Studio's media paths (``MEDIA_PATHS``).

    The path is checked as a server would route it, percent-decoded (until it no longer changes,
    so a double-encoded ``%252e%252e`` counts as ``..``), and must have no ``.``, ``..`` or empty
    segment and no backslash: ``/data/upload/../../api/users`` cannot reach the API. Messages
    name the path, never the query.
    """
    decoded = path
    for _ in range(4):
        step = unquote(decoded)
        if step == decoded:
            break
        decoded = step
    else:
        return f"path percent-encoded more than 3 times: {_shown(path)}"
    segments = decoded.split("/")
    if (
        not decoded.startswith("/")
        or "\\" in decoded
        or "\x00" in decoded
        or any(seg in (".", "..") for seg in segments)
        or "" in segments[1:-1]
    ):
        return f"path escapes Label Studio's media paths ('.', '..' or empty segment once decoded): {_shown(path)}"
    for name, pattern, param in MEDIA_PATHS:
        if pattern.fullmatch(decoded):
            if param is not None and param not in parse_qs(query, keep_blank_values=True):
                return f"{name} URL has no ?{param}=: {_shown(path)}"
            return None
    return (
        f"not a Label Studio media path, so it is not requested with the API key (allowed: {_MEDIA_PATHS_SHOWN}): "
        + _shown(path)
    )


# Addresses -----------------------------------------------------------------------------------

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598), not global
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)  # AWS, GCP, Azure, OpenStack; AWS over IPv6; Alibaba Cloud


def _internal_reason(address: str) -> str | None:
    """Why ``address`` (an IP address, IPv6 zone allowed) is internal ("a loopback address", "a
    private address", "a link-local address", ...), or None for a global unicast address. An
    IPv4 address carried in an IPv6 one (IPv4-mapped, NAT64, 6to4) is judged as that IPv4
    address."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        else:
            ip = ip.ipv4_mapped or ip.sixtofour or ip
    if ip in _METADATA:
        return "a cloud metadata service address"
    for flag, reason in (
        ("loopback", "a loopback address"),
        ("link_local", "a link-local address"),
        ("unspecified", "the unspecified address"),
        ("multicast", "a multicast address"),  # is_global is True for some of them
        ("reserved", "a reserved address"),
        ("private", "a private address"),
    ):
        if getattr(ip, "is_" + flag):
            return reason
    if ip in _SHARED:
        return "in the shared address space 100.64.0.0/10"
    return None if ip.is_global else "not a global address"


def _resolve(host: str, port: int) -> list[str]:
    """The IP addresses of ``host``, in the resolver's order, from one ``getaddrinfo`` (an IP
    literal is returned as it is, without a lookup).

    Raises:
        httpcore.ConnectError: the name does not resolve (retried like any connect error).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and str(sockaddr[0]) not in addresses:
            addresses.append(str(sockaddr[0]))
    return addresses


class _AddressRefused(MediaError):
    """A connection refused by ``_GuardedBackend`` (never retried)."""


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend with the address check done where the socket is connected.

    httpcore hands ``connect_tcp`` the host name of the URL; this backend resolves it once
    (``_resolve``), refuses it when ``may_be_internal(host, port)`` is False and any of its
    addresses is internal (``_internal_reason``), and connects to those same addresses, in order.
    Checking here rather than before the request means that the address checked is the address
    connected to (a name cannot resolve to a public address for the check and to 127.0.0.1 for
    the connection), for every connection a pool opens, retries included, while the URL, the
    ``Host`` header, TLS SNI and certificate checks keep the host name, and pooled connections
    stay keyed by it. (Rewriting the URL to the IP with ``sni_hostname`` would key the pool by
    IP: a TLS connection verified for one name could then carry requests for another.)
    """

    def __init__(self, may_be_internal: Callable[[str, int], bool]) -> None:
        self._inner = httpcore.SyncBackend()
        self._may_be_internal = may_be_internal

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _resolve(host, port)
        if not self._may_be_internal(host, port):
            for address in addresses:
                reason = _internal_reason(address)
                if reason is not None:
                    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    what = f"is {reason}" if address == host else f"resolves to {address}, {reason}"
                    raise _AddressRefused(
                        f"address not allowed: {where} {what}; only Label Studio's origin and the hosts "
                        "in LABELLOOP_MEDIA_ALLOW_HOSTS may be internal"
                    )
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - image URLs are never Unix sockets
        raise httpcore.ConnectError("Unix sockets are not used for task images")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport (requests, responses, exception mapping) on a connection pool whose
    sockets come from ``_GuardedBackend``.

    ``httpx.HTTPTransport`` takes no network backend, so the pool it builds is replaced by one
    built with the same arguments plus the backend; if httpx ever stops keeping its pool in
    ``_pool``, this fails here rather than running unguarded.
    """

    def __init__(self, backend: _GuardedBackend, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError("httpx.HTTPTransport has no _pool: cannot install the media address guard")
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


# Label Studio authentication ----------------------------------------------------------------


class _LabelStudioAuth:
    """The Authorization header for Label Studio; exchanges a personal access token for an
    access token (``POST /api/token/refresh/``) and again when Label Studio answers 401."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self._jwt: bool | None = None
        self._access: str | None = None
        self._lock = threading.Lock()

    @property
    def jwt(self) -> bool:
        """True for a personal access token; found out on first use (the check imports a part of
        the SDK that takes ~80 ms, for nothing when every image is read from disk)."""
        if self._jwt is None:
            self._jwt = bool(self.api_key) and _is_jwt(self.api_key or "")
        return self._jwt

    def header(self, client: httpx.Client, timeout_s: float) -> dict[str, str]:
        if not self.api_key:
            return {}
        if not self.jwt:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if self._access is None:
                self._access = self._exchange(client, timeout_s)
            return {"Authorization": f"Bearer {self._access}"}

    def renew(self, used: dict[str, str]) -> bool:
        """Forget the access token that got a 401; True when a new one will be fetched."""
        if not self.jwt:
            return False
        with self._lock:
            if used.get("Authorization") == f"Bearer {self._access}":
                self._access = None
        return True

    def _exchange(self, client: httpx.Client, timeout_s: float) -> str:
        try:
            resp = client.post(self.base_url + "/api/token/refresh/", json={"refresh": self.api_key}, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise MediaError(f"Label Studio token refresh failed: {exc.__class__.__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise MediaError(
                f"Label Studio refused the personal access token (token refresh: HTTP {resp.status_code})",
                resp.status_code,
            )
        access = resp.json().get("access") if "json" in resp.headers.get("content-type", "") else None
        if not isinstance(access, str) or not access:
            raise MediaError("Label Studio token refresh returned no access token")
        return access


# The cache ---------------------------------------------------------------------------------


class ImageCache:
    """Task images fetched once into ``cache_dir`` and kept upright.

    Files: ``<task_id>-<sha1(url)[:16]>-v<CACHE_VERSION>.<ext>`` (``ext`` from the decoded
    format: jpg, png, webp, bmp, tif), put in place by ``os.replace`` once decoded, so a file
    under that name is always a whole, valid, upright image; a lookup reads the size from its
    header. Temp files are written in ``<cache_dir>/.tmp`` (the same filesystem); those a
    killed process left there are removed a day later, when a cache is opened. Safe to share
    between threads and processes.

    With ``config.cache_max_bytes`` the folder is kept under that size, least recently used
    first: a lookup that hits sets the file's access time (only that: a hard link shares its
    inode with the upload), and ``evict`` runs when a cache is opened and after every tenth of
    the cap stored since. An evicted image is fetched again when next needed. Only images no
    one else holds are evicted: those a running build pinned (``pinned``) or a dataset links
    stay, so the cap is a target above that working set (``labelloop.labelstudio.cache_pins``).

    Args:
        cache_dir: created when missing.
        config: sources, credentials and limits.
    """

    def __init__(self, cache_dir: Path, config: MediaConfig) -> None:
        self.cache_dir = Path(cache_dir)
        self._tmp_dir = self.cache_dir / ".tmp"
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self._ls_origin = _origin(config.label_studio_url) if config.label_studio_url else None
        if config.label_studio_url and self._ls_origin is None:
            raise ValueError(f"label_studio_url must be an http(s) URL: {config.label_studio_url!r}")
        self._ls_base = (config.label_studio_url or "").rstrip("/")
        self._ls_path = urlsplit(self._ls_base).path  # a base path ("/ls") media paths follow
        self._hosts = [_host_rule(h) for h in config.allow_hosts]
        root = Path(config.document_root).resolve() if config.document_root else None
        if root is not None and root == Path(root.anchor):
            log.warning("media_document_root_ignored", document_root=str(root), reason="it would expose every file")
            root = None
        self._root = root
        media = Path(config.media_dir).resolve() / "upload" if config.media_dir else None
        self._uploads = media if media is not None and media != Path(media.anchor) else None
        self._auth = _LabelStudioAuth(self._ls_base, config.api_key) if self._ls_base else None
        self._http: httpx.Client | None = None  # made on first download (its TLS setup costs ~20 ms)
        self._http_lock = threading.Lock()
        self._link_refused = False  # logged once
        # Decoding and reading mounted files is CPU work: more threads than CPUs doing it only
        # fight over the GIL (downloads, which mostly wait, are not limited by it).
        self._cpu = threading.BoundedSemaphore(_cpu_count())
        self._remove_stale_parts()
        self._stored_lock = threading.Lock()
        self._stored = 0  # bytes stored since the last evict
        self._pins: Pins | None = None
        if config.cache_max_bytes:
            self.evict()

    @property
    def _client(self) -> httpx.Client:
        with self._http_lock:
            if self._http is None:
                threads = max(1, self.config.threads)
                limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
                self._http = httpx.Client(
                    transport=_GuardedTransport(_GuardedBackend(self._may_be_internal), limits),
                    timeout=httpx.Timeout(self.config.timeout_s),
                    follow_redirects=False,
                    trust_env=False,  # no proxy from the environment (it would pick the address), no .netrc
                    headers={"User-Agent": "labelloop-media/1", "Accept-Encoding": "identity"},
                )
            return self._http

    def close(self) -> None:
        """Close the HTTP connection pool."""
        with self._http_lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Pin every image this cache returns until the block ends (``labelloop.labelstudio.cache_pins``): no
        eviction, in this process or another, can remove them meanwhile, and ``CachedImage.path``
        is then the pinned name. For a build, from its downloads until they are linked into the
        dataset. Nested blocks share the outer one's pins.
        """
        if self._pins is not None:
            yield
            return
        self._pins = Pins(self.cache_dir)
        try:
            yield
        finally:
            pins, self._pins = self._pins, None
            pins.close()

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Public --------------------------------------------------------------------------------

    def get(self, task_id: int, url: str) -> CachedImage:
        """The image of ``task_id`` at ``url``, from the cache or fetched now.

        Args:
            task_id: Label Studio task id (an integer; part of the cache key, and of the
                presign path of cloud URIs).
            url: the task's image value (``/data/upload/...``, ``/data/local-files/?d=...``,
                ``s3://``/``gs://``/``azure-blob://``, ``http(s)://``).

        Returns:
            the cached upright image; ``downloaded`` is False when nothing was fetched.

        Raises:
            MediaError: the image cannot be used (refused host or path, HTTP error, timeout,
                too large, not an image, decompression bomb...).
            OSError: the cache directory cannot be written.
        """
        tid = int(task_id)
        url = (url or "").strip()
        key = f"{tid}-{hashlib.sha1(url.encode()).hexdigest()[:16]}-v{CACHE_VERSION}"
        with self._cpu:
            hit = self._lookup(key)
            if hit is not None:
                return hit
            source = self._locate(tid, url)
            if isinstance(source, _LocalFile):
                return self._store_local(key, source)
        with self._temp(".part") as (raw, fh):
            self._download(source, fh, url)
            fh.close()
            with self._cpu:
                return self._store(key, raw)

    def get_many(
        self, items: list[tuple[int, str]], on_done: Callable[[], None] | None = None
    ) -> dict[int, CachedImage | MediaError]:
        """Fetch many task images with ``config.threads`` threads (at most one per CPU at a
        time reading mounted files and decoding) and one connection pool.

        Args:
            items: ``(task_id, url)`` pairs.
            on_done: called once per item, fetched or not (e.g. to advance a progress bar).

        Returns:
            task id -> cached image, or the MediaError that makes it unusable. Never raises for
            one image: any other failure is returned as a MediaError too.
        """

        def one(item: tuple[int, str]) -> tuple[int, CachedImage | MediaError]:
            task_id, url = item
            try:
                return task_id, self.get(task_id, url)
            except MediaError as exc:
                return task_id, exc
            except Exception as exc:  # a bad image skips its task, it never fails the batch
                log.warning("media_unexpected_error", task_id=task_id, error=repr(exc)[:300])
                return task_id, MediaError(f"{exc.__class__.__name__}: {exc}")
            finally:
                if on_done is not None:
                    on_done()

        if not items:
            return {}
        with ThreadPoolExecutor(max_workers=max(1, min(self.config.threads, len(items)))) as pool:
            return dict(pool.map(one, items))

    def for_tasks(self, tasks: list[dict[str, Any]], value_key: str) -> list[CachedImage | MediaError | None]:
        """Each task's image (the URL in ``task["data"][value_key]``; tasks as Label Studio sends
        them, ``{"id", "data"}``), in task order, fetched together by ``get_many``; None for a task
        whose data has no URL there."""
        items = [(int(t["id"]), str((t.get("data") or {}).get(value_key, ""))) for t in tasks]
        got = self.get_many([it for it in items if it[1]])
        return [got.get(task_id) for task_id, _ in items]

    # Cache files ---------------------------------------------------------------------------

    def _lookup(self, key: str) -> CachedImage | None:
        """The cached image ``key`` names, its size read from its header; None when absent."""
        base = os.path.join(self.cache_dir, key)
        for ext in _CACHE_EXTS:
            try:
                fh = open(f"{base}.{ext}", "rb")  # a miss costs one failed open per extension
            except FileNotFoundError:
                continue
            try:
                with fh, _pillow_open()(fh, formats=OPEN_FORMATS) as im:
                    if self.config.cache_max_bytes:
                        with contextlib.suppress(OSError):  # recently used: the LRU order
                            os.utime(fh.fileno(), ns=(time.time_ns(), os.fstat(fh.fileno()).st_mtime_ns))
                    size = im.width, im.height
            except Exception:  # damaged in place by someone else: fetched again and replaced
                return None
            path = Path(f"{base}.{ext}")
            if self._pins is not None:
                try:
                    path = self._pins.link(path, path.name)
                except FileNotFoundError:  # evicted since it was opened: fetched again
                    return None
            return CachedImage(path, *size, downloaded=False)
        return None

    @contextlib.contextmanager
    def _temp(self, suffix: str) -> Iterator[tuple[Path, IO[bytes]]]:
        """A new temp file in the temp folder, removed unless it was renamed."""
        fd, name = tempfile.mkstemp(dir=self._tmp_dir, prefix=".part-", suffix=suffix)
        path = Path(name)
        fh = os.fdopen(fd, "wb")
        try:
            yield path, fh
        finally:
            fh.close()
            path.unlink(missing_ok=True)

    def _remove_stale_parts(self, age_s: float = 24 * 3600) -> None:
        """Temp files of processes killed mid-download (the change time counts: a hard link to
        an old upload keeps its old modification time)."""
        cutoff = time.time() - age_s
        with os.scandir(self._tmp_dir) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if max(info.st_mtime, info.st_ctime) < cutoff:
                        os.unlink(entry.path)
        remove_stale_pins(self.cache_dir, age_s)

    def _store(self, key: str, raw: Path) -> CachedImage:
        """Decode ``raw`` (a temp file of this cache), apply EXIF orientation and put the result
        in place: ``raw`` itself when it is kept as it is, else the re-encoded image."""
        fmt, _, (width, height), upright = _decode(raw)
        pinned: Path | None = None
        if upright is None:
            final = self.cache_dir / f"{key}.{KEEP_FORMATS[fmt]}"
            if self._pins is not None:  # before it can be evicted under its cache name
                pinned = self._pins.link(raw, final.name)
            os.replace(raw, final)  # the original bytes, not re-encoded
        else:
            ext, write = _encoder(upright, "jpg" if fmt in ("JPEG", "MPO") else "png")
            final = self.cache_dir / f"{key}.{ext}"
            with self._temp("." + ext) as (tmp, fh):
                try:
                    write(fh)
                except (ValueError, KeyError, TypeError) as exc:  # OSError (disk) propagates
                    raise MediaError(f"cannot re-encode the upright image: {exc}") from exc
                fh.close()
                if self._pins is not None:
                    pinned = self._pins.link(tmp, final.name)
                os.replace(tmp, final)
        self._account(final)
        return CachedImage(pinned or final, width, height, downloaded=True)

    def _account(self, path: Path) -> None:
        """Count a stored file; evict once a tenth of the cap was stored since the last time."""
        cap = self.config.cache_max_bytes
        if not cap:
            return
        with contextlib.suppress(OSError):
            info = path.stat()
            # Used now: a hard link to an old upload would otherwise carry its old access time.
            os.utime(path, ns=(time.time_ns(), info.st_mtime_ns))
            with self._stored_lock:
                self._stored += info.st_size
                due = self._stored >= max(1, cap // 10)
                if due:
                    self._stored = 0
            if due:
                self.evict()

    def evict(self) -> tuple[int, int]:
        """Remove the least recently used images that only the cache holds until the folder is at
        most ``config.cache_max_bytes``; images pinned by a running build or linked into a dataset
        are never removed (``labelloop.labelstudio.cache_pins.evict``). Returns (files, bytes) removed; a no-op
        without a cap.
        """
        return evict(self.cache_dir, self.config.cache_max_bytes)

    def _store_local(self, key: str, src: _LocalFile) -> CachedImage:
        """Store a file of a mounted folder: hard-linked to a temp name when it may be and the
        filesystem lets it (no copy, no new file), else copied; then decoded and put in place
        like a download. The size limit applies to what was linked or copied.

        A JPEG with bytes after its end marker is copied: Ultralytics "restores" such a file when
        it checks a dataset, and many of its versions rewrite it in place, which would rewrite
        the upload itself through the hard links (upload, cache file, dataset image).
        """
        limit = self.config.max_bytes
        tmp = self._link_temp(src.path) if src.link else None
        if tmp is not None:
            try:
                info = os.lstat(tmp)
                if not stat.S_ISREG(info.st_mode):  # swapped for a symlink since it was resolved
                    raise MediaError(f"not a regular file under {src.what}: {src.rel!r}")
                if info.st_size > limit:
                    raise MediaError(f"image is larger than {limit} bytes: {src.rel!r}")
                if not _jpeg_with_trailer(tmp, info.st_size):
                    return self._store(key, tmp)
            finally:
                tmp.unlink(missing_ok=True)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        with self._temp(".part") as (raw, fh):
            try:
                fd = os.open(src.path, flags)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                raise MediaError(f"not a regular file under {src.what}: {src.rel!r}") from None
            with open(fd, "rb") as source:
                if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                    raise MediaError(f"not a regular file under {src.what}: {src.rel!r}")
                shutil.copyfileobj(source, fh, _CHUNK)
            if fh.tell() > limit:  # it grew since it was checked
                raise MediaError(f"image is larger than {limit} bytes: {src.rel!r}")
            fh.close()
            return self._store(key, raw)

    def _link_temp(self, src: Path) -> Path | None:
        """A new hard link to ``src`` in the temp folder; None when it cannot be made (another
        filesystem, hard links not allowed by ``fs.protected_hardlinks`` or the filesystem,
        ``src`` gone...): the file is then copied."""
        for _ in range(3):
            tmp = self._tmp_dir / f".link-{os.urandom(8).hex()}"
            try:
                os.link(src, tmp, follow_symlinks=False)
                return tmp
            except FileExistsError:
                continue
            except (OSError, NotImplementedError) as exc:
                if not self._link_refused and not isinstance(exc, FileNotFoundError):
                    self._link_refused = True
                    code = errno.errorcode.get(getattr(exc, "errno", None) or 0, exc.__class__.__name__)
                    log.info("media_link_refused", source=str(src.parent), reason=code, fallback="copy")
                return None
        return None

    # Sources -------------------------------------------------------------------------------

    def _locate(self, task_id: int, url: str) -> _LocalFile | str:
        """Where the bytes ``url`` names are: a file of a mounted folder, or the URL to download."""
        if not url:
            raise MediaError("task has no image URL")
        if url.startswith(("upload/", "/upload/")):  # older exports store the upload key itself
            url = "/data/" + url.lstrip("/")
        low = url.lower()
        if low.startswith(CLOUD_SCHEMES):
            return self._ls_url(presign_path(task_id, url), url)
        if url.startswith("/"):
            path, _, query = url.split("#", 1)[0].partition("?")
            refusal = media_path_refusal(path, query)
            if refusal is not None:
                raise MediaError(refusal)
            local = None
            if url.startswith("/data/local-files"):
                local = self._read_local(url)
            elif url.startswith("/data/upload/"):
                local = self._read_upload(url)
            return local if local is not None else self._ls_url(url, url)
        origin = _origin(url)
        if origin is None:
            raise MediaError(f"unsupported image URL (not http(s), /data/..., or a cloud URI): {_shown(url)}")
        if origin == self._ls_origin:
            path = urlsplit(url).path
            local = None
            if path.startswith("/data/local-files"):
                local = self._read_local(url)
            elif path.startswith("/data/upload/"):
                local = self._read_upload(path)
            if local is not None:
                return local
        return url

    def _ls_url(self, path: str, task_url: str) -> str:
        if not self._ls_base:
            raise MediaError(f"LABEL_STUDIO_URL is needed to fetch {_shown(task_url)}")
        return self._ls_base + path

    def _read_local(self, url: str) -> _LocalFile | None:
        """A Local Storage file under ``document_root``; None when it is not there (then Label
        Studio serves it). A ``?d=`` path that climbs out of the root is refused with or without
        a document root, before any request. Copied, never linked: files there are the user's,
        and may be rewritten in place."""
        rel = local_files_rel(url)
        if not rel:
            raise MediaError(f"local-files URL has no ?d= path: {_shown(url)}")
        if "\x00" in rel:
            raise MediaError("local-files path contains a NUL byte")
        # The view's own normalization: "?d=" is always relative to the root
        norm = posixpath.normpath(rel).lstrip("/")
        if norm == ".." or norm.startswith("../"):
            raise MediaError(f"local-files path escapes the document root: {rel!r}")
        if self._root is None:
            return None
        return self._under(self._root, norm, rel, "the document root", link=False)

    def _read_upload(self, url: str) -> _LocalFile | None:
        """An uploaded file under ``media_dir``; None when no media folder is mounted or the file
        is not there (then Label Studio serves it). Label Studio never rewrites an upload (a new
        one gets a new name), so it may be hard-linked."""
        if self._uploads is None:
            return None
        rel = unquote(urlsplit(url).path[len("/data/upload/") :])
        norm = posixpath.normpath(rel).lstrip("/")
        if "\x00" in rel or norm == ".." or norm.startswith("../"):
            raise MediaError(f"upload path escapes the media folder: {rel!r}")
        return self._under(self._uploads, norm, rel, "the media folder", link=True)

    def _under(self, root: Path, norm: str, rel: str, what: str, link: bool) -> _LocalFile | None:
        """``norm`` (normalized, relative, no ``..``) as a file under ``root`` (resolved).

        Each component is checked with ``lstat``: without a symlink on the way, the path is
        its own resolved path. A symlink makes it resolved in full and checked to be under
        ``root`` (then it may be followed, as Label Studio would).
        """
        path = str(root)
        info: os.stat_result | None = None
        for part in norm.split("/"):
            path = os.path.join(path, part)
            try:
                info = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                info = None
                break
            if stat.S_ISLNK(info.st_mode):
                candidate = (root / norm).resolve()
                if not candidate.is_relative_to(root):
                    raise MediaError(f"path escapes {what}: {rel!r}")
                path = str(candidate)
                try:
                    info = os.stat(path)
                except (FileNotFoundError, NotADirectoryError):
                    info = None
                break
        if info is None or not stat.S_ISREG(info.st_mode):
            if self._ls_base:
                return None
            raise MediaError(f"file not found under {what}: {rel!r}")
        if info.st_size > self.config.max_bytes:
            raise MediaError(f"image is larger than {self.config.max_bytes} bytes: {rel!r}")
        return _LocalFile(Path(path), rel, what, link)

    # HTTP ----------------------------------------------------------------------------------

    def _allowed(self, origin: tuple[str, str, int]) -> bool:
        if origin == self._ls_origin:
            return True
        return any(host == origin[1] and (port is None or port == origin[2]) for host, port in self._hosts)

    def _may_be_internal(self, host: str, port: int) -> bool:
        """True for Label Studio's host and port and the hosts in ``allow_hosts``: those may
        resolve to internal addresses (``_GuardedBackend`` asks, for every connection)."""
        host = host.lower()
        if self._ls_origin is not None and (host, port) == self._ls_origin[1:]:
            return True
        return any(h == host and (p is None or p == port) for h, p in self._hosts)

    def _ls_refusal(self, url: str) -> str | None:
        """Why ``url``, on Label Studio's origin, must not be requested with the API key."""
        parts = urlsplit(url)
        if not (parts.path + "/").startswith(self._ls_path + "/"):
            return f"not under Label Studio's base path {self._ls_path}: {_shown(url)}"
        return media_path_refusal(parts.path[len(self._ls_path) :], parts.query)

    def _download(self, url: str, out: IO[bytes], task_url: str) -> None:
        """GET ``url`` into ``out``, following redirects by hand. A hop to Label Studio's origin
        must be one of its media paths (it carries the API key); any other hop must be on an
        allowed host, unless Label Studio answered the previous one; its addresses are then
        checked when it connects (``_GuardedBackend``)."""
        trusted = False  # the previous hop was Label Studio, whose redirects may go to any host
        for _ in range(MAX_REDIRECTS + 1):
            origin = _origin(url)
            if origin is None:
                raise MediaError(f"unsupported redirect target: {_shown(url)} (for {_shown(task_url)})")
            to_ls = origin == self._ls_origin
            if to_ls:
                refusal = self._ls_refusal(url)
                if refusal is not None:
                    raise MediaError(f"{refusal} (for {_shown(task_url)})")
            elif not trusted and not self._allowed(origin):
                raise MediaError(f"host not allowed: {origin[1]}:{origin[2]} (for {_shown(task_url)})")
            location = self._get_with_retries(url, out, task_url, to_ls=to_ls)
            if location is None:
                return
            trusted = to_ls
            url = urljoin(url, location)
        raise MediaError(f"more than {MAX_REDIRECTS} redirects for {_shown(task_url)}")

    def _get_with_retries(self, url: str, out: IO[bytes], task_url: str, to_ls: bool) -> str | None:
        """One hop with bounded retries; returns the redirect location, or None when the body
        was written to ``out``."""
        renewed = False
        attempt = 0
        while True:
            out.seek(0)
            out.truncate()
            try:
                return self._attempt(url, out, task_url, to_ls)
            except _Retry as exc:
                if exc.status == 401:  # an expired access token: exchange it again, once
                    if renewed:
                        raise MediaError(
                            f"HTTP 401 from Label Studio (check LABEL_STUDIO_API_KEY) for {_shown(task_url)}", 401
                        ) from None
                    renewed = True
                    continue
                if attempt >= self.config.retries:
                    raise MediaError(
                        f"{exc} for {_shown(task_url)} (after {attempt + 1} attempts)", exc.status
                    ) from None
                delay = self.config.backoff_s * (2**attempt)
                delay = min(max(delay, exc.after_s or 0.0), 30.0) * random.uniform(1.0, 1.1)
                log.info("media_retry", url=_shown(url), error=str(exc)[:200], delay_s=round(delay, 2))
                time.sleep(delay)
                attempt += 1

    def _attempt(self, url: str, out: IO[bytes], task_url: str, to_ls: bool) -> str | None:
        cfg = self.config
        headers = self._auth.header(self._client, cfg.timeout_s) if (to_ls and self._auth) else {}
        deadline = time.monotonic() + cfg.timeout_s
        try:
            with self._client.stream("GET", url, headers=headers) as resp:
                status = resp.status_code
                if status in _REDIRECTS:
                    location: str | None = resp.headers.get("location")  # httpx types Headers.get as Any
                    if not location:
                        raise MediaError(f"HTTP {status} without a Location for {_shown(task_url)}", status)
                    return location
                if status == 401 and to_ls and self._auth is not None and self._auth.renew(headers):
                    raise _Retry("HTTP 401", 401)
                if status == 429 or status >= 500:
                    raise _Retry(f"HTTP {status}", status, _retry_after(resp.headers.get("retry-after")))
                if status != 200:
                    hint = " (check LABEL_STUDIO_API_KEY)" if to_ls and status in (401, 403) else ""
                    raise MediaError(f"HTTP {status}{hint} for {_shown(task_url)}", status)
                length = resp.headers.get("content-length")
                if length and length.isdigit() and int(length) > cfg.max_bytes:
                    raise MediaError(f"image is larger than {cfg.max_bytes} bytes ({length}): {_shown(task_url)}")
                size = 0
                for chunk in resp.iter_bytes():  # as received, so the deadline is checked often
                    size += len(chunk)
                    if size > cfg.max_bytes:
                        raise MediaError(f"image is larger than {cfg.max_bytes} bytes: {_shown(task_url)}")
                    if time.monotonic() > deadline:
                        raise MediaError(f"timed out after {cfg.timeout_s:g} s downloading {_shown(task_url)}")
                    out.write(chunk)
                return None
        except _AddressRefused as exc:
            raise MediaError(f"{exc} (for {_shown(task_url)})") from None
        except (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
            raise _Retry(f"{exc.__class__.__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise MediaError(
                f"timed out after {cfg.timeout_s:g} s ({exc.__class__.__name__}): {_shown(task_url)}"
            ) from exc
        except httpx.HTTPError as exc:
            raise MediaError(f"{exc.__class__.__name__}: {exc} for {_shown(task_url)}") from exc


def _jpeg_with_trailer(path: Path, size: int) -> bool:
    """True for a file of ``size`` bytes that starts as a JPEG but does not end with its
    end-of-image marker."""
    if size < 4:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.read(fd, 2) != b"\xff\xd8":
            return False
        os.lseek(fd, size - 2, os.SEEK_SET)
        return os.read(fd, 2) != b"\xff\xd9"
    finally:
        os.close(fd)


def _cpu_count() -> int:
    """CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _encoder(im: Image.Image, ext: str) -> tuple[str, Callable[[IO[bytes]], None]]:
    """How to write a re-encoded image: JPEG (quality 95, EXIF without orientation, ICC
    profile kept) or PNG (lossless)."""
    icc = im.info.get("icc_profile")
    if ext == "jpg":
        out = im if im.mode in ("RGB", "L", "CMYK") else im.convert("RGB")
        exif = out.getexif()
        exif.pop(EXIF_ORIENTATION, None)

        def jpeg(fh: IO[bytes]) -> None:
            out.save(fh, "JPEG", quality=95, exif=exif.tobytes(), icc_profile=icc)

        return "jpg", jpeg
    png = im if im.mode in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA") else im.convert("RGBA")

    def write_png(fh: IO[bytes]) -> None:
        png.save(fh, "PNG", icc_profile=icc)

    return "png", write_png


def _pillow_open() -> Callable[..., Image.Image]:
    """Pillow's own ``Image.open``: importing ultralytics replaces it with a wrapper that, on a
    file Pillow cannot identify, tries to install and import a HEIF plugin (pi-heif)."""
    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    return original if callable(original) else Image.open


def _decode(raw: Path) -> tuple[str, int, tuple[int, int], Image.Image | None]:
    """Decode a fetched file: (format, EXIF orientation, upright (width, height), the upright
    image to encode, or None when the file can be kept as it is).

    A JPEG kept as it is (orientation 1) is decoded at 1/8 scale (libjpeg's DCT scaling,
    Pillow's ``draft``): every byte of its compressed data is still read and checked, so a
    truncated or corrupt one fails as in a full decode, in about half the time. Any other
    file is decoded fully.

    Raises:
        MediaError: not an image of ``OPEN_FORMATS``, corrupt or truncated, or over
            ``Image.MAX_IMAGE_PIXELS`` pixels (Pillow's decompression-bomb limit; over it is an
            error here, not a warning).
    """
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with _pillow_open()(raw, formats=OPEN_FORMATS) as im:
            if limit and im.width * im.height > limit:
                raise MediaError(f"decompression bomb: {im.width}x{im.height} pixels is over {limit}")
            fmt, size = str(im.format), im.size
            jpeg = fmt in ("JPEG", "MPO")
            orientation = _orientation(im) if jpeg else 1  # a JPEG's EXIF comes with its header
            if jpeg and orientation == 1:
                im.draft(None, (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()  # a truncated or corrupt file fails here, not in training
                return fmt, 1, size, None
            im.load()  # (a PNG's EXIF may follow its pixels: read after them)
            if not jpeg:
                orientation = _orientation(im)
            if orientation == 1 and fmt in KEEP_FORMATS:
                return fmt, 1, size, None
            upright = ImageOps.exif_transpose(im) if orientation != 1 else im.copy()
            return fmt, orientation, upright.size, upright
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise MediaError(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise MediaError("not an image (or not one of " + ", ".join(OPEN_FORMATS) + ")") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error... on broken files
        raise MediaError(f"corrupt image: {exc.__class__.__name__}: {exc}") from exc


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent, invalid or unreadable (the pixels are fine)."""
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # broken EXIF blocks are common in camera files
        return 1
    return value if 1 <= value <= 8 else 1


def _retry_after(value: str | None) -> float | None:
    """Seconds of a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None
