"""What a dataset build produced: ``DatasetReport`` (``report.json``, the manifest's ``dataset``) and
``BuildResult`` (what training is given)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from labelloop.labelstudio.export_store import SyncInfo
from labelloop.ls_json import Task
from labelloop.task_types.spec import TrainSpec


class TaskNote(TypedDict):
    """A task (or one of its regions) left out of the dataset, and why."""

    task: int
    reason: str


@dataclass
class DatasetReport:
    """What a build produced and skipped; written to ``report.json`` and the version's manifest.

    Attributes:
        task: the Ultralytics task built (detect, obb, segment, pose, classify).
        tasks_exported: annotated tasks Label Studio returned.
        images: images per split.
        instances_per_class: split -> label -> regions (classify: images).
        background_images: images with a completed annotation and no region (empty label file).
        skipped: ``{"task", "reason"}`` per task left out; ``skipped_counts`` groups them.
        dropped_regions: ``{"task", "reason"}`` per region left out of a used task.
        unknown_labels: labels found in annotations that the label config lacks -> count.
        images_downloaded, images_cached: how the images were obtained.
        seconds: wall seconds per stage (``export``, ``download``, ``build``).
        sync: how the tasks were read (``{"mode": "full"|"incremental", ...}``,
            ``labelloop.labelstudio.export.sync_tasks``).
        fingerprint: a hash of the files written (same data -> same fingerprint).
        long_side_p90: 90th percentile of the used images' longer sides, pixels (for imgsz).
        object_side_p10: 10th percentile of the labelled objects' shorter sides, as a fraction
            of their image's longer side (``labelloop.dataset.object_sides``; for imgsz on a CPU);
            None without objects, and for classify and video datasets.
    """

    task: str = "detect"
    tasks_exported: int = 0
    images: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    instances_per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    background_images: int = 0
    skipped: list[TaskNote] = field(default_factory=list)
    skipped_counts: dict[str, int] = field(default_factory=dict)
    dropped_regions: list[TaskNote] = field(default_factory=list)
    unknown_labels: dict[str, int] = field(default_factory=dict)
    images_downloaded: int = 0
    images_cached: int = 0
    files_written: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    sync: SyncInfo = field(default_factory=SyncInfo)
    fingerprint: str = ""
    long_side_p90: int | None = None
    object_side_p10: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``report.json``)."""
        return asdict(self)

    def skip(self, task_id: int, kind: str, detail: str = "") -> None:
        """Record a task left out: ``kind`` is the reason counted in ``skipped_counts``."""
        self.skipped.append({"task": task_id, "reason": f"{kind}: {detail}" if detail else kind})
        self.skipped_counts[kind] = self.skipped_counts.get(kind, 0) + 1

    def drop(self, task_id: int, reasons: list[str]) -> None:
        """Record regions of a used task left out, one reason each."""
        self.dropped_regions += [{"task": task_id, "reason": reason} for reason in reasons]


@dataclass
class BuildResult:
    """A built dataset.

    Attributes:
        data: what to pass as ``data=`` to Ultralytics: data.yaml, or the folder for classify.
        spec: the control tags and task trained (``detect`` becomes ``obb`` when regions are rotated).
        names: class id -> label (stable for the project).
        report: see ``DatasetReport``.
        tasks: the annotated tasks it was built from (JSON export format).
    """

    data: Path
    spec: TrainSpec
    names: dict[int, str]
    report: DatasetReport
    tasks: list[Task] = field(default_factory=list)
