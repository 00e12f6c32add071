"""A fault campaign against the whole loop, with figures: a real Label Studio sends annotation
webhooks while labelloop's processes are killed and restarted at random points.

    .venv/bin/python -m bench.faults --quick            # 20 faults, one project (about 15 min on 2 cores)
    .venv/bin/python -m bench.faults [--seed 1] [--faults 40] [--projects 2] [--tasks 60]
    .venv/bin/python -m bench.faults --quick --kinds "paused,revoked,webhook"  # only these kinds, one each
    .venv/bin/python -m bench.faults --quick --ls-url URL --ls-token TOKEN   # reuse a Label Studio

Setup: a Label Studio 1.23.2 (its own virtual environment, SQLite, free loopback port) or the one
given, Redis with its append-only file (as docker-compose.yml runs it), the receiver, one Celery
worker per queue (events, train, predict) and Celery beat (reconciliation every 5 s), all as real
processes (``labelloop.dev.stack``). Each project gets generated images as tasks, labelloop as its
ML backend (Label Studio calls ``/setup`` and creates the webhook) and a few annotations; trainings
are tiny (2 epochs, imgsz 192, yolov8n.yaml, offline) and rare (a high ``train_every_n``); a running
training's lock has a 10 s TTL (``--lock-ttl-s``; 30 s by default), so that Redis paused past it is short.

The run: one thread streams annotation creates, updates and deletes through Label Studio's API
(each one a webhook Label Studio sends once); another injects faults one after the other at
random gaps, kinds from a seeded RNG (every kind as often as the count allows): kill -9 and
SIGTERM (main process only, SIGKILL to its process group after a 10 s grace, as ``docker stop``
does) of each worker and of the receiver, a Redis restart (SIGTERM, same append-only file), and
the receiver stopped for 3-8 s while Label Studio keeps sending, and issue 21's production faults
(``bench.faults_extra``; ``--kinds`` picks kinds by parts of their names). After each fault the process is
started again; "back up" is the time from the fault until it is ready (the receiver's
``/health``, a worker's " ready.", Redis' PING), "in sync" until an annotation update saved in
Label Studio after the restart is in labelloop's ledger (a probe task the stream leaves alone;
a webhook lost to the fault is found by reconciliation).

At the end the stream stops and the bench waits (``--settle-s``) until labelloop has settled:
ledger equal to Label Studio, queues empty, no training lock, fewer than ``train_every_n``
annotation events pending. Then it checks:

- dataset fingerprint: the dataset labelloop builds from its own state (what the next training
  reads: ``labelloop.jobs.datasets.build_project_dataset`` with the change log) against a fresh export
  of Label Studio, each annotation's id, ``updated_at`` and a hash of its result;
- events lost: annotations whose final state (in the dataset or the ledger) is not Label Studio's;
- training requests (``training_enqueued`` in the workers' logs) against published versions
  (registry manifests' ``run_id``) and reported failures (``training_failed``): each must end in
  exactly one of them;
- no training lock left, and stuck projects (a lock left, or ``train_every_n`` events pending and
  no training);
- the served version (``CURRENT``, sampled every 0.2 s, and the registry history) was only ever a
  promoted version;
- processes that died without being killed (restarted by the bench, and counted).

Exit status 0 after printing the figures; with ``--strict`` 1 when a target is missed (events
lost, stuck projects, a request without an outcome or with two, a lock left, a served version
not promoted).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import faults_extra
from labelloop import keys
from labelloop.dev.stack import (
    LABEL_STUDIO_VERSION,
    Stack,
    free_port,
    json_lines,
    label_studio_binary,
    wait_until,
)
from labelloop.dev.synthetic import LABEL_CONFIG, Sample, make_sample
from labelloop.events.ledger import Ledger, annotations_in_export, normalize_ts
from labelloop.registry.store import Registry

TRAIN_ENV = {  # tests/conftest.py's TRAIN_ENV: tiny trainings on 2 CPU cores
    "LABELLOOP_EPOCHS": "2",
    "LABELLOOP_IMGSZ": "192",
    "LABELLOOP_BATCH": "4",
    "LABELLOOP_DATALOADER_WORKERS": "0",
    "LABELLOOP_BASE_MODEL": "yolov8n.yaml",
    "LABELLOOP_OFFLINE": "true",
    "LABELLOOP_LOG_JSON": "true",
}
QUEUES = ("events", "train", "predict")  # their workers are killed and stopped by the faults
# Every queue the stack runs a worker for, as deployed (Procfile): pre-annotation after each
# promotion and the selections /predict hands over need the preannotate worker.
WORKER_QUEUES = (*QUEUES, "preannotate")
KINDS = (
    *(f"kill -9 worker-{q}" for q in QUEUES),
    *(f"SIGTERM worker-{q}" for q in QUEUES),
    "kill -9 receiver",
    "SIGTERM receiver",
    "Redis restart",
    "receiver down",
    *faults_extra.EXTRA_KINDS,  # issue 21's production faults (bench/faults_extra.py)
)
LS_USER, LS_PASSWORD = "bench@labelloop.local", "labelloop-bench"
LS_TOKEN = "be0c000000000000000000000000000000000001"
GRACE_S = 10.0  # docker stop's default before SIGKILL
PROBE_TIMEOUT_S = 120.0


@dataclass
class Project:
    """One Label Studio project and what the stream did to it."""

    id: int
    task_ids: list[int]
    samples: dict[int, Sample]
    annotations: dict[int, int] = field(default_factory=dict)  # annotation id -> task id
    probe: tuple[int, int] = (0, 0)  # (task id, annotation id) only the probes change


@dataclass
class Fault:
    kind: str
    at_s: float
    lock_held: bool  # a project's training lock was held when the fault hit
    back_s: float
    in_sync_s: float | None
    note: str = ""  # what a production fault saw (bench/faults_extra.py)


def result_hash(result: Any) -> str:
    return hashlib.sha1(json.dumps(result, sort_keys=True).encode()).hexdigest()[:12]


def fingerprint(tasks: list[dict[str, Any]]) -> dict[int, tuple[int, str, str]]:
    """Annotation id -> (task id, normalised updated_at, result hash) over tasks in Label
    Studio's JSON export format (cancelled annotations included)."""
    return {
        int(a["id"]): (int(t["id"]), normalize_ts(a.get("updated_at") or a.get("created_at")), result_hash(a["result"]))
        for t in tasks
        for a in t.get("annotations") or []
    }


