"""labelloop.files.write_atomic is durable: the file is synced before the rename and the folder after
(faults injected into os.fsync show the order), and the state files that need it go through it."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from labelloop.dataset.images import load_class_names, store_class_names
from labelloop.files import write_atomic

ROOT = Path(__file__).resolve().parents[2]


def failing_fsync(on: Callable[[os.stat_result], bool]) -> Callable[[int], None]:
    """os.fsync that fails with EIO for the file descriptors ``on`` picks (a disk error injected)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if on(os.fstat(fd)):
            raise OSError(errno.EIO, "injected I/O error")
        real(fd)

    return fsync


def test_a_file_sync_failure_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When syncing the new bytes fails, write_atomic raises and the old file is intact, no temp file left:
    the data is synced before the rename."""
    target = tmp_path / "classes.json"
    write_atomic(target, '{"old": 1}')
    monkeypatch.setattr(os, "fsync", failing_fsync(lambda info: stat.S_ISREG(info.st_mode)))
    with pytest.raises(OSError, match="injected"):
        write_atomic(target, '{"new": 2}')
    assert target.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["classes.json"]


def test_the_folder_is_synced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Syncing the folder comes after the rename (the new bytes are in place when it fails) and its failure
    is reported, not swallowed."""
    target = tmp_path / "classes.json"
    write_atomic(target, "old")
    monkeypatch.setattr(os, "fsync", failing_fsync(lambda info: stat.S_ISDIR(info.st_mode)))
    with pytest.raises(OSError, match="injected"):
        write_atomic(target, "new")
    assert target.read_text() == "new"


def test_class_ids_survive_a_failed_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """classes.json (the stable class ids) is written through the synced path: a sync failure leaves the
    stored ids as they were."""
    store_class_names(tmp_path, 7, "label", {0: "cat", 1: "dog"})
    monkeypatch.setattr(os, "fsync", failing_fsync(lambda info: stat.S_ISREG(info.st_mode)))
    with pytest.raises(OSError):
        store_class_names(tmp_path, 7, "label", {0: "dog", 1: "cat"})
    assert load_class_names(tmp_path, 7, "label") == {0: "cat", 1: "dog"}


# Modules that rename files into place themselves, and why they may.
OWN_RENAMES = {
    "labelloop/files.py": "write_atomic itself",
    "labelloop/registry/publish.py": "fsyncs a version's files and folder before its rename, the folder after",
    "labelloop/registry/served.py": "fsyncs CURRENT's temp file before its replace, the folder after",
    "labelloop/registry/retention.py": "renames a deleted version out of versions/ before removing it",
    "labelloop/labelstudio/media_store.py": "image cache files: a lost one is fetched again",
    "labelloop/labelstudio/cache_pins.py": "pins of a running build, removed with it",
    "labelloop/training/child.py": "progress and result files of a run folder, removed with the run",
    "labelloop/registry/model_export.py": "fsyncs an export's files and folders around its rename",
    "labelloop/labelstudio/video_media.py": "video cache files, as media.py's images: a lost one is fetched again",
}


def test_no_module_renames_state_files_without_write_atomic() -> None:
    """Every module of labelloop, service and workers that renames a file into place is write_atomic or a
    module known to sync (or to write only throwaway files): new state files cannot skip the fsyncs."""
    found = {
        str(path.relative_to(ROOT))
        for folder in ("labelloop", "service", "workers")
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"\bos\.(replace|rename)\(|\.(replace|rename)\(\s*(tmp|path|dst|target)", path.read_text())
    }
    assert found, "the scan found nothing: it no longer matches the code"
    assert found <= set(OWN_RENAMES), json.dumps(sorted(found - set(OWN_RENAMES)))


def test_a_dataset_state_is_never_written_before_its_label_files_are_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild whose label files cannot be synced fails before its state file records them: the state
    still describes the previous build (label files are synced together, then the state)."""
    from labelloop.dataset.images import STATE_FILE, build_dataset, local_images
    from labelloop.dev.synthetic import LABEL_CONFIG, make_sample
    from labelloop.task_types.labels import parse_detection_config

    files, tasks = {}, []
    for i in range(1, 5):
        files[i] = tmp_path / f"src{i}.png"
        files[i].write_bytes(make_sample(i, 96, 64).png)
        result = make_sample(i, 96, 64).ls_result()
        tasks.append({"id": i, "data": {"image": f"img{i}.png"}, "annotations": [{"id": i, "result": result}]})
    spec = parse_detection_config(LABEL_CONFIG)
    build_dataset(tasks, spec, tmp_path / "ds", local_images(files))
    state = (tmp_path / "ds" / STATE_FILE).read_bytes()
    tasks[0]["annotations"][0].update(result=make_sample(2, 96, 64).ls_result(), updated_at="2026-02-01T00:00:00Z")
    labels = str(tmp_path / "ds" / "labels")
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(labels):
            raise OSError(errno.EIO, "injected I/O error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="injected"):
        build_dataset(tasks, spec, tmp_path / "ds", local_images(files))
    assert (tmp_path / "ds" / STATE_FILE).read_bytes() == state
