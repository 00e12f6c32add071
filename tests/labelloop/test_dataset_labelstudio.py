"""Dataset builder against a real Label Studio: every task type is exported, built, accepted by
Ultralytics (one epoch of real training) and predicted back in the tag's own region type; rebuilds
are incremental; class ids are stable; uploads, http URLs and EXIF-rotated JPEGs all work."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from PIL import Image, ImageDraw

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.stack import Stack, free_port
from labelloop.dev.synthetic import LABELS, Sample, make_sample
from labelloop.errors import DatasetError, LabelConfigError
from labelloop.events.changes import ChangeLog, label_config_digest
from labelloop.files import write_atomic
from labelloop.jobs.datasets import build_project_dataset
from labelloop.labelstudio.export import SYNC_OVERLAP_S
from labelloop.ls_json import Region, RegionValue
from labelloop.redis_client import client as redis_client
from labelloop.registry.base_models import for_task
from labelloop.registry.params import ProjectParams, store
from labelloop.registry.store import Registry
from labelloop.serving.predictor import Predictor
from labelloop.settings import Settings
from labelloop.task_types.convert import mask_to_brush
from labelloop.training.process import run_training_process
from tests.factories import image_project, make_settings, publish_version, settings_env

pytestmark = pytest.mark.labelstudio  # every test here reads a real Label Studio

W, H = 160, 120
IMAGES = 8
KEYPOINTS = ("center", "corner")

CONFIGS = {
    "detect": "RectangleLabels",
    "obb": "RectangleLabels",
    "polygon": "PolygonLabels",
    "brush": "BrushLabels",
    "pose": "RectangleLabels",
    "classify": "Choices",
}
# Ultralytics task, YOLO label tokens per line (None: any), region types /predict answers with.
EXPECT: dict[str, tuple[str, Any, set[str]]] = {
    "detect": ("detect", 5, {"rectanglelabels"}),
    "obb": ("obb", 9, {"rectanglelabels"}),
    "polygon": ("segment", None, {"polygonlabels"}),
    "brush": ("segment", None, {"brushlabels"}),
    "pose": ("pose", 5 + 3 * len(KEYPOINTS), {"rectanglelabels", "keypointlabels"}),
    "classify": ("classify", None, {"choices"}),
}


def label_config(kind: str) -> str:
    tag = CONFIGS[kind]
    child = "Choice" if tag == "Choices" else "Label"
    body = f'<{tag} name="label" toName="image">' + "".join(f'<{child} value="{n}"/>' for n in LABELS) + f"</{tag}>"
    if kind == "pose":
        body += '<KeyPointLabels name="kp" toName="image">'
        body += "".join(f'<Label value="{n}"/>' for n in KEYPOINTS) + "</KeyPointLabels>"
    return f'<View><Image name="image" value="$image"/>{body}</View>'


def _region(rid: str, rtype: str, value: RegionValue, from_name: str = "label") -> Region:
    return {
        "id": rid,
        "from_name": from_name,
        "to_name": "image",
        "type": rtype,
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": value,
    }


def annotation(kind: str, sample: Sample) -> list[Region]:
    """The sample's shapes as a Label Studio result for a kind of project."""
    if kind == "classify":
        return [_region("c0", "choices", {"choices": [sample.boxes[0][0]]})]
    if kind == "detect":
        return sample.ls_result()
    out: list[Region] = []
    for i, (label, x, y, w, h) in enumerate(sample.boxes):
        pct = {"x": x / W * 100, "y": y / H * 100, "width": w / W * 100, "height": h / H * 100}
        if kind == "obb":
            out.append(_region(f"r{i}", "rectanglelabels", {**pct, "rotation": 20, "rectanglelabels": [label]}))
        elif kind == "polygon":
            if label == "square":
                pts = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
            else:
                pts = [
                    (x + w / 2 + w / 2 * math.cos(a), y + h / 2 + h / 2 * math.sin(a))
                    for a in np.linspace(0, 2 * math.pi, 16, endpoint=False)
                ]
            points = [[px / W * 100, py / H * 100] for px, py in pts]
            out.append(_region(f"r{i}", "polygonlabels", {"points": points, "closed": True, "polygonlabels": [label]}))
        elif kind == "brush":
            im = Image.new("L", (W, H), 0)
            draw = ImageDraw.Draw(im)
            (draw.rectangle if label == "square" else draw.ellipse)([x, y, x + w - 1, y + h - 1], fill=255)
            value = {**mask_to_brush(np.array(im)), "brushlabels": [label]}
            out.append(_region(f"r{i}", "brushlabels", value))
        elif kind == "pose":
            out.append(_region(f"r{i}", "rectanglelabels", {**pct, "rotation": 0, "rectanglelabels": [label]}))
            center = {"x": (x + w / 2) / W * 100, "y": (y + h / 2) / H * 100, "width": 1, "keypointlabels": ["center"]}
            corner = {"x": (x + 1) / W * 100, "y": (y + 1) / H * 100, "width": 1, "keypointlabels": ["corner"]}
            # Generated shapes overlap, so keypoints name their box (containment is unit-tested).
            keypoints = [
                _region(f"k{i}a", "keypointlabels", center, "kp"),
                _region(f"k{i}b", "keypointlabels", corner, "kp"),
            ]
            for kp in keypoints:
                kp["parentID"] = f"r{i}"
            out += keypoints
    return out


