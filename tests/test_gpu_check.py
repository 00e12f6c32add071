"""scripts/gpu-check.sh: refuses without a CUDA device, and its CPU dry run goes end to end."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(_cuda(), reason="this machine has a CUDA device")
def test_gpu_check_refuses_in_one_line_with_status_2_without_a_cuda_device(tmp_path: Path) -> None:
    """Without a CUDA device the script exits 2 with one line on stderr that names the cause and
    the dry run, and starts nothing."""
    env = {**os.environ, "GPU_CHECK_WORKDIR": str(tmp_path / "work")}
    env.pop("GPU_CHECK_DEVICE", None)
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "GPU_CHECK_DEVICE=cpu" in lines[0]
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_runs_every_step_and_prints_the_ratios(tmp_path: Path) -> None:
    """GPU_CHECK_DEVICE=cpu collects the fork check (the suite runs it itself) and runs bench.train,
    bench.predict and bench.swap with tiny sizes, exits 0 and prints each benchmark's ratio in the
    results block."""
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_WORKDIR": str(tmp_path / "work"), "GPU_CHECK_LS": "0"}
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    results = out.stdout.split("== gpu-check results:", 1)[1]
    assert re.search(r"ratio labelloop / yolo train: \d+\.\d+x", results)
    assert len(re.findall(r"^\s+(1|8)\s+[\d.]+\s+[\d.]+\s+[\d.]+x$", results, re.M)) == 2
    assert re.search(r"p99 during / steady: [\d.]+x", results)
    assert "== fork:" in out.stdout and "every step ran" in out.stdout
