"""Learning curve through a real Label Studio: labelloop's served model vs ultralytics by hand.

    .venv/bin/python -m bench.learning [--rounds 10,20,40,80] [--pool 80] [--held-out 40] [--seed 0]
        [--out var/bench-learning] [--workdir var/bench-learning] [--keep]
    .venv/bin/python -m bench.learning --rounds 10 --pool 12 --held-out 8      # smoke run
    .venv/bin/python -m bench.learning --order both --no-peers ...    # labels saved by labelloop's order

Data (``bench.shapes``): ``--pool + --held-out`` generated JPEGs (default 80 + 40) with three
classes that differ by shape only (circle, square, and triangle, the rare one at ~12% of the
objects; every object in a random colour), unlabelled distractors (crosses, rings, lines),
objects from 14 px to half the image side, 320x240 / 240x320 / 288x384 images on textured
backgrounds, about a quarter saved with an EXIF Orientation tag (6 or 8): the ground truth is
in the displayed (rotated) frame, as an annotator in Label Studio would draw it.

Setup, as ``labelloop demo`` runs it: Redis on a free port, a local Label Studio 1.23.2
(``$LABELLOOP_LS_VENV`` or ~/.cache/labelloop/label-studio-1.23.2), the receiver and the
``events``, ``train`` and ``predict`` workers with labelloop's default settings (only the
models/cache dirs, Redis, Label Studio URL/token and its media folder are set; any other
``LABELLOOP_*`` variable in the environment is dropped). A project is created through the API,
every image uploaded, and labelloop connected as its ML backend.

Rounds: the ground truth of pool tasks, in a fixed random order, is saved through the API until
the cumulative count of ``--rounds`` is reached. Then the bench waits for the labelloop version
trained on exactly that many annotations (registry manifest ``dataset_size``) and records the
seconds from the round's last save to that version being published and served (``CURRENT``;
a version the promotion gate rejects is recorded as such, the older one stays served), then
waits until labelloop is idle (a follow-up training may run) and reads the predictions Label
Studio stores for the held-out tasks (labelloop pre-annotates unlabelled tasks after each
promotion; a task still without one after ``--preannotate-timeout`` is asked for through
Label Studio's "retrieve predictions" action), keeping those of the served version.

Peers, in the same run, on the same images, each in a child process while labelloop is idle,
trained from the base model labelloop started from (round 1's ``train_args.weights``) on a
YOLO dataset built from the same annotated tasks (``labelloop.dataset.build_dataset``, same
task ids, val fraction 0.2, so the same split), for the wall time labelloop's training took
that round (manifest ``timings.train``, as ultralytics' ``time=`` in hours):
  (a) ultralytics defaults: ``YOLO(base).train(data, time)`` plus what offline CPU needs
      (device, amp=False, workers=2, plots=False, an absolute project dir);
  (b) ultralytics tuned by hand for small data: (a) with batch=4, nbs=4 and imgsz the largest
      image side rounded up to a multiple of 32.
Each peer predicts the held-out images (upright: EXIF applied) at conf 0.25, labelloop's
default threshold.

Scoring (``labelloop.scoring``, as in the demo): mAP50 (IoU 0.5, all-point interpolated AP per
class, regions ranked by score, averaged over the classes present in the truth; greedy COCO-style matching)
and precision / recall of all regions at IoU 0.5, on the displayed frame's pixel boxes.

Order axis (``--order random|labelloop|both``): which pool tasks a round annotates. ``random``
is the fixed random order above; ``labelloop`` takes, after each promotion (once pre-annotation
is done), the top of labelloop's Data Manager tab "labelloop: most informative first"
(``labelloop.tabs``: unlabeled tasks by ascending prediction score, the informativeness of
``LABELLOOP_SCORE_STRATEGY``), pool tasks only; its first round, with no version yet, is the
random order's. ``both`` runs the two in turn on the same images and seed, each in its own
project of the same Label Studio and stack (the peers train in the first only), and prints the
annotations each order needed to reach held-out mAP50 0.5 and 0.8 and random / labelloop
(target: >= 1.3x at 0.8). ``--train-time-s`` shortens labelloop's training budget (the demo's
way to fit a run on a busy CPU); otherwise labelloop runs with its defaults.

Targets: labelloop mAP50 after 20 annotations >= 0.8; no round more than 0.03 below the one
before; labelloop / (a) >= 1.5x at 10 and 20 annotations; labelloop / (b) >= 0.95x every round;
annotation -> served <= 240 s every round. A JSON of every figure and a PNG of the three
mAP50 curves go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.shapes import LABEL_CONFIG, ShapeImage, make_project, summary
from labelloop.scoring import IOU, Det, regions_to_dets, score
from labelloop.stack import wait_until
from labelloop.tabs import TAB_TITLE
from labelloop.training import _die_with_parent

ROOT = Path(__file__).resolve().parent.parent
LS_USER = "bench@labelloop.local"
LS_PASSWORD = "labelloop-bench"
LS_TOKEN = "be7c4000000000000000000000000000000000001"[:40]
CONF = 0.25  # labelloop's default predict_conf; the peers predict with the same threshold
VAL_FRACTION = 0.2  # labelloop's default val_fraction
MIN_VAL = 1  # labelloop's default min_val_images
WORKERS = 2  # labelloop's default dataloader_workers
#: The only labelloop settings the bench sets; everything else stays at its default.
OWN_ENV = (
    "LABELLOOP_MODELS_DIR",
    "LABELLOOP_CACHE_DIR",
    "LABELLOOP_REDIS_URL",
    "LABEL_STUDIO_URL",
    "LABEL_STUDIO_API_KEY",
    "LABEL_STUDIO_MEDIA_DIR",
)
TARGET_MAP_AT_20 = 0.8
TARGET_MAX_DROP = 0.03
TARGET_VS_DEFAULTS = 1.5
TARGET_VS_TUNED = 0.95
TARGET_SERVED_S = 240.0


# ---------------------------------------------------------------------------------------------
# Ground truth


def truth_dets(image: int, sample: ShapeImage) -> list[Det]:
    return [Det(image, b.label, 1.0, (b.x1, b.y1, b.x2, b.y2)) for b in sample.boxes]


# ---------------------------------------------------------------------------------------------
# Peers: ultralytics trained by hand, in a child process each


def peer_main(spec_path: Path) -> int:
    """The peer child: train with ultralytics as the spec says, then predict the held-out images."""
    spec = json.loads(spec_path.read_text())
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(Path(spec["config_dir"]))
    from PIL import Image, ImageOps
    from ultralytics import YOLO

    t0 = time.perf_counter()
    model = YOLO(spec["weights"])
    model.train(data=spec["data"], **spec["train"])
    train_s = time.perf_counter() - t0
    trainer = model.trainer
    best = Path(trainer.best) if Path(trainer.best).exists() else Path(trainer.last)
    imgsz = int(trainer.args.imgsz)
    t1 = time.perf_counter()
    predictor = YOLO(str(best))
    predictions: dict[str, list[list[Any]]] = {}
    for task_id, path in spec["images"]:
        with Image.open(path) as raw:
            im = ImageOps.exif_transpose(raw).convert("RGB")  # the displayed frame
        res = predictor.predict(im, conf=spec["conf"], imgsz=imgsz, device=spec["train"]["device"], verbose=False)[0]
        names = res.names
        boxes = res.boxes
        predictions[str(task_id)] = [
            [str(names[int(c)]), float(s), *(float(v) for v in xyxy)]
            for xyxy, c, s in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), strict=True)
        ]
    result = {
        "train_seconds": train_s,
        "predict_seconds": time.perf_counter() - t1,
        "epochs": int(trainer.epoch) + 1,
        "imgsz": imgsz,
        "batch": int(trainer.args.batch),
        "nbs": int(trainer.args.nbs),
        "best": str(best),
        "predictions": predictions,
    }
    tmp = spec_path.with_name("result.json.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, spec_path.with_name("result.json"))
    return 0


def run_peer(spec: dict[str, Any], run_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``peer_main`` in a child process (output in ``<run_dir>/peer.log``); returns its result."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    with open(run_dir / "peer.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.learning", "--peer", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "YOLO_VERBOSE": "True"},  # ultralytics' log in peer.log
            preexec_fn=_die_with_parent,
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    result_path = run_dir / "result.json"
    if code != 0 or not result_path.exists():
        tail = (run_dir / "peer.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"peer exited with {code}:\n{tail}")
    return dict(json.loads(result_path.read_text()))


def peer_dets(result: dict[str, Any]) -> list[Det]:
    return [
        Det(int(task_id), label, conf, (x1, y1, x2, y2))
        for task_id, rows in result["predictions"].items()
        for label, conf, x1, y1, x2, y2 in rows
    ]


# ---------------------------------------------------------------------------------------------
# The loop in Label Studio


@dataclass
class Round:
    annotations: int
    version: str = ""
    version_status: str = ""
    version_dataset: dict[str, int] = field(default_factory=dict)
    published_s: float | None = None
    served_s: float | None = None
    label_studio_sees_s: float | None = None
    train_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    train_args: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    promotion: dict[str, Any] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    versions_this_round: list[str] = field(default_factory=list)
    served_version: str = ""
    served_dataset: dict[str, int] = field(default_factory=dict)
    predictions: dict[str, int] = field(default_factory=dict)
    labelloop: dict[str, Any] = field(default_factory=dict)
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: str = "random"
    picked_by: str = ""
    picked: list[list[Any]] = field(default_factory=list)  # [task id, tab score] of the tasks taken


def say(msg: str) -> None:
    print(f"[bench.learning {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def describe(v: Any) -> str:
    """``v3: 16+4 images, promoted`` for a registry version."""
    size = v.manifest.get("dataset_size") or {}
    return f"{v.name}: {size.get('train', 0)}+{size.get('val', 0)} images, {v.manifest.get('status')}"


class Loop:
    """The running stack and project, and the waits of one round."""

    def __init__(self, stack: Any, api: Any, project_id: int, ml_id: int, models_dir: Path) -> None:
        import redis

        from labelloop.registry import Registry

        self.stack, self.api, self.project_id, self.ml_id = stack, api, project_id, ml_id
        self.registry = Registry(models_dir)
        self.redis = redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])

    def check_alive(self) -> None:
        for name, proc in self.stack.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.stack.log_tail(name)}")

    def training_state(self) -> tuple[bool, int]:
        """(a training runs or is queued, annotation events not yet trained on)."""
        from labelloop.trigger import TriggerStore
        from workers.celery_app import QUEUE_EVENTS, QUEUE_TRAIN

        state = TriggerStore(self.redis, 60).state(self.project_id)
        queued = self.redis.llen(QUEUE_TRAIN) + self.redis.llen(QUEUE_EVENTS)
        busy = state.training or state.followup or bool(queued)
        return busy, int(state.pending)

    def predict_busy(self) -> bool:
        from labelloop.progress import ProgressStore
        from workers.celery_app import QUEUE_PREANNOTATE

        return (
            bool(self.redis.llen(QUEUE_PREANNOTATE))
            or ProgressStore(self.redis).preannotation(self.project_id) is not None
        )

    def wait_version(self, total: int, seen: set[str], t_saved: float, timeout_s: float, rnd: Round) -> None:
        """Wait for the version trained on ``total`` annotations; fill ``rnd`` with its figures."""
        deadline = time.monotonic() + timeout_s
        idle_since: float | None = None
        kicked = False
        target = None
        while True:
            self.check_alive()
            now = time.monotonic()
            if target is None:
                for v in self.registry.list_versions(self.project_id):
                    if v.name in seen:
                        continue
                    seen.add(v.name)
                    rnd.versions_this_round.append(v.name)
                    size = v.manifest.get("dataset_size") or {}
                    say(f"  version {describe(v)}")
                    trained_on = len(v.annotations())
                    if target is None and (
                        int(size.get("train", 0)) + int(size.get("val", 0)) == total or trained_on == total
                    ):
                        target = v
                        rnd.published_s = now - t_saved
            if target is not None:
                promoted = bool(target.manifest.get("promotion", {}).get("promoted"))
                history = {h["version"] for h in self.registry.history(self.project_id)}
                history.add(self.registry.current_name(self.project_id) or "")
                if promoted and rnd.served_s is None and target.name in history:
                    rnd.served_s = now - t_saved
                if not promoted or rnd.served_s is not None:
                    break
            elif not kicked:
                # A round size that is not a multiple of labelloop's train_every_n leaves the
                # last annotations pending: ask as Label Studio's "Start Training" button would.
                busy, pending = self.training_state()
                idle_since = None if busy else (idle_since or now)
                if idle_since is not None and now - idle_since > 60 and pending > 0:
                    say(f"  labelloop idle with {pending} pending annotations: sending START_TRAINING")
                    self.api.train(self.ml_id)
                    kicked = True
            if now > deadline:
                raise TimeoutError(f"no version trained on {total} annotations after {timeout_s:.0f} s")
            time.sleep(0.5)
        m = target.manifest
        rnd.version, rnd.version_status = target.name, str(m.get("status"))
        rnd.version_dataset = dict(m.get("dataset_size") or {})
        rnd.timings = {k: float(v) for k, v in (m.get("timings") or {}).items()}
        rnd.train_s = rnd.timings.get("train", 0.0)
        rnd.train_args = dict(m.get("train_args") or {})
        rnd.recipe = dict(m.get("recipe") or {})
        rnd.promotion = dict(m.get("promotion") or {})
        rnd.val_metrics = dict(m.get("metrics") or {})
        if rnd.served_s is not None:
            try:
                wait_until(
                    lambda: self.api.backend_version(self.ml_id) == target.name, 120, "Label Studio sees it", 0.5
                )
                rnd.label_studio_sees_s = time.monotonic() - t_saved
            except TimeoutError:
                say(f"  Label Studio still does not report {target.name}")

    def wait_idle(self, timeout_s: float, seen: set[str], rnd: Round) -> None:
        """Wait until no training runs or is queued (a follow-up may publish another version)."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while quiet < 3:  # three polls in a row, a second apart
            self.check_alive()
            busy, _ = self.training_state()
            quiet = 0 if busy else quiet + 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"labelloop still training after {timeout_s:.0f} s")
            time.sleep(1.0)
        for v in self.registry.list_versions(self.project_id):
            if v.name not in seen:
                seen.add(v.name)
                rnd.versions_this_round.append(v.name)
                say(f"  follow-up version {describe(v)}")

    def stored_prediction(self, task_id: int, version: str) -> dict[str, Any] | None:
        preds = [p for p in self.api.sdk_predictions(task_id) if p.get("model_version") == version]
        return max(preds, key=lambda p: int(p["id"])) if preds else None

    def served_predictions(
        self, task_ids: list[int], version: str, timeout_s: float
    ) -> tuple[dict[int, Any], dict[str, int]]:
        """The served version's stored prediction of each task: pre-annotation's, else asked for."""
        got: dict[int, Any] = {}

        def all_stored() -> bool:
            # Pre-annotation goes through the tasks in id order: the last ones come last.
            for t in sorted(task_ids, reverse=True):
                if t not in got:
                    p = self.stored_prediction(t, version)
                    if p is None:
                        return False
                    got[t] = p
            return True

        try:
            wait_until(all_stored, timeout_s, f"pre-annotation with {version}", 3.0)
        except TimeoutError:
            say(
                f"  {len(task_ids) - len(got)} held-out tasks without a stored {version} prediction: "
                "asking Label Studio"
            )
        stored = len(got)
        asked = 0
        for t in task_ids:
            if t in got:
                continue
            asked += 1
            preds = [p for p in self.api.predictions_for(t) if p.get("model_version") == version]
            if preds:
                got[t] = max(preds, key=lambda p: int(p["id"]))
        return got, {"stored": stored, "asked": asked, "missing": len(task_ids) - len(got)}


