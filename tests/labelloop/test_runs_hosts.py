"""Run and metrics directories on a cache volume shared by workers on several hosts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelloop.training.runs import FOREIGN_STALE_S, remove_leftovers, run_directory, runs_dir

ROOT = Path(__file__).resolve().parents[2]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-r", "-u", "-p", "-f", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="no unprivileged user/UTS/PID namespaces here")


def on_host(host: str, code: str, *args: str, own_pids: bool = False) -> subprocess.Popen[str]:
    """Python ``code`` in a process whose host name is ``host`` (a UTS namespace; with ``own_pids``
    a PID namespace too, where it is PID 1 as a container's main process is)."""
    flags = ["-r", "-u"] + (["-p", "-f"] if own_pids else [])
    shell = f'hostname {host} && exec "$0" "$@"'
    return subprocess.Popen(
        ["unshare", *flags, "sh", "-c", shell, sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


HOLD_RUN = (
    "import sys\nfrom pathlib import Path\nfrom labelloop.training.runs import run_directory\n"
    "with run_directory(Path(sys.argv[1]), 1, 'r1') as path:\n"
    "    (path / 'weights.pt').write_bytes(b'x')\n    print('PATH', path, flush=True)\n"
    "    if sys.argv[2] == 'hold':\n        sys.stdin.readline()\n"
)


@needs_unshare
def test_the_same_run_on_two_hosts_gets_two_directories_without_waiting(tmp_path: Path) -> None:
    """A training redelivered to a second host while the first still runs it (same run id, shared
    cache volume) works in its own directory at once and leaves the first host's files alone."""
    first = on_host("host-a", HOLD_RUN, str(tmp_path), "hold")
    assert first.stdout is not None and first.stdin is not None
    try:
        held = Path(next(line for line in first.stdout if line.startswith("PATH "))[5:].strip())
        second = on_host("host-b", HOLD_RUN, str(tmp_path), "done")
        out, _ = second.communicate(timeout=60)  # before host names: blocked on host-a's lock
        assert second.returncode == 0
        other = Path(next(line for line in out.splitlines() if line.startswith("PATH "))[5:])
        assert other != held and "host-b" in other.parts and "host-a" in held.parts
        assert (held / "weights.pt").exists()
    finally:
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.wait(timeout=60) == 0


def test_another_hosts_abandoned_run_directory_is_removed_only_when_stale(tmp_path: Path) -> None:
    """Another host's run directory is swept once its lock file is older than FOREIGN_STALE_S, and
    kept while younger (that host may still be running it)."""
    hosts = runs_dir(tmp_path).parent
    fresh, stale = hosts / "live-host" / "1" / "r1", hosts / "gone-host" / "1" / "r2"
    for path in (fresh, stale):
        path.mkdir(parents=True)
        Path(f"{path}.lock").touch()
    old = time.time() - FOREIGN_STALE_S - 60
    os.utime(f"{stale}.lock", (old, old))
    assert remove_leftovers(tmp_path) == [stale]
    assert fresh.is_dir() and not stale.exists()
    with run_directory(tmp_path, 1, "r1") as mine:
        assert mine != fresh and fresh.is_dir()


METRICS_DIR = (
    "import sys\nfrom pathlib import Path\nfrom workers.metrics import prepare_multiprocess_dir\n"
    "path = prepare_multiprocess_dir(Path(sys.argv[1]), 'train')\n"
    "(path / 'counter_1.db').write_bytes(b'x')\nprint('PATH', path, flush=True)\nsys.stdin.readline()\n"
)


@needs_unshare
def test_two_hosts_workers_with_the_same_pid_keep_their_own_metrics_directory(tmp_path: Path) -> None:
    """Two train workers on two hosts, both PID 1 (containers), sharing the cache volume: the second
    one's start does not wipe the first one's prometheus multiprocess directory."""
    workers = [on_host(host, METRICS_DIR, str(tmp_path), own_pids=True) for host in ("host-a", "host-b")]
    try:
        paths = []
        for worker in workers:
            assert worker.stdout is not None
            paths.append(Path(next(line for line in worker.stdout if line.startswith("PATH "))[5:].strip()))
        assert paths[0] != paths[1]
        assert all((path / "counter_1.db").exists() for path in paths)
    finally:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("\n")
            worker.stdin.flush()
            assert worker.wait(timeout=60) == 0
