"""The active-learning loop end to end against a real Label Studio server.

Real Label Studio 1.23 (its own virtual environment, SQLite), real Redis, the receiver under
uvicorn and four real Celery workers (events, train, predict,
preannotate), real ultralytics training.
The tests share one project (and one Label Studio and stack, for speed) but each sets up what
it needs (``trained``: the project with at least one version) and counts versions from what it
finds, so each passes alone (``-k``) as well as in file order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.dev.synthetic import Sample, make_sample
from labelloop.events.changes import ChangeLog, ChangeLogUnusable
from labelloop.jobs.progress import ProgressStore
from labelloop.jobs.trigger import TriggerStore
from labelloop.labelstudio.sampling import FIRST_PICKS_VERSION
from labelloop.labelstudio.tabs import TAB_TITLE
from labelloop.redis_client import client as redis_client
from labelloop.registry.store import Registry
from service.events import EVENT_STREAM
from tests.conftest import TRAIN_ENV
from tests.factories import connect_backend, image_project, settings_env

pytestmark = pytest.mark.labelstudio

TRAIN_EVERY_N = 6
BASIC_AUTH = ("labelstudio", "ml-backend-password")
WEBHOOK_SECRET = "webhook-secret-for-tests"


@dataclass
class Loop:
    stack: Stack
    api: LabelStudioAPI
    registry: Registry
    redis_port: int
    receiver_port: int
    receiver_url: str
    flower_url: str = ""
    project_id: int = 0
    ml_id: int = 0
    task_ids: list[int] | None = None
    samples: list[Sample] | None = None
    annotated: int = 0  # the first `annotated` tasks of the project have an annotation

    def redis(self) -> redis.Redis:
        return redis_client(self.stack.env["LABELLOOP_REDIS_URL"], "cli")

    def start(self, redis_dir: Path) -> None:
        """Start Redis (empty), the receiver, one worker per queue and Flower."""
        self.stack.env["LABELLOOP_REDIS_URL"] = self.stack.start_redis(self.redis_port, redis_dir)
        assert self.redis().dbsize() == 0
        self.receiver_url = self.stack.start_receiver(self.receiver_port)
        for queue in ("events", "train", "predict", "preannotate"):
            self.stack.start_worker(queue)
        self.flower_url = self.stack.start_flower(free_port())

    def kill_all(self) -> None:
        for name in list(self.stack.procs):
            self.stack.stop(name, sig=signal.SIGKILL)

    def idle(self, project_id: int | None = None) -> bool:
        """No webhook event waiting, and no training running, due or queued for the project."""
        r = self.redis()
        state = TriggerStore(r, 60).state(project_id or self.project_id)
        queued = r.llen("events") + r.llen("train") + r.hlen("unacked")
        return not state.training and not state.followup and queued == 0

    def annotate_next(self, n: int) -> None:
        """Annotate the project's next ``n`` tasks (in order) through Label Studio's API."""
        assert self.task_ids and self.samples
        for i in range(self.annotated, self.annotated + n):
            self.api.annotate(self.task_ids[i], self.samples[i].ls_result())
        self.annotated += n

    def newest(self) -> int:
        """The number of the project's newest version (0 before the first)."""
        return max((int(v.name[1:]) for v in self.registry.list_versions(self.project_id)), default=0)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``labelloop <args>`` with the stack's environment."""
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            env={**self.stack.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def image_url(self, task_id: int) -> str:
        task: Any = self.api.sdk.tasks.get(id=str(task_id))
        return str(task.data["image"])

    def versions_of(self, task_id: int) -> list[str]:
        return [p["model_version"] for p in self.api.sdk_predictions(task_id)]

    def logs(self) -> str:
        return "\n".join(
            f"--- {n}\n{self.stack.log_tail(n, 4000)}" for n in ("worker-train", "worker-events", "receiver")
        )


@pytest.fixture(scope="module")
def loop(label_studio: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    work = tmp_path_factory.mktemp("loop")
    env = settings_env(
        work,
        label_studio=label_studio,
        **TRAIN_ENV,
        LABELLOOP_TRAIN_EVERY_N=str(TRAIN_EVERY_N),
        FLOWER_UNAUTHENTICATED_API="true",
        BASIC_AUTH_USER=BASIC_AUTH[0],
        BASIC_AUTH_PASS=BASIC_AUTH[1],
        LABELLOOP_WEBHOOK_SECRET=WEBHOOK_SECRET,
        LABELLOOP_RECONCILE_INTERVAL_S="3",
    )
    stack = Stack(work, env)
    port = free_port()
    loop = Loop(
        stack,
        LabelStudioAPI(*label_studio),
        Registry(work / "models"),
        free_port(),
        port,
        f"http://127.0.0.1:{port}",
    )
    try:
        loop.start(work / "redis-1")
        yield loop
    finally:
        stack.stop_all()


def new_project(loop: Loop) -> None:
    """Make a new project of 16 generated images the loop's project, with labelloop connected as
    its ML backend (Basic auth) and the webhook secret on its webhook."""
    loop.samples = [make_sample(seed, 160, 120) for seed in range(16)]
    loop.project_id, loop.task_ids = image_project(loop.api, "labelloop e2e", loop.samples)
    loop.ml_id = connect_backend(
        loop.api, loop.project_id, loop.receiver_url, basic_auth=BASIC_AUTH, webhook_secret=WEBHOOK_SECRET
    )
    loop.annotated = 0


@pytest.fixture
def trained(loop: Loop) -> Loop:
    """The loop's project with at least one version and nothing running: what an earlier test left,
    else a new project whose first N annotations trained v1 (so each test also passes alone)."""
    if not loop.project_id or loop.registry.current_name(loop.project_id) is None:
        new_project(loop)
        loop.annotate_next(TRAIN_EVERY_N)
        try:
            wait_until(lambda: loop.registry.current_name(loop.project_id) is not None, 300, "version v1", 1.0)
        except TimeoutError:
            pytest.fail("no version after N annotations\n" + loop.logs())
    wait_until(loop.idle, 300, "idle project", 1.0)
    return loop


def test_annotations_train_a_version_that_label_studio_serves(loop: Loop) -> None:
    """Annotations saved through Label Studio's API arrive as webhooks, trigger a training after N,
    and Label Studio then reports the new version from /setup and gets predictions carrying it."""
    api = loop.api
    new_project(loop)
    assert api.backend_version(loop.ml_id) == "untrained"
    # Without credentials nothing gets in: Label Studio's calls above carried them.
    assert httpx.post(f"{loop.receiver_url}/setup", json={}, timeout=3).status_code == 401
    assert httpx.post(f"{loop.receiver_url}/webhook", json={"action": "START_TRAINING"}, timeout=3).status_code == 401

    assert loop.task_ids and loop.samples
    recorded = loop.redis().xlen(EVENT_STREAM)
    loop.annotate_next(TRAIN_EVERY_N - 1)
    # N-1 annotations: recorded, and each one considered by the trigger policy (N-1 pending),
    # but no training started.
    trigger = TriggerStore(loop.redis(), 60)
    wait_until(lambda: trigger.state(loop.project_id).pending == TRAIN_EVERY_N - 1, 30, "N-1 events handled")
    assert loop.redis().xlen(EVENT_STREAM) - recorded == TRAIN_EVERY_N - 1
    assert not trigger.state(loop.project_id).training and loop.redis().llen("train") == 0
    assert loop.registry.current_name(loop.project_id) is None

    loop.annotate_next(1)
    # Label Studio sends the webhook before it answers, but gives up waiting after its 1 s timeout.
    wait_until(lambda: loop.redis().xlen(EVENT_STREAM) - recorded == TRAIN_EVERY_N, 30, "the Nth webhook recorded")
    events = loop.redis().xrange(EVENT_STREAM)[recorded:]
    assert [e[1][b"action"] for e in events] == [b"ANNOTATION_CREATED"] * TRAIN_EVERY_N
    assert {int(e[1][b"project_id"]) for e in events} == {loop.project_id}

    try:
        wait_until(lambda: loop.registry.current_name(loop.project_id) == "v1", 300, "version v1", 1.0)
    except TimeoutError:
        pytest.fail("no version after N annotations\n" + loop.logs())
    manifest = loop.registry.get(loop.project_id, "v1").manifest
    assert manifest["parent"] is None
    assert manifest["dataset_size"]["train"] + manifest["dataset_size"]["val"] == TRAIN_EVERY_N
    assert manifest["classes"] == ["square", "disc"]
    assert set(manifest["timings"]) >= {"export", "download", "build", "train", "total"}

    assert api.backend_version(loop.ml_id) == "v1"
    # After the promotion every unlabeled task gets a v1 prediction with a score, and the
    # project's model version becomes v1.
    unlabeled = loop.task_ids[TRAIN_EVERY_N:]
    try:
        wait_until(lambda: all(loop.versions_of(t) == ["v1"] for t in unlabeled), 120, "pre-annotation", 1.0)
    except TimeoutError:
        pytest.fail("no pre-annotation\n" + loop.stack.log_tail("worker-predict", 4000))
    scores = [p["score"] for t in unlabeled for p in loop.api.sdk_predictions(t)]
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert loop.api.sdk.projects.get(id=loop.project_id).model_version == "v1"
    # ... and the project has one Data Manager tab of unlabeled tasks, the most informative first.
    tabs = [v for v in api.sdk.views.list(project=loop.project_id) if (v.data or {}).get("title") == TAB_TITLE]
    assert len(tabs) == 1 and tabs[0].data["ordering"] == ["tasks:predictions_score"]
    # Label Studio asks the backend (/predict) for a task without predictions: v1 answers.
    api.delete_predictions(loop.task_ids[-1])
    preds = api.predictions_for(loop.task_ids[-1])
    assert [p["model_version"] for p in preds] == ["v1"]


def test_flower_and_logs_show_the_loop(trained: Loop) -> None:
    """Flower lists the loop's tasks by name, and the workers log one JSON event per line with
    the project id, task id, run id and version bound."""
    loop = trained
    assert loop.task_ids
    loop.api.delete_predictions(loop.task_ids[-1])
    loop.api.predictions_for(loop.task_ids[-1])  # Label Studio calls /predict: a labelloop.predict task
    wanted = {"labelloop.handle_event", "labelloop.train", "labelloop.predict", "labelloop.preannotate"}
    names: set[str] = set()

    def listed() -> bool:
        nonlocal names
        names = {t["name"] for t in httpx.get(f"{loop.flower_url}/api/tasks", timeout=5).json().values()}
        return wanted <= names

    try:
        wait_until(listed, 60, "the loop's tasks in Flower")
    except TimeoutError:
        pytest.fail(f"Flower lists {sorted(names)}")
    lines = [ln for ln in loop.stack.log_tail("worker-train", 10_000_000).splitlines() if ln.startswith("{")]
    events = [json.loads(ln) for ln in lines]
    published = [e for e in events if e["event"] == "version_published" and e["project_id"] == loop.project_id]
    assert published and published[0]["version"] == "v1"
    assert published[0]["task_id"] and published[0]["run_id"]


def test_training_requests_during_a_training_coalesce_into_one_followup(trained: Loop) -> None:
    """START_TRAINING trains now; more requests and annotations while it runs cause exactly one
    follow-up run, not one per event."""
    loop = trained
    k = loop.newest()
    loop.api.train(loop.ml_id)
    lock = f"labelloop:project:{loop.project_id}:training"
    wait_until(lambda: loop.redis().exists(lock) == 1, 10, "training lock")
    for _ in range(3):
        loop.api.train(loop.ml_id)
    loop.annotate_next(2)
    assert loop.newest() == k, "the first run must still be training"
    # `labelloop status` shows the running training with its epoch progress.
    status = ""

    def shows_epoch() -> bool:
        nonlocal status
        status = loop.cli("status").stdout
        return f"project {loop.project_id}: run" in status and "epoch " in status

    wait_until(shows_epoch, 60, "epoch progress in labelloop status", 0.1)
    assert "workers:  events@" in status or "events@" in status
    assert f" for project {loop.project_id}, " in status.split("webhooks: last ", 1)[1], status
    try:
        wait_until(lambda: loop.newest() == k + 2, 300, f"follow-up v{k + 2}", 1.0)
        # Every event handled and nothing left to run: a third run would have been queued by now.
        wait_until(loop.idle, 120, "idle after follow-up")
    except TimeoutError:
        pytest.fail("no follow-up\n" + loop.logs())
    assert [v.name for v in loop.registry.list_versions(loop.project_id)] == [f"v{i}" for i in range(1, k + 3)]
    v2, v3 = (loop.registry.get(loop.project_id, f"v{i}").manifest for i in (k + 1, k + 2))
    assert v3["parent"] == f"v{k + 1}"
    # The promotion gate scored candidate and incumbent on the same validation split.
    assert v3["incumbent"]["version"] == f"v{k + 1}" and set(v3["incumbent"]["metrics"]) == set(v3["metrics"])
    assert v3["promotion"]["promoted"] is True and v3["promotion"]["metric"] == "map50_95"
    assert v3["train_args"]["weights"].endswith(f"/v{k + 1}/weights.pt")
    assert v3["dataset_size"]["train"] + v3["dataset_size"]["val"] == loop.annotated
    # v1 read the project from Label Studio. The START_TRAINING run (v2 here) adds nothing to the
    # change log (a webhook never supplies the label config or counters): it read the changed tasks
    # from Label Studio. The follow-up (v3 here) applied the annotations' recorded webhooks instead.
    v1 = loop.registry.get(loop.project_id, "v1").manifest
    assert v1["dataset"]["sync"]["mode"] == "full"
    assert v2["dataset"]["sync"]["mode"] == "incremental", v2["dataset"]["sync"]
    assert v2["dataset"]["sync"]["change_log"] == "no webhook recorded since the last build"
    assert v3["dataset"]["sync"]["mode"] == "change log", v3["dataset"]["sync"]


def test_kill_and_restart_everything_keeps_serving_the_newest_version(trained: Loop, tmp_path: Path) -> None:
    """After SIGKILL of the receiver, every worker and Redis, and a restart with Redis empty,
    /setup and /predict still serve the newest version (no reload-reset)."""
    loop = trained
    assert loop.project_id and loop.task_ids
    newest = loop.registry.current_name(loop.project_id)
    assert newest is not None
    loop.kill_all()
    loop.start(tmp_path / "redis-empty")

    setup = httpx.post(
        f"{loop.receiver_url}/setup",
        auth=BASIC_AUTH,
        json={
            "project": f"{loop.project_id}.{int(time.time())}",
            "schema": loop.api.sdk.projects.get(id=loop.project_id).label_config,
        },
        timeout=3,
    )
    assert setup.json() == {"model_version": newest}
    assert loop.api.backend_version(loop.ml_id) == newest
    direct = httpx.post(
        f"{loop.receiver_url}/predict",
        auth=BASIC_AUTH,
        json={
            "tasks": [{"id": loop.task_ids[-1], "data": {"image": loop.image_url(loop.task_ids[-1])}}],
            "project": f"{loop.project_id}.1",
            "label_config": loop.api.sdk.projects.get(id=loop.project_id).label_config,
        },
        timeout=60,
    )
    assert direct.json()["results"][0]["model_version"] == newest
    loop.api.delete_predictions(loop.task_ids[-2])
    preds = loop.api.predictions_for(loop.task_ids[-2])
    assert [p["model_version"] for p in preds] == [newest]


def test_webhooks_lost_while_the_receiver_was_down_are_reconciled(trained: Loop) -> None:
    """Annotations saved while the receiver was down lose their webhooks (Label Studio never
    retries); Celery beat's reconciliation finds them and they still lead to a training."""
    loop = trained
    k = loop.newest()
    loop.stack.stop("receiver", sig=signal.SIGKILL)
    recorded = loop.redis().xlen(EVENT_STREAM)
    loop.annotate_next(TRAIN_EVERY_N)
    loop.receiver_url = loop.stack.start_receiver(loop.receiver_port)
    assert loop.redis().xlen(EVENT_STREAM) == recorded, "these webhooks must have been lost"
    before = ChangeLog(loop.redis()).position(loop.project_id)
    loop.stack.start("beat", [sys.executable, "-m", "service.cli", "beat"])
    try:
        wait_until(lambda: loop.newest() == k + 1, 300, f"reconciled v{k + 1}", 1.0)
    except TimeoutError:
        pytest.fail("no training after reconciliation\n" + loop.logs() + loop.stack.log_tail("beat"))
    finally:
        loop.stack.stop("beat")
    v4 = loop.registry.get(loop.project_id, f"v{k + 1}").manifest
    assert v4["dataset_size"]["train"] + v4["dataset_size"]["val"] == loop.annotated
    # Reconciliation left a gap in the change log: rebuilds read Label Studio, not the log.
    with pytest.raises(ChangeLogUnusable, match="gap"):
        ChangeLog(loop.redis()).read(loop.project_id, before)
    assert v4["dataset"]["sync"]["mode"] != "change log"


def test_doctor_and_status_against_the_stack(trained: Loop) -> None:
    """`labelloop doctor` passes against the running stack and names a bad token with its fix;
    `labelloop status` lists the workers and the served version."""
    loop = trained
    ok = loop.cli("doctor")
    assert ok.returncode == 0, ok.stdout
    assert "all checks passed" in ok.stdout
    bad = loop.cli("doctor", env={"LABEL_STUDIO_API_KEY": "not-a-token"})
    assert bad.returncode == 1
    assert "rejects the token" in bad.stdout and "fix:" in bad.stdout
    status = loop.cli("status").stdout
    assert f"project {loop.project_id}: {loop.registry.current_name(loop.project_id)}" in status
    assert all(f"{q}@" in status for q in ("events", "train", "predict"))


def test_killed_training_worker_redelivers_and_completes(loop: Loop) -> None:
    """SIGKILL of the Celery process running a training, mid-epoch: nothing is published by the
    killed run, the task is redelivered (acks_late, reject_on_worker_lost) and that delivery
    publishes exactly one version and releases the project's lock. The project's extra params
    (12 epochs) come from Label Studio through /setup."""
    api = loop.api
    samples = [make_sample(100 + seed, 160, 120) for seed in range(TRAIN_EVERY_N + 2)]
    project_id, task_ids = image_project(api, "labelloop kill -9", samples)
    params = {"epochs": 12, "preannotate": False}
    ml_id = connect_backend(
        api, project_id, loop.receiver_url, basic_auth=BASIC_AUTH, webhook_secret=WEBHOOK_SECRET, extra_params=params
    )
    assert api.backend_version(ml_id) == "untrained"
    store = ProgressStore(loop.redis())
    for task_id, sample in list(zip(task_ids, samples, strict=True))[:TRAIN_EVERY_N]:
        api.annotate(task_id, sample.ls_result())
    wait_until(lambda: 1 <= (store.get(project_id) or {}).get("epoch", 0) < 8, 120, "training under way", 0.05)
    killed = store.get(project_id)
    assert killed and killed["epochs"] == 12
    os.kill(int(killed["pid"]), signal.SIGKILL)
    assert loop.registry.list_versions(project_id) == []
    try:
        wait_until(lambda: len(loop.registry.list_versions(project_id)) == 1, 300, "redelivered run", 1)
        # The redelivered train task has returned (after sending any pre-annotation) and nothing is
        # left to run: a second version would have been queued by now.
        wait_until(lambda: flower_task(loop, killed["task_id"]).get("state") == "SUCCESS", 120, "train task done")
        wait_until(lambda: loop.idle(project_id), 120, "idle project")
    except TimeoutError:
        pytest.fail("the redelivered training did not finish\n" + loop.logs())
    versions = loop.registry.list_versions(project_id)
    assert [v.name for v in versions] == ["v1"]
    assert versions[0].manifest["run_id"] == killed["run_id"]
    assert versions[0].manifest["train_args"]["epochs"] == 12
    # This project's extra params turned pre-annotation off: no pre-annotation task was sent for it
    # (Flower saw the train task succeed, so it saw a pre-annotation sent before that), and its
    # unlabeled tasks have no prediction of a version (the first picks, queued at /setup before any
    # version, may be there: they have their own switch, first_picks).
    sent = httpx.get(f"{loop.flower_url}/api/tasks", params={"taskname": "labelloop.preannotate"}, timeout=5).json()
    assert not [t for t in sent.values() if str(t.get("args", "")).startswith((f"[{project_id},", f"({project_id},"))]
    assert all(set(loop.versions_of(t)) <= {FIRST_PICKS_VERSION} for t in task_ids[TRAIN_EVERY_N:])


def flower_task(loop: Loop, task_id: str) -> dict[str, Any]:
    """Flower's record of one Celery task (``{}`` until Flower has seen it)."""
    resp = httpx.get(f"{loop.flower_url}/api/task/info/{task_id}", timeout=5)
    return dict(resp.json()) if resp.status_code == 200 else {}
