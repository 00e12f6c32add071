"""``build_dataset``: one image dataset build, plan then write (``labelloop.dataset.plan``, then
``labelloop.dataset.writer``), for every image task type, incrementally.

Layouts (https://docs.ultralytics.com/datasets/):

* detect / obb / segment / pose::

    <out>/images/{train,val}/<task_id>.<ext>
    <out>/labels/{train,val}/<task_id>.txt   one line per region (format per task, see labelloop.task_types.convert)
    <out>/data.yaml                           path, train, val, names (+ kpt_shape for pose)

* classify (folder per class; folders are the stable class ids, names in ``.ndjson.yaml``,
  which Ultralytics reads for id-named class folders)::

    <out>/{train,val}/<class_id>/<task_id>.<ext>
    <out>/.ndjson.yaml                        names

Every build also writes ``<out>/report.json`` (counts per class and split, skipped tasks and
dropped regions with reasons, images downloaded vs cached, seconds per stage) and
``<out>/.labelloop-state.json`` (``labelloop.dataset.state``): what each task contributed, so the
next build into the same folder rewrites only the tasks that changed (a rebuild after one new
annotation touches one image and one label file).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from labelloop.dataset.plan import choose, plan_files, reuse_images
from labelloop.dataset.report import BuildResult, DatasetReport
from labelloop.dataset.sources import Fetch
from labelloop.dataset.state import read_state
from labelloop.dataset.writer import apply_files
from labelloop.errors import DatasetError
from labelloop.files import write_atomic
from labelloop.ls_json import Task
from labelloop.task_types.spec import TrainSpec


def build_dataset(
    tasks: Sequence[Task],
    spec: TrainSpec,
    out_dir: Path,
    fetch: Fetch,
    val_fraction: float = 0.2,
    min_val: int = 1,
    names: Mapping[int, str] | None = None,
    report: DatasetReport | None = None,
) -> BuildResult:
    """Write (or update) an Ultralytics dataset for the tasks' chosen annotations.

    Annotation choice: completed, not cancelled; ground truth first, else the most recently
    updated (``labelloop.labelstudio.export.select_annotation``). A completed annotation without regions is
    a background image. A RectangleLabels project trains ``obb`` when any chosen region is
    rotated (or ``spec.task`` already says ``obb``).

    Args:
        tasks: Label Studio tasks in the JSON export format (with ``annotations``).
        spec: what to train (``labelloop.task_types.labels.parse_label_config``).
        out_dir: the dataset folder; a folder written by an earlier build for the same spec is
            updated in place (only changed tasks are rewritten), anything else is replaced.
        fetch: ``[(task_id, url)] -> {task_id: ImageRef or exception}`` (``labelloop.dataset.sources``).
        val_fraction, min_val: see ``labelloop.dataset.splits.assign_splits``.
        names: stable class ids (id -> label, see ``stable_names``); default: config order.
        report: a report to complete (e.g. holding the export's seconds and sync mode); default
            a new one. It is written to ``report.json`` once the build is done.

    Returns:
        the built dataset (see ``BuildResult``).

    Raises:
        DatasetError: too little usable data (fewer than one train and one val image); the
            message gives the counts. The folder is left as it was.
    """
    out_dir = Path(out_dir).absolute()
    names = dict(names) if names is not None else dict(enumerate(spec.labels))
    report = report if report is not None else DatasetReport()
    report.task, report.tasks_exported = spec.task, len(tasks)

    t0 = time.perf_counter()
    chosen, spec = choose(tasks, spec, report)
    report.seconds["select"] = time.perf_counter() - t0
    old_state = read_state(out_dir, spec)
    old_tasks = old_state["tasks"] if old_state is not None else {}

    t0 = time.perf_counter()
    images, reused = reuse_images(chosen, old_tasks, fetch, out_dir)
    report.seconds["download"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    wanted = plan_files(chosen, images, reused, old_tasks, spec, names, val_fraction, min_val, report)
    _check_enough(report, len(tasks))
    data = apply_files(out_dir, spec, names, old_state, wanted, report)
    report.seconds["build"] = time.perf_counter() - t0
    write_atomic(out_dir / "report.json", json.dumps(report.to_dict(), indent=1))
    return BuildResult(data, spec, names, report)


def _check_enough(report: DatasetReport, exported: int) -> None:
    """Raise DatasetError unless the plan has at least one train and one val image."""
    train, val = report.images["train"], report.images["val"]
    if train < 1 or val < 1:
        raise DatasetError(
            f"too little data to train: {train + val} usable images (train {train}, "
            f"val {val}) of {exported} annotated tasks; skipped: "
            + (", ".join(f"{n} {k}" for k, n in report.skipped_counts.items()) or "none")
            + "".join(f"\n  task {s['task']}: {s['reason']}" for s in report.skipped[:3])
        )
