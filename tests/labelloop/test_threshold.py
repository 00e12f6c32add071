"""The display threshold: the fewest edits on the validation split, shrunk toward the prior (hand cases)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from labelloop.manifest import Manifest, ShowConf
from labelloop.training.scoring import Det, edits
from labelloop.training.threshold import (
    NOTHING,
    PRIOR,
    PRIOR_OBJECTS,
    choose,
    label_path,
    optimum,
    shown,
    shrink,
    sweep,
    truth_boxes,
    val_images,
)
from tests.factories import make_settings, publish_version

A, B, C = (0, 0, 10, 10), (20, 20, 30, 30), (50, 50, 60, 60)
FAR = (80, 80, 90, 90)


def truth(*boxes: tuple[int, int, int, int], image: int = 0, label: str = "a") -> list[Det]:
    return [Det(image, label, 1.0, box) for box in boxes]


def pred(score: float, box: tuple[int, int, int, int], image: int = 0, label: str = "a") -> Det:
    return Det(image, label, score, box)


@pytest.mark.parametrize(
    ("preds", "truths", "want"),
    [
        # two right boxes above a wrong one: show both right ones
        ([pred(0.8, A), pred(0.4, B), pred(0.2, FAR)], truth(A, B), (0.4, 0)),
        # right 0.9 / wrong 0.6 / right 0.5 / wrong 0.3: 1 edit at 0.9 and at 0.5, the higher wins
        ([pred(0.9, A), pred(0.6, FAR), pred(0.5, B), pred(0.3, C)], truth(A, B), (0.9, 1)),
        # every region wrong: show nothing
        ([pred(0.7, FAR), pred(0.3, C)], truth(A), (NOTHING, 1)),
        # no prediction at all: nothing to show, every object drawn
        ([], truth(A, B), (NOTHING, 2)),
        # a right and a wrong region of the same score are shown together: a tie with nothing, which wins
        ([pred(0.5, A), pred(0.5, FAR)], truth(A), (NOTHING, 1)),
        # a duplicate of a found box is a wrong region
        ([pred(0.9, A), pred(0.8, A)], truth(A), (0.9, 0)),
        # a right box under the wrong label is a wrong region and a missed object
        ([pred(0.9, A, label="b"), pred(0.6, B), pred(0.5, C)], truth(A, B, C), (0.5, 2)),
        # objects on two images: matching is per image
        ([pred(0.9, A, image=1), pred(0.7, A, image=0), pred(0.1, B, image=1)], truth(A) + truth(A, image=1), (0.7, 0)),
        # no object: showing nothing is best (and the threshold then shrinks to the prior: see below)
        ([pred(0.9, A)], [], (NOTHING, 0)),
    ],
)
def test_optimum_is_the_fewest_edits_and_ties_go_to_the_higher_threshold(
    preds: list[Det], truths: list[Det], want: tuple[float, int]
) -> None:
    """The optimum is the threshold with the fewest missed plus wrong regions; among equal edits the highest."""
    assert optimum(preds, truths) == want


def test_sweep_equals_scoring_edits_at_every_threshold() -> None:
    """The one-matching sweep gives, at every threshold, exactly ``scoring.edits`` of the regions shown there
    (random images, labels, overlapping boxes and repeated scores)."""
    rng = random.Random(7)
    for _ in range(50):
        truths = [
            Det(
                rng.randrange(3),
                rng.choice("ab"),
                1.0,
                (x := rng.randrange(50), y := rng.randrange(50), x + 10, y + 10),
            )
            for _ in range(rng.randrange(8))
        ]
        preds = []
        for _ in range(rng.randrange(15)):
            x, y = rng.randrange(50), rng.randrange(50)
            preds.append(
                Det(rng.randrange(3), rng.choice("ab"), rng.choice([0.1, 0.3, 0.5, 0.7, 0.9]), (x, y, x + 10, y + 10))
            )
        curve = sweep(preds, truths)
        thresholds = [t for t, _ in curve]
        assert thresholds == sorted(set(thresholds), reverse=True)
        assert set(thresholds) == {NOTHING} | {p.score for p in preds}
        for t, e in curve:
            assert e == edits(shown(preds, t), truths)["edits"], (t, preds, truths)


@pytest.mark.parametrize(
    ("raw", "prior", "objects", "k", "want"),
    [
        (0.9, 0.25, 0, 20, 0.25),  # no object: the prior
        (0.9, 0.25, 20, 20, 0.575),  # as many objects as k: halfway
        (0.5, 0.25, 180, 20, 0.475),  # 180 objects: 90% the split's
        (0.05, 0.25, 5, 20, 0.21),  # 5 objects: 20% the split's
        (0.6, 0.25, 3, 0, 0.6),  # k = 0: the raw optimum
    ],
)
def test_shrink_weighs_the_split_by_its_objects(raw: float, prior: float, objects: int, k: int, want: float) -> None:
    """t = (n t_val + k prior) / (n + k): the prior without objects, halfway at n = k, the split's with many."""
    assert shrink(raw, prior, objects, k) == pytest.approx(want)