def start_stack(
    work: Path,
    train_time_s: float | None = None,
    label_studio: tuple[str, str, Path] | None = None,
    epochs: int | None = None,
) -> tuple[Any, str, str, str]:
    """Redis, Label Studio, the receiver and the workers, with labelloop's defaults (and
    ``LABELLOOP_TRAIN_TIME_S`` when ``train_time_s`` is given, ``LABELLOOP_EPOCHS`` with no time
    budget when ``epochs`` is: the same work per training whatever the machine's load).
    ``label_studio``: ``(url, token, data dir)`` of a Label Studio already running, used instead
    of starting one."""
    from labelloop.stack import LABEL_STUDIO_VERSION, Stack, free_port, label_studio_binary

    models, cache = work / "models", work / "cache"
    stack = Stack(work / "stack", {"LABELLOOP_MODELS_DIR": str(models), "LABELLOOP_CACHE_DIR": str(cache)})
    dropped = [k for k in stack.env if k.startswith("LABELLOOP_") and k not in OWN_ENV]
    dropped += [k for k in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS") if k in stack.env]
    for k in dropped:
        del stack.env[k]
    if dropped:
        say(f"dropped from the stack's environment (labelloop runs with its defaults): {', '.join(sorted(dropped))}")
    if train_time_s is not None:
        stack.env["LABELLOOP_TRAIN_TIME_S"] = str(train_time_s)
        say(f"LABELLOOP_TRAIN_TIME_S={train_time_s:g} (--train-time-s)")
    if epochs is not None:
        stack.env.update(LABELLOOP_EPOCHS=str(epochs), LABELLOOP_TRAIN_TIME_S="3000")
        say(f"LABELLOOP_EPOCHS={epochs} (time budget 3000 s: never the limit) (--epochs)")
    stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port(), work / "redis")
    venv = Path(
        os.environ.get("LABELLOOP_LS_VENV")
        or Path.home() / ".cache" / "labelloop" / f"label-studio-{LABEL_STUDIO_VERSION}"
    )
    t0 = time.perf_counter()
    token = LS_TOKEN
    if label_studio is not None:
        ls_url, token, ls_dir = label_studio
        say(f"Label Studio on {ls_url} (already running)")
    else:
        ls_dir = work / "label-studio"
        ls_url = stack.start_label_studio(
            label_studio_binary(venv), free_port(), ls_dir, LS_USER, LS_PASSWORD, LS_TOKEN, timeout_s=600
        )
        say(f"Label Studio {LABEL_STUDIO_VERSION} on {ls_url} ({time.perf_counter() - t0:.0f} s)")
    stack.env.update(LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY=token, LABEL_STUDIO_MEDIA_DIR=str(ls_dir / "media"))
    backend = stack.start_receiver(free_port())
    for queue in ("events", "train", "predict", "preannotate"):
        stack.start_worker(queue)
    say(f"labelloop receiver on {backend}, workers events/train/predict/preannotate")
    return stack, ls_url, token, backend


