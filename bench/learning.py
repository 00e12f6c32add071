"""Learning curves through a real Label Studio: held-out mAP50 and edits per annotation, by order.

    .venv/bin/python -m bench.learning [--rounds 10,20,40,80] [--pool 80] [--held-out 40]
        [--seed 0] [--seeds 1] [--order random|labelloop|both] [--pseudo on|off] [--epochs N]
        [--no-peers] [--out var/bench-learning] [--workdir var/bench-learning] [--keep]
    .venv/bin/python -m bench.learning --order both --seeds 3 --no-peers --epochs 20   # the issue's
    .venv/bin/python -m bench.learning --rounds 4,8 --pool 12 --held-out 6 --seeds 2 --epochs 2 \\
        --no-peers --order both                                                       # smoke run

Data (``bench.shapes``), one project per seed: ``--pool + --held-out`` generated JPEGs
(default 80 + 40) with three classes that differ by shape only (circle, square, and triangle,
the rare one at ~12% of the objects; every object in a random colour), unlabelled distractors
(crosses, rings, lines), objects from 14 px to half the image side, 320x240 / 240x320 / 288x384
images on textured backgrounds, about a quarter saved with an EXIF Orientation tag (6 or 8):
the ground truth is in the displayed (rotated) frame, as an annotator in Label Studio would
draw it. Seed ``s`` (``--seed`` to ``--seed + --seeds - 1``) generates its own images, split and
random order; both orders of a seed use the same ones.

Setup, as ``labelloop demo`` runs it: Redis on a free port, a local Label Studio 1.23.2
(``$LABELLOOP_LS_VENV`` or ~/.cache/labelloop/label-studio-1.23.2), the receiver and the
``events``, ``train``, ``predict`` and ``preannotate`` workers with labelloop's default
settings (only the models/cache dirs, Redis, Label Studio URL/token and its media folder are
set, and what ``--epochs``, ``--train-time-s`` and ``--pseudo`` ask for; any other
``LABELLOOP_*`` variable in the environment is dropped). Seeds and orders run one after the
other in that one stack, each in a fresh project created through the API (every image
uploaded, labelloop connected as its ML backend: Label Studio calls its ``/setup``). The bench
never changes a project setting itself: whatever labelloop leaves (e.g. ``sampling``) is what it
measures; each round prints the project's ``sampling`` and ``model_version``.

Orders (``--order``), i.e. which pool tasks a round annotates:
  random     the seed's fixed random order of the pool tasks, saved through the API;
  labelloop  the tasks Label Studio's label stream serves: ``GET /api/projects/{id}/next/`` as
             the bench's Label Studio user (``bench.annotator``; the same user and token
             labelloop is given), the served task's ground truth saved as that user's
             annotation, then ``next/`` again. A held-out task it serves is skipped as the
             editor's Skip button does (a cancelled annotation: never trained on, still
             pre-annotated and scored); skips are counted per round. Round 1 goes through
             ``next/`` too (whatever labelloop has put in the stream before its first version);
  both       random, then labelloop, per seed.

Rounds: annotations are saved until the cumulative count of ``--rounds`` is reached. Then the
bench waits for the labelloop version trained on exactly that many annotations (registry
manifest ``dataset_size``) and records the seconds from the round's last save to that version
being published and served (``CURRENT``; a version the promotion gate rejects is recorded as
such, the older one stays served), waits until labelloop is idle (a follow-up training may run)
and reads the predictions Label Studio stores for the held-out tasks (labelloop pre-annotates
unlabelled tasks after each promotion; a task still without one after
``--preannotate-timeout`` is asked for through Label Studio's "retrieve predictions" action),
keeping those of the served version: what an annotator would see on those tasks.

Figures per round (held-out tasks, ``labelloop.training.scoring``, regions on the displayed frame):
  mAP50            IoU 0.5, all-point interpolated AP per class present in the truth, regions
                   ranked by score, greedy COCO-style matching; precision / recall at IoU 0.5;
  edits/img        ``scoring.edits``: missed objects + wrong regions per held-out image, what an
                   annotator changes to correct the pre-annotation; boxes/img is the same with no
                   pre-annotation (every box drawn by hand);
  versions         versions trained (promoted or rejected) from the round's first save to the
                   next round's: the versions one burst of annotations caused;
  ann->served s    last save of the round to the round's version served;
  skips            held-out tasks ``next/`` served (labelloop order) and the bench skipped.
Per order: annotations to reach held-out mAP50 0.5 and 0.8 (linear between the rounds around
the crossing, ``bench.curves.reach``; "not within N" when the last round is below), random /
labelloop at each (a bound, "<" or ">", when only one order reaches it), and the area under the
mAP50 curve (trapezoid over annotations, divided by the annotation range: the curve's mean
height, 0 to 1). Every figure is given per seed and as mean [min-max] over seeds; thresholds
and ratios also on the mean curve (the point-wise mean of the seeds' curves).

Targets (printed at the end, met / MISSED / not measured): labelloop's order >= random in mAP50
every round (means); random / labelloop >= 1.3x annotations to reach mAP50 0.5 (mean curves);
mAP50 after 20 annotations >= 0.5 and edits per held-out image after 40 annotations <= 60% of
the boxes per image (labelloop's order; interpolated when 20 or 40 is not a round); one version
per burst of 20 or more annotations (every seed and order); annotation -> served version
<= 240 s every round (means). A round whose version was rejected counts its time to the gate's
decision.

Peers (``bench.learning_peers``; not with ``--no-peers``): only with ``--order random`` and in
the first seed (they train as long as labelloop did each round, which would double a
labels-saved run), Ultralytics trained by hand on the same annotated tasks for the same wall
time: (a) its defaults, (b) tuned for small data; scored the same way, with their targets
(labelloop / (a) >= 1.5x at 10 and 20 annotations, labelloop / (b) >= 0.95x every round) and
"no round more than 0.03 below the one before" in the learning-curve table.

``--epochs`` sets ``LABELLOOP_EPOCHS`` with no time budget, so every training does the same
work whatever the load (fair between orders on a shared machine); ``--train-time-s`` shortens
labelloop's time budget instead. ``--pseudo on|off`` sets ``LABELLOOP_PSEUDO_LABELS`` (absent:
labelloop's default). ``learning.json`` (every figure, per seed and aggregated) and
``learning.png`` (mean mAP50 curve per order, min-max band) go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.annotator import Annotator
from bench.learning_peers import CONF, run_peers
from bench.learning_report import (
    Round,
    Runs,
    body,
    fmt,
    peer_targets,
    plot,
    print_learning_curve,
    print_orders,
    print_targets,
    targets,
)
from bench.shapes import LABEL_CONFIG, ShapeImage, make_project, summary
from labelloop.dev.stack import wait_until
from labelloop.labelstudio.sampling import FIRST_PICKS_VERSION, UNCERTAINTY
from labelloop.training.scoring import IOU, Det, edits, regions_to_dets, score

ROOT = Path(__file__).resolve().parent.parent
LS_USER = "bench@labelloop.local"
LS_PASSWORD = "labelloop-bench"
LS_TOKEN = "be7c4000000000000000000000000000000000001"[:40]
#: The only labelloop settings the bench sets (besides --epochs, --train-time-s, --pseudo).
OWN_ENV = (
    "LABELLOOP_MODELS_DIR",
    "LABELLOOP_CACHE_DIR",
    "LABELLOOP_REDIS_URL",
    "LABEL_STUDIO_URL",
    "LABEL_STUDIO_API_KEY",
    "LABEL_STUDIO_MEDIA_DIR",
)


TITLE = re.compile(r"bench\.learning seed (\d+), (\w+) order")


def project_title(seed: int, order: str) -> str:
    """The Label Studio title of one seed's project in one order (``TITLE`` reads it back)."""
    return f"bench.learning seed {seed}, {order} order"


