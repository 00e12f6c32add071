"""Label Studio's video keyframe interpolation, reproduced (``labelloop.task_types.keyframes``), checked
against Label Studio's own frontend code and an annotation a real Label Studio 1.23.2 stored."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from labelloop.dev.stack import LABEL_STUDIO_VERSION
from labelloop.task_types import keyframes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "label-studio"
CAPTURE = json.loads((FIXTURES / "video_annotation.json").read_text())
ORACLE = FIXTURES / "ls_video_oracle.js"
LS_MAP = (
    Path.home()
    / ".cache/labelloop"
    / f"label-studio-{LABEL_STUDIO_VERSION}"
    / "lib/python3.11/site-packages/web/dist/apps/labelstudio/358.js.map"
)


def _close(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(math.isclose(a[p], b[p], abs_tol=1e-9) for p in keyframes.PROPS)


def _drawn(regions: list[dict], frames: int) -> dict[str, dict[int, dict[str, float]]]:
    return {r["id"]: keyframes.frame_boxes(r["value"]["sequence"], frames) for r in regions}


def test_captured_sequences_are_drawn_on_the_frames_label_studio_draws_them() -> None:
    """On each frame of the captured annotation, a region is drawn exactly where Label Studio's own
    code (run with node when the fixture was captured) draws it: held after the last enabled
    keyframe, gone after a disabled one, shown on a disabled keyframe's own frame."""
    frames = CAPTURE["video"]["frames"]
    ours = _drawn(CAPTURE["annotation_result"], frames)
    theirs = {rid: {int(f): b for f, b in boxes.items()} for rid, boxes in CAPTURE["drawn"].items()}
    assert {rid: sorted(b) for rid, b in ours.items()} == {rid: sorted(b) for rid, b in theirs.items()}
    for rid, boxes in ours.items():
        assert all(_close(box, theirs[rid][f]) for f, box in boxes.items()), rid
    assert sorted(ours["trk_b"]) == list(range(1, 17)) + [40]
    assert 21 not in ours["trk_a"] and 20 in ours["trk_a"] and max(ours["trk_a"]) == frames