def connect(api: Any, project_id: int, backend: str, tries: int = 5) -> int:
    """Connect labelloop as the project's ML backend; Label Studio gives the backend's first
    ``/setup`` 3 s, which a busy machine can miss: try again a few times."""
    for attempt in range(1, tries + 1):
        try:
            return int(api.connect_backend(project_id, backend))
        except Exception as exc:  # label-studio-sdk ApiError 400 "Read timed out"
            if attempt == tries or "timed out" not in str(exc):
                raise
            say(f"  connecting the ML backend timed out (try {attempt} of {tries}): again")
            time.sleep(3.0)
    raise AssertionError("unreachable")


def upload(api: Any, project_id: int, images: list[ShapeImage]) -> dict[str, int]:
    """Upload the images as tasks (50 files a request); returns file name -> task id."""
    for start in range(0, len(images), 50):
        api.upload(project_id, [(im.name, im.data, "image/jpeg") for im in images[start : start + 50]])
    tasks: list[Any] = list(api.sdk.tasks.list(project=project_id))
    by_name = {str(t.data["image"]).rsplit("-", 1)[-1]: int(t.id) for t in tasks}
    missing = [im.name for im in images if im.name not in by_name]
    if missing:
        raise RuntimeError(f"{len(missing)} uploads have no task: {missing[:5]}")
    return {im.name: by_name[im.name] for im in images}


