"""Dataset builder: split determinism, YOLO files, skipped tasks and the too-little-data error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.errors import DatasetError
from service.synthetic import LABEL_CONFIG, make_sample
from workers.dataset import assign_splits, build_dataset, local_images
from workers.labels import parse_detection_config

SPEC = parse_detection_config(LABEL_CONFIG)


def _tasks(tmp_path: Path, n: int) -> tuple[list[dict], dict[int, Path]]:
    tasks, files = [], {}
    for i in range(1, n + 1):
        sample = make_sample(i, 96, 64)
        files[i] = tmp_path / f"src{i}.png"
        files[i].write_bytes(sample.png)
        tasks.append(
            {
                "id": i,
                "data": {"image": f"/data/upload/1/img{i}.png"},
                "annotations": [
                    {
                        "id": 100 + i,
                        "result": sample.ls_result(),
                        "was_cancelled": False,
                        "updated_at": "2026-01-01T00:00:00Z",
                    }
                ],
            }
        )
    return tasks, files


def test_split_is_deterministic_and_stable_when_tasks_are_added() -> None:
    """A task stays on the same side when the project grows."""
    small = assign_splits(list(range(1, 101)), 0.2, 1)
    big = assign_splits(list(range(1, 201)), 0.2, 1)
    assert all(big[t] == s for t, s in small.items())
    assert 10 <= sum(s == "val" for s in big.values()) <= 70


def test_split_gives_minimum_val_and_keeps_train() -> None:
    """Tiny projects still get min_val validation images and at least one training image."""
    split = assign_splits([1, 2, 3], 0.01, 2)
    assert sorted(split.values()) == ["train", "val", "val"]
    assert sorted(assign_splits([5, 6], 0.99, 1).values()) == ["train", "val"]


def test_build_writes_yolo_dataset(tmp_path: Path) -> None:
    """Images, one label file per image and data.yaml with names in label config order."""
    tasks, files = _tasks(tmp_path, 8)
    tasks[0]["annotations"] = [{"id": 1, "result": [], "was_cancelled": True}]
    tasks[1]["annotations"][0]["result"] = []
    built = build_dataset(tasks, SPEC, tmp_path / "ds", local_images(files))
    report = built.report
    data = yaml.safe_load(built.data.read_text())
    assert data["names"] == {0: "square", 1: "disc"}
    assert report.images["train"] + report.images["val"] == 7
    assert report.background_images == 1
    assert report.skipped == [{"task": 1, "reason": "skipped by annotator"}]
    labels = list((tmp_path / "ds" / "labels").rglob("*.txt"))
    assert len(labels) == 7
    line = (tmp_path / "ds" / "labels" / report_split(tmp_path, 3) / "3.txt").read_text().splitlines()[0]
    cls, *box = line.split()
    assert cls in {"0", "1"} and all(0 <= float(v) <= 1 for v in box)


def report_split(tmp_path: Path, task_id: int) -> str:
    return "val" if (tmp_path / "ds" / "labels" / "val" / f"{task_id}.txt").exists() else "train"


def test_unfetchable_images_skip_tasks_and_too_little_data_fails(tmp_path: Path) -> None:
    """A missing image skips its task; under two usable images the build fails with counts."""
    tasks, files = _tasks(tmp_path, 3)

    fetch = local_images({1: files[1]})

    with pytest.raises(DatasetError, match="1 usable images"):
        build_dataset(tasks, SPEC, tmp_path / "ds", fetch)