@pytest.mark.skipif(shutil.which("node") is None, reason="node runs Label Studio's code")
def test_label_studio_code_agrees_on_edge_cases() -> None:
    """Unsorted-free edge cases (rotation across 0 and 180 degrees, a keyframe without ``enabled``,
    one keyframe alone, keyframes far apart) give the boxes Label Studio's code gives, run live."""
    seqs = {
        "wrap": [
            {"frame": 2, "x": 1, "y": 2, "width": 3, "height": 4, "rotation": 170, "enabled": True},
            {"frame": 12, "x": 11, "y": 22, "width": 33, "height": 44, "rotation": 190, "enabled": True},
            {"frame": 20, "x": 5, "y": 5, "width": 5, "height": 5, "rotation": 355, "enabled": False},
        ],
        "no_enabled": [
            {"frame": 5, "x": 1, "y": 1, "width": 9, "height": 9, "rotation": 0},
            {"frame": 9, "x": 9, "y": 9, "width": 9, "height": 9, "rotation": 0, "enabled": True},
        ],
        "alone": [{"frame": 7, "x": 3, "y": 3, "width": 9, "height": 9, "rotation": 0, "enabled": True}],
    }
    regions = [{"id": k, "value": {"sequence": v}} for k, v in seqs.items()]
    run = subprocess.run(
        ["node", str(ORACLE)],
        input=json.dumps({"frames": 30, "regions": regions}),
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(run.stdout)
    ours = _drawn(regions, 30)
    for rid in seqs:
        assert sorted(ours[rid]) == sorted(int(f) for f in theirs[rid]), rid
        assert all(_close(b, theirs[rid][str(f)]) for f, b in ours[rid].items()), rid


@pytest.mark.skipif(not LS_MAP.is_file(), reason="Label Studio's source map is in its installed package")
def test_the_oracle_is_label_studios_code_verbatim() -> None:
    """Each block of ``ls_video_oracle.js`` marked "from <file>" appears, whitespace aside, in that
    file's source in Label Studio's shipped source map."""
    sources = json.loads(LS_MAP.read_text())
    by_name = dict(zip(sources["sources"], sources["sourcesContent"], strict=True))
    blocks = re.findall(r"// from (\S+)[^\n]*\n(.*?)// end", ORACLE.read_text(), re.S)
    assert len(blocks) == 5

    def squash(s: str) -> str:
        return re.sub(r"\s+", " ", s).strip()

    for name, code in blocks:
        source = next(v for k, v in by_name.items() if k.endswith(name))
        body = squash(code)
        if name.endswith(".ts"):  # the oracle drops TypeScript annotations and `export`
            source = re.sub(r": (number|SequenceItem|string|any)\b", "", source).replace("export ", "")
        assert body in squash(source), name


def test_normalize_angle_matches_javascript() -> None:
    """Angles map onto (-180, 180] with JavaScript's remainder."""
    table = {0: 180 - 180, 10: 10, 180: 180, 190: -170, -190: 170, 360: 0, 725: 5, -180: 180}
    for angle, expected in table.items():
        assert math.isclose(keyframes.normalize_angle(angle), expected, abs_tol=1e-9), angle


def test_reduced_track_is_drawn_back_on_exactly_its_frames_within_tolerance() -> None:
    """A track that moves, turns, pauses (gap) and ends becomes few keyframes that Label Studio
    draws on exactly the track's frames, each box within the tolerance."""
    track: dict[int, dict[str, float]] = {}
    for f in range(1, 61):  # straight line, then a turn
        x = f if f <= 30 else 30 + (f - 30) * 0.1
        track[f] = {"x": x, "y": 10 + f * 0.5, "width": 10, "height": 8}
    for f in range(70, 81):  # back after a pause of 9 frames
        track[f] = {"x": 50 - (f - 70), "y": 40, "width": 12, "height": 8}
    track[90] = {"x": 1, "y": 1, "width": 5, "height": 5}  # one frame alone
    sequence = keyframes.reduce_track(track, tolerance=0.5, framerate=25)
    drawn = keyframes.frame_boxes(sequence, 100)
    assert sorted(drawn) == sorted(track)
    assert all(abs(drawn[f][p] - track[f][p]) <= 0.5 for f in track for p in ("x", "y", "width", "height"))
    assert len(sequence) <= 8
    assert [k["frame"] for k in sequence if not k["enabled"]] == [60, 80, 90]
    assert sequence[0]["time"] == 1 / 25


def test_reduction_refuses_a_negative_tolerance() -> None:
    """A negative tolerance or a framerate of 0 is a ValueError."""
    with pytest.raises(ValueError):
        keyframes.reduce_track({1: {"x": 0, "y": 0, "width": 1, "height": 1}}, -1, 25)
    with pytest.raises(ValueError):
        keyframes.reduce_track({1: {"x": 0, "y": 0, "width": 1, "height": 1}}, 1, 0)


def _brute_fewest(track: dict[int, dict[str, float]], tolerance: float) -> int:
    """The fewest keyframes of one run by trying every subset of its inner frames (small runs)."""
    frames = sorted(track)
    inner = frames[1:-1]
    for extra in range(len(inner) + 1):
        for chosen in itertools.combinations(inner, extra):
            seq = [{"frame": f, "enabled": True, **track[f], "rotation": 0} for f in (frames[0], *chosen, frames[-1])]
            drawn = keyframes.frame_boxes(seq, frames[-1])
            if all(
                abs(drawn[f][p] - track[f][p]) <= tolerance + 1e-9
                for f in frames
                for p in ("x", "y", "width", "height")
            ):
                return 2 + extra
    raise AssertionError("the run itself is always within tolerance")


@pytest.mark.parametrize("seed", range(12))
def test_reduction_keeps_the_fewest_keyframes_within_tolerance(seed: int) -> None:
    """On random wandering tracks of 11 frames the reduction keeps at most as many keyframes as the
    best subset of frames with their own boxes found by exhaustive search (fitted values can need
    fewer), and draws every frame back within the tolerance."""
    rng = random.Random(seed)
    track: dict[int, dict[str, float]] = {}
    x, y, w = 20.0, 30.0, 10.0
    for f in range(1, 12):
        x, y, w = x + rng.uniform(-1.5, 2.5), y + rng.uniform(-1.0, 1.0), max(2.0, w + rng.uniform(-0.6, 0.6))
        track[f] = {"x": x, "y": y, "width": w, "height": 8.0}
    sequence = keyframes.reduce_track(track, tolerance=1.0, framerate=24)
    drawn = keyframes.frame_boxes(sequence, 11)
    assert all(abs(drawn[f][p] - track[f][p]) <= 1.0 + 1e-9 for f in track for p in ("x", "y", "width", "height"))
    assert len(sequence) <= _brute_fewest(track, 1.0)


def test_a_box_leaving_the_frame_costs_one_keyframe_where_it_reaches_the_border() -> None:
    """An object moving left at constant speed and leaving the frame (its box clipped at x = 0, its
    width shrinking linearly) is drawn back from three keyframes: start, reaching the border, end."""
    track: dict[int, dict[str, float]] = {}
    for f in range(1, 41):
        left = 30.0 - 1.5 * f  # the unclipped box's left edge, percent; 12 % wide
        track[f] = {"x": max(0.0, left), "y": 40.0, "width": min(12.0, left + 12.0), "height": 12.0}
    track = {f: b for f, b in track.items() if b["width"] > 0}
    sequence = keyframes.reduce_track(track, tolerance=0.1, framerate=24)
    assert [k["frame"] for k in sequence] == [1, 20, max(track)]
    drawn = keyframes.frame_boxes(sequence, 60)
    assert sorted(drawn) == sorted(track)
    assert all(abs(drawn[f][p] - track[f][p]) <= 0.1 for f in track for p in ("x", "y", "width", "height"))


def test_a_straight_track_with_jitter_inside_the_band_keeps_two_keyframes_on_the_line() -> None:
    """A box moving straight with +-0.9 % jitter alternating frame to frame, at 1 % tolerance, is two
    keyframes whose values lie on the true line (within the jitter), not copies of one jittered
    frame (which would need one keyframe every other frame), and it is drawn back within 1 %."""
    track = {f: {"x": 10.0 + 0.5 * f + 0.9 * (-1) ** f, "y": 20.0, "width": 8.0, "height": 6.0} for f in range(1, 41)}
    sequence = keyframes.reduce_track(track, tolerance=1.0, framerate=24)
    assert [k["frame"] for k in sequence] == [1, 40]
    assert all(abs(k["x"] - (10.0 + 0.5 * k["frame"])) <= 0.1 + 1e-6 for k in sequence)
    drawn = keyframes.frame_boxes(sequence, 40)
    assert all(abs(drawn[f][p] - track[f][p]) <= 1.0 + 1e-6 for f in track for p in ("x", "y", "width", "height"))


def test_fitted_keyframes_of_a_noisy_track_are_drawn_back_within_tolerance_and_near_it() -> None:
    """Random noisy tracks with turns, at 1 % tolerance: every frame is drawn back within the
    tolerance, and each keyframe's box is within the tolerance of the track's box on its frame."""
    rng = random.Random(7)
    for _ in range(20):
        track: dict[int, dict[str, float]] = {}
        vx, x, w = rng.uniform(-1, 1), 50.0, 10.0
        for f in range(1, 81):
            vx += rng.uniform(-0.15, 0.15)
            x, w = x + vx, w + rng.uniform(-0.1, 0.1)
            track[f] = {"x": x + rng.gauss(0, 0.4), "y": 30 + rng.gauss(0, 0.4), "width": w, "height": 8.0}
        sequence = keyframes.reduce_track(track, tolerance=1.0, framerate=24)
        drawn = keyframes.frame_boxes(sequence, 80)
        assert sorted(drawn) == sorted(track)
        props = ("x", "y", "width", "height")
        assert all(abs(drawn[f][p] - track[f][p]) <= 1.0 + 1e-6 for f in track for p in props)
        assert all(abs(k[p] - track[k["frame"]][p]) <= 1.0 + 1e-6 for k in sequence for p in props)  # type: ignore[literal-required]


@pytest.mark.parametrize("frames", [2, 3, 4, 9])
def test_a_box_jumping_more_than_the_tolerance_every_frame_keeps_every_frame(frames: int) -> None:
    """A box that jumps back and forth by more than the tolerance on every frame needs a keyframe
    on every frame, and gets exactly one per frame."""
    track = {f: {"x": 10.0 + 5.0 * (f % 2), "y": 10.0, "width": 8.0, "height": 8.0} for f in range(1, frames + 1)}
    sequence = keyframes.reduce_track(track, tolerance=1.0, framerate=24)
    assert [k["frame"] for k in sequence] == list(range(1, frames + 1))
    assert [k["x"] for k in sequence] == [track[f]["x"] for f in track]


@pytest.mark.parametrize("seed", range(20))
def test_keyframes_of_boxes_inside_the_frame_stay_inside_it(seed: int) -> None:
    """Noisy tracks pressed against the frame's borders (boxes clipped to it, as a detector gives
    them): the fitted keyframes, free to lie anywhere within the tolerance, stay inside the frame
    (Label Studio 1.23.2 refuses a VideoRectangle value over 100) and are drawn back within it."""
    rng = random.Random(seed)
    track: dict[int, dict[str, float]] = {}
    for f in range(1, 61):
        x1, y1 = -3.0 + rng.gauss(0, 0.6), -2.0 + 0.05 * f + rng.gauss(0, 0.6)
        x2, y2 = 70.0 + 0.6 * f + rng.gauss(0, 0.6), 101.0 + rng.gauss(0, 0.6)
        x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(100.0, x2), min(100.0, y2)
        track[f] = {"x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1}
    sequence = keyframes.reduce_track(track, tolerance=1.0, framerate=24)
    for k in sequence:
        assert min(k["x"], k["y"]) >= 0.0 and k["x"] + k["width"] <= 100.0 and k["y"] + k["height"] <= 100.0, k
    drawn = keyframes.frame_boxes(sequence, 60)
    assert all(abs(drawn[f][p] - track[f][p]) <= 1.0 + 1e-6 for f in track for p in ("x", "y", "width", "height"))