# ---------------------------------------------------------------------------------------------
# Report


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b; inf when only b is 0, 1.0 when both are (equal), None when either is missing."""
    if a is None or b is None:
        return None
    if b == 0:
        return math.inf if a > 0 else 1.0
    return a / b


def finite(v: float | None) -> float | str | None:
    """For JSON: inf becomes the string "inf"."""
    return "inf" if v is not None and math.isinf(v) else v


def fmt(v: float | None, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return format(v, spec)


def peer_map(r: Round, name: str) -> float | None:
    p = r.peers.get(name) or {}
    return p.get("score", {}).get("map50") if "score" in p else None


def targets(rounds: list[Round]) -> list[dict[str, Any]]:
    """Each target with its figures and whether it was met (None: not measured in this run)."""
    by_n = {r.annotations: r for r in rounds}
    maps = [(r.annotations, r.labelloop.get("map50")) for r in rounds]
    out = []

    r20 = by_n.get(20)
    v20 = r20.labelloop.get("map50") if r20 else None
    out.append(
        {
            "target": f"labelloop mAP50 after 20 annotations >= {TARGET_MAP_AT_20}",
            "figures": fmt(v20),
            "met": None if v20 is None else v20 >= TARGET_MAP_AT_20,
        }
    )
    drops = [
        (n1, round(a - b, 3))
        for (_, a), (n1, b) in zip(maps, maps[1:], strict=False)
        if a is not None and b is not None
    ]
    out.append(
        {
            "target": f"no round more than {TARGET_MAX_DROP} below the round before",
            "figures": ", ".join(f"-{d:.3f} at {n}" for n, d in drops if d > 0)
            or ("no drop" if drops else "one round"),
            "met": None if not drops else all(d <= TARGET_MAX_DROP for _, d in drops),
        }
    )
    for name, goal, only in (("a", TARGET_VS_DEFAULTS, (10, 20)), ("b", TARGET_VS_TUNED, None)):
        chosen = [r for r in rounds if only is None or r.annotations in only]
        figs = [(r.annotations, ratio(r.labelloop.get("map50"), peer_map(r, name))) for r in chosen]
        both_zero = {r.annotations for r in chosen if r.labelloop.get("map50") == 0 and peer_map(r, name) == 0}
        measured = [(n, v) for n, v in figs if v is not None]
        where = "at 10 and 20 annotations" if only else "every round"
        complete = bool(measured) and (only is None or {n for n, _ in measured} >= set(only))
        met = all(v >= goal for _, v in measured) if measured else None
        out.append(
            {
                "target": f"labelloop / peer ({name}) >= {goal}x {where}",
                "figures": ", ".join(
                    f"{fmt(v, '.2f')}{'x' if v is not None else ''} at {n}" + (" (both 0)" if n in both_zero else "")
                    for n, v in figs
                )
                or "-",
                "met": met if complete or met is False else None,
            }
        )
    lat = [(r.annotations, r.served_s if r.served_s is not None else r.published_s, r.served_s is None) for r in rounds]
    out.append(
        {
            "target": f"annotation -> served <= {TARGET_SERVED_S:.0f} s every round",
            "figures": ", ".join(
                f"{fmt(s, '.0f')} s at {n}" + (" (rejected: to the decision)" if rej else "") for n, s, rej in lat
            ),
            "met": None if not lat else all(s is not None and s <= TARGET_SERVED_S for _, s, _ in lat),
        }
    )
    return out


def print_report(rounds: list[Round], config: dict[str, Any]) -> list[dict[str, Any]]:
    head = (
        f"{'annots':>6} {'ann->served s':>13} {'ll train s':>10} {'ll version':>14} {'ll mAP50':>8} {'ll P':>6} "
        f"{'ll R':>6} {'(a) mAP50':>9} {'(b) mAP50':>9} {'ll/(a)':>7} {'ll/(b)':>7}"
    )
    print()
    print(
        f"learning curve: {config['data']['images']} generated images, held-out {config['held_out']} tasks, "
        f"base model {config.get('base_model')}"
    )
    print(head)
    print("-" * len(head))
    for r in rounds:
        served = fmt(r.served_s, ".0f") if r.served_s is not None else f"rej {fmt(r.published_s, '.0f')}"
        version = r.served_version + (f" ({r.version} rej)" if r.version_status != "promoted" else "")
        a, b, ll = peer_map(r, "a"), peer_map(r, "b"), r.labelloop.get("map50")
        print(
            f"{r.annotations:>6} {served:>13} {fmt(r.train_s, '.0f'):>10} {version:>14} {fmt(ll):>8} "
            f"{fmt(r.labelloop.get('precision'), '.2f'):>6} {fmt(r.labelloop.get('recall'), '.2f'):>6} {fmt(a):>9} "
            f"{fmt(b):>9} {fmt(ratio(ll, a), '.2f'):>7} {fmt(ratio(ll, b), '.2f'):>7}"
        )
    for r in rounds:
        for name, p in r.peers.items():
            if "error" in p:
                print(f"  round {r.annotations}: peer ({name}) failed: {p['error'].splitlines()[0][:200]}")
            else:
                print(
                    f"  round {r.annotations}: peer ({name}) {p['epochs']} epochs, imgsz {p['imgsz']}, "
                    f"batch {p['batch']}, nbs {p['nbs']}, trained {p['train_seconds']:.0f} s "
                    f"(budget {r.train_s:.0f} s); "
                    f"P {p['score']['precision']:.2f} R {p['score']['recall']:.2f}"
                )
        ap = r.labelloop.get("ap") or {}
        print(
            f"  round {r.annotations}: labelloop {r.version} trained on {r.version_dataset}, "
            f"epochs {r.train_args.get('epochs')} (run {r.recipe.get('epochs_run', '-')}), "
            f"imgsz {r.train_args.get('imgsz')}, batch {r.train_args.get('batch')}; "
            f"val mAP50 {fmt(r.val_metrics.get('map50'))}; "
            f"gate: {r.promotion.get('reason')}; AP per class: " + ", ".join(f"{k} {v:.2f}" for k, v in ap.items())
        )
    print()
    result = targets(rounds)
    for t in result:
        status = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"  [{status:>12}] {t['target']}: {t['figures']}")
    return result


LABELS_SAVED_AT = (0.5, 0.8)
TARGET_LABELS_SAVED = 1.3


def reached(rounds: list[Round], threshold: float) -> int | None:
    """The annotations of the first round whose served version's held-out mAP50 is >= ``threshold``."""
    return next((r.annotations for r in rounds if (r.labelloop.get("map50") or 0.0) >= threshold), None)


