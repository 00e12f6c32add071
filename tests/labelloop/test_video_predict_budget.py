"""The interactive tracking budget of a ``/predict`` selection of long videos
(``labelloop.serving.selection.predict_selection`` -> ``Predictor.predict`` -> ``Inference.track``):
the videos share it, so the answer comes near the deadline however many videos were selected."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import structlog

from labelloop.dev.synthetic_video import video_config, write_video
from labelloop.labelstudio.media import MediaConfig
from labelloop.registry.store import Registry
from labelloop.serving.predictor import Predictor
from labelloop.serving.selection import VIDEO_TRACK_SHARE, predict_selection
from labelloop.serving.video import VideoOptions
from labelloop.task_types.labels import parse_label_config
from tests.factories import publish_version
from tests.labelloop.test_selection import untrained_weights

SPEC = parse_label_config(video_config())
DEADLINE_S = 2.0
FRAMES = 240  # 10 s at 24 fps: several seconds of tracking on a CPU, well over the budget


@pytest.fixture
def predictor(tmp_path: Path) -> Predictor:
    """A predictor of project 7's v1 (an untrained YOLOv8n built from its YAML) over local files in
    ``tmp_path/media``, with the interactive video budget of a ``DEADLINE_S`` deadline."""
    registry = Registry(tmp_path / "models")
    publish_version(registry, 7, untrained_weights(tmp_path), classes=["square", "disc"], from_name="box")
    media = MediaConfig(label_studio_url=None, api_key=None, document_root=tmp_path / "media")
    return Predictor(
        registry,
        "yolov8n.yaml",
        tmp_path / "yolo",
        tmp_path / "cache",
        160,
        0.25,
        media=media,
        video=VideoOptions(budget_s=DEADLINE_S * VIDEO_TRACK_SHARE),
    )


def test_the_videos_of_a_selection_share_one_tracking_budget(predictor: Predictor, tmp_path: Path) -> None:
    """Three long videos in one /predict chunk answer within the deadline (not one budget per video
    after another): the first is tracked until the shared budget runs out, the others are not
    fetched, and each gets the version's empty prediction and a ``predict_video_deferred`` reason."""
    tasks = []
    for i in range(3):
        write_video(tmp_path / "media" / f"long{i}.mp4", seed=90 + i, frames=FRAMES)
        tasks.append({"id": 20 + i, "data": {"video": f"/data/local-files/?d=long{i}.mp4"}})
    predict_selection(predictor, 7, SPEC, tasks[:1], None, None, 16, 60.0)  # loads the model
    t0 = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        results = predict_selection(predictor, 7, SPEC, tasks, None, None, 16, DEADLINE_S)
    seconds = time.monotonic() - t0
    assert seconds <= DEADLINE_S, f"{seconds:.2f} s for a {DEADLINE_S} s deadline"
    assert results == [{"result": [], "score": r["score"], "model_version": "v1"} for r in results]  # type: ignore[index]
    deferred = {e["task_id"]: e["reason"] for e in logs if e["event"] == "predict_video_deferred"}
    assert sorted(deferred) == [20, 21, 22]
    assert f"of {FRAMES} frames" in deferred[20]
    assert all("spent before this video" in deferred[t] for t in (21, 22))
    fetched = [p.name for p in (tmp_path / "cache" / "videos").rglob("*") if p.is_file()]
    assert len(fetched) == 1, f"the videos after the budget were fetched: {fetched}"
