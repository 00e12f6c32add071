"""The training child's ``spec.json`` read back as typed records: ``labelloop.manifest.TrainingJob``
(what ``TrainingJob.to_dict`` wrote: its fields by name, the recipe's other Ultralytics arguments
flat beside them) and the run's own keys (``run_dir``, ``validate_only``).

The file format is ``TrainingJob.to_dict()`` plus ``run_dir`` (``run_training_process`` adds it);
nothing here changes it. A job written by hand (tests, ``bench/``) may leave out ``task`` (then
Ultralytics guesses it from the weights) and the fields that have defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from labelloop.manifest import TrainingJob

#: Keys of ``spec.json`` that belong to the run, not to the job.
RUN_KEYS = ("run_dir", "validate_only")
_FIELDS = frozenset(f.name for f in fields(TrainingJob)) - {"extra"}


def read_job(data: Mapping[str, Any]) -> TrainingJob:
    """The ``TrainingJob`` of its JSON object (the inverse of ``TrainingJob.to_dict``): every key that
    is not a field nor in ``RUN_KEYS`` goes to ``extra``.

    Raises:
        KeyError: ``weights``, ``data``, ``config_dir``, ``epochs``, ``imgsz`` or ``batch`` is missing.
        TypeError, ValueError: a number field that is not a number.
    """
    return TrainingJob(
        weights=str(data["weights"]),
        data=str(data["data"]),
        task=str(data.get("task") or ""),
        config_dir=str(data["config_dir"]),
        epochs=int(data["epochs"]),
        imgsz=int(data["imgsz"]),
        batch=int(data["batch"]),
        device=str(data.get("device") or ""),
        workers=int(data.get("workers") or 0),
        seed=int(data.get("seed") or 0),
        incumbent=None if data.get("incumbent") is None else str(data["incumbent"]),
        fallback_weights=None if data.get("fallback_weights") is None else str(data["fallback_weights"]),
        predict_conf=float(data.get("predict_conf", 0.25)),
        extra={k: v for k, v in data.items() if k not in _FIELDS and k not in RUN_KEYS},
        pseudo=data.get("pseudo"),
    )


@dataclass(frozen=True)
class ChildRun:
    """One run of the training child: its job, its run directory (``train/``, ``val-*``, progress
    and result files go there) and, for a validation-only run, the weights to score
    (``labelloop.jobs.pipeline``'s second look at the served version)."""

    job: TrainingJob
    run_dir: Path
    validate_only: str | None = None

    @classmethod
    def read(cls, spec_path: Path) -> ChildRun:
        """The run of a ``spec.json`` (``run_dir`` absolute; the spec's folder when absent).

        Raises:
            OSError, ValueError: the file is unreadable or not JSON; as ``read_job``.
        """
        data = json.loads(Path(spec_path).read_text())
        run_dir = Path(data.get("run_dir") or Path(spec_path).parent).absolute()
        validate_only = data.get("validate_only")
        return cls(read_job(data), run_dir, None if not validate_only else str(validate_only))
