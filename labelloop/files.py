"""Atomic file writes for the workers' small state files (manifests aside, see ``labelloop.registry.store``),
and a file lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` in one step: readers see the old or the new file, never a
    part, and so does the machine after a power cut. Writes a uniquely named temp file in the
    same folder (concurrent writers do not clash) and fsyncs it, then ``os.replace`` and fsyncs
    the folder (without them a crash can leave the new name on an empty file: an emptied
    ``classes.json`` would renumber the classes); the temp file is removed when anything fails.
    Creates the folder.

    ``sync=False`` skips both fsyncs, for many small files written in a row (one fsync each costs
    4 to 7 ms on ext4, 0.6 ms when they are synced together afterwards, see ``fsync_files``) or
    for throwaway files.

    Raises:
        OSError: the folder or the file cannot be written or synced (the old file is then intact
            when the failure came before the rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)


def fsync_files(paths: Iterable[Path]) -> None:
    """Sync files written with ``write_atomic(..., sync=False)``, then their folders once each: do it
    before writing whatever says they are complete (a dataset's state file).

    Raises:
        OSError: a file or folder cannot be opened or synced.
    """
    folders: set[Path] = set()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        folders.add(Path(path).parent)
    for folder in sorted(folders):
        fsync_dir(folder)


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in the folder ``path`` durable (fsync of the folder itself).

    Raises:
        OSError: the folder cannot be opened or synced.
    """
    dfd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class FileLock:
    """An exclusive ``fcntl.flock`` on a lock file, shared by processes (and hosts, where the
    filesystem supports flock: local, NFSv4, CephFS), re-entrant within a thread.

    flock conflicts between two opens of the file even in one process, so a thread that holds
    it (a training promoting through ``notify.serve_when_warm``) must not take it again; other
    threads of the process wait on the ``RLock`` first. ``FileLock.of(path)`` is the one object
    per path in a process.
    """

    _locks: dict[str, FileLock] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None

    @classmethod
    def of(cls, path: Path) -> FileLock:
        with cls._guard:
            return cls._locks.setdefault(str(path), cls(path))

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self.rlock:
            if self.depth == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self.fd = fd
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
                if self.depth == 0 and self.fd is not None:
                    os.close(self.fd)  # releases the flock
                    self.fd = None
