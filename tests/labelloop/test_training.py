"""Real ultralytics training in a child process, publishing, and prediction with hot-swap."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from labelloop.dev.synthetic import LABEL_CONFIG, make_sample
from labelloop.errors import TrainingError
from labelloop.labelstudio.media import MediaConfig
from labelloop.manifest import TrainingJob, TrainingResult
from labelloop.registry.store import Registry
from labelloop.serving.predictor import Predictor
from labelloop.task_types.labels import parse_detection_config
from labelloop.training.process import run_training_process, validate_in_child
from tests.factories import publish_version

pytestmark = pytest.mark.slow  # every test here trains with real Ultralytics

SPEC = parse_detection_config(LABEL_CONFIG)


def test_training_writes_weights_and_metrics(trained: dict) -> None:
    """The child process trains with ultralytics and reports best.pt and mAP50-95 on the val split."""
    result = trained["result"]
    assert Path(result["best"]).is_file()
    assert set(result["metrics"]) == {"map50_95", "map50", "precision", "recall"}
    assert 0.0 <= result["metrics"]["map50_95"] <= 1.0
    assert result["device"] == "cpu"
    assert trained["report"].images["val"] >= 2


def test_a_validation_only_run_scores_weights_as_the_training_did(trained: dict, tmp_path: Path) -> None:
    """``validate_in_child`` (the promotion gate's second look at a version served meanwhile) scores
    weights on the job's val split in the child: for the training's best.pt, the metrics and
    classes the training itself measured, and no training (no weights written)."""
    result = TrainingResult.from_dict(trained["result"])
    work = Path(trained["work"])
    job = TrainingJob(
        weights="yolov8n.yaml",
        data=str(work / "ds" / "data.yaml"),
        task="detect",
        config_dir=str(work / "yolo"),
        epochs=2,
        imgsz=160,
        batch=4,
    )
    score = validate_in_child(job, result.best, tmp_path / "run", timeout_s=300)
    assert score.metrics == pytest.approx(result.metrics, abs=1e-6)
    assert set(score.class_metrics or {}) == set(result.class_metrics or {}) and score.device == result.device
    assert not (tmp_path / "run" / "train").exists()


def test_training_failure_is_a_training_error(tmp_path: Path) -> None:
    """A failing child (missing dataset) raises TrainingError with the log tail, writing no result."""
    spec = {
        "data": str(tmp_path / "missing.yaml"),
        "weights": "yolov8n.yaml",
        "epochs": 1,
        "imgsz": 64,
        "batch": 2,
        "device": "cpu",
        "workers": 0,
        "config_dir": str(tmp_path / "yolo"),
    }
    with pytest.raises(TrainingError, match="exited with"):
        run_training_process(spec, tmp_path / "run", timeout_s=300)
    assert not (tmp_path / "run" / "result.json").exists()


def test_predictor_serves_current_version_and_swaps(
    trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """Predictions come back one per task in Label Studio format, and a newly published version is
    served within a second without restarting."""
    base_url, _ = image_server
    registry = Registry(tmp_path / "models")
    media = MediaConfig(None, None, allow_hosts=("127.0.0.1",))
    predictor = Predictor(registry, "yolov8n.yaml", trained["work"] / "yolo", tmp_path / "cache", 160, 0.0, media=media)
    tasks = [
        {"id": 1, "data": {"image": f"{base_url}/img1.png"}},
        {"id": 2, "data": {"image": f"{base_url}/missing.png"}},
        {"id": 3, "data": {"image": f"{base_url}/img3.png"}},
    ]
    untrained = predictor.predict(5, SPEC, tasks, None, None)
    assert untrained == [{"result": [], "score": 0.0, "model_version": "untrained"}] * 3

    publish_version(registry, 5, trained["result"]["best"], classes=list(SPEC.labels))
    out = predictor.predict(5, SPEC, tasks, None, None)
    assert [o["model_version"] for o in out] == ["v1"] * 3
    assert out[1]["result"] == []
    regions = out[0]["result"]
    assert regions, "conf=0 must give regions"
    for region in regions:
        assert region["from_name"] == "label" and region["to_name"] == "image"
        assert region["type"] == "rectanglelabels"
        assert (region["original_width"], region["original_height"]) == (160, 120)
        value = region["value"]
        assert value["rectanglelabels"][0] in SPEC.labels
        assert 0 <= value["x"] <= 100 and 0 <= value["width"] <= 100 - value["x"] + 1e-6
        assert 0 <= value["y"] <= 100 and 0 <= value["height"] <= 100 - value["y"] + 1e-6
        assert 0.0 <= region["score"] <= 1.0
    # least confidence: the task scores as its least confident candidate box (regions are among them)
    assert 0.0 <= out[0]["score"] <= min(r["score"] for r in regions) + 1e-6

    copy = tmp_path / "again.pt"
    shutil.copyfile(trained["result"]["best"], copy)
    publish_version(registry, 5, copy, classes=list(SPEC.labels))
    # The old model answers while v2 loads in the background; then v2 serves (a generous bound:
    # loading takes well under a second on an idle machine, but not on a loaded 2-core one).
    assert predictor.predict(5, SPEC, tasks[:1], None, None)[0]["model_version"] in {"v1", "v2"}
    deadline = time.monotonic() + 30.0
    while predictor.predict(5, SPEC, tasks[:1], None, None)[0]["model_version"] != "v2":
        assert time.monotonic() < deadline, "v2 not served within 30 s"


def test_training_reports_epochs_and_can_be_cancelled(trained: dict, tmp_path: Path) -> None:
    """The parent sees each finished epoch (epoch, epochs, metrics, training losses), and a cancel
    request stops the child process with TrainingError and no result."""
    data = str(Path(trained["work"]) / "ds" / "data.yaml")
    spec = {
        "data": data,
        "weights": "yolov8n.yaml",
        "epochs": 2,
        "imgsz": 96,
        "batch": 4,
        "device": "cpu",
        "workers": 0,
        "config_dir": str(Path(trained["work"]) / "yolo"),
    }
    seen: list[dict] = []
    # An augmentation argument of the job (AUGMENT_ARGS, bench.recipe --augment) reaches Ultralytics.
    run_training_process({**spec, "flipud": 0.5}, tmp_path / "ok", timeout_s=300, on_progress=seen.append, poll_s=0.05)
    assert "flipud: 0.5" in (tmp_path / "ok" / "train" / "args.yaml").read_text().splitlines()
    assert [p["epoch"] for p in seen][-1] == 2 and all(p["epochs"] == 2 for p in seen)
    assert "metrics/mAP50-95(B)" in seen[-1]["metrics"]
    losses = seen[-1]["losses"]
    assert {"train/box_loss", "train/cls_loss", "train/dfl_loss"} <= set(losses) and all(v > 0 for v in losses.values())

    progress: list[dict] = []
    with pytest.raises(TrainingError, match="cancelled"):
        run_training_process(
            {**spec, "epochs": 50},
            tmp_path / "cancel",
            timeout_s=300,
            on_progress=progress.append,
            should_cancel=lambda: bool(progress),
            poll_s=0.05,
        )
    assert progress[0]["epoch"] < 50
    assert not (tmp_path / "cancel" / "result.json").exists()


def _synthetic_dataset(root: Path, seeds: range, width: int, height: int) -> Path:
    """A YOLO dataset built by labelloop from generated, fully annotated images; returns data.yaml."""
    from labelloop.dataset.images import build_dataset, local_images

    (root / "src").mkdir(parents=True)
    files: dict[int, Path] = {}
    tasks = []
    for seed in seeds:
        sample = make_sample(seed, width, height)
        path = root / "src" / f"img{seed}.png"
        path.write_bytes(sample.png)
        files[seed + 1] = path
        tasks.append(
            {
                "id": seed + 1,
                "data": {"image": path.name},
                "annotations": [{"id": seed + 1, "result": sample.ls_result(), "was_cancelled": False}],
            }
        )
    return build_dataset(tasks, SPEC, root / "ds", local_images(files), 0.25, 2).data


def test_recipe_learns_from_a_dozen_annotated_images(tmp_path: Path) -> None:
    """12 annotated images, the recipe chosen from the built dataset (yolo26n.yaml from scratch,
    imgsz from the images, batch and nbs from the split, a 60 s budget): the trained model finds
    the objects of 16 held-out images with mAP50 above 0.5. Ultralytics' defaults (batch 16,
    nbs 64, imgsz 640, 20 epochs; LABELLOOP_TEST_OLD_RECIPE=1) stay near 0."""
    import os

    import yaml

    from labelloop.training.child import evaluate
    from labelloop.training.job import read_job
    from labelloop.training.recipe import DataShape, plan_recipe
    from labelloop.yolo_env import prepare_ultralytics

    data = _synthetic_dataset(tmp_path / "train", range(12), 160, 120)
    held_out = _synthetic_dataset(tmp_path / "held-out", range(100, 116), 160, 120)
    test_yaml = tmp_path / "held-out.yaml"
    held = yaml.safe_load(held_out.read_text())
    both = [f"{held['path']}/images/train", f"{held['path']}/images/val"]
    test_yaml.write_text(yaml.safe_dump({**yaml.safe_load(data.read_text()), "val": both}))

    n_train = len(list((data.parent / "images" / "train").iterdir()))
    n_val = len(list((data.parent / "images" / "val").iterdir()))
    if os.environ.get("LABELLOOP_TEST_OLD_RECIPE"):
        args = {"epochs": 20, "imgsz": 640, "batch": 16}
    else:
        recipe = plan_recipe(
            DataShape(n_train, n_val, 160),
            device="cpu",
            warm_start=False,
            pretrained=False,
            # A fixed step count rather than a time cap: the result must not depend on the machine's load
            # (40 epochs is what the 60 s cap reaches on 2 idle cores).
            overrides={"train_time_s": 900, "epochs": 40},
        )
        args = {k: v for k, v in recipe.to_dict().items() if k != "reasons"}
        assert (recipe.imgsz, recipe.batch, recipe.nbs) == (160, 2, 2)
    spec = {
        "data": str(data),
        "weights": "yolo26n.yaml",
        "device": "cpu",
        "workers": 0,
        "seed": 0,
        "config_dir": str(tmp_path / "yolo"),
        **args,
    }
    t0 = time.monotonic()
    result = run_training_process(spec, tmp_path / "run", timeout_s=600)
    prepare_ultralytics(tmp_path / "yolo")
    held_out_job = read_job({**spec, "data": str(test_yaml)})
    held_metrics = evaluate(result["best"], held_out_job, "cpu", tmp_path / "held-out-val")
    print(f"recipe {args}: held-out {held_metrics}, {time.monotonic() - t0:.0f} s, epochs {result['epochs_run']}")
    assert held_metrics["map50"] > 0.5, held_metrics


def test_asset_that_cannot_be_downloaded_trains_its_yaml(trained: dict, tmp_path: Path) -> None:
    """A pretrained asset to fetch (the machine looked online) whose download fails: Ultralytics'
    own download is tried for real, then the family's YAML trains, and the result says why."""
    spec = {
        "data": str(Path(trained["work"]) / "ds" / "data.yaml"),
        "weights": str(tmp_path / "weights" / "yolo26n.pt"),
        "fallback_weights": "yolo26n.yaml",
        "epochs": 1,
        "imgsz": 64,
        "batch": 4,
        "device": "cpu",
        "workers": 0,
        "config_dir": str(Path(trained["work"]) / "yolo"),
    }
    result = run_training_process(spec, tmp_path / "run", timeout_s=300)
    assert result["weights"] == "yolo26n.yaml"
    assert "yolo26n.pt could not be loaded or downloaded" in result["base_model_note"]
    assert Path(result["best"]).is_file()