def test_choose_records_the_choice_and_few_objects_stay_near_the_prior() -> None:
    """Two validation objects whose optimum is 0.9 move the prior 0.25 only by 2/22 of the way, and the record
    says so: raw optimum, prior, k, objects, images and edits per image at the value, the optimum and the prior."""
    preds = [pred(0.9, A), pred(0.9, B), pred(0.3, FAR)]
    got = choose(preds, truth(A, B), images=2, prior=0.25)
    assert got.raw == 0.9 and got.prior == 0.25 and got.prior_objects == PRIOR_OBJECTS == 20
    assert got.value == pytest.approx(round((2 * 0.9 + 20 * 0.25) / 22, 4))
    assert (got.objects, got.images) == (2, 2)
    assert got.edits_per_image_at_raw == 0.0
    assert got.edits_per_image_at_prior == 0.5  # the wrong region at 0.3 is shown at 0.25
    assert got.edits_per_image == 0.0  # 0.3091 hides it too
    # the same pattern on 100 images: the split decides
    many_preds = [pred(s, box, image=i) for i in range(100) for s, box in ((0.9, A), (0.9, B), (0.3, FAR))]
    many = choose(many_preds, [d for i in range(100) for d in truth(A, B, image=i)], images=100, prior=0.25)
    assert many.objects == 200 and many.value == pytest.approx(round((200 * 0.9 + 20 * 0.25) / 220, 4))
    assert many.edits_per_image == 0.0


def test_choose_without_objects_is_the_prior() -> None:
    """A validation split of background images only keeps the prior, and says why."""
    got = choose([pred(0.8, A)], [], images=3, prior=0.3)
    assert got.value == 0.3 and got.objects == 0 and got.note is not None and "prior" in got.note
    assert got.edits_per_image == pytest.approx(round(1 / 3, 4))


def test_manifest_keeps_the_threshold_and_older_manifests_have_none() -> None:
    """The manifest's ``show_conf`` round-trips through JSON; a manifest written before it has none."""
    record = ShowConf(value=0.31, raw=0.5, prior=0.25, prior_objects=20, objects=7, images=4)
    manifest = Manifest(show_conf=record)
    assert Manifest.model_validate(manifest.to_json()).show_conf == record
    assert Manifest.model_validate({"task": "detect"}).show_conf is None


@pytest.mark.parametrize(
    ("line", "task", "want"),
    [
        ("0 0.5 0.5 0.2 0.4", "detect", ("0", (64.0, 30.0, 96.0, 70.0))),
        ("3 0.5 0.5 0.2 0.4 0.1 0.1 2 0.2 0.2 2", "pose", ("3", (64.0, 30.0, 96.0, 70.0))),
        ("1 0.1 0.2 0.3 0.2 0.3 0.4 0.1 0.4", "obb", ("1", (16.0, 20.0, 48.0, 40.0))),
        ("2 0.1 0.2 0.3 0.25 0.2 0.4", "segment", ("2", (16.0, 20.0, 48.0, 40.0))),
        ("", "detect", None),
        ("0 0.5 0.5", "detect", None),
        ("0 0.1 0.2 0.3", "segment", None),
        ("x y", "detect", None),
    ],
)
def test_truth_boxes_from_label_lines(line: str, task: str, want: object) -> None:
    """YOLO label lines of every box task become pixel boxes (points: the box around them); bad lines None."""
    assert truth_boxes(line, task, 160, 100) == want


def test_val_images_and_their_label_files(tmp_path: Path) -> None:
    """The val images of a data.yaml are found under its path, and each one's label file is Ultralytics'."""
    (tmp_path / "images" / "val").mkdir(parents=True)
    for name in ("2.png", "10.jpg", "notes.txt"):
        (tmp_path / "images" / "val" / name).write_bytes(b"")
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\n")
    images = val_images(tmp_path / "data.yaml")
    assert [p.name for p in images] == ["10.jpg", "2.png"]
    assert label_path(images[0]) == tmp_path / "labels" / "val" / "10.txt"


