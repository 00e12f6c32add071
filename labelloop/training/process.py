"""Run the training child (``python -m labelloop.training.child``) from a worker and wait for it.

The parent writes ``spec.json`` (``labelloop.manifest.TrainingJob.to_dict()`` plus ``run_dir``),
polls ``progress.json`` (``labelloop.training.job.EpochProgress``) and reads ``result.json``
(``labelloop.manifest.TrainingResult``, or ``ValidationScore`` for a validation-only run). The
child gets SIGKILL when this process dies, so a killed worker leaves no orphan training.

``train_in_child`` and ``validate_in_child`` are the typed calls the jobs make;
``run_training_process`` is the child's wire format as it is (a spec written by hand, as tests
and ``bench/`` do, in; ``result.json``'s object out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import cast

from labelloop.errors import TrainingError
from labelloop.manifest import TrainingJob, TrainingResult, ValidationScore
from labelloop.training.job import EpochProgress

OnProgress = Callable[[EpochProgress], None]


def train_in_child(
    job: TrainingJob,
    run_dir: Path,
    timeout_s: float,
    on_progress: OnProgress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    poll_s: float = 1.0,
) -> TrainingResult:
    """Train ``job`` in a child process (``labelloop.training.child.train``) and return its result.

    Raises:
        TrainingError: as ``run_training_process``.
        pydantic.ValidationError: the child's ``result.json`` is not a ``TrainingResult``.
    """
    out = run_training_process(job.to_dict(), run_dir, timeout_s, on_progress, should_cancel, poll_s)
    return TrainingResult.from_dict(out)


def validate_in_child(job: TrainingJob, weights: str, run_dir: Path, timeout_s: float) -> ValidationScore:
    """Score ``weights`` on ``job``'s val split in a child process (``TrainingJob.validate_only``,
    ``labelloop.training.child.validate``), as a training scores its incumbent.

    Raises:
        TrainingError: as ``run_training_process``.
        pydantic.ValidationError: the child's ``result.json`` is not a ``ValidationScore``.
    """
    out = run_training_process(replace(job, validate_only=weights).to_dict(), run_dir, timeout_s)
    return ValidationScore.model_validate(out)


def run_training_process(
    spec: Mapping[str, object],
    run_dir: Path,
    timeout_s: float,
    on_progress: OnProgress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    poll_s: float = 1.0,
) -> dict[str, object]:
    """Run the training child on ``spec`` (``spec.json``'s object, ``run_dir`` added) and return
    the object it wrote to ``result.json``.

    The child's output goes to ``<run_dir>/train.log``. While it runs, ``on_progress`` gets each
    epoch's ``EpochProgress``; ``should_cancel`` is called every ``poll_s`` seconds (the project's
    lock is kept by ``labelloop.jobs.lease.RunLease``).

    Raises:
        TrainingError: the child failed, timed out (``timeout_s`` seconds), was cancelled or wrote
            no result.
    """
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps({**spec, "run_dir": str(run_dir)}, indent=2))
    result_path = run_dir / "result.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / "train.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labelloop.training.child", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(Path(__file__).resolve().parent.parent),
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        last: str | None = None
        try:
            while (code := proc.poll()) is None:
                if time.monotonic() > deadline:
                    raise TrainingError(f"training exceeded {timeout_s:.0f} s and was killed")
                if should_cancel is not None and should_cancel():
                    raise TrainingError("training cancelled")
                progress = run_dir / "progress.json"
                if on_progress is not None and progress.exists():
                    text = progress.read_text()
                    if text != last:
                        last = text
                        on_progress(cast(EpochProgress, json.loads(text)))  # the child's report_epoch wrote it
                time.sleep(poll_s)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if code != 0 or not result_path.exists():
        tail = (run_dir / "train.log").read_text(errors="replace")[-2000:]
        raise TrainingError(f"training process exited with {code}; log tail:\n{tail}")
    result = json.loads(result_path.read_text())
    if not isinstance(result, dict):
        raise TrainingError(f"training process wrote no result object to {result_path}")
    return result


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when its parent dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:  # not Linux: the parent's own cleanup still kills it on errors
        pass
