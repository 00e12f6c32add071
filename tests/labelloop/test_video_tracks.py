"""One track per object (``labelloop.serving.tracks``): split tracks bridged, duplicates merged,
flicker dropped, short gaps filled as Label Studio interpolates them."""

from __future__ import annotations

from collections import Counter

import pytest

from labelloop.dev.synthetic_video import video_config
from labelloop.serving.tracks import MAX_GAP_FRAMES, MIN_TRACK_FRAMES, TrackedVideo, clean_tracks, fill_gaps
from labelloop.serving.video import tracks_to_regions
from labelloop.task_types.keyframes import frame_boxes
from labelloop.task_types.labels import parse_label_config

SPEC = parse_label_config(video_config())
NAMES = {0: "square", 1: "disc"}


def _line(frames: range | list[int], x0: float, vx: float, y: float = 20.0, size: float = 10.0) -> dict:
    return {f: {"x": x0 + vx * f, "y": y, "width": size, "height": size} for f in frames}


def _video(*tracks: tuple[dict, int, float]) -> TrackedVideo:
    tracked = TrackedVideo(160, 120, frames=100)
    for tid, (boxes, cls, conf) in enumerate(tracks, start=1):
        tracked.boxes[tid] = boxes
        tracked.classes[tid] = Counter({cls: len(boxes)})
        tracked.confs[tid] = [conf] * len(boxes)
    return tracked


def test_a_track_split_by_a_short_gap_is_bridged_into_one_region_with_two_keyframes() -> None:
    """Two tracks of one class on one straight line with 5 frames between them become one region:
    the gap interpolated, two keyframes, drawn on every frame from the first to the last."""
    tracked = _video((_line(range(1, 31), 5.0, 1.0), 0, 0.9), (_line(range(36, 61), 5.0, 1.0), 0, 0.7))
    cleaned = clean_tracks(tracked)
    assert list(cleaned.boxes) == [1] and sorted(cleaned.boxes[1]) == [*range(1, 31), *range(36, 61)]
    assert cleaned.confs[1] == [0.9] * 30 + [0.7] * 25 and cleaned.classes[1] == Counter({0: 55})
    regions, score = tracks_to_regions(tracked, SPEC, NAMES, 1.0, 24.0, 100, 100 / 24)
    [region] = regions
    assert [k["frame"] for k in region["value"]["sequence"]] == [1, 60]
    assert sorted(frame_boxes(region["value"]["sequence"], 100)) == list(range(1, 61))
    assert score == pytest.approx((0.9 * 30 + 0.7 * 25) / 55)


def test_with_cleaning_switched_off_every_tracker_id_stays_a_region() -> None:
    """With merging, filling and the minimum length switched off, each tracker id stays a region
    and pauses where the tracker lost it (the behaviour before bridging)."""
    tracked = _video((_line(range(1, 31), 5.0, 1.0), 0, 0.9), (_line(range(36, 61), 5.0, 1.0), 0, 0.7))
    regions, _ = tracks_to_regions(tracked, SPEC, NAMES, 1.0, 24.0, 100, 100 / 24, merge=False, min_frames=0, max_gap=0)
    assert [[k["frame"] for k in r["value"]["sequence"]] for r in regions] == [[1, 30], [36, 60]]


@pytest.mark.parametrize(
    ("second", "cls", "why"),
    [
        (_line(range(36, 61), 60.0, 1.0), 0, "starts far from where the first was heading"),
        (_line(range(36, 61), 5.0, 1.0), 1, "another class"),
        (_line(range(31 + MAX_GAP_FRAMES + 1, 100), 5.0, 1.0), 0, "after a gap longer than MAX_GAP_FRAMES"),
        (_line(range(36, 61), 5.0, 1.0, size=25.0), 0, "is of another size (IoU 0.16 with the extrapolated box)"),
    ],
)
def test_tracks_that_are_not_one_object_stay_apart(second: dict, cls: int, why: str) -> None:
    """A second track is not bridged to the first when it {why}."""
    tracked = _video((_line(range(1, 31), 5.0, 1.0), 0, 0.9), (second, cls, 0.8))
    assert sorted(clean_tracks(tracked).boxes) == [1, 2], why