def truth_dets(image: int, sample: ShapeImage) -> list[Det]:
    return [Det(image, b.label, 1.0, (b.x1, b.y1, b.x2, b.y2)) for b in sample.boxes]


# ---------------------------------------------------------------------------------------------
# The loop in Label Studio


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

        from labelloop.registry.store import Registry

        self.stack, self.api, self.project_id, self.ml_id = stack, api, project_id, ml_id
        self.registry = Registry(models_dir)
        self.redis = redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])

    def check_alive(self) -> None:
        for name, proc in self.stack.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.stack.log_tail(name)}")

    def training_state(self) -> tuple[bool, int]:
        """(a training runs or is queued, annotation events not yet trained on)."""
        from labelloop.jobs.trigger import TriggerStore
        from workers.celery_app import QUEUE_EVENTS, QUEUE_TRAIN

        state = TriggerStore(self.redis, 60).state(self.project_id)
        queued = self.redis.llen(QUEUE_TRAIN) + self.redis.llen(QUEUE_EVENTS)
        busy = state.training or state.followup or bool(queued)
        return busy, int(state.pending)

    def predict_busy(self) -> bool:
        from labelloop.jobs.progress import ProgressStore
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
    pseudo: bool | None = None,
) -> tuple[Any, str, str, str]:
    """Redis, Label Studio, the receiver and the workers, with labelloop's defaults (and
    ``LABELLOOP_TRAIN_TIME_S`` when ``train_time_s`` is given, ``LABELLOOP_EPOCHS`` with no time
    budget when ``epochs`` is: the same work per training whatever the machine's load;
    ``LABELLOOP_PSEUDO_LABELS`` when ``pseudo`` is given).
    ``label_studio``: ``(url, token, data dir)`` of a Label Studio already running, used instead
    of starting one."""
    from labelloop.dev.stack import LABEL_STUDIO_VERSION, Stack, free_port, label_studio_binary

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
    if pseudo is not None:
        stack.env["LABELLOOP_PSEUDO_LABELS"] = "true" if pseudo else "false"
        say(f"LABELLOOP_PSEUDO_LABELS={stack.env['LABELLOOP_PSEUDO_LABELS']} (--pseudo)")
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
# One seed's data, one order's rounds