def settings_for(tmp_path: Path, url: str, token: str, **extra: Any) -> Settings:
    """The settings of a build from this Label Studio, images on the loopback ``image_server`` allowed."""
    return make_settings(tmp_path, label_studio=(url, token), media_allow_hosts="127.0.0.1", **extra)


@pytest.fixture(scope="module")
def api(label_studio: tuple[str, str]) -> LabelStudioAPI:
    return LabelStudioAPI(*label_studio)


def project(api: LabelStudioAPI, kind: str, n: int = IMAGES, annotate: int = IMAGES - 1) -> tuple[int, list[int]]:
    samples = [make_sample(100 + i, W, H) for i in range(n)]
    return image_project(
        api,
        f"dataset-{kind}",
        samples,
        annotate=annotate,
        label_config=label_config(kind),
        result=lambda sample: annotation(kind, sample),
    )


def _label_lines(data_dir: Path) -> list[str]:
    return [line for f in sorted((data_dir / "labels").rglob("*.txt")) for line in f.read_text().splitlines()]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_every_task_type_builds_trains_and_predicts(
    kind: str, api: LabelStudioAPI, label_studio: tuple[str, str], tmp_path: Path
) -> None:
    """Label Studio project -> dataset of the right Ultralytics task -> one epoch of real training
    -> /predict regions of the tag's own type."""
    task, tokens, region_types = EXPECT[kind]
    pid, ids = project(api, kind)
    settings = settings_for(tmp_path, *label_studio)
    built = build_project_dataset(settings, pid)
    report = built.report
    assert built.spec.task == task == report.task
    assert report.images["train"] + report.images["val"] == IMAGES - 1
    assert report.images["val"] >= 1 and report.images_downloaded == IMAGES - 1
    assert report.skipped == [] and report.dropped_regions == []
    assert built.names == dict(enumerate(LABELS))
    on_disk = json.loads((tmp_path / "models" / str(pid) / "classes.json").read_text())
    assert on_disk == {"label": {"0": "square", "1": "disc"}}
    if task == "classify":
        assert built.data.is_dir()
        files = sorted(p.relative_to(built.data).parts[1] for p in built.data.glob("*/*/*.png"))
        assert len(files) == IMAGES - 1 and set(files) <= {"0", "1"}
        assert yaml.safe_load((built.data / ".ndjson.yaml").read_text())["names"] == {0: "square", 1: "disc"}
    else:
        data = yaml.safe_load(built.data.read_text())
        assert data["names"] == {0: "square", 1: "disc"}
        lines = _label_lines(built.data.parent)
        assert len(lines) >= IMAGES - 1
        for line in lines:
            parts = line.split()
            coords = [v for i, v in enumerate(parts[1:]) if task != "pose" or i < 4 or (i - 4) % 3 != 2]
            assert parts[0] in {"0", "1"} and all(0.0 <= float(v) <= 1.0 for v in coords)
            if tokens is not None:
                assert len(parts) == tokens
            else:
                assert len(parts) >= 7 and len(parts) % 2 == 1
        if task == "pose":
            assert data["kpt_shape"] == [len(KEYPOINTS), 3]
            assert all(line.split()[7] == "2" and line.split()[10] == "2" for line in lines)
        if kind == "brush":  # one polygon per shape, traced from the decoded RLE mask
            assert len(lines) == sum(len(make_sample(100 + i, W, H).boxes) for i in range(IMAGES - 1))

    result = run_training_process(
        {
            "data": str(built.data),
            "task": task,
            "weights": for_task("yolov8n.yaml", task),
            "epochs": 1,
            "imgsz": 64,
            "batch": 4,
            "device": "cpu",
            "workers": 0,
            "seed": 0,
            "config_dir": str(tmp_path / "yolo"),
        },
        tmp_path / "run",
        timeout_s=600,
    )
    assert Path(result["best"]).exists()
    assert ("accuracy_top1" if task == "classify" else "map50_95") in result["metrics"]

    registry = Registry(settings.models_dir)
    names = {str(k): v for k, v in built.names.items()}
    publish_version(registry, pid, result["best"], task=task, from_name="label", names=names)
    predictor = Predictor(registry, "yolov8n.yaml", tmp_path / "yolo", tmp_path / "cache", 64, 0.001, "cpu")
    tasks = [{"id": ids[-1], "data": {"image": api.sdk.tasks.get(id=str(ids[-1])).data["image"]}}]
    spec = built.spec.with_task("detect") if task == "obb" else built.spec
    [out] = predictor.predict(pid, spec, tasks, *label_studio, imgsz=64)
    assert out["model_version"] == registry.current_name(pid)
    assert out["result"], f"{kind}: no regions at conf 0.001"
    assert {r["type"] for r in out["result"]} <= region_types
    for region in out["result"]:
        assert region["to_name"] == "image" and region["original_width"] == W and region["original_height"] == H
        assert region["from_name"] == ("kp" if region["type"] == "keypointlabels" else "label")
    if task == "obb":
        assert all("rotation" in r["value"] for r in out["result"])
    if task == "classify":
        assert len(out["result"]) == 1 and out["result"][0]["value"]["choices"][0] in LABELS
    if kind == "brush":
        assert all(r["value"]["format"] == "rle" and r["value"]["rle"] for r in out["result"])
    # Label Studio validates predictions against the label config: it must take these as they are.
    stored = api.sdk.predictions.create(
        task=ids[-1], result=out["result"], score=out["score"], model_version=out["model_version"]
    )
    [back] = [p for p in api.sdk_predictions(ids[-1]) if p["id"] == stored.id]
    assert [r["type"] for r in back["result"]] == [r["type"] for r in out["result"]]
    assert back["model_version"] == out["model_version"]


