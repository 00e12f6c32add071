"""The training child's files read back as typed records: ``spec.json`` as a
``labelloop.manifest.TrainingJob`` (what ``TrainingJob.to_dict`` wrote: its fields by name, the
recipe's other Ultralytics arguments flat beside them) and the run's own key (``run_dir``);
``progress.json`` as ``EpochProgress``.

The file format is ``TrainingJob.to_dict()`` plus ``run_dir`` (added by
``labelloop.training.process.run_training_process``); nothing here changes it. A job written by
hand (tests, ``bench/``) may leave out ``task`` (then Ultralytics guesses it from the weights) and
the fields that have defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypedDict, cast

from labelloop.manifest import TrainArgs, TrainingJob
from labelloop.training.threshold import PRIOR

#: Keys of ``spec.json`` that belong to the run, not to the job.
RUN_KEYS = ("run_dir",)
_FIELDS = frozenset(f.name for f in fields(TrainingJob)) - {"extra"}


class EpochProgress(TypedDict):
    """What the child writes to ``progress.json`` after each epoch (Ultralytics'
    ``on_fit_epoch_end``): the epoch (1-based) of ``epochs``, the latest validation ``metrics``
    (Ultralytics' keys, e.g. ``metrics/mAP50-95(B)``) and the epoch's mean training ``losses``
    (e.g. ``train/box_loss``)."""

    epoch: int
    epochs: int
    metrics: dict[str, float]
    losses: dict[str, float]


def read_job(data: Mapping[str, Any]) -> TrainingJob:
    """The ``TrainingJob`` of its JSON object (the inverse of ``TrainingJob.to_dict``): every key that
    is not a field nor in ``RUN_KEYS`` goes to ``extra`` (``TrainArgs``, as written).

    Raises:
        KeyError: ``weights``, ``data``, ``config_dir``, ``epochs``, ``imgsz`` or ``batch`` is missing;
            as ``PseudoJob.from_dict``.
        TypeError, ValueError: a number field that is not a number.
    """
    pseudo = data.get("pseudo")
    if pseudo is not None:
        from labelloop.dataset.pseudo.job import PseudoJob
    extra = {k: v for k, v in data.items() if k not in _FIELDS and k not in RUN_KEYS}
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
        incumbent_imgsz=None if not data.get("incumbent_imgsz") else int(data["incumbent_imgsz"]),
        fallback_weights=None if data.get("fallback_weights") is None else str(data["fallback_weights"]),
        show_prior=float(data.get("show_prior", PRIOR)),
        extra=cast(TrainArgs, extra),  # the recipe's arguments as the job wrote them
        pseudo=None if pseudo is None else PseudoJob.from_dict(pseudo),
        validate_only=None if not data.get("validate_only") else str(data["validate_only"]),
    )


@dataclass(frozen=True)
class ChildRun:
    """One run of the training child: its job and its run directory (``train/``, ``val-*``,
    progress and result files go there)."""

    job: TrainingJob
    run_dir: Path

    @property
    def validate_only(self) -> str | None:
        """The weights to score instead of training (``TrainingJob.validate_only``), or None."""
        return self.job.validate_only

    @classmethod
    def read(cls, spec_path: Path) -> ChildRun:
        """The run of a ``spec.json`` (``run_dir`` absolute; the spec's folder when absent).

        Raises:
            OSError, ValueError: the file is unreadable or not JSON; as ``read_job``.
        """
        data = json.loads(Path(spec_path).read_text())
        run_dir = Path(data.get("run_dir") or Path(spec_path).parent).absolute()
        return cls(read_job(data), run_dir)
