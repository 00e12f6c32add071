"""Training run directories: ``<cache_dir>/runs/<project_id>/<run_id>``, removed on every exit.

A run holds ``fcntl.flock`` on ``<run_id>.lock`` beside its directory while it works. The
directory goes when the run ends, whether it published, failed or was cancelled (its training
child is killed first, ``labelloop.training.run_training_process``). A process killed outright
cannot clean up, so every new run first removes each run directory whose lock nobody holds:
its owner is dead (the kernel drops a flock with the process). The cache directory is local to
a host (the models directory is the shared one), so flock is reliable here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


def runs_dir(cache_dir: Path) -> Path:
    """``<cache_dir>/runs``."""
    return Path(cache_dir).absolute() / "runs"


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
    """Remove run directories no live run holds (their process died); returns them."""
    removed: list[Path] = []
    root = runs_dir(cache_dir)
    if not root.is_dir():
        return removed
    for project in root.iterdir():
        if not project.is_dir():
            continue
        for entry in project.iterdir():
            if entry.name.endswith(".lock") or not entry.is_dir():
                continue
            if _remove_if_unowned(entry):
                removed.append(entry)
    if removed:
        log.info("run_leftovers_removed", runs=[str(p) for p in removed])
    return removed


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
