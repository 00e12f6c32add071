"""The media cache folder: files put in place atomically, pinned while a build uses them, evicted
least recently used first.

Files: ``<key>.<ext>`` (``key`` is ``<task_id>-<sha1(url)[:16]>-v<CACHE_VERSION>``, made by the
cache; ``ext`` chosen by a ``Codec``: ``media_image.ImageCodec`` for images,
``video_media.VideoCodec`` for videos), put in place by ``os.replace`` once the codec accepted
them, so a file under that name is always whole and valid. Temp files are written in
``<cache_dir>/.tmp`` (the same filesystem); those a killed process left there are removed a day
later, when a store is opened. An upload read from the mounted media folder is hard-linked into
the cache when it is on the same filesystem (Label Studio never rewrites an upload), otherwise
copied.

With ``cache_max_bytes`` the folder is kept under that size, least recently used first: a lookup
that hits sets the file's access time (only that: a hard link shares its inode with the upload),
and ``evict`` runs when a store is opened and after every tenth of the cap stored since. Only
images no one else holds are evicted: those a running build pinned (``Store.pinned``) or a
dataset links stay (``labelloop.labelstudio.cache_pins``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import structlog

from labelloop.labelstudio.cache_pins import Pins, evict, remove_stale_pins
from labelloop.labelstudio.media_sources import LocalFile
from labelloop.labelstudio.media_types import CachedImage, MediaError

log = structlog.get_logger(__name__)

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Settled:
    """What a codec made of a fetched file: the cache file's extension, the size in pixels
    (width, height; upright for an image) and ``write``, which writes the file to keep, or None
    to keep the fetched bytes as they are."""

    ext: str
    width: int
    height: int
    write: Callable[[IO[bytes]], None] | None = None


class Codec(Protocol):
    """How one kind of media is checked and named in the cache."""

    def find(self, base: str) -> tuple[Path, int, int] | None:
        """The valid cached file ``<base>.<ext>`` and its (width, height), or None."""

    def settle(self, raw: Path) -> Settled:
        """Check a fetched file (raises ``MediaError`` when unusable) and say how to keep it."""


class Store:
    """The cache folder's files (see the module docstring). Safe to share between threads and
    processes.

    Args:
        cache_dir: created when missing.
        codec: how files are checked and named.
        cache_max_bytes: size cap of the folder (bytes; 0: none).
        max_bytes: largest file taken from a mounted folder (bytes).
    """

    def __init__(self, cache_dir: Path, codec: Codec, cache_max_bytes: int, max_bytes: int) -> None:
        self.cache_dir = Path(cache_dir)
        self.tmp_dir = self.cache_dir / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.codec = codec
        self.cache_max_bytes = cache_max_bytes
        self.max_bytes = max_bytes
        self._link_refused = False  # logged once
        self._stored_lock = threading.Lock()
        self._stored = 0  # bytes stored since the last evict
        self._pins: Pins | None = None
        self._remove_stale_parts()
        if cache_max_bytes:
            self.evict()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Pin every file this store returns until the block ends (``cache_pins.Pins``); nested
        blocks share the outer one's pins."""
        if self._pins is not None:
            yield
            return
        self._pins = Pins(self.cache_dir)
        try:
            yield
        finally:
            pins, self._pins = self._pins, None
            pins.close()

    def lookup(self, key: str) -> CachedImage | None:
        """The cached file ``key`` names (its pinned name inside ``pinned``), marked as used now;
        None when absent, no longer valid, or evicted meanwhile."""
        found = self.codec.find(os.path.join(self.cache_dir, key))
        if found is None:
            return None
        path, width, height = found
        if self.cache_max_bytes:
            with contextlib.suppress(OSError):  # recently used: the LRU order
                os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns))
        if self._pins is not None:
            try:
                path = self._pins.link(path, path.name)
            except FileNotFoundError:  # evicted since it was found: fetched again
                return None
        return CachedImage(path, width, height, downloaded=False)

    @contextlib.contextmanager
    def temp(self, suffix: str) -> Iterator[tuple[Path, IO[bytes]]]:
        """A new temp file in the temp folder, removed unless it was renamed."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=".part-", suffix=suffix)
        path = Path(name)
        fh = os.fdopen(fd, "wb")
        try:
            yield path, fh
        finally:
            fh.close()
            path.unlink(missing_ok=True)

    def put(self, key: str, raw: Path) -> CachedImage:
        """Settle ``raw`` (a temp file of this store) with the codec and put the result in place:
        ``raw`` itself when it is kept as it is, else what the codec writes.

        Raises:
            MediaError: the codec refuses the file.
            OSError: the cache folder cannot be written.
        """
        settled = self.codec.settle(raw)
        final = self.cache_dir / f"{key}.{settled.ext}"
        pinned: Path | None = None
        if settled.write is None:
            if self._pins is not None:  # before it can be evicted under its cache name
                pinned = self._pins.link(raw, final.name)
            os.replace(raw, final)  # the original bytes, not re-encoded
        else:
            with self.temp("." + settled.ext) as (tmp, fh):
                settled.write(fh)
                fh.close()
                if self._pins is not None:
                    pinned = self._pins.link(tmp, final.name)
                os.replace(tmp, final)
        self._account(final)
        return CachedImage(pinned or final, settled.width, settled.height, downloaded=True)

    def put_local(self, key: str, src: LocalFile) -> CachedImage:
        """Store a file of a mounted folder: hard-linked to a temp name when it may be and the
        filesystem lets it (no copy, no new file), else copied; then settled and put in place
        like a download. The size limit applies to what was linked or copied.

        A JPEG with bytes after its end marker is copied: Ultralytics "restores" such a file when
        it checks a dataset, and many of its versions rewrite it in place, which would rewrite
        the upload itself through the hard links (upload, cache file, dataset image).
        """
        limit = self.max_bytes
        tmp = self._link_temp(src.path) if src.link else None
        if tmp is not None:
            try:
                info = os.lstat(tmp)
                if not stat.S_ISREG(info.st_mode):  # swapped for a symlink since it was resolved
                    raise MediaError(f"not a regular file under {src.what}: {src.rel!r}")
                if info.st_size > limit:
                    raise MediaError(f"image is larger than {limit} bytes: {src.rel!r}")
                if not _jpeg_with_trailer(tmp, info.st_size):
                    return self.put(key, tmp)
            finally:
                tmp.unlink(missing_ok=True)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        with self.temp(".part") as (raw, fh):
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
            return self.put(key, raw)

    def evict(self) -> tuple[int, int]:
        """Remove the least recently used files that only the cache holds until the folder is at
        most ``cache_max_bytes`` (``cache_pins.evict``). Returns (files, bytes) removed; a no-op
        without a cap."""
        return evict(self.cache_dir, self.cache_max_bytes)

    def _account(self, path: Path) -> None:
        """Count a stored file; evict once a tenth of the cap was stored since the last time."""
        cap = self.cache_max_bytes
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

    def _link_temp(self, src: Path) -> Path | None:
        """A new hard link to ``src`` in the temp folder; None when it cannot be made (another
        filesystem, hard links not allowed by ``fs.protected_hardlinks`` or the filesystem,
        ``src`` gone...): the file is then copied."""
        for _ in range(3):
            tmp = self.tmp_dir / f".link-{os.urandom(8).hex()}"
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

    def _remove_stale_parts(self, age_s: float = 24 * 3600) -> None:
        """Temp files of processes killed mid-download (the change time counts: a hard link to
        an old upload keeps its old modification time)."""
        cutoff = time.time() - age_s
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if max(info.st_mtime, info.st_ctime) < cutoff:
                        os.unlink(entry.path)
        remove_stale_pins(self.cache_dir, age_s)


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
