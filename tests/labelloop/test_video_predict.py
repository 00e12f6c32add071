"""Video predictions (``labelloop.serving.video``): tracks become VideoRectangle regions with few
keyframes, a video's score is its least certain track's, and a long video stays off /predict."""

from __future__ import annotations

import functools
import http.server
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog

from labelloop.dev.synthetic_video import video_config, write_video
from labelloop.labelstudio.media import MediaConfig
from labelloop.registry.store import Registry
from labelloop.serving.predictor import Predictor
from labelloop.serving.video import (
    SIZE_SMOOTH_S,
    SMOOTH_S,
    TrackedVideo,
    VideoOptions,
    predict_videos,
    smooth_track,
    track_video,
    tracks_to_regions,
    window_frames,
)
from labelloop.task_types.keyframes import frame_boxes, reduce_track
from labelloop.task_types.labels import parse_label_config
from tests.factories import publish_version

SPEC = parse_label_config(video_config())


def test_tracks_become_regions_scored_by_the_least_certain_track() -> None:
    """Each track is one region labelled with its most frequent class and scored by its mean
    confidence; the video's score is the lowest track score; tracks under show_conf are left out."""
    tracked = TrackedVideo(160, 120)
    for tid, (cls, conf, frames) in {1: ([0, 0, 1], 0.9, range(1, 31)), 2: ([1], 0.4, range(10, 20))}.items():
        tracked.boxes[tid] = {f: {"x": f * 0.5, "y": 10.0, "width": 20.0, "height": 15.0} for f in frames}
        tracked.classes[tid] = Counter(cls)
        tracked.confs[tid] = [conf] * len(frames)
    regions, score = tracks_to_regions(tracked, SPEC, {0: "square", 1: "disc"}, 0.5, 24.0, 48, 2.0)
    assert [r["value"]["labels"] for r in regions] == [["square"], ["disc"]]
    assert score == pytest.approx(0.4) and regions[0]["score"] == pytest.approx(0.9)
    assert [len(r["value"]["sequence"]) for r in regions] == [2, 2]
    assert sorted(frame_boxes(regions[0]["value"]["sequence"], 48)) == list(range(1, 31))
    shown, top = tracks_to_regions(tracked, SPEC, {0: "square", 1: "disc"}, 0.5, 24.0, 48, 2.0, show_conf=0.5)
    assert len(shown) == 1 and top == pytest.approx(0.9)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> object:
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(tmp_path_factory.mktemp("yolo"))
    from ultralytics import YOLO

    return YOLO("yolov8n.yaml")


def test_track_video_reads_every_frame_with_the_real_tracker(model: object, tmp_path: Path) -> None:
    """Ultralytics' ByteTrack runs over the whole generated video (one result per decoded frame)."""
    video = write_video(tmp_path / "v.mp4", seed=1, frames=20)
    tracked = track_video(model, video.path, "bytetrack.yaml", 0.25, 160)
    assert tracked.finished and tracked.frames == 20 and (tracked.width, tracked.height) == (160, 120)


def test_a_video_over_the_interactive_budget_gets_nothing_and_a_reason(model: object, tmp_path: Path) -> None:
    """With its budget spent, /predict leaves a video task without regions and logs why; the
    pre-annotation queue (full) tracks it whole."""
    video = write_video(tmp_path / "v.mp4", seed=2, frames=20)
    config = MediaConfig(label_studio_url=None, api_key=None, document_root=tmp_path)
    task = {"id": 5, "data": {"video": "/data/local-files/?d=v.mp4"}}
    options = VideoOptions(budget_s=0.0)
    with structlog.testing.capture_logs() as logs:
        [item] = predict_videos(
            model, "v1", SPEC, {0: "square", 1: "disc"}, [task], tmp_path / "c", config, options, 0.25, 160, 0.0, 0.0
        )
    assert item == {"result": [], "score": 0.0, "model_version": "v1"}
    [deferred] = [e for e in logs if e["event"] == "predict_video_deferred"]
    assert deferred["task_id"] == 5 and "of 20 frames" in deferred["reason"]
    assert video.path.is_file()
    with structlog.testing.capture_logs() as logs:
        predict_videos(
            model, "v1", SPEC, {0: "square"}, [task], tmp_path / "c", config, options, 0.25, 160, 0.0, 0.0, full=True
        )
    assert not [e for e in logs if e["event"] == "predict_video_deferred"]


class _Counting(http.server.SimpleHTTPRequestHandler):
    gets: list[str] = []

    def do_GET(self) -> None:
        type(self).gets.append(self.path)
        super().do_GET()


