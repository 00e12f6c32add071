"""Atomic file writes for the workers' small state files (manifests aside, see ``labelloop.registry``),
and a file lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` in one step: readers see the old or the new file, never a
    part. Writes a uniquely named temp file in the same folder (concurrent writers do not clash),
    then ``os.replace``; the temp file is removed when anything fails. Creates the folder.

    Raises:
        OSError: the folder or the file cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