def test_rebuild_after_one_annotation_fetches_one_task_and_writes_two_files(
    api: LabelStudioAPI, label_studio: tuple[str, str], tmp_path: Path
) -> None:
    """The second build reads only changed tasks, downloads one image and writes its image and label;
    an update rewrites one label; a deleted task disappears (project counters force a full read)."""
    pid, ids = project(api, "detect", n=10, annotate=8)
    settings = settings_for(tmp_path, *label_studio)
    time.sleep(SYNC_OVERLAP_S + 1.5)  # tasks changed in the overlap (+1 s of Date resolution) are read again
    first = build_project_dataset(settings, pid)
    assert first.report.sync["mode"] == "full" and first.report.images_downloaded == 8
    assert first.report.sync["label_config_sha1"] == label_config_digest(api.sdk.projects.get(id=pid).label_config)
    assert first.report.files_written == 16

    time.sleep(SYNC_OVERLAP_S + 1.5)
    sample = make_sample(100 + 8, W, H)
    api.annotate(ids[8], sample.ls_result())
    second = build_project_dataset(settings, pid)
    assert second.report.sync["mode"] == "incremental"
    assert second.report.sync["tasks_fetched"] == 1
    assert (second.report.images_downloaded, second.report.images_cached) == (1, 8)
    assert second.report.files_written == 2
    assert second.report.fingerprint != first.report.fingerprint
    split = "val" if (first.data.parent / "labels" / "val" / f"{ids[8]}.txt").exists() else "train"
    assert (first.data.parent / "labels" / split / f"{ids[8]}.txt").read_text().count("\n") == len(sample.boxes)

    # An update of an annotation: the newest one is used, one label file is rewritten.
    task: Any = api.sdk.tasks.get(id=str(ids[0]))
    ann_id = task.annotations[0]["id"]
    api.sdk.annotations.update(id=ann_id, result=sample.ls_result()[:1])
    third = build_project_dataset(settings, pid)
    assert third.report.files_written == 1 and third.report.images_downloaded == 0
    label = next((first.data.parent / "labels").rglob(f"{ids[0]}.txt"))
    assert label.read_text().count("\n") == 1

    # A deleted task: the counters disagree, the project is read in full, its files go away.
    api.sdk.tasks.delete(id=str(ids[1]))
    fourth = build_project_dataset(settings, pid)
    assert fourth.report.sync["mode"] == "full"
    assert not list((first.data.parent / "images").rglob(f"{ids[1]}.*"))
    assert fourth.report.images["train"] + fourth.report.images["val"] == 8

    # Unchanged: nothing fetched, nothing written, the same fingerprint.
    fifth = build_project_dataset(settings, pid)
    assert fifth.report.files_written == 0 and fifth.report.fingerprint == fourth.report.fingerprint