def test_a_second_id_on_the_same_object_merges_keeping_the_more_confident_box() -> None:
    """Two ids on one object over the same frames (IoU >= 0.5) become one track; on shared frames
    the box of the more confident detection is kept."""
    first = _line(range(1, 41), 5.0, 1.0)
    twin = {f: {**b, "x": b["x"] + 1.0} for f, b in first.items() if 10 <= f <= 25}
    tracked = _video((first, 1, 0.5), (twin, 1, 0.9))
    cleaned = clean_tracks(tracked)
    assert list(cleaned.boxes) == [1] and sorted(cleaned.boxes[1]) == list(range(1, 41))
    assert cleaned.boxes[1][12]["x"] == pytest.approx(first[12]["x"] + 1.0)
    assert cleaned.boxes[1][30]["x"] == pytest.approx(first[30]["x"])
    assert len(cleaned.confs[1]) == 40 and cleaned.confs[1][11] == 0.9


def test_two_objects_of_one_class_that_cross_stay_two_tracks() -> None:
    """Two same-class objects crossing each other (boxes overlapping only near the crossing) are
    not taken for one object."""
    right = _line(range(1, 61), 0.0, 1.5, y=40.0)
    left = _line(range(1, 61), 90.0, -1.5, y=40.0)
    assert sorted(clean_tracks(_video((right, 0, 0.9), (left, 0, 0.9))).boxes) == [1, 2]


def test_a_track_picked_up_again_after_a_crossing_is_bridged_by_its_motion() -> None:
    """An object lost for 8 frames while it moves fast is bridged: its velocity, extrapolated over
    the gap, lands on the new track's first box although the last and first boxes do not overlap."""
    before = _line(range(1, 21), 0.0, 2.0)
    after = _line(range(29, 45), 0.0, 2.0)
    tracked = _video((before, 0, 0.9), (after, 0, 0.9))
    assert before[20]["x"] + before[20]["width"] < after[29]["x"]
    assert list(clean_tracks(tracked).boxes) == [1]


def test_flicker_tracks_are_dropped_after_merging() -> None:
    """A track on fewer than MIN_TRACK_FRAMES frames is dropped unless it merges into a longer one;
    min_frames=0 keeps it."""
    flicker = _line(range(50, 50 + MIN_TRACK_FRAMES - 1), 70.0, 0.0, y=80.0)
    tail = _line(range(31, 31 + MIN_TRACK_FRAMES - 1), 5.0, 1.0)
    tracked = _video((_line(range(1, 31), 5.0, 1.0), 0, 0.9), (flicker, 1, 0.9), (tail, 0, 0.9))
    cleaned = clean_tracks(tracked)
    assert list(cleaned.boxes) == [1] and max(cleaned.boxes[1]) == 30 + MIN_TRACK_FRAMES - 1
    assert sorted(clean_tracks(tracked, min_frames=0).boxes) == [1, 2]


def test_gaps_up_to_the_limit_are_filled_linearly_and_longer_ones_kept() -> None:
    """``fill_gaps`` interpolates a 3-frame gap box by box and leaves a gap of max_gap + 1 frames."""
    boxes = {
        1: {"x": 0.0, "y": 0.0, "width": 10.0, "height": 10.0},
        5: {"x": 8.0, "y": 4.0, "width": 14.0, "height": 10.0},
    }
    boxes[11] = {"x": 8.0, "y": 4.0, "width": 14.0, "height": 10.0}
    filled = fill_gaps(boxes, max_gap=4)
    assert sorted(filled) == [1, 2, 3, 4, 5, 11]
    assert filled[3] == {"x": 4.0, "y": 2.0, "width": 12.0, "height": 10.0}
    assert sorted(fill_gaps(boxes, max_gap=5)) == list(range(1, 12))


def test_a_track_without_boxes_or_with_missing_confidences_is_tolerated() -> None:
    """An empty track is left out and a track with fewer confidences than boxes scores the missing
    ones 0 (a TrackedVideo built by hand), instead of failing the whole video."""
    tracked = _video((_line(range(1, 11), 5.0, 1.0), 0, 0.8))
    tracked.boxes[2], tracked.classes[2], tracked.confs[2] = {}, Counter(), []
    tracked.confs[1] = [0.8] * 5
    cleaned = clean_tracks(tracked)
    assert list(cleaned.boxes) == [1] and cleaned.confs[1] == [0.8] * 5 + [0.0] * 5