def test_the_predictor_tracks_a_video_task_and_fetches_it_once(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Predictor.predict`` of a video spec answers one VideoRectangle prediction per task with the
    version (real model, real tracker), and ``embed`` (pre-annotation's diversity) does not fetch the
    video a second time as an image."""
    video = write_video(tmp_path / "www" / "clip.mp4", seed=4, frames=12)
    model.save(str(tmp_path / "w.pt"))
    registry = Registry(tmp_path / "models")
    publish_version(registry, 7, tmp_path / "w.pt", classes=["square", "disc"], from_name="box")
    registry.set_current(7, "v1")
    handler = functools.partial(_Counting, directory=str(video.path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        media = MediaConfig(label_studio_url=None, api_key=None, allow_hosts=(host,), retries=0)
        predictor = Predictor(
            registry, "yolov8n.yaml", tmp_path / "yolo", tmp_path / "cache", 160, 0.25, media=media, show_conf=0.25
        )
        task = {"id": 3, "data": {"video": f"http://{host}/clip.mp4"}}
        [item] = predictor.predict(7, SPEC, [task], None, None, full_video=True)
        assert item["model_version"] == "v1" and isinstance(item["result"], list)
        assert all(r["type"] == "videorectangle" and r["value"]["framesCount"] == 12 for r in item["result"])
        assert predictor.embed(7, SPEC, [task], None, None, "v1") == [None]
        assert _Counting.gets == ["/clip.mp4"]
    finally:
        server.shutdown()


def test_smoothing_keeps_the_frames_and_saves_keyframes_on_a_jittering_track() -> None:
    """A straight track with +-1 % jitter keeps its frames (and its gap) after smoothing, each run
    is fitted on its own, and it needs fewer keyframes at 0.5 % tolerance than unsmoothed."""
    jitter = [0.0, 1.0, -1.0, 0.5, -0.5]
    boxes = {f: {"x": f * 0.4 + jitter[f % 5], "y": 20.0, "width": 10.0, "height": 10.0} for f in range(1, 41)}
    boxes |= {f: {"x": 60.0, "y": 20.0, "width": 10.0, "height": 10.0} for f in (45, 46)}
    smoothed = smooth_track(boxes)
    assert sorted(smoothed) == sorted(boxes)
    assert smoothed[45]["x"] == pytest.approx(60.0) and smoothed[46]["x"] == pytest.approx(60.0)
    kept = len(reduce_track(smoothed, 0.5, 24.0))
    assert kept < len(reduce_track(boxes, 0.5, 24.0)) and kept == 4  # two per run: both straight


def test_smoothing_passes_steady_motion_unchanged_up_to_the_track_ends() -> None:
    """A box moving and growing at constant speed comes out of smoothing as it went in, on its
    first and last frames too (a centred mean would pull the ends inwards), so it keeps two keyframes."""
    boxes = {f: {"x": 2.0 + 0.7 * f, "y": 60.0 - 0.3 * f, "width": 8.0 + 0.1 * f, "height": 6.0} for f in range(1, 61)}
    smoothed = smooth_track(boxes, window=13)
    for f, box in boxes.items():
        assert smoothed[f] == pytest.approx(box)
    assert [k["frame"] for k in reduce_track(smoothed, 0.1, 24.0)] == [1, 60]


def test_size_is_smoothed_over_twice_the_window_of_position() -> None:
    """A one-frame spike in x spreads over the position window only, a spike in width over twice it."""
    boxes = {f: {"x": 10.0, "y": 10.0, "width": 10.0, "height": 10.0} for f in range(1, 61)}
    boxes[30] = {"x": 20.0, "y": 10.0, "width": 20.0, "height": 10.0}
    smoothed = smooth_track(boxes, window=5)
    moved_x = [f for f, b in smoothed.items() if abs(b["x"] - 10.0) > 1e-9]
    moved_w = [f for f, b in smoothed.items() if abs(b["width"] - 10.0) > 1e-9]
    assert moved_x == list(range(28, 33)) and moved_w == list(range(26, 35))
    assert smoothed[30]["width"] - 10.0 < smoothed[30]["x"] - 10.0 < 10.0


def test_smoothing_a_noisy_straight_track_leaves_it_near_the_truth_with_few_keyframes() -> None:
    """A straight track with seeded noise (0.5 % on position, 1 % on size) smoothed with the
    defaults is on average under a third as far from the true path as the raw boxes, and needs at
    most 3 keyframes at 1 %, where the raw track needs dozens."""
    rng = np.random.default_rng(0)
    true = {f: (5 + 0.6 * f, 30 - 0.2 * f, 12.0, 10.0) for f in range(1, 101)}
    boxes = {
        f: {
            "x": x + rng.normal(0, 0.5),
            "y": y + rng.normal(0, 0.5),
            "width": w + rng.normal(0, 1.0),
            "height": h + rng.normal(0, 1.0),
        }
        for f, (x, y, w, h) in true.items()
    }
    smoothed = smooth_track(boxes)
    props = ("x", "y", "width", "height")

    def error(track: dict[int, dict[str, float]]) -> float:
        return float(np.mean([abs(track[f][p] - v) for f, t in true.items() for p, v in zip(props, t, strict=True)]))

    assert error(smoothed) < error(boxes) / 3
    assert len(reduce_track(smoothed, 1.0, 24.0)) <= 3 < 20 < len(reduce_track(boxes, 1.0, 24.0))


def test_the_smoothing_windows_follow_the_frame_rate() -> None:
    """Half a second of position and a second of size are 13 and 25 frames at 24 fps, 31 and 61 at
    60 fps; tracks_to_regions uses them unless given a window in frames."""
    assert (window_frames(SMOOTH_S, 24.0), window_frames(SIZE_SMOOTH_S, 24.0)) == (13, 25)
    assert (window_frames(SMOOTH_S, 60.0), window_frames(SIZE_SMOOTH_S, 60.0)) == (31, 61)
    assert window_frames(0.0, 24.0) == 1
    # A box that wobbles with a period of 12 frames: a 13-frame fit flattens it where 5 frames do not.
    boxes = {
        f: {"x": 30.0 + 1.5 * np.sin(f * np.pi / 6), "y": 40.0, "width": 10.0, "height": 10.0} for f in range(1, 101)
    }
    tracked = TrackedVideo(160, 120, boxes={1: boxes}, classes={1: Counter({0: 100})}, confs={1: [0.9] * 100})
    [default], _ = tracks_to_regions(tracked, SPEC, {0: "square", 1: "disc"}, 1.0, 24.0, 100, 100 / 24)
    [short], _ = tracks_to_regions(tracked, SPEC, {0: "square", 1: "disc"}, 1.0, 24.0, 100, 100 / 24, smooth=5)
    assert len(default["value"]["sequence"]) < len(short["value"]["sequence"])


def test_the_tracker_setting_takes_ultralytics_names_or_an_existing_tracker_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LABELLOOP_VIDEO_TRACKER: bytetrack.yaml / botsort.yaml as given, an operator's YAML file made
    absolute, anything else refused when the settings load."""
    from pydantic import ValidationError

    from labelloop.settings import Settings

    assert VideoOptions.from_settings(Settings(video_tracker="botsort.yaml")).tracker == "botsort.yaml"
    own = tmp_path / "low.yaml"
    own.write_text("tracker_type: bytetrack\n")
    monkeypatch.chdir(tmp_path)
    assert Settings(video_tracker="low.yaml").video_tracker == str(own)
    for bad in ("missing.yaml", str(tmp_path), "strongsort.yaml", "/etc/passwd"):
        with pytest.raises(ValidationError, match="LABELLOOP_VIDEO_TRACKER"):
            Settings(video_tracker=bad)


def test_a_track_that_grows_to_fill_the_frame_gives_keyframes_label_studio_accepts() -> None:
    """A box growing until it fills the frame's height and staying there: the smoothing's local line
    runs past the border at the track's end (as a real track did in a full run: height 100.08,
    x -0.87), and Label Studio 1.23.2's bulk import then drops the whole prediction. Keyframes are
    clipped to the frame, the region passes label-studio-sdk's own validation (what Label Studio's
    prediction import runs), and it is drawn back on every frame of the track."""
    from label_studio_sdk.label_interface import LabelInterface

    tracked = TrackedVideo(160, 120)
    tracked.boxes[1] = {
        f: {"x": max(0.0, 30 - 1.5 * f), "y": max(0.0, 40 - 2.0 * f), "width": 40.0, "height": min(100.0, 20 + 4.0 * f)}
        for f in range(1, 41)
    }
    tracked.classes[1], tracked.confs[1] = Counter([0]), [0.8] * 40
    [region], _ = tracks_to_regions(tracked, SPEC, {0: "square"}, 1.0, 24.0, 48, 2.0)
    sequence = region["value"]["sequence"]
    for k in sequence:
        assert 0.0 <= k["x"] and 0.0 <= k["y"] and k["x"] + k["width"] <= 100.0 and k["y"] + k["height"] <= 100.0, k
    assert sorted(frame_boxes(sequence, 48)) == list(range(1, 41))
    prediction = {"model_version": "v1", "score": 0.8, "result": [region]}
    assert LabelInterface(video_config()).validate_prediction(prediction, return_errors=True) == []
