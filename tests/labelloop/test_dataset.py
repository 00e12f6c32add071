"""Dataset builder: split determinism, YOLO files, skipped tasks and the too-little-data error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from labelloop.dataset.images import (
    STATE_FILE,
    assign_splits,
    build_dataset,
    load_class_names,
    local_images,
    stable_names,
    store_class_names,
)
from labelloop.dev.synthetic import LABEL_CONFIG, make_sample
from labelloop.errors import DatasetError
from labelloop.task_types.labels import TrainSpec, parse_detection_config

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
    # the recipe's object size: the 10th percentile of the written boxes' shorter sides / image's longer side
    sides = sorted(
        min(float(w) * 96, float(h) * 64) / 96
        for path in labels
        for _, _, _, w, h in (ln.split() for ln in path.read_text().splitlines())
    )
    assert report.object_side_p10 == pytest.approx(sides[math.ceil(0.1 * len(sides)) - 1])


def report_split(tmp_path: Path, task_id: int) -> str:
    return "val" if (tmp_path / "ds" / "labels" / "val" / f"{task_id}.txt").exists() else "train"


def test_unfetchable_images_skip_tasks_and_too_little_data_fails(tmp_path: Path) -> None:
    """A missing image skips its task; under two usable images the build fails with counts."""
    tasks, files = _tasks(tmp_path, 3)

    fetch = local_images({1: files[1]})

    with pytest.raises(DatasetError, match="1 usable images"):
        build_dataset(tasks, SPEC, tmp_path / "ds", fetch)


@pytest.mark.parametrize(
    ("previous", "labels", "expected"),
    [
        (None, ("cat", "dog"), {0: "cat", 1: "dog"}),
        ({0: "cat", 1: "dog"}, ("dog", "cat"), {0: "cat", 1: "dog"}),  # reordering the config changes nothing
        ({0: "cat", 1: "dog"}, ("cat", "dog", "bird"), {0: "cat", 1: "dog", 2: "bird"}),  # added: next id
        ({0: "cat", 1: "dog"}, ("dog",), {0: "cat", 1: "dog"}),  # removed: id stays reserved
        ({0: "cat", 2: "bird"}, ("fish", "cat"), {0: "cat", 2: "bird", 3: "fish"}),  # never reuses a gap
    ],
)
def test_stable_names(previous: dict | None, labels: tuple[str, ...], expected: dict) -> None:
    """Class ids never change meaning over a project's life."""
    assert stable_names(previous, labels) == expected


def test_class_names_persist_per_control_tag(tmp_path: Path) -> None:
    """Class names are stored per project and control tag (from_name): each reads back its own, another project none."""
    store_class_names(tmp_path, 3, "label", {0: "cat", 1: "dog"})
    store_class_names(tmp_path, 3, "other", {0: "x"})
    assert load_class_names(tmp_path, 3, "label") == {0: "cat", 1: "dog"}
    assert load_class_names(tmp_path, 3, "other") == {0: "x"}
    assert load_class_names(tmp_path, 4, "label") is None


def test_rebuild_in_place_touches_only_changed_tasks(tmp_path: Path) -> None:
    """Same input: nothing written. One task changed, one removed: two files written, one removed,
    and Ultralytics' label caches (keyed on names and sizes only) are dropped."""
    tasks, files = _tasks(tmp_path, 6)
    fetch = local_images(files)
    first = build_dataset(tasks, SPEC, tmp_path / "ds", fetch)
    assert first.report.files_written == 12
    (tmp_path / "ds" / "labels" / "train.cache").write_text("stale")
    again = build_dataset(tasks, SPEC, tmp_path / "ds", fetch)
    assert again.report.files_written == 0 and again.report.fingerprint == first.report.fingerprint
    assert (tmp_path / "ds" / "labels" / "train.cache").exists()

    tasks[2]["annotations"][0]["result"] = tasks[2]["annotations"][0]["result"][:1]
    tasks[2]["annotations"][0]["updated_at"] = "2026-01-02T00:00:00Z"
    removed = tasks.pop(4)
    third = build_dataset(tasks, SPEC, tmp_path / "ds", fetch)
    assert third.report.files_written == 1
    assert not list((tmp_path / "ds").rglob(f"{removed['id']}.*"))
    assert not (tmp_path / "ds" / "labels" / "train.cache").exists()
    label = next((tmp_path / "ds" / "labels").rglob("3.txt"))
    assert len(label.read_text().splitlines()) == 1


def test_rotated_rectangles_switch_to_obb_and_classify_uses_id_folders(tmp_path: Path) -> None:
    """A rotated rectangle switches a detect build to OBB (9-field lines); a classify build puts images in class id
    folders (one per stored id, removed labels included) and records the names."""
    tasks, files = _tasks(tmp_path, 4)
    tasks[0]["annotations"][0]["result"][0]["value"]["rotation"] = 15
    built = build_dataset(tasks, SPEC, tmp_path / "ds", local_images(files))
    assert built.spec.task == built.report.task == "obb"
    assert all(
        len(line.split()) == 9
        for f in (tmp_path / "ds" / "labels").rglob("*.txt")
        for line in f.read_text().splitlines()
    )

    spec = TrainSpec("classify", "choices", "label", "image", "image", ("cat", "dog"))
    for i, task in enumerate(tasks):
        task["annotations"][0]["result"] = [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [("cat", "dog")[i % 2]]}}
        ]
    names = {0: "gone", 1: "dog", 2: "cat"}
    built = build_dataset(tasks, spec, tmp_path / "cls", local_images(files), names=names)
    assert built.data == tmp_path / "cls"
    assert sorted(p.name for p in (tmp_path / "cls" / "train").iterdir()) == ["0", "1", "2"]
    assert {p.parent.name for p in (tmp_path / "cls").glob("*/*/*.png")} == {"1", "2"}
    assert yaml.safe_load((tmp_path / "cls" / ".ndjson.yaml").read_text())["names"] == names


def test_the_state_file_keeps_the_format_earlier_builds_wrote(tmp_path: Path) -> None:
    """``.labelloop-state.json`` stays version 2 with the fields builds wrote before its records were typed,
    so a folder an earlier labelloop built is updated in place (a state it cannot read is a full rebuild)."""
    tasks, files = _tasks(tmp_path, 4)
    build_dataset(tasks, SPEC, tmp_path / "ds", local_images(files))
    state = json.loads((tmp_path / "ds" / STATE_FILE).read_text())
    assert (state["version"], state["layout"], state["names"]) == (2, "detect:label:", {"0": "square", "1": "disc"})
    assert set(state) == {"version", "layout", "names", "tasks"}
    assert sorted(state["tasks"], key=int) == ["1", "2", "3", "4"]
    entry = state["tasks"]["3"]
    fields = {"key", "label", "dropped", "image", "labels", "src", "src_mtime", "url", "width", "height"}
    assert set(entry) == fields
    split = entry["image"].split("/")[1]
    assert (entry["image"], entry["labels"]) == (f"images/{split}/3.png", f"labels/{split}/3.txt")
    assert (entry["src"], entry["url"]) == (str(files[3]), "/data/upload/1/img3.png")
    assert (entry["width"], entry["height"]) == (96, 64)
    assert entry["label"] == (tmp_path / "ds" / entry["labels"]).read_text() and entry["key"].startswith("103:")
