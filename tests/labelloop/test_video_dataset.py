"""A detect dataset from video keyframes (``labelloop.dataset.video``) on generated MP4s, and
videos fetched through the guarded media path (``labelloop.labelstudio.video_media``)."""

from __future__ import annotations

import copy
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labelloop.dataset.images import DatasetReport, assign_splits
from labelloop.dataset.video import build_video_dataset
from labelloop.dev.synthetic_video import GeneratedVideo, video_config, video_result, write_video
from labelloop.errors import DatasetError
from labelloop.labelstudio.media import MediaConfig, MediaError
from labelloop.labelstudio.video_media import VideoCache, probe_video
from labelloop.task_types.keyframes import frame_boxes
from labelloop.task_types.labels import parse_label_config

SPEC = parse_label_config(video_config())
NAMES = {0: "square", 1: "disc"}


def _task(tid: int, video: GeneratedVideo, every: int) -> dict[str, Any]:
    result = video_result(video, every, prefix=f"t{tid}_")
    return {"id": tid, "data": {"video": str(video.path)}, "annotations": [{"id": tid, "result": result}]}


class Fetch:
    """A ``fetch`` over local files that records what it was asked for."""

    def __init__(self, videos: dict[int, GeneratedVideo]) -> None:
        self.videos, self.calls = videos, []

    def __call__(self, items: list[tuple[int, str]]) -> dict[int, Any]:
        self.calls.append(sorted(t for t, _ in items))
        return {t: self.videos[t] for t, _ in items}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[int, GeneratedVideo]:
    root = tmp_path_factory.mktemp("videos")
    return {tid: write_video(root / f"v{tid}.mp4", seed=tid, frames=30) for tid in (1, 2, 3, 4)}


def _build(tasks: list[dict[str, Any]], out: Path, fetch: Fetch, stride: int = 4) -> DatasetReport:
    report = DatasetReport()
    splits = functools.partial(assign_splits, val_fraction=0.3, min_val=1)
    build_video_dataset(tasks, SPEC, out, fetch, splits, NAMES, report, stride)
    return report


def test_frames_with_a_stride_labelled_as_label_studio_draws_them_split_by_video(
    videos: dict[int, GeneratedVideo], tmp_path: Path
) -> None:
    """Every stride-th frame of each annotated span and every keyframe becomes an image whose
    label lines are the boxes Label Studio draws there; all frames of a video are on one side."""
    tasks = [_task(tid, v, every=7) for tid, v in videos.items()]
    report = _build(tasks, tmp_path / "ds", Fetch(videos))
    assert (tmp_path / "ds" / "data.yaml").is_file()
    sides: dict[int, set[str]] = {}
    for label in (tmp_path / "ds" / "labels").rglob("*.txt"):
        tid, frame = (int(p) for p in label.stem.split("_"))
        sides.setdefault(tid, set()).add(label.parent.name)
        assert (tmp_path / "ds" / "images" / label.parent.name / f"{label.stem}.jpg").is_file()
        result = tasks[tid - 1]["annotations"][0]["result"]
        drawn = [frame_boxes(r["value"]["sequence"], 30).get(frame) for r in result]
        assert len(label.read_text().splitlines()) == sum(b is not None for b in drawn), label
    assert all(len(s) == 1 for s in sides.values()) and set().union(*sides.values()) == {"train", "val"}
    for tid, task in enumerate(tasks, 1):
        keyed = {k["frame"] for r in task["annotations"][0]["result"] for k in r["value"]["sequence"]}
        lo = min(keyed)
        stems = {int(p.stem.split("_")[1]) for p in (tmp_path / "ds" / "labels").rglob(f"{tid}_*.txt")}
        assert keyed <= stems and {f for f in stems if (f - lo) % 4 == 0} | keyed == stems
    assert report.images["train"] + report.images["val"] == sum(1 for _ in (tmp_path / "ds" / "images").rglob("*.jpg"))
    assert sum(report.instances_per_class["train"].values()) > 0


def test_one_changed_annotation_re_extracts_only_its_video(videos: dict[int, GeneratedVideo], tmp_path: Path) -> None:
    """A rebuild after one annotation changed fetches and rewrites that video's frames only; a
    task gone takes its files with it."""
    tasks = [_task(tid, v, every=7) for tid, v in videos.items()]
    fetch = Fetch(videos)
    _build(tasks, tmp_path / "ds", fetch)
    untouched = {p: p.stat().st_mtime_ns for p in (tmp_path / "ds" / "images").rglob("1_*.jpg")}
    changed = copy.deepcopy(tasks)
    changed[1]["annotations"][0]["result"][0]["value"]["sequence"][0]["x"] += 1.0
    _build(changed[:3], tmp_path / "ds", fetch)
    assert fetch.calls == [[1, 2, 3, 4], [2]]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ds" / "images").rglob("1_*.jpg")} == untouched
    assert not list((tmp_path / "ds").rglob("4_*"))


def test_a_single_video_is_too_little_data(videos: dict[int, GeneratedVideo], tmp_path: Path) -> None:
    """One annotated video cannot fill both splits: a DatasetError says to annotate two."""
    with pytest.raises(DatasetError, match="at least two videos"):
        _build([_task(1, videos[1], every=5)], tmp_path / "ds", Fetch(videos))


def test_a_video_labelled_at_another_frame_rate_is_skipped_with_the_reason(
    videos: dict[int, GeneratedVideo], tmp_path: Path
) -> None:
    """An annotation whose framesCount is not the file's (the Video tag's frameRate is another than
    the file's, so its frame numbers point at other frames) is left out and the report says why."""
    tasks = [_task(tid, v, every=7) for tid, v in videos.items()]
    for region in tasks[0]["annotations"][0]["result"]:
        region["value"]["framesCount"] = 36  # the 30 frames at 24 fps counted at 29 fps
    report = _build(tasks, tmp_path / "ds", Fetch(videos))
    assert [s["task"] for s in report.skipped] == [1]
    assert "frame count mismatch" in report.skipped[0]["reason"] and "frameRate" in report.skipped[0]["reason"]
    assert not list((tmp_path / "ds").rglob("1_*"))


@pytest.fixture
def served(videos: dict[int, GeneratedVideo]) -> Iterator[str]:
    root = videos[1].path.parent
    (root / "not-a-video.mp4").write_bytes(b"\x00" * 4096)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_videos_come_through_the_guarded_media_path(served: str, tmp_path: Path) -> None:
    """A video on an allowed host is streamed into the cache once and probed; a host not allowed,
    a file over the size limit and a file that is no video are MediaErrors."""
    config = MediaConfig(label_studio_url=None, api_key=None, allow_hosts=(served,), retries=0)
    with VideoCache(tmp_path / "c", config) as cache:
        got = cache.get(1, f"http://{served}/v1.mp4")
        assert got.downloaded and (got.width, got.height) == (160, 120)
        assert probe_video(got.path).frames == 30
        assert not cache.get(1, f"http://{served}/v1.mp4").downloaded
        with pytest.raises(MediaError, match="no|not a video"):
            cache.get(2, f"http://{served}/not-a-video.mp4")
    closed = MediaConfig(None, None, retries=0)
    with VideoCache(tmp_path / "c2", closed) as cache, pytest.raises(MediaError, match="host"):
        cache.get(1, f"http://{served}/v1.mp4")
    small = MediaConfig(None, None, allow_hosts=(served,), retries=0, max_bytes=2048)
    with VideoCache(tmp_path / "c3", small) as cache, pytest.raises(MediaError, match="larger|2048"):
        cache.get(1, f"http://{served}/v1.mp4")
