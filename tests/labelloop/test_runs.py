"""Training run directories: removed on every exit, and leftovers of dead runs swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from labelloop.errors import TrainingError
from labelloop.training.process import run_training_process
from labelloop.training.runs import remove_leftovers, run_directory, runs_dir


def test_a_run_directory_is_removed_when_the_run_ends_well_or_badly(tmp_path: Path) -> None:
    """The directory exists during the run and is gone after a normal exit and after an exception."""
    with run_directory(tmp_path, 3, "ok") as path:
        (path / "train").mkdir()
        assert path.is_dir()
    assert not path.exists()
    with pytest.raises(RuntimeError), run_directory(tmp_path, 3, "boom") as path:
        (path / "weights.pt").write_bytes(b"x")
        raise RuntimeError("training failed")
    assert not path.exists()
    assert list((runs_dir(tmp_path) / "3").iterdir()) == []


def test_a_run_whose_training_child_is_killed_leaves_no_directory(tmp_path: Path) -> None:
    """A cancelled training (its child process killed mid-run) leaves neither the child nor the directory."""
    spec = {"data": str(tmp_path / "missing.yaml"), "weights": "yolov8n.yaml", "config_dir": str(tmp_path / "yolo")}
    with pytest.raises(TrainingError, match="cancelled"), run_directory(tmp_path, 3, "cancelled") as path:
        run_training_process(spec, path / "train", timeout_s=60, should_cancel=lambda: True, poll_s=0.05)
    assert not path.exists()


def test_leftovers_of_a_killed_process_are_removed_but_a_live_run_is_kept(tmp_path: Path) -> None:
    """A run directory whose process was SIGKILLed (no cleanup ran) is removed by the next run, while the
    directory of a run still alive in another process is kept."""
    code = (
        "import os, signal, sys, time\nfrom pathlib import Path\nfrom labelloop.training.runs import run_directory\n"
        f"with run_directory(Path({str(tmp_path)!r}), 1, sys.argv[1]) as path:\n"
        "    (path / 'dataset').mkdir()\n    print('PATH', path, flush=True)\n"
        "    if sys.argv[1] == 'killed':\n        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    sys.stdin.readline()\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, "killed"], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    dead = Path(next(line for line in killed.stdout.splitlines() if line.startswith("PATH "))[5:])
    assert (dead / "dataset").is_dir()  # nothing cleaned up after a SIGKILL
    live = subprocess.Popen(
        [sys.executable, "-c", code, "live"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert live.stdout is not None and live.stdin is not None
    alive = Path(next(line for line in live.stdout if line.startswith("PATH "))[5:].strip())
    try:
        with run_directory(tmp_path, 2, "next"):
            assert not dead.exists()
            assert (alive / "dataset").is_dir()
        assert remove_leftovers(tmp_path) == []
    finally:
        live.stdin.write("\n")
        live.stdin.flush()
        assert live.wait(timeout=60) == 0
    assert not alive.exists() and not os.listdir(runs_dir(tmp_path) / "1")