def labels_saved(runs: dict[str, list[Round]]) -> list[dict[str, Any]]:
    """Per mAP50 threshold: annotations each order needed (None: not reached) and random / labelloop."""
    out = []
    for th in LABELS_SAVED_AT:
        need = {o: reached(rs, th) for o, rs in runs.items()}
        r, ll = need.get("random"), need.get("labelloop")
        out.append({"map50": th, "annotations": need, "random_over_labelloop": ratio(r, ll) if r and ll else None})
    return out


def print_labels_saved(runs: dict[str, list[Round]]) -> None:
    """The order axis: mAP50 per round for each order, annotations to reach 0.5 and 0.8, and the ratio."""
    if len(runs) < 2 and "labelloop" not in runs:
        return
    most = max((r.annotations for rs in runs.values() for r in rs), default=0)
    print("\nlabels saved (held-out mAP50 of the served version per round, by annotation order):")
    for o, rs in runs.items():
        print(f"  {o:>9}: " + ", ".join(f"{r.annotations} -> {fmt(r.labelloop.get('map50'))}" for r in rs))
    for row in labels_saved(runs):
        parts = [f"{o} {n if n is not None else f'not reached within {most}'}" for o, n in row["annotations"].items()]
        rr = row["random_over_labelloop"]
        tail = f"; random / labelloop {rr:.2f}x" if rr is not None else ""
        goal = f" (goal >= {TARGET_LABELS_SAVED}x)" if row["map50"] == 0.8 else ""
        print(f"  annotations to reach mAP50 {row['map50']}: " + ", ".join(parts) + tail + goal)