def test_rebuilds_apply_recorded_webhooks_and_match_a_read_of_label_studio(
    api: LabelStudioAPI, label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """With the receiver recording Label Studio's webhooks, rebuilds read only the tasks they name:
    a new annotation, an update, a skip and a delete come from the change log, and each dataset is
    the one a build reading Label Studio writes. A webhook lost while the receiver was down: the
    receiver that starts makes a gap, that rebuild reads Label Studio, and the log is trusted again
    after it."""
    # The receiver has labelloop's Label Studio token: it takes webhooks of projects the token can
    # read (the project is never connected as an ML backend here).
    env = settings_env(tmp_path / "receiver", redis_url=redis_url, label_studio=label_studio)
    stack = Stack(tmp_path / "stack", env)
    port = free_port()
    receiver = stack.start_receiver(port)
    try:
        pid, ids = project(api, "detect", n=10, annotate=5)
        hook: Any = api.sdk.webhooks.create(
            project=pid, url=receiver + "/webhook", send_payload=True, send_for_all_actions=True
        )
        log = ChangeLog(redis_client(redis_url, "cli"))
        settings = settings_for(tmp_path, *label_studio)
        samples = [make_sample(100 + i, W, H) for i in range(10)]

        def build(mode: str, fetched: int | None = None) -> Any:
            built = build_project_dataset(settings, pid, changes=log)
            assert built.report.sync["mode"] == mode, built.report.sync
            if fetched is not None:
                assert built.report.sync.get("changes", built.report.sync["tasks_fetched"]) == fetched
            reference = build_project_dataset(settings_for(tmp_path / f"ref-{time.monotonic_ns()}", *label_studio), pid)
            assert reference.report.sync["mode"] == "full"
            assert built.report.fingerprint == reference.report.fingerprint
            assert built.report.images == reference.report.images
            return built.report

        build("full")
        # Nothing recorded since (the annotation was saved without a webhook): Label Studio is read.
        api.sdk.webhooks.update(id=hook.id, url=receiver + "/webhook", is_active=False)
        api.annotate(ids[4], [])
        api.sdk.webhooks.update(id=hook.id, url=receiver + "/webhook", is_active=True)
        assert "no webhook recorded" in build("incremental").sync["change_log"]

        api.annotate(ids[5], samples[5].ls_result())
        report = build("change log", 1)
        assert (report.images_downloaded, report.images_cached) == (1, 5)
        # Its image and label; plus, with so few tasks, a task the minimum val count had moved
        # to val goes back (image and label) when the new task hashes into val.
        assert report.files_written in (2, 4)
        assert report.background_images == 1

        task: Any = api.sdk.tasks.get(id=str(ids[0]))
        api.sdk.annotations.update(id=task.annotations[0]["id"], result=samples[0].ls_result()[:1])
        api.sdk.annotations.create(id=ids[6], result=[], was_cancelled=True)
        assert build("change log", 2).files_written == 1

        task = api.sdk.tasks.get(id=str(ids[1]))
        api.sdk.annotations.delete(id=task.annotations[0]["id"])
        report = build("change log", 1)
        assert report.images["train"] + report.images["val"] == 5

        # The receiver is down: Label Studio drops that webhook and never resends it.
        stack.stop("receiver")
        api.annotate(ids[7], samples[7].ls_result())
        stack.start_receiver(port)
        api.annotate(ids[8], samples[8].ls_result())
        report = build("incremental")
        # The receiver that started cannot know what it refused before: a gap in every log.
        assert "refused" in report.sync["change_log"]
        assert report.images["train"] + report.images["val"] == 7

        api.annotate(ids[9], samples[9].ls_result())
        build("change log", 1)
        # Label Studio is still read, and compared task by task, at least every dataset_verify_s seconds.
        settings = settings.model_copy(update={"dataset_verify_s": 0.0})
        report = build("verify")
        assert "last read" in report.sync["change_log"] and report.sync["corrected"] == 0
    finally:
        stack.stop_all()


def test_periodic_verification_corrects_an_update_the_updated_at_filter_missed(
    api: LabelStudioAPI, label_studio: tuple[str, str], tmp_path: Path
) -> None:
    """An annotation changed in Label Studio while its webhook was lost, dated before the incremental
    read's cursor (clock skew between hosts), is never read by that filter; the periodic verification
    compares what is stored with Label Studio task by task and the dataset is corrected."""
    pid, ids = project(api, "detect", n=6, annotate=5)
    settings = settings_for(tmp_path, *label_studio)
    first = build_project_dataset(settings, pid)
    assert first.report.sync["mode"] == "full"
    # This host's idea of Label Studio's time runs an hour ahead of Label Studio's own.
    store = settings.paths.dataset_dir(pid) / "tasks.json"
    state = orjson.loads(store.read_bytes())
    state["server_time"] += 3600
    write_atomic(store, orjson.dumps(state))
    task: Any = api.sdk.tasks.get(id=str(ids[0]))
    api.sdk.annotations.update(id=task.annotations[0]["id"], result=make_sample(100, W, H).ls_result()[:1])

    missed = build_project_dataset(settings, pid)
    assert (missed.report.sync["mode"], missed.report.sync["tasks_fetched"]) == ("incremental", 0)
    assert missed.report.fingerprint == first.report.fingerprint
    verified = build_project_dataset(settings.model_copy(update={"dataset_verify_s": 0.0}), pid)
    assert verified.report.sync["mode"] == "verify" and verified.report.sync["corrected"] == 1
    reference = build_project_dataset(settings_for(tmp_path / "reference", *label_studio), pid)
    assert verified.report.fingerprint == reference.report.fingerprint != first.report.fingerprint
    label = next((verified.data.parent / "labels").rglob(f"{ids[0]}.txt"))
    assert label.read_text().count("\n") == 1


def test_annotation_choice_backgrounds_and_unknown_labels(
    api: LabelStudioAPI, label_studio: tuple[str, str], tmp_path: Path
) -> None:
    """Skipped tasks are skipped, ground truth wins over newer annotations, an empty annotation is a
    background image, and labels the config lacks are reported and skipped."""
    pid, ids = project(api, "detect", n=6, annotate=3)
    samples = [make_sample(100 + i, W, H) for i in range(6)]
    api.sdk.annotations.create(id=ids[3], result=[], was_cancelled=True)  # skipped by the annotator
    api.annotate(ids[4], [])  # completed, no regions: background
    ground = api.sdk.annotations.create(id=ids[0], result=samples[0].ls_result()[:1], ground_truth=True)
    assert ground.id
    api.annotate(ids[0], [])  # newer, but not ground truth
    alien = samples[1].ls_result()
    alien[0]["value"]["rectanglelabels"] = ["cat"]
    api.annotate(ids[1], alien)  # newest annotation of task 1 has a label the config lacks
    built = build_project_dataset(settings_for(tmp_path, *label_studio), pid)
    report = built.report
    assert report.skipped_counts == {"skipped by annotator": 1}
    assert report.background_images == 1
    assert report.unknown_labels == {"cat": 1}
    assert any("cat" in d["reason"] for d in report.dropped_regions)
    lines = next((built.data.parent / "labels").rglob(f"{ids[0]}.txt")).read_text().splitlines()
    assert len(lines) == 1  # the ground-truth annotation's one box
    saved = json.loads((built.data.parent / "report.json").read_text())
    assert saved["unknown_labels"] == {"cat": 1} and "export" in saved["seconds"]


def test_class_ids_are_stable_when_labels_are_added_and_removed(
    api: LabelStudioAPI, label_studio: tuple[str, str], tmp_path: Path
) -> None:
    """A label added to the config gets the next id; a removed label keeps its id reserved."""
    pid, _ = project(api, "detect", n=4, annotate=4)
    settings = settings_for(tmp_path, *label_studio)
    assert build_project_dataset(settings, pid).names == {0: "square", 1: "disc"}
    config = (
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
        '<Label value="triangle"/><Label value="disc"/></RectangleLabels></View>'
    )
    api.sdk.projects.update(id=pid, label_config=config)
    built = build_project_dataset(settings, pid)
    assert built.names == {0: "square", 1: "disc", 2: "triangle"}
    assert yaml.safe_load(built.data.read_text())["names"] == {0: "square", 1: "disc", 2: "triangle"}
    classes = {line.split()[0] for line in _label_lines(built.data.parent)}
    assert classes <= {"1"}  # squares are no longer in the config: dropped and reported, disc keeps id 1
    assert built.report.unknown_labels.get("square", 0) > 0


def test_http_urls_and_exif_rotated_uploads(
    api: LabelStudioAPI, label_studio: tuple[str, str], image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """Tasks pointing at plain http URLs (allow-listed host) and an EXIF-rotated JPEG upload build
    into the same dataset; the JPEG is stored upright and its box matches what the annotator saw."""
    base_url, root = image_server
    pid = api.create_project("dataset-http", label_config("detect"))
    upright = make_sample(7, W, H)
    # The camera stored the image rotated: pixels turned 90 degrees, EXIF orientation 6 turns them back.
    stored = Image.open(io.BytesIO(upright.png)).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    import httpx

    url, token = label_studio
    resp = httpx.post(
        f"{url}/api/projects/{pid}/import",
        headers={"Authorization": f"Token {token}"},
        files={"file0": ("rotated.jpg", buf.getvalue(), "image/jpeg")},
        timeout=60,
    )
    resp.raise_for_status()
    http_tasks = [{"image": f"{base_url}/img{i}.png"} for i in range(3)]
    api.sdk.projects.import_tasks(id=pid, request=http_tasks)
    tasks: list[Any] = sorted(api.sdk.tasks.list(project=pid), key=lambda t: t.id)
    for t in tasks:
        source = str(t.data["image"])
        sample = (
            upright if source.endswith("rotated.jpg") else make_sample(int(source.rsplit("img", 1)[1][:-4]), 160, 120)
        )
        api.annotate(t.id, sample.ls_result())
    built = build_project_dataset(settings_for(tmp_path, url, token), pid)
    assert built.report.images["train"] + built.report.images["val"] == 4
    rotated_id = next(t.id for t in tasks if str(t.data["image"]).endswith("rotated.jpg"))
    image = next((built.data.parent / "images").rglob(f"{rotated_id}.*"))
    with Image.open(image) as im:
        assert im.size == (W, H)
        assert im.getexif().get(0x0112, 1) == 1
    label, x, y, w, h = upright.boxes[0]
    line = next((built.data.parent / "labels").rglob(f"{rotated_id}.txt")).read_text().splitlines()[0].split()
    assert int(line[0]) == LABELS.index(label)
    assert [float(v) for v in line[1:]] == pytest.approx([(x + w / 2) / W, (y + h / 2) / H, w / W, h / H], abs=1e-4)


def test_untrainable_configs_and_too_little_data_are_clear_errors(
    api: LabelStudioAPI, label_studio: tuple[str, str], tmp_path: Path
) -> None:
    """An ambiguous config names the control tags and the extra param that picks one; one annotated
    task is too little data, with the counts in the message."""
    config = label_config("polygon").replace(
        "</View>", '<Choices name="quality" toName="image"><Choice value="good"/></Choices></View>'
    )
    samples = [make_sample(1, W, H), make_sample(2, W, H)]
    pid, _ = image_project(
        api, "dataset-ambiguous", samples, annotate=1, label_config=config, result=lambda s: annotation("polygon", s)
    )
    settings = settings_for(tmp_path, *label_studio)
    with pytest.raises(LabelConfigError, match="control_tag"):
        build_project_dataset(settings, pid)
    store(settings.models_dir, pid, ProjectParams(control_tag="label"))
    with pytest.raises(DatasetError, match=r"too little data to train: 1 usable images .*of 1 annotated tasks"):
        build_project_dataset(settings, pid)


def test_cli_builds_a_dataset_without_training(
    api: LabelStudioAPI, label_studio: tuple[str, str], tmp_path: Path
) -> None:
    """``labelloop dataset build <project> <folder>`` writes the dataset and prints the report's counts."""
    import os
    import subprocess
    import sys

    pid, _ = project(api, "polygon", n=5, annotate=5)
    env = {**os.environ, **settings_env(tmp_path, label_studio=label_studio)}
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "dataset", "build", str(pid), str(tmp_path / "ds")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert "dataset (segment)" in out.stdout and "downloaded 5, cached 0" in out.stdout
    assert (tmp_path / "ds" / "data.yaml").exists() and (tmp_path / "ds" / "report.json").exists()
    assert len(list((tmp_path / "ds" / "labels").rglob("*.txt"))) == 5


@pytest.mark.parametrize("kind", ["classify", "polygon"])
def test_pipeline_versions_of_other_task_types(
    kind: str, api: LabelStudioAPI, label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """The training pipeline publishes versions of classification and segmentation models: the first
    starts from the task's variant of the default base model (yolo26n.pt; offline, its YAML, which the
    manifest records), the next fine-tunes it and is gated against it on the task's
    own metric (top-1 accuracy for classify, mask mAP50-95 for segment); the manifest carries the task,
    the control tag, the class ids and the dataset report."""
    from labelloop.jobs.pipeline import run_training

    task = EXPECT[kind][0]
    pid, _ = project(api, kind)
    settings = settings_for(
        tmp_path,
        *label_studio,
        redis_url=redis_url,
        epochs=1,
        imgsz=64,
        batch=4,
        dataloader_workers=0,
        device="cpu",
        offline=True,
    )
    first = run_training(settings, pid, "run-1")
    manifest = first.manifest
    assert manifest["task"] == task and manifest["from_name"] == "label"
    assert manifest["names"] == {"0": "square", "1": "disc"}
    assert manifest["train_args"]["weights"] == for_task("yolo26n.yaml", task)
    assert manifest["base_model"]["requested"] == "yolo26n.pt"
    assert (manifest["base_model"]["source"], manifest["base_model"]["pretrained"]) == ("offline-yaml", False)
    assert manifest["recipe"]["reasons"]["imgsz"] == "set" and manifest["train_args"]["nbs"] == 4
    assert manifest["dataset"]["task"] == task and manifest["dataset"]["images"]["val"] >= 1
    metric = "accuracy_top1" if task == "classify" else "map50_95"
    assert manifest["promotion"]["metric"] == metric and manifest["promotion"]["promoted"]
    if task == "segment":
        assert "box_map50_95" in manifest["metrics"]

    second = run_training(settings, pid, "run-2")
    assert second.manifest["train_args"]["weights"] == str(first.weights)
    assert second.manifest["incumbent"]["version"] == first.name
    assert metric in second.manifest["incumbent"]["metrics"]
    assert second.manifest["dataset"]["sync"]["mode"] == "incremental"
    assert second.manifest["dataset"]["images_downloaded"] == 0

    # A label added to the config: the next version still fine-tunes the served one (its layers
    # that fit), gets the new class id, and still goes through the gate: the served version is
    # validated on the candidate's split and compared on the classes both know (issue 21).
    child = "Choice" if task == "classify" else "Label"
    config = label_config(kind).replace('value="disc"/>', f'value="disc"/><{child} value="star"/>')
    api.sdk.projects.update(id=pid, label_config=config)
    served = Registry(settings.models_dir).current(pid)  # the second, unless the gate kept the first
    assert served is not None and served.name in {first.name, second.name}
    third = run_training(settings, pid, "run-3")
    assert third.manifest["names"] == {"0": "square", "1": "disc", "2": "star"}
    assert third.manifest["train_args"]["weights"] == str(served.weights)
    assert third.manifest["incumbent"]["version"] == served.name and third.manifest["incumbent"]["metrics"]
    assert isinstance(third.manifest["promotion"]["promoted"], bool) and third.manifest["promotion"]["reason"]


def test_uploads_read_from_a_mounted_media_folder(
    api: LabelStudioAPI, label_studio: tuple[str, str], label_studio_data_dir: Path, tmp_path: Path
) -> None:
    """With Label Studio's media folder mounted (``LABEL_STUDIO_MEDIA_DIR``), uploaded images are read
    from disk: the build matches the downloaded one, and a wrong token shows Label Studio was not asked
    for images."""
    pid, _ = project(api, "detect", n=5, annotate=5)
    downloaded = build_project_dataset(settings_for(tmp_path / "http", *label_studio), pid)
    url, token = label_studio
    settings = settings_for(tmp_path / "disk", url, token, label_studio_media_dir=label_studio_data_dir / "media")
    from_disk = build_project_dataset(settings, pid)
    assert from_disk.report.images_downloaded == 5 and from_disk.report.skipped == []
    assert from_disk.report.fingerprint == downloaded.report.fingerprint

    from labelloop.labelstudio.media import ImageCache, MediaConfig

    task: Any = api.sdk.tasks.list(project=pid).items[0]
    config = MediaConfig(url, "not-a-valid-token", media_dir=label_studio_data_dir / "media")
    with ImageCache(tmp_path / "c2", config) as cache:
        assert cache.get(task.id, task.data["image"]).width == W
