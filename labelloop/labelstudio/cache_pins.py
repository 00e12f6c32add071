"""What the image cache (``labelloop.labelstudio.media.ImageCache``) may evict, and the pins that keep a running
build's images out of reach of eviction, in any process.

A pin is a hard link: a build that holds images takes one per image in its own folder
``<cache_dir>/.pins/<host>-<pid>-<random>/`` (for a download, before the file appears under its
cache name; for a hit, right after the lookup, which counts as a miss when the file was evicted in
between). Eviction only removes files whose link count is 1, i.e. whose bytes only the cache holds:
an image pinned by a running build, linked into a dataset, or hard-linked to a mounted Label Studio
upload is never removed (removing it would free nothing), so the cap is a target above that working
set, never a reason to delete it. An eviction that raced a pin removes only the cache name: the
build reads and links its pinned name, which still holds the bytes.

Crash semantics: a pin folder is removed when its build ends; the pins of a process that died are
removed when a cache is next opened on the same host (its process id is gone), or a day later
from any host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

PINS_DIR = ".pins"
STALE_S = 24 * 3600


class Pins:
    """One build's pins: hard links to the images it holds, in a folder of its own, removed by ``close``.

    Args:
        cache_dir: the image cache folder; the pins go in ``<cache_dir>/.pins/<host>-<pid>-<random>``.
    """

    def __init__(self, cache_dir: Path) -> None:
        host = socket.gethostname().replace("-", "_") or "host"
        self.dir = Path(cache_dir) / PINS_DIR / f"{host}-{os.getpid()}-{os.urandom(4).hex()}"
        self.dir.mkdir(parents=True)

    def link(self, src: Path, name: str) -> Path:
        """Pin ``src`` (a file of the cache or of its temp folder) as ``name``; returns the pinned path,
        which stays valid until ``close`` whatever eviction does to ``src``.

        Raises:
            FileNotFoundError: ``src`` is gone (evicted since it was looked up).
            OSError: the filesystem refuses hard links.
        """
        final = self.dir / name
        tmp = self.dir / f".{name}.{os.urandom(4).hex()}"
        os.link(src, tmp, follow_symlinks=False)
        os.replace(tmp, final)  # the same task fetched twice in one build: the newest wins
        return final

    def close(self) -> None:
        """Drop the pins (the images stay in the cache, evictable again, and in the datasets linked)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def remove_stale_pins(cache_dir: Path, age_s: float = STALE_S) -> None:
    """Remove the pin folders of processes that died: on this host once their process id is gone,
    from any host once untouched for ``age_s`` seconds."""
    root = Path(cache_dir) / PINS_DIR
    if not root.is_dir():
        return
    host, cutoff = socket.gethostname().replace("-", "_") or "host", time.time() - age_s
    for entry in os.scandir(root):
        owner, _, rest = entry.name.partition("-")
        pid = rest.partition("-")[0]
        with contextlib.suppress(OSError):
            dead = owner == host and pid.isdigit() and not _alive(int(pid))
            if dead or entry.stat(follow_symlinks=False).st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def evict(cache_dir: Path, cap: int) -> tuple[int, int]:
    """Remove the least recently used images (access time, oldest first) that only the cache holds
    (link count 1) until the folder's images total at most ``cap`` bytes, or none is left to remove;
    returns (files, bytes) removed. Dot folders (temp files, pins) are not counted. A no-op for ``cap`` 0.

    Images held elsewhere too (pinned by a running build, linked into a dataset, linked to an upload)
    are counted but never removed: when they alone exceed the cap, ``image_cache_cap_below_working_set``
    is logged and the folder stays above it.
    """
    if not cap:
        return 0, 0
    files: list[tuple[int, int, str]] = []
    total = held = 0
    with os.scandir(cache_dir) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
                    if info.st_nlink == 1:
                        files.append((info.st_atime_ns, info.st_size, entry.path))
                    else:
                        held += info.st_size
    removed = freed = 0
    if total <= cap:
        return 0, 0
    for _, size, path in sorted(files):
        if total - freed <= cap:
            break
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path, follow_symlinks=False).st_nlink != 1:  # pinned since the listing
                continue
            os.unlink(path)
            removed += 1
            freed += size
    log.info("image_cache_evicted", files=removed, bytes=freed, kept_bytes=total - freed, held_bytes=held, cap=cap)
    if held > cap:
        log.warning("image_cache_cap_below_working_set", held_bytes=held, cap=cap)
    return removed, freed