def jitter(result: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """The same regions moved by up to 2% of the image (an annotator's correction)."""
    moved: list[dict[str, Any]] = json.loads(json.dumps(result))
    for region in moved:
        value = region["value"]
        value["x"] = min(max(0.0, value["x"] + rng.uniform(-2, 2)), 100.0 - value["width"])
        value["y"] = min(max(0.0, value["y"] + rng.uniform(-2, 2)), 100.0 - value["height"])
    return moved


def log_events(stack: Stack, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every JSON log line of the named processes (logs are appended across restarts)."""
    return [e for name in names for e in json_lines(stack.log_since(name, 0))]


class Campaign:
    """The processes, the projects, the stream of annotations and the faults.

    Args:
        args: the command line (sizes, seed, Label Studio to reuse).
        work: logs and data of every process.
    """

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.ops_rng = random.Random(args.seed)
        self.fault_rng = random.Random(args.seed + 1)
        self.redis_port, self.receiver_port = free_port(), free_port()
        self.stack = Stack(work, {})
        self.projects: list[Project] = []
        self.sent = 0
        self.op_errors: Counter[str] = Counter()
        self.faults: list[Fault] = []
        self.died: Counter[str] = Counter()
        self.observed: dict[int, set[str]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.ls_url = ""
        self.http: httpx.Client | None = None
        self.webhooks = "not checked"

    # -- processes -----------------------------------------------------------------------------

    def start_label_studio(self) -> None:
        if self.args.ls_url:
            self.ls_url, token = self.args.ls_url.rstrip("/"), self.args.ls_token
        else:
            venv = Path(
                os.environ.get("LABELLOOP_LS_VENV")
                or Path.home() / ".cache" / "labelloop" / f"label-studio-{LABEL_STUDIO_VERSION}"
            )
            binary = label_studio_binary(venv)
            ls = Stack(self.work / "label-studio", {})
            self.ls_stack = ls
            self.ls_url = ls.start_label_studio(
                binary, free_port(), self.work / "label-studio" / "data", LS_USER, LS_PASSWORD, LS_TOKEN, timeout_s=900
            )
            token = LS_TOKEN
        self.token = token
        self.http = httpx.Client(base_url=self.ls_url, headers={"Authorization": f"Token {token}"}, timeout=60)

    def start_labelloop(self) -> None:
        env = {
            **TRAIN_ENV,
            "LABELLOOP_MODELS_DIR": str(self.work / "models"),
            "LABELLOOP_CACHE_DIR": str(self.work / "cache"),
            "LABELLOOP_TRAIN_EVERY_N": str(self.args.train_every_n),
            "LABELLOOP_RECONCILE_INTERVAL_S": "5",
            "LABELLOOP_TRAIN_TIME_LIMIT_S": "300",
            "LABELLOOP_TRAIN_LOCK_TTL_S": str(self.args.lock_ttl_s),
            "LABEL_STUDIO_URL": self.ls_url,
            "LABEL_STUDIO_API_KEY": self.token,
        }
        if self.args.cache_max_bytes is not None:
            env["LABELLOOP_CACHE_MAX_BYTES"] = str(self.args.cache_max_bytes)
        self.stack.env.update(env)
        self.stack.env["LABELLOOP_REDIS_URL"] = self.start_redis()
        self.receiver_url = self.stack.start_receiver(self.receiver_port)
        for queue in WORKER_QUEUES:
            self.stack.start_worker(queue, timeout_s=180)
        self.start_beat()
        self.registry = Registry(self.work / "models")

    def start_redis(self) -> str:
        return self.stack.start_redis(self.redis_port, self.work / "redis", persist=True)

    def start_beat(self) -> None:
        self.stack.start("beat", [sys.executable, "-m", "service.cli", "beat"])

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.stack.env["LABELLOOP_REDIS_URL"], socket_timeout=5)

    def kill(self, name: str, sig: int) -> None:
        """Kill -9 a process group (a container dying), or SIGTERM its main process and SIGKILL
        the group after ``GRACE_S`` (``docker stop``)."""
        proc = self.stack.procs.pop(name)
        try:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, sig)
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group dies with the container
        except ProcessLookupError:
            pass
        proc.wait()

    def restart(self, name: str) -> None:
        """Start ``name`` again; a start that fails (a port not free yet, a slow import) is retried."""
        for attempt in range(3):
            try:
                self._start(name)
                return
            except (RuntimeError, TimeoutError) as exc:
                print(f"  restart of {name} failed ({type(exc).__name__}), attempt {attempt + 1}", flush=True)
                self.died[f"{name} (start failed)"] += 1
                if name in self.stack.procs:
                    self.stack.stop(name, sig=signal.SIGKILL)
                time.sleep(2.0)
        raise RuntimeError(f"{name} does not start again:\n" + self.stack.log_tail(name))

    def _start(self, name: str) -> None:
        if name == "redis":
            self.start_redis()
        elif name == "receiver":
            self.stack.start_receiver(self.receiver_port)
        elif name == "beat":
            self.start_beat()
        else:
            self.stack.start_worker(name.removeprefix("worker-"), timeout_s=180)

    def revive(self) -> None:
        """Restart any process that exited without the bench killing it (counted)."""
        for name in ("redis", "receiver", *(f"worker-{q}" for q in WORKER_QUEUES), "beat"):
            proc = self.stack.procs.get(name)
            if proc is not None and proc.poll() is not None:
                self.died[name] += 1
                self.stack.procs.pop(name)
                self.restart(name)

    # -- projects and the stream -----------------------------------------------------------------

    def ls(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.http is not None
        resp = self.http.request(method, path, **kwargs)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def create_project(self, n: int) -> Project:
        from labelloop.dev.demo import LabelStudioAPI

        api = LabelStudioAPI(self.ls_url, self.token)
        pid = api.create_project(f"labelloop faults {len(self.projects) + 1}", LABEL_CONFIG)
        samples = [make_sample(1000 * (len(self.projects) + 1) + i, 160, 120) for i in range(n)]
        task_ids = api.import_images(pid, samples)
        for attempt in range(5):  # Label Studio gives /setup 3 s: a loaded machine can miss that
            try:
                api.connect_backend(pid, self.receiver_url)
                break
            except Exception as exc:  # label-studio-sdk's ApiError: "doesn't look like a valid ML backend"
                if attempt == 4:
                    raise
                print(f"  connecting the ML backend failed ({type(exc).__name__}), again", flush=True)
        project = Project(pid, task_ids, dict(zip(task_ids, samples, strict=True)))
        for task_id in task_ids[: self.args.start_annotated]:
            self.annotate(project, task_id)
        probe_task = task_ids[-1]
        project.probe = (probe_task, self.annotate(project, probe_task))
        project.annotations.pop(project.probe[1])
        self.observed[pid] = set()
        return project

    def annotate(self, project: Project, task_id: int) -> int:
        result = project.samples[task_id].ls_result()
        ann = self.ls("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result, "was_cancelled": False})
        project.annotations[int(ann["id"])] = task_id
        self.count_sent()
        return int(ann["id"])

    def count_sent(self) -> None:
        with self.lock:
            self.sent += 1

    def one_op(self, project: Project) -> None:
        """Create, update or delete one annotation of the project through Label Studio's API."""
        rng = self.ops_rng
        annotated = set(project.annotations.values())
        free = [t for t in project.task_ids if t not in annotated and t != project.probe[0]]
        op = rng.choices(("create", "update", "delete"), weights=(5, 3, 2))[0]
        if op == "create" and not free:
            op = "update"
        if op == "delete" and len(project.annotations) <= self.args.start_annotated:
            op = "create" if free else "update"
        if op == "create":
            self.annotate(project, rng.choice(free))
        elif op == "update":
            ann_id = rng.choice(sorted(project.annotations))
            result = jitter(project.samples[project.annotations[ann_id]].ls_result(), rng)
            self.ls("PATCH", f"/api/annotations/{ann_id}/", json={"result": result})
            self.count_sent()
        else:
            ann_id = rng.choice(sorted(project.annotations))
            self.ls("DELETE", f"/api/annotations/{ann_id}/")
            project.annotations.pop(ann_id)
            self.count_sent()

    def stream(self) -> None:
        while not self.stop.is_set():
            project = self.ops_rng.choice(self.projects)
            try:
                self.one_op(project)
            except httpx.HTTPError as exc:
                self.op_errors[type(exc).__name__] += 1
            self.stop.wait(self.args.op_interval_s)

    def sample_served(self) -> None:
        """Record every version ``CURRENT`` names (what /setup and /predict serve)."""
        while not self.stop.is_set():
            for project in self.projects:
                name = self.registry.current_name(project.id)
                if name:
                    self.observed[project.id].add(name)
            self.stop.wait(0.2)

    # -- faults ----------------------------------------------------------------------------------

    def probe(self, project: Project, deadline_s: float) -> bool:
        """Update the probe annotation in Label Studio and wait until labelloop's ledger has it."""
        task_id, ann_id = project.probe
        result = jitter(project.samples[task_id].ls_result(), self.fault_rng)
        ann = self.ls("PATCH", f"/api/annotations/{ann_id}/", json={"result": result})
        self.count_sent()
        want = normalize_ts(ann["updated_at"])
        led = Ledger(self.redis())
        try:
            wait_until(lambda: led.seen(project.id).get(ann_id) == want, deadline_s, "probe", 0.25)
        except TimeoutError:
            return False
        return True

    def training_now(self) -> bool:
        r = self.redis()
        try:
            return any(r.exists(keys.training_lock(p.id)) for p in self.projects)
        except redis.RedisError:
            return False

    def inject(self, kind: str) -> Fault:
        """One fault, its restart and the two recovery times."""
        at = time.monotonic()
        held = self.training_now()
        note = ""
        if kind in faults_extra.EXTRA_KINDS:
            at, back, note = faults_extra.inject(self, kind)  # at: when it hit, after any wait for a training
        else:
            back = self.kill_and_restart(kind)
        try:
            synced = self.probe(self.projects[0], PROBE_TIMEOUT_S)
        except (httpx.HTTPError, redis.RedisError):
            synced = False
        in_sync = time.monotonic() - at if synced else None
        return Fault(kind, at - self.t0, held, back, in_sync, note)

    def kill_and_restart(self, kind: str) -> float:
        """A kill or stop of the base kinds and the restart; returns the seconds until back up."""
        at = time.monotonic()
        if kind == "Redis restart":
            name, sig, down_s = "redis", signal.SIGTERM, 0.0
        elif kind == "receiver down":
            name, sig, down_s = "receiver", signal.SIGTERM, self.fault_rng.uniform(3, 8)
        else:
            how, name = kind.split(" ", 1) if kind.startswith("SIGTERM") else ("kill -9", kind.split(" ", 2)[2])
            sig = signal.SIGKILL if how == "kill -9" else signal.SIGTERM
            down_s = 0.0
        self.kill(name, sig)
        if down_s:
            time.sleep(down_s)  # Label Studio keeps sending meanwhile: those webhooks are refused
        self.restart(name)
        return time.monotonic() - at

    def inject_all(self) -> None:
        for kind in faults_extra.rotation(self.args.kinds, self.args.faults, self.fault_rng):
            time.sleep(self.fault_rng.uniform(1.0, self.args.gap_s))
            self.revive()
            fault = self.inject(kind)
            self.faults.append(fault)
            sync = f"{fault.in_sync_s:.1f} s" if fault.in_sync_s is not None else "never"
            print(f"  {fault.at_s:6.1f} s  {kind:<24} back up {fault.back_s:5.1f} s, in sync {sync}", flush=True)
            if fault.note:
                print(f"           {fault.note}", flush=True)

    # -- settling and checks ---------------------------------------------------------------------

    def ls_tasks(self, project_id: int) -> list[dict[str, Any]]:
        from labelloop.labelstudio import client as labelstudio
        from labelloop.labelstudio.export import export_tasks

        return export_tasks(labelstudio.client(self.ls_url, self.token), project_id)

    def unsettled(self, project: Project) -> list[str]:
        """Why the project has not settled yet (empty: it has)."""
        r = self.redis()
        why = []
        if Ledger(r).seen(project.id) != annotations_in_export(self.ls_tasks(project.id)):
            why.append("ledger differs from Label Studio")
        if r.exists(keys.training_lock(project.id)):
            why.append("training lock held")
        if any(r.llen(q) for q in WORKER_QUEUES) or r.hlen("unacked"):
            why.append("messages queued or unacknowledged")
        pending = int(r.hget(keys.trigger(project.id), "pending") or 0)
        if pending >= self.args.train_every_n:
            why.append(f"{pending} annotation events pending")
        return why

    def settle(self) -> dict[int, list[str]]:
        """Wait until every project has settled; returns what is still unsettled per project."""
        deadline = time.monotonic() + self.args.settle_s
        left: dict[int, list[str]] = {}
        while time.monotonic() < deadline:
            self.revive()
            try:
                left = {p.id: why for p in self.projects if (why := self.unsettled(p))}
            except (redis.RedisError, httpx.HTTPError) as exc:
                left = {0: [f"{type(exc).__name__}: {exc}"]}
            if not left:
                return {}
            time.sleep(2.0)
        return left

    def dataset_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """The tasks labelloop's next training would train on, built from its own state."""
        from labelloop.events.changes import ChangeLog
        from labelloop.jobs.datasets import build_project_dataset
        from labelloop.settings import Settings

        os.environ.update({k: v for k, v in self.stack.env.items() if k.startswith(("LABELLOOP_", "LABEL_STUDIO_"))})
        out = self.work / "final-dataset" / str(project_id)
        built = build_project_dataset(Settings(), project_id, out_dir=out, changes=ChangeLog(self.redis()))
        return list(built.tasks or [])

    def check_dataset(self, project: Project) -> dict[str, int]:
        """Per-annotation differences between labelloop's dataset and ledger and Label Studio."""
        truth_tasks = self.ls_tasks(project.id)
        truth = fingerprint(truth_tasks)
        mine = fingerprint(self.dataset_tasks(project.id))
        seen = Ledger(self.redis()).seen(project.id)
        ledger_truth = annotations_in_export(truth_tasks)
        missing = set(truth) - set(mine)
        extra = set(mine) - set(truth)
        stale = {i for i in set(truth) & set(mine) if truth[i] != mine[i]}
        ledger_off = {i for i in set(seen) | set(ledger_truth) if seen.get(i) != ledger_truth.get(i)}
        return {
            "annotations": len(truth),
            "missing": len(missing),
            "extra": len(extra),
            "stale": len(stale),
            "ledger_off": len(ledger_off),
            "lost": len(missing | extra | stale | ledger_off),
        }

    def check_trainings(self) -> dict[str, Any]:
        """Each training request against published versions and reported failures."""
        events = log_events(self.stack, ("worker-events", "worker-train"))
        requested = {e["run_id"] for e in events if e.get("event") == "training_enqueued" and e.get("run_id")}
        # Reported failures too (log at error level, `labelloop status`, metrics): a run given up after
        # its deliveries kept dying, one that could not be sent, and one whose message was lost
        # (revoked, purged, a retry the broker refused) and whose lock reconciliation reaped.
        reported = ("training_failed", "training_given_up", "training_publish_failed", "training_lock_reaped")
        failed = Counter(e.get("run_id") for e in events if e.get("event") in reported)
        published: Counter[str] = Counter()
        for project in self.projects:
            for version in self.registry.list_versions(project.id):
                published[str(version.manifest.get("run_id"))] += 1
        r = self.redis()
        holders = [r.get(keys.training_lock(p.id)) for p in self.projects]
        running = {h.decode() if isinstance(h, bytes) else str(h) for h in holders if h}
        outcome = {run: published[run] + (1 if failed[run] else 0) for run in requested}
        return {
            "requested": len(requested),
            "published": sum(published.values()),
            "failed": sum(1 for run in requested if failed[run]),
            "none": sorted(run for run, n in outcome.items() if n == 0 and run not in running),
            "unfinished": sorted(run for run, n in outcome.items() if n == 0 and run in running),
            "duplicate": sorted(run for run in requested if published[run] > 1),
            "unrequested": sorted(set(published) - requested),
            "locks_left": len(running),
        }

    def check_served(self) -> list[str]:
        """Versions that were served (sampled ``CURRENT`` or history) without being promoted."""
        bad = []
        for project in self.projects:
            served = set(self.observed[project.id]) | {h["version"] for h in self.registry.history(project.id)}
            for name in sorted(served):
                promotion = self.registry.get(project.id, name).manifest.get("promotion") or {}
                if promotion.get("promoted") is not True:
                    bad.append(f"{project.id}/{name}")
        return bad


def run(args: argparse.Namespace, work: Path) -> int:
    """Run the campaign and print its figures; returns the exit status.

    Long because it is the campaign's script: set up, stream and faults, settle, check, print.
    """
    c = Campaign(args, work)
    print(
        f"labelloop fault campaign: seed {args.seed}, {args.faults} faults, {args.projects} project(s) "
        f"of {args.tasks} tasks, train_every_n {args.train_every_n}; work in {work}",
        flush=True,
    )
    try:
        c.start_label_studio()
        c.start_labelloop()
        c.projects = [c.create_project(args.tasks) for _ in range(args.projects)]
        c.t0 = time.monotonic()
        threads = [threading.Thread(target=t, daemon=True) for t in (c.stream, c.sample_served)]
        for t in threads:
            t.start()
        c.inject_all()
        time.sleep(args.gap_s)
        c.stop.set()
        for t in threads:
            t.join(timeout=120)
        campaign_s = time.monotonic() - c.t0
        c.stop.clear()
        sampler = threading.Thread(target=c.sample_served, daemon=True)
        sampler.start()
        t_settle = time.monotonic()
        unsettled = c.settle()
        settle_s = time.monotonic() - t_settle
        c.stop.set()
        datasets = {p.id: c.check_dataset(p) for p in c.projects}  # raises DatasetError when too little is left
        trainings = c.check_trainings()
        not_promoted = c.check_served()
        c.webhooks = faults_extra.webhooks_active(c)
    finally:
        c.stack.stop_all()
        if getattr(c, "ls_stack", None) is not None:
            c.ls_stack.stop_all()
    missed = report(c, campaign_s, settle_s, unsettled, datasets, trainings, not_promoted)
    return 1 if args.strict and missed else 0


def report(
    c: Campaign,
    campaign_s: float,
    settle_s: float,
    unsettled: dict[int, list[str]],
    datasets: dict[int, dict[str, int]],
    trainings: dict[str, Any],
    not_promoted: list[str],
) -> list[str]:
    """Print the figures; returns the targets missed."""
    print(f"\n{len(c.faults)} faults in {campaign_s:.0f} s, settled in {settle_s:.0f} s\n")
    print("| fault | n | training lock held | back up s (median / max) | in sync s (median / max) | never in sync |")
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        mine = [f for f in c.faults if f.kind == kind]
        if not mine:
            continue
        back = [f.back_s for f in mine]
        sync = [f.in_sync_s for f in mine if f.in_sync_s is not None]
        sync_txt = f"{statistics.median(sync):.1f} / {max(sync):.1f}" if sync else "-"
        print(
            f"| {kind} | {len(mine)} | {sum(f.lock_held for f in mine)} | "
            f"{statistics.median(back):.1f} / {max(back):.1f} | {sync_txt} | {len(mine) - len(sync)} |"
        )
    lost = sum(d["lost"] for d in datasets.values())
    stuck = {pid: why for pid, why in unsettled.items() if any("lock" in w or "pending" in w for w in why)}
    same = all(d["missing"] == d["extra"] == d["stale"] == 0 for d in datasets.values())
    print(f"\nfaults injected: {len(c.faults)}")
    print(f"events sent: {c.sent} (Label Studio API calls that failed: {sum(c.op_errors.values())})")
    print(f"events lost: {lost} (target 0)")
    for pid, d in datasets.items():
        print(
            f"  project {pid}: {d['annotations']} annotations in Label Studio; dataset missing {d['missing']}, "
            f"extra {d['extra']}, stale {d['stale']}; ledger differs on {d['ledger_off']}"
        )
    print(f"dataset fingerprint equal to Label Studio: {'yes' if same else 'NO'}")
    print(f"stuck projects: {len(stuck)} (target 0)")
    for pid, why in unsettled.items():
        print(f"  project {pid} not settled after {c.args.settle_s:.0f} s: {', '.join(why)}")
    t = trainings
    print(
        f"training requests: {t['requested']}; versions published {t['published']}, failures reported "
        f"{t['failed']}; without an outcome {len(t['none'])}, still running {len(t['unfinished'])}, "
        f"published twice {len(t['duplicate'])}, versions nobody requested {len(t['unrequested'])}"
    )
    print(f"training locks left: {t['locks_left']} (target 0)")
    print(f"served versions that were not promoted: {len(not_promoted)} {not_promoted or ''}(target 0)")
    print(f"Label Studio webhooks to labelloop at the end: {c.webhooks}")
    died = ", ".join(f"{n} x{k}" for n, k in sorted(c.died.items())) or "none"
    print(f"processes that died by themselves (restarted): {died}")
    missed = [
        name
        for name, bad in (
            ("events lost", lost),
            ("stuck projects", len(stuck)),
            ("requests without an outcome", len(t["none"]) + len(t["unfinished"])),
            ("published twice", len(t["duplicate"])),
            ("locks left", t["locks_left"]),
            ("served not promoted", len(not_promoted)),
        )
        if bad
    ]
    print(f"targets missed: {', '.join(missed) or 'none'}")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20 faults, one project of 30 tasks (about 15 min with the production faults)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=int, default=None, help="faults to inject (default 20, 40; --kinds: one each)")
    parser.add_argument("--kinds", default="", help="only these fault kinds: comma-separated parts of their names")
    parser.add_argument("--lock-ttl-s", type=int, default=10, help="LABELLOOP_TRAIN_LOCK_TTL_S of the stack")
    parser.add_argument("--cache-max-bytes", type=int, default=None, help="LABELLOOP_CACHE_MAX_BYTES of the stack")
    parser.add_argument("--cache-cap-bytes", type=int, default=0, help="the cache-cap fault's cap (0: images / 4)")
    parser.add_argument("--idle-hold-s", type=float, default=30.0, help="how long the 200 idle sockets stay open")
    parser.add_argument(
        "--outcome-wait-s",
        type=float,
        default=120.0,
        help="longest wait for a training to hold the lock, be queued or end, in the faults that need one",
    )
    parser.add_argument("--projects", type=int, default=None)
    parser.add_argument("--tasks", type=int, default=None, help="tasks per project")
    parser.add_argument("--train-every-n", type=int, default=None)
    parser.add_argument("--start-annotated", type=int, default=10, help="annotations per project before the run")
    parser.add_argument("--op-interval-s", type=float, default=0.5, help="pause between two annotation changes")
    parser.add_argument("--gap-s", type=float, default=4.0, help="longest random pause between two faults")
    parser.add_argument("--settle-s", type=float, default=None, help="how long to wait for labelloop to settle")
    parser.add_argument("--ls-url", default="", help="use this Label Studio instead of starting one")
    parser.add_argument("--ls-token", default="", help="its legacy API token")
    parser.add_argument("--workdir", default="", help="keep logs and data here (default: a temporary folder)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    try:
        selected = faults_extra.select_kinds(KINDS, args.kinds)
    except ValueError as exc:
        parser.error(str(exc))
    if args.kinds and args.faults is None:
        args.faults = len(selected)
    args.kinds = selected
    quick = {"faults": 20, "projects": 1, "tasks": 30, "train_every_n": 40, "settle_s": 120.0}
    full = {"faults": 40, "projects": 2, "tasks": 60, "train_every_n": 40, "settle_s": 300.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.ls_url and not args.ls_token:
        parser.error("--ls-url needs --ls-token")
    if args.workdir:
        work = Path(args.workdir).absolute()
        work.mkdir(parents=True, exist_ok=True)
        return run(args, work)
    with tempfile.TemporaryDirectory(prefix="labelloop-faults-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
