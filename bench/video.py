"""Video learning curve in process: per-frame mAP50 of tracked pre-annotations on held-out videos,
keyframes per track, and seconds from the round's annotations to a trained model.

    .venv/bin/python -m bench.video [--videos 10] [--held-out 3] [--frames 100] [--every 10]
        [--rounds 2,5,10] [--epochs 30] [--stride 5] [--imgsz 192] [--seed 0] [--out var/bench-video]
    .venv/bin/python -m bench.video --videos 4 --held-out 2 --frames 48 --rounds 2,4 --epochs 10  # smoke

Data (``labelloop.dev.synthetic_video``): MP4s of 160x120 at 24 fps with two to four red squares and
blue discs moving in straight lines (crossing each other, leaving the frame). A round annotates the
next videos as a person would in Label Studio: a keyframe every ``--every`` frames of each track
and a disabled one where it leaves (``keyframe_sequence``). Each round builds the dataset exactly
as labelloop does for a video project (``labelloop.dataset.video.build_video_dataset``: stride
frames of the annotated spans and the keyframes, split by video), trains yolov8n from its YAML in
a child process (``labelloop.training.process.run_training_process``), tracks every held-out video with the
trained model (``labelloop.serving.video``: ByteTrack, keyframe reduction at 1 % of the frame) and
scores what Label Studio would draw from the stored keyframes on every frame
(``labelloop.task_types.keyframes.frame_boxes``) against the true boxes (``labelloop.training.scoring``).

Not measured here: Label Studio itself (upload, webhooks, storing predictions) and the promotion
gate: ``tests/test_video_loop_labelstudio.py`` runs that path; seconds are dataset build + training.
Peer for keyframes: the official ML backend's YOLO example stores every frame as a keyframe
(1.0 keyframes per frame of a track).
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
from labelloop.dev.synthetic_video import GeneratedVideo, video_config, video_result, write_video
from labelloop.serving.video import track_video, tracks_to_regions
from labelloop.task_types.keyframes import frame_boxes
from labelloop.task_types.labels import parse_label_config
from labelloop.training.process import run_training_process
from labelloop.training.scoring import Det, score

SPEC = parse_label_config(video_config())
NAMES = {0: "square", 1: "disc"}


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


def evaluate(model: Any, held_out: list[GeneratedVideo], imgsz: int, tolerance: float) -> dict[str, float]:
    """Per-frame mAP50 of what Label Studio would draw from the predicted keyframes, and keyframes
    per frame of a predicted track."""
    preds: list[Det] = []
    truths: list[Det] = []
    keyframes = frames = tracks = 0
    for key, video in enumerate(held_out):
        tracked = track_video(model, video.path, "bytetrack.yaml", 0.1, imgsz)
        regions, _ = tracks_to_regions(
            tracked, SPEC, NAMES, tolerance, video.fps, video.frames, video.frames / video.fps, 0.25
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
        "precision": round(s["precision"], 3),
        "recall": round(s["recall"], 3),
        "tracks": tracks,
        "keyframes_per_frame": round(keyframes / frames, 3) if frames else 0.0,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=10)
    p.add_argument("--held-out", type=int, default=3)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--rounds", default="2,5,10")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--stride", type=int, default=5)
    p.add_argument("--imgsz", type=int, default=192)
    p.add_argument("--tolerance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("var/bench-video"))
    args = p.parse_args()
    from labelloop.yolo_env import prepare_ultralytics

    work = args.out.absolute()
    prepare_ultralytics(work / "yolo")
    from ultralytics import YOLO

    videos = [
        write_video(work / "videos" / f"v{i}.mp4", seed=args.seed * 1000 + i, frames=args.frames, shapes=2 + i % 3)
        for i in range(args.videos + args.held_out)
    ]
    pool, held_out = videos[: args.videos], videos[args.videos :]
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
        spec = {
            "data": str(data),
            "weights": "yolov8n.yaml",
            "epochs": args.epochs,
            "imgsz": args.imgsz,
            "batch": 8,
            "device": "cpu",
            "workers": 0,
            "seed": args.seed,
            "config_dir": str(work / "yolo"),
        }
        result = run_training_process(spec, work / f"run{n}", timeout_s=3600)
        seconds = time.monotonic() - t0
        figures = evaluate(YOLO(result["best"]), held_out, args.imgsz, args.tolerance)
        row = {"videos": n, **report.images, "seconds": round(seconds, 1), **figures, "official_keyframes": 1.0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
