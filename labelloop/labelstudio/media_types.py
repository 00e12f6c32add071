"""The records every part of the media path shares: its configuration (``MediaConfig``), what a
cache returns (``CachedImage``) and why an image is unusable (``MediaError``).

The media path (``labelloop.labelstudio.media``) is made of ``media_sources`` (what a task's URL
names), ``media_guard`` (where a request may go), ``media_fetch`` (one download within limits),
``media_store`` (the cache folder) and ``media_image`` (decoding images upright).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labelloop.settings import Settings


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
