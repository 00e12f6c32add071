"""Video learning curve in process: per round, per-frame mAP50 of tracked pre-annotations on
held-out videos, keyframes per predicted track, and seconds from the round's annotations to a
trained model; against plain Ultralytics trained on the same frames for the same time.

    .venv/bin/python -m bench.video [--videos 10] [--held-out 3] [--frames 100] [--every 10]
        [--rounds 3,6,10] [--stride 5] [--distractors 1] [--rare-every 4] [--seed 0] [--no-peer]
        [--out var/bench-video]
    .venv/bin/python -m bench.video --videos 4 --held-out 2 --frames 48 --rounds 2,4 --time-s 20  # smoke

Data (``labelloop.dev.synthetic_video``): MP4s of 160x120 at 24 fps with two to four red squares and
blue discs moving in straight lines (crossing each other, leaving the frame); a green triangle (the
rare class) in every ``--rare-every``-th video (held-out ones included); ``--distractors`` unlabelled
near misses per video (hollow red squares, grey discs) that nobody annotates. A round annotates the
next videos as a person would in Label Studio: a keyframe every ``--every`` frames of each track
and a disabled one where it leaves (``keyframe_sequence``).

Each round, labelloop's way: the dataset built exactly as for a video project
(``labelloop.dataset.video.build_video_dataset``: stride frames of the annotated spans and the
keyframes, split by video); labelloop's training recipe (``labelloop.training.recipe.plan_recipe``
on the frame counts, its CPU time budget) from labelloop's base model (``auto``: the installed
ultralytics' nano detect model; offline its YAML) on the first round and, as the loop does, from
the previous round's model after that; trained in labelloop's training child
(``labelloop.training.process.run_training_process``). Then every held-out video tracked with the
trained model (``labelloop.serving.video``: ByteTrack, keyframe reduction at ``--tolerance`` percent
of the frame) and what Label Studio would draw from the stored keyframes
(``labelloop.task_types.keyframes.frame_boxes``) scored on every frame against the true boxes
(``labelloop.training.scoring``).

Peers: for keyframes, the official ML backend's YOLO example, which stores every frame of a track
as a keyframe (1.0 keyframes per frame, by construction); for learning, plain Ultralytics on the
same dataset for the same seconds as labelloop's training: ``YOLO(base).train`` with Ultralytics'
defaults (epochs 100, imgsz 640, batch 16, nbs 64, best.pt) and ``time`` set to labelloop's
training seconds, from the base model every round, tracked and scored the same way.

Not measured here: Label Studio itself (upload, webhooks, storing predictions) and the promotion
gate: ``tests/test_video_loop_labelstudio.py`` and ``tests/test_video_stack_labelstudio.py`` run
that path. "seconds" is dataset build + training, the part of annotation to served version that
grows with the data.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

from labelloop.dataset.images import DatasetReport, assign_splits
from labelloop.dataset.video import build_video_dataset
from labelloop.dev.synthetic_video import LABELS, RARE_LABEL, GeneratedVideo, video_config, video_result, write_video
from labelloop.registry.base_models import resolve as resolve_base_model
from labelloop.serving.video import track_video, tracks_to_regions
from labelloop.task_types.keyframes import frame_boxes
from labelloop.task_types.labels import parse_label_config
from labelloop.training.process import run_training_process
from labelloop.training.recipe import DataShape, plan_recipe
from labelloop.training.scoring import Det, score

CLASSES = (*LABELS, RARE_LABEL)
SPEC = parse_label_config(video_config(CLASSES))
NAMES = dict(enumerate(CLASSES))
#: Ultralytics' own training defaults (``ultralytics/cfg/default.yaml``): the plain peer.
ULTRALYTICS_DEFAULTS = {"epochs": 100, "imgsz": 640, "batch": 16, "nbs": 64}
#: Keyframe tolerances (percent of the frame) also reported, on the same tracks.
ALSO_TOLERANCES = (2.0,)


def annotation(video: GeneratedVideo, every: int) -> list[dict[str, Any]]:
    """The VideoRectangle result a person saves for a video: a keyframe every ``every`` frames."""
    return video_result(video, every)


def truth(key: int, video: GeneratedVideo) -> dict[int, list[Det]]:
    """True boxes per frame (image key ``key * 100000 + frame``)."""
    out: dict[int, list[Det]] = {key * 100000 + f: [] for f in range(1, video.frames + 1)}
    for track in video.tracks:
        for f, (x, y, w, h) in track.boxes.items():
            if w >= 4 and h >= 4:  # slivers at the border are not objects anyone annotates
                out[key * 100000 + f].append(Det(key * 100000 + f, track.label, 1.0, (x, y, x + w, y + h)))
    return out


def evaluate(
    model: Any,
    held_out: list[GeneratedVideo],
    imgsz: int,
    tolerance: float,
    show_conf: float = 0.25,
    also: tuple[float, ...] = (),
) -> dict[str, Any]:
    """Per-frame mAP50 (and AP50 per class) of what Label Studio would draw from the predicted
    keyframes (tracks scoring at least ``show_conf``; keyframes reduced at ``tolerance`` percent),
    keyframes per frame and per predicted track, true and predicted track counts; and keyframes
    per frame at each tolerance of ``also`` (the same tracks)."""
    tracked = [track_video(model, video.path, "bytetrack.yaml", 0.1, imgsz) for video in held_out]
    out = _figures(held_out, tracked, tolerance, show_conf)
    out["keyframes_per_frame_at"] = {f"{tolerance:g}%": out["keyframes_per_frame"]} | {
        f"{t:g}%": _figures(held_out, tracked, t, show_conf)["keyframes_per_frame"] for t in also
    }
    return out


def _figures(held_out: list[GeneratedVideo], tracked: list[Any], tolerance: float, show_conf: float) -> dict[str, Any]:
    preds: list[Det] = []
    truths: list[Det] = []
    keyframes = frames = tracks = 0
    for key, (video, tv) in enumerate(zip(held_out, tracked, strict=True)):
        regions, _ = tracks_to_regions(
            tv, SPEC, NAMES, tolerance, video.fps, video.frames, video.frames / video.fps, show_conf
        )
        for dets in truth(key, video).values():
            truths += dets
        for region in regions:
            seq = region["value"]["sequence"]
            drawn = frame_boxes(seq, video.frames)
            keyframes, frames, tracks = keyframes + len(seq), frames + len(drawn), tracks + 1
            for f, b in drawn.items():
                x, y = b["x"] / 100 * video.width, b["y"] / 100 * video.height
                w, h = b["width"] / 100 * video.width, b["height"] / 100 * video.height
                image = key * 100000 + f
                preds.append(Det(image, region["value"]["labels"][0], float(region["score"]), (x, y, x + w, y + h)))
    s = score(preds, truths)
    return {
        "map50": round(s["map50"], 3),
        "ap50": {label: round(ap, 3) for label, ap in s["ap"].items()},
        "precision": round(s["precision"], 3),
        "recall": round(s["recall"], 3),
        "true_tracks": sum(1 for v in held_out for t in v.tracks if t.boxes),
        "tracks": tracks,
        "keyframes_per_track": round(keyframes / tracks, 1) if tracks else 0.0,
        "keyframes_per_frame": round(keyframes / frames, 3) if frames else 0.0,
    }


def labelloop_spec(report: DatasetReport, data: Path, weights: str, warm: bool, args: argparse.Namespace) -> dict:
    """labelloop's training job for the built frames: its recipe on the frame counts (the task
    count does not size a video training), ``--epochs``/``--imgsz``/``--time-s`` as overrides."""
    overrides = {"epochs": args.epochs, "imgsz": args.imgsz, "train_time_s": args.time_s}
    recipe = plan_recipe(
        DataShape(report.images["train"], report.images["val"], report.long_side_p90),
        device="cpu",
        warm_start=warm,
        pretrained=warm or weights.endswith(".pt"),
        overrides=overrides,
    )
    return {**recipe.train_args(), "data": str(data), "weights": weights}


def peer_spec(data: Path, weights: str, seconds: float) -> dict:
    """Plain Ultralytics: its defaults, from the base model, for ``seconds`` of training."""
    return {**ULTRALYTICS_DEFAULTS, "time_s": seconds, "data": str(data), "weights": weights}


def train(spec: dict, run_dir: Path, args: argparse.Namespace, work: Path) -> tuple[str, float, int, float]:
    """Train in labelloop's child process; the weights, the seconds it took, the epochs run and the
    score threshold labelloop chose for what annotators see (``show_conf``; 0.25 when none)."""
    full = {**spec, "device": "cpu", "workers": 0, "seed": args.seed, "config_dir": str(work / "yolo")}
    t0 = time.monotonic()
    result = run_training_process(full, run_dir, timeout_s=3600)
    seconds = time.monotonic() - t0
    show = (result.get("show_conf") or {}).get("value")  # the manifest's ShowConf
    return str(result["best"]), seconds, int(result.get("epochs_run") or 0), float(show) if show is not None else 0.25


def videos_for(work: Path, args: argparse.Namespace) -> tuple[list[GeneratedVideo], list[GeneratedVideo]]:
    """The annotation pool and the held-out videos (the rare class in every ``--rare-every``-th of each)."""

    def one(i: int, k: int) -> GeneratedVideo:
        return write_video(
            work / "videos" / f"v{i}.mp4",
            seed=args.seed * 1000 + i,
            frames=args.frames,
            shapes=2 + i % 3,
            rare=bool(args.rare_every) and k % args.rare_every == args.rare_every - 1,
            distractors=args.distractors,
        )

    pool = [one(i, i) for i in range(args.videos)]
    held_out = [one(args.videos + k, k + args.rare_every - 2) for k in range(args.held_out)]
    return pool, held_out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=10)
    p.add_argument("--held-out", type=int, default=3)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--rounds", default="3,6,10")
    p.add_argument("--stride", type=int, default=5, help="LABELLOOP_VIDEO_FRAME_STRIDE (labelloop's default 5)")
    p.add_argument("--distractors", type=int, default=1)
    p.add_argument("--rare-every", type=int, default=4)
    p.add_argument("--epochs", type=int, default=None, help="override labelloop's recipe")
    p.add_argument("--imgsz", type=int, default=None, help="override labelloop's recipe")
    p.add_argument("--time-s", type=float, default=None, help="override labelloop's CPU time budget")
    p.add_argument("--tolerance", type=float, default=1.0, help="LABELLOOP_VIDEO_KEYFRAME_TOLERANCE")
    p.add_argument("--base-model", default="auto")
    p.add_argument("--no-peer", action="store_true", help="skip plain Ultralytics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("var/bench-video"))
    args = p.parse_args()
    from labelloop.yolo_env import prepare_ultralytics

    work = args.out.absolute()
    prepare_ultralytics(work / "yolo")
    from ultralytics import YOLO

    base = resolve_base_model(args.base_model, "detect", work / "weights", offline=True)
    pool, held_out = videos_for(work, args)
    print(
        f"{len(pool)} videos to annotate, {len(held_out)} held out; base model {base.weights}; "
        f"rare class in {sum(any(t.label == RARE_LABEL for t in v.tracks) for v in pool)} + "
        f"{sum(any(t.label == RARE_LABEL for t in v.tracks) for v in held_out)} videos",
        flush=True,
    )
    tasks = [
        {
            "id": i + 1,
            "data": {"video": str(v.path)},
            "annotations": [{"id": i + 1, "result": annotation(v, args.every)}],
        }
        for i, v in enumerate(pool)
    ]
    by_id = {i + 1: v for i, v in enumerate(pool)}
    rows = []
    served: str | None = None
    for n in (int(r) for r in args.rounds.split(",")):
        t0 = time.monotonic()
        report = DatasetReport()
        data = build_video_dataset(
            tasks[:n],
            SPEC,
            work / "ds",
            lambda items: {t: by_id[t] for t, _ in items},
            functools.partial(assign_splits, val_fraction=0.2, min_val=1),
            NAMES,
            report,
            args.stride,
        )
        spec = labelloop_spec(report, data, served or base.weights, served is not None, args)
        best, train_s, epochs, show_conf = train(spec, work / f"run{n}", args, work)
        seconds = time.monotonic() - t0
        served = best
        figures = evaluate(YOLO(best), held_out, int(spec["imgsz"]), args.tolerance, show_conf, ALSO_TOLERANCES)
        row: dict[str, Any] = {
            "videos": n,
            "frames_train": report.images["train"],
            "frames_val": report.images["val"],
            "seconds": round(seconds, 1),
            "epochs": epochs,
            "show_conf": show_conf,
            "recipe": {k: spec[k] for k in ("epochs", "imgsz", "batch", "nbs", "time_s")},
            "labelloop": figures,
            "official_keyframes_per_frame": 1.0,
        }
        if not args.no_peer:
            peer = peer_spec(data, base.weights, train_s)
            peer_best, peer_s, peer_epochs, _ = train(peer, work / f"peer{n}", args, work)
            row["ultralytics"] = {
                "seconds": round(peer_s, 1),
                "epochs": peer_epochs,
                **evaluate(YOLO(peer_best), held_out, int(peer["imgsz"]), args.tolerance),  # Ultralytics' conf 0.25
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    print_table(rows)
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rounds as a table, and the issue's targets met or missed."""
    print(
        "\nvideos frames tr/val  seconds | labelloop mAP50 [AP50 per class]  kf/frame kf/track tracks/true"
        " | ultralytics mAP50  kf/frame"
    )
    for r in rows:
        ll, ul = r["labelloop"], r.get("ultralytics")
        aps = " ".join(f"{k[:3]} {v:.2f}" for k, v in ll["ap50"].items())
        at = " ".join(f"{v:.3f}@{k}" for k, v in ll.get("keyframes_per_frame_at", {}).items())
        peer = f"{ul['map50']:.3f}  {ul['keyframes_per_frame']:.3f}" if ul else "-"
        print(
            f"{r['videos']:6d} {r['frames_train']:6d}/{r['frames_val']:<4d} {r['seconds']:7.0f} | "
            f"{ll['map50']:.3f} [{aps}]  {at or ll['keyframes_per_frame']} {ll['keyframes_per_track']:5.1f} "
            f"{ll['tracks']:3d}/{ll['true_tracks']:<3d} | {peer}"
        )
    last = rows[-1]
    targets: list[tuple[str, bool | None, object]] = [
        (
            f"per-frame mAP50 after {last['videos']} videos >= 0.6",
            last["labelloop"]["map50"] >= 0.6,
            last["labelloop"]["map50"],
        ),
        (
            "keyframes per frame of a track <= 0.1 (official: 1.0)",
            last["labelloop"]["keyframes_per_frame"] <= 0.1,
            last["labelloop"]["keyframes_per_frame"],
        ),
        (
            "annotation to trained model <= 240 s every round",
            all(r["seconds"] <= 240 for r in rows),
            max(r["seconds"] for r in rows),
        ),
    ]
    if not last["labelloop"]["tracks"]:
        targets[1] = (targets[1][0] + ": no predicted track", None, "-")
    print("\ntargets:")
    for name, met, value in targets:
        verdict = "not measured" if met is None else "met" if met else "MISSED"
        print(f"  [{verdict:>12}] {name}: {value}")


if __name__ == "__main__":
    raise SystemExit(main())
