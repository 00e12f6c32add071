"""Fetch the images tasks point at, for dataset builds and predictions: safely, once, upright.

``ImageCache`` composes the media path, one concern per module:

- ``media_sources``: what a task's URL names (an upload, a Local Storage file, a cloud URI
  through Label Studio's presign endpoint, an http(s) URL) and the files of mounted Label Studio
  folders, read without asking Label Studio;
- ``media_guard``: where a request may go (Label Studio's media paths with the API key, allowed
  hosts without it, addresses checked where the socket connects);
- ``media_fetch``: one download, redirects by hand, size and time limits, retries; the token by
  ``labelloop.labelstudio.auth.LabelStudioAuth``;
- ``media_store``: the cache folder (atomic files, pins, eviction), with ``media_image`` deciding
  how an image is kept (decoded once, EXIF orientation applied, re-encoded when needed);
- ``media_types``: ``MediaConfig``, ``CachedImage`` and ``MediaError``, re-exported here.

``labelloop.labelstudio.video_media.VideoCache`` is the same cache with a video codec.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from labelloop.labelstudio.media_fetch import MAX_REDIRECTS, Fetcher
from labelloop.labelstudio.media_guard import HostPolicy
from labelloop.labelstudio.media_image import EXIF_ORIENTATION, KEEP_FORMATS, OPEN_FORMATS, ImageCodec
from labelloop.labelstudio.media_sources import (
    CLOUD_SCHEMES,
    MEDIA_PATHS,
    LocalFile,
    Sources,
    local_files_rel,
    media_path_refusal,
    presign_path,
)
from labelloop.labelstudio.media_store import Codec, Store
from labelloop.labelstudio.media_types import CachedImage, MediaConfig, MediaError
from labelloop.ls_json import Task

__all__ = [
    "CACHE_VERSION",
    "CLOUD_SCHEMES",
    "EXIF_ORIENTATION",
    "KEEP_FORMATS",
    "MAX_REDIRECTS",
    "MEDIA_PATHS",
    "OPEN_FORMATS",
    "CachedImage",
    "ImageCache",
    "MediaConfig",
    "MediaError",
    "local_files_rel",
    "media_path_refusal",
    "presign_path",
]

log = structlog.get_logger(__name__)

#: Part of every cache file name; bumped when what a cache file means changes (version 1 kept
#: the size in a ``.json`` sidecar; its files are never used, so they are fetched again).
CACHE_VERSION = 2


def _cpu_count() -> int:
    """CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


class ImageCache:
    """Task images fetched once into ``cache_dir`` and kept upright.

    Files: ``<task_id>-<sha1(url)[:16]>-v<CACHE_VERSION>.<ext>`` (``ext`` from the decoded
    format: jpg, png, webp, bmp, tif; ``media_store`` for how they are written, pinned and
    evicted), named after the task id and a hash of the URL, never after task data. Safe to
    share between threads and processes.

    Made of ``sources`` (``media_sources.Sources``), ``fetcher`` (``media_fetch.Fetcher``) and
    ``store`` (``media_store.Store`` with ``codec``, ``media_image.ImageCodec`` unless a subclass
    sets another, as ``VideoCache`` does).

    Args:
        cache_dir: created when missing.
        config: sources, credentials and limits.

    Raises:
        ValueError: ``config.label_studio_url`` is not an http(s) URL, or an ``allow_hosts``
            entry is not a host.
    """

    codec: Codec = ImageCodec()

    def __init__(self, cache_dir: Path, config: MediaConfig) -> None:
        self.cache_dir = Path(cache_dir)
        self.config = config
        self.sources = Sources(config)
        self.fetcher = Fetcher(config, HostPolicy(config))
        self.store = Store(self.cache_dir, self.codec, config.cache_max_bytes, config.max_bytes)
        # Decoding and reading mounted files is CPU work: more threads than CPUs doing it only
        # fight over the GIL (downloads, which mostly wait, are not limited by it).
        self._cpu = threading.BoundedSemaphore(_cpu_count())

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.fetcher.close()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Pin every image this cache returns until the block ends (``labelloop.labelstudio.cache_pins``): no
        eviction, in this process or another, can remove them meanwhile, and ``CachedImage.path``
        is then the pinned name. For a build, from its downloads until they are linked into the
        dataset. Nested blocks share the outer one's pins.
        """
        with self.store.pinned():
            yield

    def evict(self) -> tuple[int, int]:
        """Remove the least recently used images that only the cache holds until the folder is at
        most ``config.cache_max_bytes``; images pinned by a running build or linked into a dataset
        are never removed (``labelloop.labelstudio.cache_pins.evict``). Returns (files, bytes) removed; a no-op
        without a cap.
        """
        return self.store.evict()

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
            hit = self.store.lookup(key)
            if hit is not None:
                return hit
            source = self.sources.locate(tid, url)
            if isinstance(source, LocalFile):
                return self.store.put_local(key, source)
        with self.store.temp(".part") as (raw, fh):
            self.fetcher.download(source, fh, url)
            fh.close()
            with self._cpu:
                return self.store.put(key, raw)

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

    def for_tasks(self, tasks: Sequence[Task], value_key: str) -> list[CachedImage | MediaError | None]:
        """Each task's image (the URL in ``task["data"][value_key]``; tasks as Label Studio sends
        them, ``{"id", "data"}``), in task order,
        fetched together by ``get_many``; None for a task whose data has no URL there."""
        items = [(int(t["id"]), str((t.get("data") or {}).get(value_key, ""))) for t in tasks]
        got = self.get_many([it for it in items if it[1]])
        return [got.get(task_id) for task_id, _ in items]
