"""The pseudo-labelling job, passed from the train worker (``labelloop.dataset.pseudo.worker``) to the
training child (``labelloop.dataset.pseudo.child``) as ``spec["pseudo"]`` in the training spec
(JSON, ``labelloop.manifest.TrainJob.pseudo``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PseudoJob:
    """What the child needs to pseudo-label the pool.

    Attributes:
        weights: the served version's weights file (it predicts the pool).
        out_dir: where the child writes the pseudo-labelled images and the run's data.yaml.
        class_ids: the served version's class id (as text) -> the dataset's class id.
        cap: pseudo-labelled images allowed at most (``rule.cap_for``); ``pool``: tasks listed.
        images: ``(task id, upright image file)`` per fetched pool image.
        conf, low_conf: the rule's thresholds (``rule.qualifies``); ``ratio``: ``LABELLOOP_PSEUDO_RATIO``.
        version: the served version's name.
    """

    weights: str
    out_dir: str
    class_ids: dict[str, int]
    cap: int
    pool: int
    images: list[tuple[int, str]]
    conf: float
    low_conf: float
    ratio: float
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``spec["pseudo"]`` holds (``images`` as ``[[task id, path]]``)."""
        return {
            "weights": self.weights,
            "out_dir": self.out_dir,
            "class_ids": dict(self.class_ids),
            "cap": self.cap,
            "pool": self.pool,
            "images": [[task_id, path] for task_id, path in self.images],
            "conf": self.conf,
            "low_conf": self.low_conf,
            "ratio": self.ratio,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, job: Any) -> PseudoJob:
        """Read ``to_dict``'s object back (raises KeyError, TypeError or ValueError when malformed)."""
        return cls(
            weights=str(job["weights"]),
            out_dir=str(Path(job["out_dir"])),
            class_ids={str(k): int(v) for k, v in job["class_ids"].items()},
            cap=int(job["cap"]),
            pool=int(job["pool"]),
            images=[(int(task_id), str(path)) for task_id, path in job["images"]],
            conf=float(job["conf"]),
            low_conf=float(job["low_conf"]),
            ratio=float(job["ratio"]),
            version=None if job.get("version") is None else str(job["version"]),
        )
