"""Training run directories: ``<cache_dir>/runs/<host name>/<project_id>/<run_id>``, removed on
every exit.

A run holds ``fcntl.flock`` on ``<run_id>.lock`` beside its directory while it works. The
directory goes when the run ends, whether it published, failed or was cancelled (its training
child is killed first, ``labelloop.training.process``). A process killed outright
cannot clean up, so every new run first removes each run directory of its host whose lock nobody
holds: its owner is dead (the kernel drops a flock with the process).

The cache directory may be one volume shared by workers on several hosts (k8s ReadWriteMany):
there a flock taken on one host is not reliably seen on another (NFS), and a task redelivered to a
second host while the first still runs it has the same run id. Each host therefore works and
sweeps under its own host name only; another host's run directory is removed only once its lock
file is older than ``FOREIGN_STALE_S`` (that host died or was renamed, as a replaced pod is).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

# Age (seconds, of its lock file) after which another host's run directory counts as abandoned:
# far beyond any training's time limit (LABELLOOP_TRAIN_TIME_LIMIT_S, 4 h by default).
FOREIGN_STALE_S = 7 * 24 * 3600


def runs_dir(cache_dir: Path) -> Path:
    """``<cache_dir>/runs/<host name>``: this host's run directories."""
    return Path(cache_dir).absolute() / "runs" / host_name()


def host_name() -> str:
    """This host's name as a single path component (``socket.gethostname``; a k8s pod's name)."""
    return socket.gethostname().replace("/", "_").strip(".") or "localhost"


@contextlib.contextmanager
def run_directory(cache_dir: Path, project_id: int, run_id: str) -> Iterator[Path]:
    """A fresh, locked run directory for the ``with`` block, removed when it exits (any exit).

    Leftovers of dead runs (any project) are removed first (``remove_leftovers``); a directory
    of this ``run_id`` left by a dead run (a redelivered task) is among them.

    Raises:
        OSError: the cache directory cannot be written.
    """
    if "/" in run_id or run_id in ("", ".", ".."):
        raise ValueError(f"not a run id: {run_id!r}")
    remove_leftovers(cache_dir)
    path = runs_dir(cache_dir) / str(int(project_id)) / run_id
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock(Path(f"{path}.lock"))
    try:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(f"{path}.lock")
    finally:
        os.close(fd)


def _lock(lock_path: Path) -> int:
    """Open and flock ``lock_path``; again when a sweeper unlinked it meanwhile (a lock on an
    unlinked file would protect nothing)."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def remove_leftovers(cache_dir: Path) -> list[Path]:
    """Remove this host's run directories no live run holds (their process died), and other
    hosts' whose lock file is older than ``FOREIGN_STALE_S``; returns them."""
    removed: list[Path] = []
    root = runs_dir(cache_dir)
    for entry in _run_entries(root):
        if _remove_if_unowned(entry):
            removed.append(entry)
    hosts = root.parent
    others = [h for h in hosts.iterdir() if h.is_dir() and h != root] if hosts.is_dir() else []
    horizon = time.time() - FOREIGN_STALE_S
    for other in others:
        for entry in _run_entries(other):
            try:
                stale = os.stat(f"{entry}.lock").st_mtime < horizon
            except FileNotFoundError:
                stale = entry.stat().st_mtime < horizon
            if stale:
                shutil.rmtree(entry, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.unlink(f"{entry}.lock")
                removed.append(entry)
    if removed:
        log.info("run_leftovers_removed", runs=[str(p) for p in removed])
    return removed


def _run_entries(root: Path) -> list[Path]:
    """The run directories under one host's ``root`` (``<project_id>/<run_id>``)."""
    if not root.is_dir():
        return []
    return [
        entry
        for project in root.iterdir()
        if project.is_dir()
        for entry in project.iterdir()
        if not entry.name.endswith(".lock") and entry.is_dir()
    ]


def _remove_if_unowned(path: Path) -> bool:
    try:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live run holds it
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(f"{path}.lock")
        return True
    finally:
        os.close(fd)
