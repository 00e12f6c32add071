"""A video project through the loop against a real Label Studio 1.23.2: generated MP4s uploaded as
video tasks, keyframes saved through the API, the dataset built from Label Studio (videos fetched
through the guarded media path with Label Studio's token), a real training, tracks predicted by the
pre-annotation queue's function and stored by Label Studio, read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic_video import GeneratedVideo, video_result, write_video
from labelloop.jobs.pipeline import run_training
from labelloop.labelstudio import client as labelstudio
from labelloop.labelstudio.media import MediaConfig
from labelloop.registry.store import Registry
from labelloop.serving.preannotate import preannotate_project
from labelloop.serving.predictor import Predictor
from labelloop.serving.video import VideoOptions
from labelloop.task_types.keyframes import frame_boxes
from tests.factories import LOW_TRACKER, make_settings, video_project

pytestmark = pytest.mark.labelstudio

FRAMES = 48


def _result(video: GeneratedVideo, every: int) -> list[dict[str, Any]]:
    return video_result(video, every, prefix="trk", origin="manual")


def test_a_video_project_trains_on_keyframes_and_label_studio_stores_its_tracks(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """Keyframes of three annotated videos become a detect dataset split by video and train a
    version; the fourth video's pre-annotation is one VideoRectangle per track with its label, score,
    framesCount, duration and fewer keyframes than frames, stored by Label Studio with the version."""
    url, token = label_studio
    api = LabelStudioAPI(url, token)
    videos = [write_video(tmp_path / f"clip{i}.mp4", seed=20 + i, frames=FRAMES, shapes=2) for i in range(4)]
    pid, ids, _ = video_project(api, "labelloop video loop", videos)
    for tid, video in zip(ids[:3], videos[:3], strict=True):
        api.annotate(tid, _result(video, every=6))

    settings = make_settings(
        tmp_path,
        redis_url=redis_url,
        label_studio=label_studio,
        base_model="yolov8n.yaml",
        epochs=5,
        imgsz=192,
        batch=4,
        dataloader_workers=0,
        device="cpu",
        offline=True,
        video_frame_stride=2,
    )
    version = run_training(settings, pid, "run-1")
    manifest = version.manifest
    assert manifest["task"] == "detect" and manifest["from_name"] == "box"
    assert manifest["spec"]["region_type"] == "videorectangle"
    dataset = manifest["dataset"]
    assert dataset["images_downloaded"] == 3  # through Label Studio's /data/upload with its token
    frames = dataset["images"]["train"] + dataset["images"]["val"]
    assert frames >= 3 * FRAMES // 2 - 3 and dataset["images"]["val"] % 1 == 0
    assert manifest["promotion"]["promoted"]

    tracker = tmp_path / "low-bytetrack.yaml"
    tracker.write_text(LOW_TRACKER)
    predictor = Predictor(
        Registry(settings.models_dir),
        settings.base_model,
        settings.paths.yolo_config_dir,
        Path(settings.cache_dir).absolute(),
        settings.imgsz,
        conf=0.001,
        device="cpu",
        media=MediaConfig.from_settings(settings),
        show_conf=0.0,
        video=VideoOptions(tracker=str(tracker), tolerance=1.0),
    )
    client = labelstudio.client(url, token)
    outcome = preannotate_project(client, predictor, pid, version.name, 2, url, token, set_model_version=True)
    assert outcome.get("stopped") is None, outcome

    [stored] = api.sdk_predictions(ids[3])
    assert stored["model_version"] == version.name and 0.0 <= stored["score"] <= 1.0
    regions = stored["result"]
    assert regions, "no track predicted"
    keyframes = drawn = 0
    for region in regions:
        value = region["value"]
        assert (region["type"], region["from_name"], region["to_name"]) == ("videorectangle", "box", "video")
        assert value["labels"][0] in ("square", "disc") and 0.0 <= region["score"] <= 1.0
        assert (value["framesCount"], value["duration"]) == (FRAMES, pytest.approx(FRAMES / 24.0))
        seq = value["sequence"]
        assert [k["frame"] for k in seq] == sorted(k["frame"] for k in seq) and not seq[-1]["enabled"]
        keyframes += len(seq)
        drawn += len(frame_boxes(seq, FRAMES))
    print(f"{len(regions)} tracks, {keyframes} keyframes for {drawn} frames drawn")
    assert keyframes < drawn


def test_first_picks_leave_a_video_project_alone(label_studio: tuple[str, str], redis_url: str, tmp_path: Path) -> None:
    """Before a video project's first version, first picks (which describe images) answer
    ``not_applicable`` without downloading the videos as images or importing predictions."""
    from labelloop.jobs.jobs import Jobs

    url, token = label_studio
    api = LabelStudioAPI(url, token)
    videos = [write_video(tmp_path / f"clip{i}.mp4", seed=40 + i, frames=12) for i in range(2)]
    pid, _, _ = video_project(api, "labelloop video first picks", videos)
    settings = make_settings(tmp_path, redis_url=redis_url, label_studio=label_studio)
    outcome = Jobs(settings, lambda *a: None).first_picks(pid, lambda meta: None)
    assert outcome["status"] == "not_applicable" and outcome["imported"] == 0, outcome
    assert not [p for t in api.sdk.tasks.list(project=pid) for p in api.sdk_predictions(int(t.id))]
