"""The writer: brings a dataset folder to a planned state (``labelloop.dataset.plan``), touching only
what changed, then writes its YAML and, last, its state file.

Order matters for a crash at any point: image links and label files first (labels fsynced
together), the YAML next, the state file (``labelloop.dataset.state``) last. A crash before the
state is replaced leaves the previous state: the next build plans against it and rewrites every
task whose entry differs, and a file missing on disk is found by listing the folders. Images are
hard links to the cached image (a copy across file systems).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from labelloop.dataset.report import DatasetReport
from labelloop.dataset.state import BuildState, PlanEntry, write_state
from labelloop.files import fsync_files, write_atomic
from labelloop.task_types import task_type
from labelloop.task_types.spec import TrainSpec


def link(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link to ``src`` (a copy where linking fails, e.g. across file systems)."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def data_yaml(out_dir: Path, spec: TrainSpec, names: Mapping[int, str]) -> Path:
    """Write the dataset's YAML and return what to pass as ``data=`` to Ultralytics.

    Line tasks: ``<out>/data.yaml`` with ``path``, ``train``, ``val``, ``names`` and the task
    type's extra keys (``kpt_shape`` for pose; https://docs.ultralytics.com/datasets/). Classify:
    ``<out>/.ndjson.yaml`` with ``names`` (Ultralytics reads it for id-named class folders), and the
    folder itself is ``data=``.
    """
    kind = task_type(spec)
    if not kind.label_files:
        write_atomic(out_dir / ".ndjson.yaml", yaml.safe_dump({"names": dict(names)}, sort_keys=False))
        return out_dir
    data = out_dir / "data.yaml"
    content: dict[str, Any] = {"path": str(out_dir), "train": "images/train", "val": "images/val", "names": dict(names)}
    content.update(kind.data_yaml_extra())
    write_atomic(data, yaml.safe_dump(content, sort_keys=False))
    return data


class FolderWriter:
    """Writes one dataset folder from its last state to a planned one.

    Args:
        out_dir: the dataset folder (absolute).
        spec: what is trained (its task type decides the layout).
        names: class id -> label.
    """

    def __init__(self, out_dir: Path, spec: TrainSpec, names: Mapping[int, str]) -> None:
        self.out_dir, self.spec, self.names = out_dir, spec, names
        self.label_files = task_type(spec).label_files

    def make_folders(self, fresh: bool) -> None:
        """Create the split (and class) folders; ``fresh``: remove what is there first."""
        if fresh and self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        for split in ("train", "val"):
            if not self.label_files:
                for class_id in self.names:
                    (self.out_dir / split / str(class_id)).mkdir(parents=True, exist_ok=True)
            else:
                (self.out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
                (self.out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)

    def _present(self, wanted: Mapping[str, PlanEntry]) -> set[str]:
        """What is on disk, from one listing per folder (not a stat per file)."""
        folders = {os.path.dirname(p) for e in wanted.values() for p in (e["image"], e["labels"]) if p}
        return {f"{folder}/{name}" for folder in folders for name in os.listdir(self.out_dir / folder)}

    def write(self, old_tasks: Mapping[str, PlanEntry], wanted: Mapping[str, PlanEntry]) -> tuple[int, list[Path], str]:
        """Link the images and write the label files that changed or are missing.

        Returns:
            ``(files written, label files written (not yet fsynced), fingerprint)``: the
            fingerprint hashes every planned image, URL, size and label (16 hex digits).
        """
        present = self._present(wanted)
        written = 0
        labels_written: list[Path] = []
        fp = hashlib.sha256()
        # New links first, old ones removed after (``remove_stale``): a kept image moving to another
        # split or class folder may have the dataset's old link as its only source (the cache evicted it).
        for task_key in sorted(wanted, key=int):
            new = wanted[task_key]
            prev = old_tasks.get(task_key)
            moved = (
                prev is None
                or prev.get("image") != new["image"]
                or prev.get("src_mtime") != new["src_mtime"]
                or prev.get("url") != new["url"]
            )
            if (moved or new["image"] not in present) and os.path.abspath(new["src"]) != str(
                self.out_dir / new["image"]
            ):
                link(Path(new["src"]), self.out_dir / new["image"])
                written += 1
            labels = new["labels"]
            if labels is not None and (
                prev is None
                or prev.get("labels") != labels
                or prev.get("label") != new["label"]
                or labels not in present
            ):
                write_atomic(self.out_dir / labels, new["label"], sync=False)  # synced together in ``commit``
                labels_written.append(self.out_dir / labels)
                written += 1
            fp.update(f"{new['image']}:{new['url']}:{new['width']}x{new['height']}:{new['label']}\n".encode())
        return written, labels_written, fp.hexdigest()[:16]

    def remove_stale(self, old_tasks: Mapping[str, PlanEntry], wanted: Mapping[str, PlanEntry], changed: bool) -> None:
        """Delete the files of tasks gone or moved; drop Ultralytics' label caches when anything changed
        (they hash file names and sizes, not contents)."""
        for task_key, old in old_tasks.items():
            now = wanted.get(task_key)
            if now is None or now["image"] != old["image"]:
                (self.out_dir / old["image"]).unlink(missing_ok=True)
            old_labels = old.get("labels")
            if old_labels and (now is None or now["labels"] != old_labels):
                (self.out_dir / old_labels).unlink(missing_ok=True)
        if changed or any(k not in wanted for k in old_tasks):
            for cache in (self.out_dir / "labels").glob("*.cache"):
                cache.unlink(missing_ok=True)

    def commit(self, labels_written: list[Path], wanted: Mapping[str, PlanEntry]) -> Path:
        """Write the YAML, fsync the label files, then the state; returns ``data=``."""
        data = data_yaml(self.out_dir, self.spec, self.names)
        fsync_files(labels_written)  # on disk before the state says they are
        write_state(self.out_dir, self.spec, self.names, wanted)
        return data


def apply_files(
    out_dir: Path,
    spec: TrainSpec,
    names: Mapping[int, str],
    old_state: BuildState | None,
    wanted: Mapping[str, PlanEntry],
    report: DatasetReport,
) -> Path:
    """Bring ``out_dir`` to the planned state, touching only what changed, and write its
    ``data.yaml`` (or classify's ``.ndjson.yaml``) and state; returns what to pass as ``data=``.
    ``old_state`` None: the folder is replaced."""
    old_tasks: Mapping[str, PlanEntry] = old_state["tasks"] if old_state is not None else {}
    writer = FolderWriter(out_dir, spec, names)
    writer.make_folders(fresh=old_state is None)
    written, labels_written, report.fingerprint = writer.write(old_tasks, wanted)
    writer.remove_stale(old_tasks, wanted, changed=bool(written))
    report.files_written = written
    return writer.commit(labels_written, wanted)