def plot(rounds: list[Round], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.annotations for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, ys in (
        ("labelloop (served, stored predictions)", [r.labelloop.get("map50") for r in rounds]),
        ("(a) ultralytics defaults, same time", [peer_map(r, "a") for r in rounds]),
        ("(b) ultralytics small-data settings, same time", [peer_map(r, "b") for r in rounds]),
    ):
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.axhline(TARGET_MAP_AT_20, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("annotations")
    ax.set_ylabel("held-out mAP50")
    ax.set_ylim(0, 1)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("learning curve (bench.learning)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", default="10,20,40,80", help="cumulative annotation counts, comma-separated")
    parser.add_argument(
        "--pool", type=int, default=80, help="tasks annotated in rounds (from the pool, in a fixed random order)"
    )
    parser.add_argument("--held-out", type=int, default=40, help="unlabelled tasks scored every round")
    parser.add_argument("--seed", type=int, default=0, help="data and annotation order")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "var" / "bench-learning", help="a run-* folder goes here"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "var" / "bench-learning", help="learning.json and learning.png"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folder (models, datasets, logs)")
    parser.add_argument("--train-timeout", type=float, default=7200, help="seconds to wait for a round's version")
    parser.add_argument("--preannotate-timeout", type=float, default=300, help="seconds to wait for stored predictions")
    parser.add_argument("--no-peers", action="store_true", help="labelloop only")
    parser.add_argument(
        "--order",
        choices=("random", "labelloop", "both"),
        default="random",
        help="which pool tasks each round annotates: a fixed random order, labelloop's (the top of its Data Manager "
        "tab after each promotion; round 1 as random), or both in turn, each in its own project (peers: first only)",
    )
    parser.add_argument(
        "--label-studio",
        metavar="URL,TOKEN,DATA_DIR",
        help="use this running Label Studio (its legacy token and data directory) instead of starting one",
    )
    parser.add_argument(
        "--train-time-s",
        type=float,
        help="LABELLOOP_TRAIN_TIME_S for the stack (default: labelloop's own budget, 170 s on a CPU)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="LABELLOOP_EPOCHS with no time budget: every training does the same work whatever the load "
        "(fair between --order both's two orders on a shared machine)",
    )
    parser.add_argument("--peer", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.peer:
        return peer_main(args.peer)
    rounds_n = [int(x) for x in args.rounds.split(",") if x.strip()]
    if not rounds_n or rounds_n != sorted(set(rounds_n)) or rounds_n[0] < 2 or rounds_n[-1] > args.pool:
        raise SystemExit(f"--rounds must increase, from 2 up to --pool ({args.pool}): {args.rounds}")
    if args.held_out < 1:
        raise SystemExit("--held-out must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("label_studio_sdk", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    t_gen = time.perf_counter()
    images = make_project(args.seed, args.pool + args.held_out)
    pool, held = images[: args.pool], images[args.pool :]
    order = list(range(args.pool))
    random.Random(args.seed).shuffle(order)
    data = summary(images)
    say(
        f"generated {len(images)} images in {time.perf_counter() - t_gen:.1f} s: {data['per_class']} objects, "
        f"{data['distractors']} distractors, {data['exif_rotated']} EXIF-rotated, sizes {data['sizes']}, "
        f"object sides {data['object_side_px']} px"
    )
    imgsz_tuned = int(math.ceil(max(max(im.width, im.height) for im in images) / 32) * 32)

    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir.absolute()))
    files = work / "images"
    files.mkdir()
    for im in images:  # the files as uploaded, and upright copies for the peers' datasets
        (files / im.name).write_bytes(im.data)
        if im.orientation != 1:
            # as labelloop's image cache re-encodes them (labelloop.media: JPEG quality 95)
            im.upright().save(files / f"{Path(im.name).stem}-upright.jpg", quality=95)

    def upright_path(im: ShapeImage) -> Path:
        return files / (im.name if im.orientation == 1 else f"{Path(im.name).stem}-upright.jpg")

    config: dict[str, Any] = {
        "rounds": rounds_n,
        "pool": args.pool,
        "held_out": args.held_out,
        "seed": args.seed,
        "data": data,
        "iou": IOU,
        "conf": CONF,
        "imgsz_tuned": imgsz_tuned,
        "labelloop_env": list(OWN_ENV),
    }
    orders = ["random", "labelloop"] if args.order == "both" else [args.order]
    runs: dict[str, list[Round]] = {o: [] for o in orders}
    rounds = runs[orders[0]]  # the learning curve and the peers: the first order's rounds
    json_path, png_path = args.out / "learning.json", args.out / "learning.png"

    def save() -> None:
        body = {
            "config": config,
            "rounds": [
                {
                    **asdict(r),
                    "labelloop_over_a": finite(ratio(r.labelloop.get("map50"), peer_map(r, "a"))),
                    "labelloop_over_b": finite(ratio(r.labelloop.get("map50"), peer_map(r, "b"))),
                }
                for r in runs[orders[0]]
            ],
            "targets": targets(runs[orders[0]]),
            "orders": {o: [asdict(r) for r in rs] for o, rs in runs.items()},
            "labels_saved": labels_saved(runs),
        }
        json_path.write_text(json.dumps(body, indent=1, default=str))

    stack = None
    ok = False
    try:
        from labelloop.dataset import build_dataset, local_images
        from labelloop.demo import LabelStudioAPI
        from labelloop.labels import parse_detection_config
        from labelloop.training import pick_device

        external = None
        if args.label_studio:
            url, token, data_dir = args.label_studio.split(",", 2)
            external = (url, token, Path(data_dir))
        stack, ls_url, token, backend = start_stack(work, args.train_time_s, external, args.epochs)
        api = LabelStudioAPI(ls_url, token)
        spec = parse_detection_config(LABEL_CONFIG)
        device = pick_device("")
        base_model: str | None = None

        def pick(
            order_name: str,
            k: int,
            annotated: list[ShapeImage],
            loop: Loop,
            api: Any,
            task_of: dict[str, int],
            rnd: Round,
        ) -> list[ShapeImage]:
            """The next ``k`` pool tasks to annotate: the fixed random order, or (labelloop's order, once a
            version is served) the top of labelloop's Data Manager tab, pool tasks only."""
            done = {im.name for im in annotated}
            remaining = [pool[i] for i in order if pool[i].name not in done]
            if order_name == "random" or loop.registry.current(loop.project_id) is None:
                rnd.picked_by = "random order"
                return remaining[:k]
            try:
                wait_until(lambda: not loop.predict_busy(), args.preannotate_timeout, "pre-annotation done", 1.0)
            except TimeoutError as exc:
                say(f"  {exc}: the tab's order is that of the predictions stored so far")
            view = next(
                (v for v in api.sdk.views.list(project=loop.project_id) if (v.data or {}).get("title") == TAB_TITLE),
                None,
            )
            if view is None:
                raise RuntimeError(f"labelloop made no {TAB_TITLE!r} tab in project {loop.project_id}")
            by_id = {task_of[im.name]: im for im in remaining}
            ranked = [(int(t.id), t) for t in api.sdk.tasks.list(project=loop.project_id, view=view.id, fields="all")]
            top = [by_id[tid] for tid, _ in ranked if tid in by_id][:k]
            served = loop.registry.current_name(loop.project_id) or ""
            stored = {task_of[im.name]: loop.stored_prediction(task_of[im.name], served) for im in top}
            rnd.picked = [[tid, (p or {}).get("score")] for tid, p in stored.items()]
            rnd.picked_by = f"top {len(top)} of the tab"
            return top + [im for im in remaining if im not in top][: k - len(top)]

        for order_name in orders:
            rounds = runs[order_name]
            project_id = api.create_project(f"bench.learning seed {args.seed}, {order_name} order", LABEL_CONFIG)
            task_of = upload(api, project_id, images)
            ml_id = connect(api, project_id, backend)
            say(f"project {project_id}: {len(task_of)} tasks, ML backend {ml_id} ({api.backend_version(ml_id)})")
            loop = Loop(stack, api, project_id, ml_id, work / "models")
            held_ids = [task_of[im.name] for im in held]
            truths = [d for im in held for d in truth_dets(task_of[im.name], im)]
            seen: set[str] = set()
            annotated: list[ShapeImage] = []

            for total in rounds_n:
                rnd = Round(total, order=order_name)
                rounds.append(rnd)  # saved as it fills in, so an interrupted run keeps its figures
                todo = pick(order_name, total - len(annotated), annotated, loop, api, task_of, rnd)
                say(f"round {total} ({order_name} order): saving {len(todo)} annotations ({rnd.picked_by})")
                for im in todo:
                    api.annotate(task_of[im.name], im.ls_result())
                annotated += todo
                t_saved = time.monotonic()
                loop.wait_version(total, seen, t_saved, args.train_timeout, rnd)
                say(
                    f"  {rnd.version} ({rnd.version_status}) published {fmt(rnd.published_s, '.0f')} s, served "
                    f"{fmt(rnd.served_s, '.0f')} s after the last save; train {rnd.train_s:.0f} s"
                )
                loop.wait_idle(args.train_timeout, seen, rnd)
                served = loop.registry.current(project_id)
                if served is None:
                    raise RuntimeError("no version is served")
                rnd.served_version = served.name
                rnd.served_dataset = dict(served.manifest.get("dataset_size") or {})
                if base_model is None:
                    first = loop.registry.list_versions(project_id)[0]
                    base_model = str(first.manifest.get("train_args", {}).get("weights") or "")
                    if not base_model or Path(base_model).is_relative_to(loop.registry.root):
                        from labelloop.settings import Settings

                        base_model = str(Settings.model_fields["base_model"].default)
                    config["base_model"] = base_model
                    config["labelloop_base_model"] = first.manifest.get("base_model")

                got, counts = loop.served_predictions(held_ids, served.name, args.preannotate_timeout)
                rnd.predictions = counts
                dets = [
                    d
                    for im in held
                    if (p := got.get(task_of[im.name])) is not None
                    for d in regions_to_dets(task_of[im.name], p.get("result") or [], im.width, im.height)
                ]
                rnd.labelloop = score(dets, truths)
                say(
                    f"  served {served.name}: mAP50 {rnd.labelloop['map50']:.3f}, P {rnd.labelloop['precision']:.2f}, "
                    f"R {rnd.labelloop['recall']:.2f} on {len(got)} held-out tasks ({counts})"
                )
                save()

                if not args.no_peers and order_name == orders[0]:
                    try:
                        wait_until(lambda lp=loop: not lp.predict_busy(), 600, "labelloop pre-annotation done", 1.0)
                    except TimeoutError as exc:
                        say(f"  {exc}; the peers train while it runs")
                    tasks = [
                        {
                            "id": task_of[im.name],
                            "data": {"image": im.name},
                            "annotations": [{"id": k + 1, "result": im.ls_result(), "was_cancelled": False}],
                        }
                        for k, im in enumerate(annotated)
                    ]
                    fetch = local_images({task_of[im.name]: upright_path(im) for im in annotated})
                    built = build_dataset(
                        tasks, spec, work / "peers" / f"r{total}" / "ds", fetch, VAL_FRACTION, MIN_VAL
                    )
                    budget_h = max(rnd.train_s, 1.0) / 3600
                    common = {
                        "time": budget_h,
                        "device": device,
                        "amp": device != "cpu",
                        "workers": WORKERS,
                        "exist_ok": True,
                        "plots": False,
                        "name": "train",
                    }
                    for name, extra in (("a", {}), ("b", {"batch": 4, "nbs": 4, "imgsz": imgsz_tuned})):
                        run_dir = work / "peers" / f"r{total}" / name
                        peer_spec = {
                            "weights": base_model,
                            "data": str(built.data),
                            "train": {**common, **extra, "project": str(run_dir / "runs")},
                            "images": [[task_of[im.name], str(files / im.name)] for im in held],
                            "conf": CONF,
                            "config_dir": str(work / "peers" / "ultralytics"),
                        }
                        say(
                            f"  peer ({name}): training {rnd.train_s:.0f} s on {len(annotated)} tasks, "
                            f"{extra or 'ultralytics defaults'}"
                        )
                        try:
                            result = run_peer(peer_spec, run_dir, timeout_s=rnd.train_s * 3 + 900)
                        except Exception as exc:  # a failing peer is reported, the run goes on
                            rnd.peers[name] = {"error": f"{type(exc).__name__}: {exc}"[-3000:]}
                            say(f"  peer ({name}) failed: {str(exc).splitlines()[0][:300]}")
                            continue
                        result["score"] = score(peer_dets(result), truths)
                        result.pop("predictions")
                        rnd.peers[name] = result
                        say(
                            f"  peer ({name}): mAP50 {result['score']['map50']:.3f} ({result['epochs']} epochs, "
                            f"trained {result['train_seconds']:.0f} s)"
                        )
                save()
        ok = True
    except KeyboardInterrupt:
        say("interrupted")
    except Exception:
        traceback.print_exc()
        if stack is not None:
            for name in ("worker-train", "worker-predict", "receiver"):
                print(f"--- {name} log tail\n{stack.log_tail(name, 2000)}", file=sys.stderr)
    finally:
        if stack is not None:
            stack.stop_all()
        if runs[orders[0]]:
            config["finished"] = ok
            save()
            plot(runs[orders[0]], png_path)
            print_report(runs[orders[0]], config)
            print_labels_saved(runs)
            print(f"\nwrote {json_path} and {png_path}")
        if args.keep or not ok:
            print(f"run folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