@dataclass
class SeedData:
    """One seed's generated project: pool and held-out images, the pool's random order, files."""

    seed: int
    pool: list[ShapeImage]
    held: list[ShapeImage]
    order: list[int]  # indexes into pool
    files: Path  # uploads, plus ``<stem>-upright.jpg`` copies of the EXIF-rotated ones

    @classmethod
    def make(cls, seed: int, n_pool: int, n_held: int, root: Path) -> SeedData:
        images = make_project(seed, n_pool + n_held)
        order = list(range(n_pool))
        random.Random(seed).shuffle(order)
        files = root / f"seed-{seed}" / "images"
        files.mkdir(parents=True)
        for im in images:
            (files / im.name).write_bytes(im.data)
            if im.orientation != 1:
                # as labelloop's image cache re-encodes them (labelloop.labelstudio.media: JPEG quality 95)
                im.upright().save(files / im.upright_name, quality=95)
        return cls(seed, images[:n_pool], images[n_pool:], order, files)


class Bench:
    """The stack, the Label Studio clients and the options shared by every seed and order."""

    def __init__(self, args: argparse.Namespace, stack: Any, ls_url: str, token: str, backend: str, work: Path):
        from labelloop.dev.demo import LabelStudioAPI

        self.args, self.stack, self.backend, self.work = args, stack, backend, work
        self.api = LabelStudioAPI(ls_url, token)
        self.annotator = Annotator(ls_url, token)
        self.base_model: str | None = None
        self.config: dict[str, Any] = {}

    def project_state(self, project_id: int) -> dict[str, Any]:
        p = self.annotator.project(project_id)
        return {k: p.get(k) for k in ("sampling", "model_version", "skip_queue", "show_collab_predictions")}

    def stream_ready(self, project_id: int) -> bool:
        """Whether next/ serves labelloop's first picks: the project's model version is theirs and its
        sampling is uncertainty sampling."""
        state = self.project_state(project_id)
        return state["model_version"] == FIRST_PICKS_VERSION and state["sampling"] == UNCERTAINTY

    def take_random(
        self, data: SeedData, k: int, done: set[str], rnd: Round, task_of: dict[str, int]
    ) -> list[ShapeImage]:
        """Save the next ``k`` pool tasks of the seed's random order."""
        todo = [im for i in data.order if (im := data.pool[i]).name not in done][:k]
        rnd.picked_by = "random order"
        for im in todo:
            self.annotator.submit(task_of[im.name], im.ls_result())
            rnd.stream.append([task_of[im.name], "random order", "pool", []])
        return todo

    def take_stream(
        self, project_id: int, data: SeedData, k: int, done: set[str], rnd: Round, task_of: dict[str, int]
    ) -> list[ShapeImage]:
        """Save ``k`` pool tasks as Label Studio's ``next/`` serves them, skipping held-out tasks."""
        by_id = {task_of[im.name]: im for im in data.pool}
        held = {task_of[im.name] for im in data.held}
        taken: list[ShapeImage] = []
        rnd.picked_by = "Label Studio's next/"
        while len(taken) < k:
            task = self.annotator.next_task(project_id)
            if task is None:
                raise RuntimeError(f"next/ served nothing after {len(taken)} of {k} tasks this round")
            tid, queue = int(task["id"]), str(task.get("queue") or "")
            preds = [
                [p.get("model_version"), p.get("score"), p.get("cluster")]
                for p in task.get("predictions") or []
                if isinstance(p, dict)
            ]
            if tid in held:
                self.annotator.skip(tid)
                rnd.skips += 1
                rnd.stream.append([tid, queue, "held-out: skipped", preds])
                continue
            im = by_id.get(tid)
            if im is None or im.name in done or im in taken:
                raise RuntimeError(f"next/ served task {tid}, which is not an unannotated pool task")
            self.annotator.submit(tid, im.ls_result())
            taken.append(im)
            rnd.stream.append([tid, queue, "pool", preds])
        return taken

    def run_order(self, data: SeedData, order_name: str, rounds_n: list[int], rounds: list[Round], save: Any) -> None:
        """Every round of one order in a fresh project of the seed's images; ``rounds`` fills in as it goes."""
        from labelloop.training.child import pick_device

        args, api = self.args, self.api
        images = data.pool + data.held
        project_id = api.create_project(project_title(data.seed, order_name), LABEL_CONFIG)
        task_of = upload(api, project_id, images)
        ml_id = connect(api, project_id, self.backend)
        state = self.project_state(project_id)
        say(
            f"seed {data.seed}, {order_name} order: project {project_id}, {len(task_of)} tasks, ML backend {ml_id} "
            f"({api.backend_version(ml_id)}); sampling {state['sampling']!r}, model_version {state['model_version']!r}"
        )
        # An annotator opens the project after connecting it: labelloop's first picks (a job it queues
        # at /setup) are in the label stream once the project's model version is theirs and its
        # sampling is uncertainty sampling (labelloop sets the two one after the other: between them
        # next/ serves in task id order).
        t0 = time.monotonic()
        try:
            wait_until(lambda: self.stream_ready(project_id), 300, "first picks", 1.0)
            ready = True
        except TimeoutError:
            ready = False
        state = self.project_state(project_id)
        say(
            f"  first picks {'in' if ready else 'NOT in'} after {time.monotonic() - t0:.0f} s; sampling "
            f"{state['sampling']!r}, model_version {state['model_version']!r}"
        )
        loop = Loop(self.stack, api, project_id, ml_id, self.work / "models")
        held_ids = [task_of[im.name] for im in data.held]
        truths = [d for im in data.held for d in truth_dets(task_of[im.name], im)]
        seen: set[str] = set()
        annotated: list[ShapeImage] = []

        for total in rounds_n:
            rnd = Round(total, seed=data.seed, order=order_name, burst=total - len(annotated), held_out=len(held_ids))
            rounds.append(rnd)  # saved as it fills in, so an interrupted run keeps its figures
            done = {im.name for im in annotated}
            say(f"seed {data.seed}, {order_name} order, round {total}: saving {rnd.burst} annotations")
            if order_name == "random":
                annotated += self.take_random(data, rnd.burst, done, rnd, task_of)
            else:
                annotated += self.take_stream(project_id, data, rnd.burst, done, rnd, task_of)
            t_saved = time.monotonic()
            queues = Counter(q for _, q, kind, _ in rnd.stream if kind == "pool")
            say(
                f"  saved ({rnd.picked_by}: {dict(queues)}); skipped {rnd.skips} held-out tasks"
                if order_name != "random"
                else "  saved"
            )
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
            if self.base_model is None:
                first = loop.registry.list_versions(project_id)[0]
                base = str(first.manifest.get("train_args", {}).get("weights") or "")
                if not base or Path(base).is_relative_to(loop.registry.root):
                    from labelloop.settings import Settings

                    base = str(Settings.model_fields["base_model"].default)
                self.base_model = base
                self.config["base_model"] = base
                self.config["labelloop_base_model"] = first.manifest.get("base_model")

            got, counts = loop.served_predictions(held_ids, served.name, args.preannotate_timeout)
            rnd.predictions = counts
            dets = [
                d
                for im in data.held
                if (p := got.get(task_of[im.name])) is not None
                for d in regions_to_dets(task_of[im.name], p.get("result") or [], im.width, im.height)
            ]
            rnd.labelloop = score(dets, truths)
            rnd.edits = edits(dets, truths)
            rnd.project = self.project_state(project_id)
            say(
                f"  served {served.name}: mAP50 {rnd.labelloop['map50']:.3f}, P {rnd.labelloop['precision']:.2f}, "
                f"R {rnd.labelloop['recall']:.2f}, edits/img {fmt(rnd.edits_per_image, '.2f')} of "
                f"{fmt(rnd.boxes_per_image, '.2f')} boxes/img on {len(got)} held-out tasks ({counts}); "
                f"{rnd.versions} version(s) this burst; sampling {rnd.project['sampling']!r}, "
                f"model_version {rnd.project['model_version']!r}"
            )
            save()

            if not args.no_peers and args.order == "random" and data.seed == args.seed:
                try:
                    wait_until(lambda lp=loop: not lp.predict_busy(), 600, "labelloop pre-annotation done", 1.0)
                except TimeoutError as exc:
                    say(f"  {exc}; the peers train while it runs")
                run_peers(
                    rnd,
                    annotated,
                    data.held,
                    task_of,
                    truths,
                    data.files,
                    self.work,
                    self.base_model,
                    pick_device(""),
                    self.config["imgsz_tuned"],
                    say,
                )
                save()