def test_a_real_training_records_its_threshold_in_the_manifest(
    trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """A real training's child measures the display threshold on its val split (objects and images counted from
    the dataset, prior = PRIOR) and the version's manifest, as the pipeline writes and the registry reads
    it, holds it; the training job carries PRIOR as the prior."""
    from labelloop.jobs.plan import plan_training, version_manifest
    from labelloop.manifest import TrainingResult
    from labelloop.registry.store import Registry
    from tests.conftest import served_images_dataset

    show = ShowConf.model_validate(trained["result"]["show_conf"])
    labels = sorted((Path(trained["work"]) / "ds" / "labels" / "val").glob("*.txt"))
    objects = sum(len([line for line in p.read_text().splitlines() if line.strip()]) for p in labels)
    assert (show.objects, show.images) == (objects, trained["report"].images["val"])
    assert show.prior == PRIOR == 0.5 and show.prior_objects == PRIOR_OBJECTS and show.raw is not None
    assert show.value == pytest.approx(round(shrink(show.raw, PRIOR, objects), 4))
    assert show.edits_per_image_at_raw is not None and show.edits_per_image_at_prior is not None
    assert show.edits_per_image_at_raw <= show.edits_per_image_at_prior  # the split's optimum is optimal on it

    _, root = image_server
    built = served_images_dataset(root, tmp_path / "ds")
    settings = make_settings(tmp_path, predict_conf=0.3, offline=True)
    plan = plan_training(settings, built, None, True, {"base_model": "yolov8n.yaml"})
    assert plan.job.to_dict()["show_prior"] == PRIOR  # whatever predict_conf is
    manifest = version_manifest(built, None, plan, TrainingResult.from_dict(trained["result"]), "run-1", {})
    version = Registry(settings.models_dir).publish(1, Path(trained["result"]["best"]), manifest.to_json())
    assert version.record.show_conf == show
    assert version.manifest["show_conf"]["value"] == show.value


def test_predictor_hides_regions_below_the_version_threshold_and_keeps_the_score(
    trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """A version whose manifest has a display threshold returns only the regions at or above it, with the task's
    score as without it; LABELLOOP_SHOW_CONF overrides the version's, the extra param overrides both; a threshold
    below predict_conf shows the regions down to it while the score still counts the boxes above predict_conf."""
    from labelloop.dev.synthetic import LABEL_CONFIG
    from labelloop.labelstudio.media import MediaConfig
    from labelloop.registry.store import Registry
    from labelloop.serving.predictor import Predictor
    from labelloop.task_types.labels import parse_detection_config

    spec = parse_detection_config(LABEL_CONFIG)
    base_url, _ = image_server
    tasks = [{"id": i, "data": {"image": f"{base_url}/img{i}.png"}} for i in range(4)]
    registry = Registry(tmp_path / "models")
    best = Path(trained["result"]["best"])
    manifest = {"classes": list(spec.labels), "from_name": spec.from_name}
    publish_version(registry, 5, best, **manifest)  # v1: before thresholds
    media = MediaConfig(None, None, allow_hosts=("127.0.0.1",))

    def predictor(conf: float, show_conf: float | None = None) -> Predictor:
        work = Path(trained["work"])
        return Predictor(
            registry, "yolov8n.yaml", work / "yolo", tmp_path / "cache", 160, conf, media=media, show_conf=show_conf
        )

    def regions(out: list[dict]) -> list[list[tuple[float, str]]]:
        return [sorted((r["score"], json.dumps(r["value"], sort_keys=True)) for r in o["result"]) for o in out]

    everything = predictor(0.0).predict(5, spec, tasks, None, None, version="v1")
    # Thresholds in gaps between score levels: the 2-epoch model scores many boxes exactly alike, and NMS among
    # tied boxes depends on their order, which predicting at another conf may change (and Ultralytics keeps
    # scores above its conf, labelloop shows those at or above the threshold).
    scores = sorted({s for task in regions(everything) for s, _ in task}, reverse=True)
    gaps = [(s + lower) / 2 for s, lower in zip(scores, scores[1:], strict=False) if s > lower * 1.01]
    assert len(gaps) >= 2, f"an undertrained model at conf 0 gives regions at several levels: {scores}"
    t, t_low = gaps[0], gaps[1]
    publish_version(registry, 5, best, show_conf={"value": t}, **manifest)  # v2
    publish_version(registry, 5, best, show_conf={"value": t_low}, **manifest)  # v3: below predict_conf t below

    def at_least(out: list[dict], threshold: float) -> list[list[tuple[float, str]]]:
        return [[(s, v) for s, v in task if s >= threshold] for task in regions(out)]

    p = predictor(0.0)
    v2 = p.predict(5, spec, tasks, None, None, version="v2")
    assert regions(v2) == at_least(everything, t) != regions(everything)
    assert [o["score"] for o in v2] == [o["score"] for o in everything]
    # the extra param wins over the version's threshold
    assert regions(p.predict(5, spec, tasks, None, None, version="v2", show_conf=0.0)) == regions(everything)
    # the setting wins over the version's, the extra param over the setting
    set_low = predictor(0.0, show_conf=0.0)
    assert regions(set_low.predict(5, spec, tasks, None, None, version="v2")) == regions(everything)
    by_param = set_low.predict(5, spec, tasks, None, None, version="v1", show_conf=t)
    assert regions(by_param) == at_least(everything, t)

    # predict_conf t: v1 shows what it shows today; v3's threshold below it shows more, with the same score
    high = predictor(t)
    today = high.predict(5, spec, tasks, None, None, version="v1")
    assert regions(today) == at_least(everything, t)
    v3 = high.predict(5, spec, tasks, None, None, version="v3")
    shown = regions(v3)
    assert [[(s, v) for s, v in task if s >= t] for task in shown] == regions(today)
    assert all(s >= t_low for task in shown for s, _ in task)
    assert any(s < t for task in shown for s, _ in task)  # shown below predict_conf
    assert [o["score"] for o in v3] == [o["score"] for o in today]
