"""Self-training's pure core: which unlabeled images qualify as pseudo-labels, how many, from
which tasks, the files written, and when it does not apply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from labelloop.dataset.images import BuildResult, DatasetReport, val_score
from labelloop.dataset.pseudo import (
    ImagePrediction,
    PseudoJob,
    Region,
    cap_for,
    choose,
    prepare,
    qualifies,
    unlabeled_pool,
    write_overlay,
)
from labelloop.dev.synthetic import LABEL_CONFIG
from labelloop.jobs.datasets import pseudo_source
from labelloop.registry.store import ModelVersion
from labelloop.task_types.labels import parse_detection_config
from tests.factories import make_settings


def image(task_id: int, *confs: float) -> ImagePrediction:
    return ImagePrediction(task_id, tuple(Region(0, c) for c in confs))


HIGH, LOW = 0.7, 0.25


@pytest.mark.parametrize(
    ("confs", "expected"),
    [
        ((0.9,), True),  # one confident region
        ((0.9, 0.7), True),  # the threshold itself qualifies
        ((0.9, 0.69), False),  # one region in the doubtful band spoils the image
        ((0.9, 0.25), False),  # the band's low end is in the band
        ((0.9, 0.2), True),  # below the low end: not a prediction at all
        ((0.3,), False),
        ((), False),  # nothing found: uncertain, not "empty"
        ((0.1, 0.05), False),  # only sub-threshold noise: nothing found either
    ],
)
def test_qualifies(confs: tuple[float, ...], expected: bool) -> None:
    """An image qualifies when it has a region at the low end or more and every such region is confident."""
    assert qualifies(image(1, *confs), HIGH, LOW) is expected


@pytest.mark.parametrize(
    ("images", "cap", "expected"),
    [
        ([image(1, 0.9), image(2, 0.8), image(3, 0.95)], 10, [3, 1, 2]),  # most confident first
        ([image(1, 0.9), image(2, 0.8), image(3, 0.95)], 2, [3, 1]),  # capped
        ([image(1, 0.9), image(2, 0.8), image(3, 0.95)], 0, []),
        ([image(1, 0.99, 0.71), image(2, 0.8)], 1, [2]),  # ranked by the weakest region
        ([image(5, 0.9), image(4, 0.9)], 1, [4]),  # ties: lower task id first
        ([image(1, 0.9, 0.5), image(2), image(3, 0.8)], 5, [3]),  # doubtful and empty images left out
        ([], 3, []),
    ],
)
def test_choose(images: list[ImagePrediction], cap: int, expected: list[int]) -> None:
    """The qualifying images, most confident first, at most the cap."""
    assert [i.task_id for i in choose(images, HIGH, LOW, cap)] == expected


def test_choose_drops_the_regions_below_the_low_end() -> None:
    """A chosen image keeps only its regions at the low end or more (noise is not a label)."""
    [chosen] = choose([image(1, 0.9, 0.1)], HIGH, LOW, 1)
    assert [r.conf for r in chosen.regions] == [0.9]


@pytest.mark.parametrize(
    ("train", "ratio", "cap"), [(10, 1.0, 10), (10, 0.5, 5), (7, 0.5, 3), (3, 0.3, 0), (10, 0.0, 0), (0, 2.0, 0)]
)
def test_cap_for(train: int, ratio: float, cap: int) -> None:
    """At most ratio x the human train images, rounded down."""
    assert cap_for(train, ratio) == cap


def task(task_id: int, total: int = 0, cancelled: int = 0, url: str | None = "u") -> dict[str, Any]:
    return {
        "id": task_id,
        "data": {"image": url} if url is not None else {},
        "total_annotations": total,
        "cancelled_annotations": cancelled,
    }


def train_side_ids(n: int, val_fraction: float) -> list[int]:
    return [i for i in range(1, 1000) if val_score(i) >= val_fraction][:n]


def test_unlabeled_pool_leaves_out_annotated_skipped_exported_and_validation_tasks() -> None:
    """Annotated, skipped, exported (annotated meanwhile), imageless and would-be-val tasks are never in the pool."""
    ids = train_side_ids(6, 0.2)
    val_id = next(i for i in range(1, 1000) if val_score(i) < 0.2)
    tasks = [
        task(ids[0]),
        task(ids[1], total=1),
        task(ids[2], cancelled=1),
        task(ids[3]),  # in the export: annotated since the task list was read
        task(ids[4], url=None),
        task(ids[5]),
        task(val_id),
    ]
    pool = unlabeled_pool(tasks, {ids[3]}, "image", 0.2, size=100)
    assert sorted(t for t, _ in pool) == sorted([ids[0], ids[5]])
    assert all(url == "u" for _, url in pool)


def test_unlabeled_pool_is_a_stable_sample_of_its_size() -> None:
    """The pool holds at most ``size`` tasks, the same ones for the same seed, others for another."""
    tasks = [task(i) for i in train_side_ids(40, 0.2)]
    a = unlabeled_pool(tasks, set(), "image", 0.2, size=10, seed="v1")
    assert len(a) == 10 and a == unlabeled_pool(list(reversed(tasks)), set(), "image", 0.2, size=10, seed="v1")
    assert a != unlabeled_pool(tasks, set(), "image", 0.2, size=10, seed="v2")


def test_write_overlay_writes_ultralytics_detect_labels_into_a_train_folder_of_its_own(tmp_path: Path) -> None:
    """Chosen images become ``images/train`` + ``labels/train`` (``cls cx cy w h``, normalised) and the run's
    data.yaml trains on the human train folder and them, and validates on the human val folder only."""
    ds = tmp_path / "ds"
    (ds / "images" / "train").mkdir(parents=True)
    data = ds / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(ds), "train": "images/train", "val": "images/val", "names": {0: "a"}}))
    src = tmp_path / "cached.png"
    src.write_bytes(b"png")
    chosen = [ImagePrediction(7, (Region(1, 0.9, (0.5, 0.5, 0.2, 0.4)), Region(0, 0.8, (0.1, 0.2, 0.3, 1.2))))]
    out = write_overlay(tmp_path / "pseudo", data, chosen, {7: src})
    lines = (tmp_path / "pseudo" / "labels" / "train" / "7.txt").read_text().splitlines()
    assert lines == ["1 0.500000 0.500000 0.200000 0.400000", "0 0.100000 0.200000 0.300000 1.000000"]
    assert (tmp_path / "pseudo" / "images" / "train" / "7.png").read_bytes() == b"png"
    content = yaml.safe_load(out.read_text())
    assert content["train"] == [str(ds / "images" / "train"), str(tmp_path / "pseudo" / "images" / "train")]
    assert content["val"] == str(ds / "images" / "val") and content["names"] == {0: "a"}
    assert yaml.safe_load(data.read_text())["train"] == "images/train"  # the dataset's own file is untouched


def built(task: str = "detect", train: int = 4) -> BuildResult:
    spec = parse_detection_config(LABEL_CONFIG).with_task(task)
    report = DatasetReport(images={"train": train, "val": 1})
    return BuildResult(Path("data.yaml"), spec, dict(enumerate(spec.labels)), report, [])


def served(tmp_path: Path, names: dict[str, str], task: str = "detect") -> ModelVersion:
    return ModelVersion(1, "v3", tmp_path, {"task": task, "from_name": "label", "names": names})


PARAMS = {"pseudo_labels": True, "val_fraction": 0.2}


@pytest.mark.parametrize(
    ("case", "skipped"),
    [
        ("obb", "not applicable to obb (detect only)"),
        ("no served version", "no served version"),
        ("served segment", "the served version was trained for another task or control tag"),
        ("label unknown to it", "the served version does not know disc"),
        ("no train image", "cap is 0"),
    ],
)
def test_prepare_says_why_pseudo_labels_do_not_apply(case: str, skipped: str, tmp_path: Path) -> None:
    """Setting on but not applicable: no job for the child, and the manifest record says why (no Label Studio call)."""
    both = {"0": "square", "1": "disc"}
    settings = make_settings(tmp_path)
    args: dict[str, Any] = {
        "obb": (built("obb"), served(tmp_path, both)),
        "no served version": (built(), None),
        "served segment": (built(), served(tmp_path, both, "segment")),
        "label unknown to it": (built(), served(tmp_path, {"0": "square"})),
        "no train image": (built(train=0), served(tmp_path, both)),
    }[case]
    prepared = prepare(pseudo_source(settings), 1, *args, PARAMS, tmp_path / "pseudo")
    assert prepared.job is None and prepared.record is not None
    assert prepared.record.skipped == skipped and prepared.record.applied is False
    assert (prepared.record.conf, prepared.record.low_conf) == (0.7, 0.25)


def test_prepare_does_nothing_when_the_setting_is_off(tmp_path: Path) -> None:
    """Setting off: no job and no manifest record (the training is what it was without the feature)."""
    settings = make_settings(tmp_path)
    both = {"0": "square", "1": "disc"}
    prepared = prepare(
        pseudo_source(settings), 1, built(), served(tmp_path, both), {**PARAMS, "pseudo_labels": False}, tmp_path
    )
    assert (prepared.job, prepared.record) == (None, None)


def test_prepare_skips_when_label_studio_cannot_list_the_tasks(tmp_path: Path) -> None:
    """Label Studio refusing the task list: the training goes on with human labels only, the record says why."""
    settings = make_settings(tmp_path, label_studio=("http://127.0.0.1:9", "k"))
    both = {"0": "square", "1": "disc"}
    prepared = prepare(pseudo_source(settings), 1, built(), served(tmp_path, both), PARAMS, tmp_path / "pseudo")
    assert prepared.job is None and prepared.record is not None
    assert str(prepared.record.skipped).startswith("listing the unlabeled tasks failed")
    assert prepared.record.cap == 4 and prepared.record.version == "v3"


def test_pseudo_job_travels_to_the_child_as_json() -> None:
    """The job the worker writes into the training spec reads back equal after a JSON round trip, with
    the keys the training spec always had; a job missing a field is refused, not half-read."""
    job = PseudoJob("w.pt", "/run/pseudo", {"0": 1}, 3, 12, [(7, "/c/7.png")], 0.7, 0.25, 1.0, "v3")
    wire = json.loads(json.dumps(job.to_dict()))
    assert set(wire) == {
        "weights",
        "out_dir",
        "class_ids",
        "cap",
        "pool",
        "images",
        "conf",
        "low_conf",
        "ratio",
        "version",
    }
    assert wire["images"] == [[7, "/c/7.png"]]
    assert PseudoJob.from_dict(wire) == job
    del wire["cap"]
    with pytest.raises(KeyError):
        PseudoJob.from_dict(wire)