# ---------------------------------------------------------------------------------------------
# Main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", default="10,20,40,80", help="cumulative annotation counts, comma-separated")
    parser.add_argument("--pool", type=int, default=80, help="tasks annotated in rounds")
    parser.add_argument("--held-out", type=int, default=40, help="unlabelled tasks scored every round")
    parser.add_argument("--seed", type=int, default=0, help="the first seed: data and random order")
    parser.add_argument("--seeds", type=int, default=1, help="seeds --seed, --seed+1, ...: one after the other")
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
        help="which pool tasks each round annotates: the seed's random order, Label Studio's next/ (labelloop's "
        "order, as an annotator takes it), or both in turn, each in its own project (peers: --order random only)",
    )
    parser.add_argument(
        "--pseudo",
        choices=("on", "off"),
        help="LABELLOOP_PSEUDO_LABELS=true|false for labelloop's stack (default: not set, labelloop's default)",
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
        "(fair between orders and seeds on a shared machine)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    rounds_n = [int(x) for x in args.rounds.split(",") if x.strip()]
    if not rounds_n or rounds_n != sorted(set(rounds_n)) or rounds_n[0] < 2 or rounds_n[-1] > args.pool:
        raise SystemExit(f"--rounds must increase, from 2 up to --pool ({args.pool}): {args.rounds}")
    if args.held_out < 1 or args.seeds < 1:
        raise SystemExit("--held-out and --seeds must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("label_studio_sdk", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    seeds = list(range(args.seed, args.seed + args.seeds))
    orders = ["random", "labelloop"] if args.order == "both" else [args.order]
    if len(orders) > 1 and rounds_n[-1] == args.pool:
        say(f"note: round {rounds_n[-1]} annotates the whole pool: both orders train on the same tasks there")
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir.absolute()))
    first = make_project(seeds[0], args.pool + args.held_out)
    data = summary(first)
    config: dict[str, Any] = {
        "rounds": rounds_n,
        "pool": args.pool,
        "held_out": args.held_out,
        "seeds": seeds,
        "orders": orders,
        "data": data,
        "data_per_seed": {},
        "iou": IOU,
        "conf": CONF,
        "imgsz_tuned": int(math.ceil(max(max(im.width, im.height) for im in first) / 32) * 32),
        "labelloop_env": list(OWN_ENV),
        "epochs": args.epochs,
        "train_time_s": args.train_time_s,
        "pseudo": args.pseudo,
        "spread": "min-max over seeds",
    }
    runs: Runs = {o: {} for o in orders}
    json_path, png_path = args.out / "learning.json", args.out / "learning.png"

    def peers_rounds() -> list[Round]:
        return runs[orders[0]].get(seeds[0], [])

    def save() -> None:
        written = {
            **body(config, runs),
            "learning_curve": {
                "seed": seeds[0],
                "order": orders[0],
                "targets": peer_targets(peers_rounds()) if orders == ["random"] else [],
                "rounds": [
                    {
                        "annotations": r.annotations,
                        "map50": r.map50,
                        **{f"peer_{n}_map50": (r.peers.get(n) or {}).get("score", {}).get("map50") for n in "ab"},
                    }
                    for r in peers_rounds()
                ],
            },
        }
        json_path.write_text(json.dumps(written, indent=1, default=str))

    stack = None
    ok = False
    t_run = time.monotonic()
    try:
        external = None
        if args.label_studio:
            url, token, data_dir = args.label_studio.split(",", 2)
            external = (url, token, Path(data_dir))
        pseudo = None if args.pseudo is None else args.pseudo == "on"
        stack, ls_url, token, backend = start_stack(work, args.train_time_s, external, args.epochs, pseudo)
        bench = Bench(args, stack, ls_url, token, backend, work)
        bench.config = config
        for i, seed in enumerate(seeds):
            t_gen = time.perf_counter()
            sd = SeedData.make(seed, args.pool, args.held_out, work)
            d = summary(sd.pool + sd.held)
            config["data_per_seed"][str(seed)] = d
            say(
                f"seed {seed} ({i + 1} of {len(seeds)}): {d['images']} images in {time.perf_counter() - t_gen:.1f} s: "
                f"{d['per_class']} objects, {d['distractors']} distractors, {d['exif_rotated']} EXIF-rotated, "
                f"object sides {d['object_side_px']} px"
            )
            for order_name in orders:
                rounds = runs[order_name].setdefault(seed, [])
                bench.run_order(sd, order_name, rounds_n, rounds, save)
                say(f"seed {seed}, {order_name} order done; {time.monotonic() - t_run:.0f} s since the start")
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
        config["finished"] = ok
        config["seconds"] = round(time.monotonic() - t_run, 1)
        if any(runs[o] for o in orders):
            save()
            plot(runs, png_path, peers_rounds() if any(r.peers for r in peers_rounds()) else None)
            for seed in seeds:
                for o in orders:
                    if runs[o].get(seed):
                        print_learning_curve(runs[o][seed], config)
            print_orders(runs)
            print_targets(targets(runs) + (peer_targets(peers_rounds()) if orders == ["random"] else []))
            print(f"\nwrote {json_path} and {png_path} ({config['seconds']:.0f} s)")
        if args.keep or not ok:
            print(f"run folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
