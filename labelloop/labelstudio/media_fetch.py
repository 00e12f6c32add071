"""One media download within limits: redirects by hand, a size and a time limit, retries.

``Fetcher.download`` GETs a URL into a file: redirects are followed by hand (at most
``MAX_REDIRECTS``), each hop checked by ``media_guard.HostPolicy`` before it is requested; the
whole download of a hop has ``timeout_s``, the body is refused past ``max_bytes`` while it
streams; connect errors, 5xx and 429 are retried ``retries`` times with exponential backoff
(``backoff_s`` doubled each time, at least a ``Retry-After``, at most 30 s, 0-10 % jitter).
Label Studio's token is added by ``labelloop.labelstudio.auth.LabelStudioAuth`` (to its origin
only; a personal access token is exchanged again once after a 401).
"""

from __future__ import annotations

import contextlib
import email.utils
import random
import threading
import time
from typing import IO
from urllib.parse import urljoin

import httpx
import structlog

from labelloop.labelstudio.auth import LabelStudioAuth, TokenRefreshError
from labelloop.labelstudio.media_guard import AddressRefused, HostPolicy, guarded_client
from labelloop.labelstudio.media_sources import origin, shown
from labelloop.labelstudio.media_types import MediaConfig, MediaError

log = structlog.get_logger(__name__)

MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}


class _Retry(Exception):
    """A transient failure of one attempt (connect error, 5xx, 429)."""

    def __init__(self, reason: str, status: int | None = None, after_s: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.after_s = after_s


class Fetcher:
    """Downloads media URLs through one guarded connection pool (made on first use: its TLS
    setup costs ~20 ms, for nothing when every image is read from disk). Safe to share between
    threads.

    Args:
        config: ``timeout_s``, ``retries``, ``backoff_s``, ``max_bytes``, ``threads`` (pool size),
            ``label_studio_url`` and ``api_key`` (the auth), ``allow_hosts``.
        policy: where requests may go (``HostPolicy(config)`` when None).
    """

    def __init__(self, config: MediaConfig, policy: HostPolicy | None = None) -> None:
        self.config = config
        self.policy = policy or HostPolicy(config)
        base = (config.label_studio_url or "").rstrip("/")
        self.auth = LabelStudioAuth(base, config.api_key) if base and config.api_key else None
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> httpx.Client:
        """The guarded client (``media_guard.guarded_client``), made on first use."""
        with self._lock:
            if self._http is None:
                threads = max(1, self.config.threads)
                self._http = guarded_client(self.policy, threads, self.config.timeout_s, self.auth)
            return self._http

    def close(self) -> None:
        """Close the connection pool (a later download opens a new one)."""
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def download(self, url: str, out: IO[bytes], task_url: str) -> None:
        """GET ``url`` into ``out`` (truncated before each attempt), following redirects by hand.

        A hop to Label Studio's origin must be one of its media paths (it carries the API key);
        any other hop must be on an allowed host, unless Label Studio answered the previous one;
        its addresses are then checked when it connects (``media_guard``).

        Args:
            url: an absolute http(s) URL.
            out: a writable, seekable binary file.
            task_url: the task's own URL, named in messages (without its query string).

        Raises:
            MediaError: a refused host, path or address, an HTTP error status (``status`` set),
                too many redirects, a timeout, a body over ``max_bytes``, a refused token, or
                retries exhausted.
        """
        trusted = False  # the previous hop was Label Studio, whose redirects may go to any host
        for _ in range(MAX_REDIRECTS + 1):
            where = origin(url)
            if where is None:
                raise MediaError(f"unsupported redirect target: {shown(url)} (for {shown(task_url)})")
            to_ls = where == self.policy.ls_origin
            if to_ls:
                refusal = self.policy.ls_refusal(url)
                if refusal is not None:
                    raise MediaError(f"{refusal} (for {shown(task_url)})")
            elif not trusted and not self.policy.allowed(where):
                raise MediaError(f"host not allowed: {where[1]}:{where[2]} (for {shown(task_url)})")
            location = self._get_with_retries(url, out, task_url, to_ls=to_ls)
            if location is None:
                return
            trusted = to_ls
            url = urljoin(url, location)
        raise MediaError(f"more than {MAX_REDIRECTS} redirects for {shown(task_url)}")

    def _get_with_retries(self, url: str, out: IO[bytes], task_url: str, to_ls: bool) -> str | None:
        """One hop with bounded retries; returns the redirect location, or None when the body
        was written to ``out``."""
        attempt = 0
        while True:
            out.seek(0)
            out.truncate()
            try:
                return self._attempt(url, out, task_url, to_ls)
            except _Retry as exc:
                if attempt >= self.config.retries:
                    raise MediaError(
                        f"{exc} for {shown(task_url)} (after {attempt + 1} attempts)", exc.status
                    ) from None
                delay = self.config.backoff_s * (2**attempt)
                delay = min(max(delay, exc.after_s or 0.0), 30.0) * random.uniform(1.0, 1.1)
                log.info("media_retry", url=shown(url), error=str(exc)[:200], delay_s=round(delay, 2))
                time.sleep(delay)
                attempt += 1

    def _attempt(self, url: str, out: IO[bytes], task_url: str, to_ls: bool) -> str | None:
        cfg = self.config
        deadline = time.monotonic() + cfg.timeout_s
        try:
            with self.client.stream("GET", url) as resp:
                status = resp.status_code
                if status in _REDIRECTS:
                    location: str | None = resp.headers.get("location")  # httpx types Headers.get as Any
                    if not location:
                        raise MediaError(f"HTTP {status} without a Location for {shown(task_url)}", status)
                    return location
                if status == 429 or status >= 500:
                    raise _Retry(f"HTTP {status}", status, _retry_after(resp.headers.get("retry-after")))
                if status != 200:
                    hint = " (check LABEL_STUDIO_API_KEY)" if to_ls and status in (401, 403) else ""
                    raise MediaError(f"HTTP {status}{hint} for {shown(task_url)}", status)
                length = resp.headers.get("content-length")
                if length and length.isdigit() and int(length) > cfg.max_bytes:
                    raise MediaError(f"image is larger than {cfg.max_bytes} bytes ({length}): {shown(task_url)}")
                size = 0
                for chunk in resp.iter_bytes():  # as received, so the deadline is checked often
                    size += len(chunk)
                    if size > cfg.max_bytes:
                        raise MediaError(f"image is larger than {cfg.max_bytes} bytes: {shown(task_url)}")
                    if time.monotonic() > deadline:
                        raise MediaError(f"timed out after {cfg.timeout_s:g} s downloading {shown(task_url)}")
                    out.write(chunk)
                return None
        except AddressRefused as exc:
            raise MediaError(f"{exc} (for {shown(task_url)})") from None
        except TokenRefreshError as exc:
            raise MediaError(f"{exc} (for {shown(task_url)})", exc.status) from None
        except (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
            raise _Retry(f"{exc.__class__.__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise MediaError(
                f"timed out after {cfg.timeout_s:g} s ({exc.__class__.__name__}): {shown(task_url)}"
            ) from exc
        except httpx.HTTPError as exc:
            raise MediaError(f"{exc.__class__.__name__}: {exc} for {shown(task_url)}") from exc


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
