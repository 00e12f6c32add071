"""The fault campaign's production faults (issue 21), injected for real into ``bench.faults``'s
running stack, in the same rotation and under the same end checks:

- ``Redis paused > lock TTL``: Start Training through Label Studio (unless a training runs),
  wait until a delivery holds the project's lock (``training:owner`` set), then SIGSTOP Redis for
  the lock's TTL (``LABELLOOP_TRAIN_LOCK_TTL_S``, the campaign's ``--lock-ttl-s``) plus 5 s, SIGCONT.
- ``train revoked``: the train worker stopped (SIGTERM, ``docker stop``), Start Training through
  Label Studio, and once the ``labelloop.train`` message is queued, ``app.control.revoke(id)`` as
  Flower does (the events and predict workers hear it; the train worker learns it from them when it
  starts again, Celery's mingle, and discards the message).
- ``publish failure``: Redis stopped (SIGTERM) for at least 1 s while Label Studio sends a Start
  Training and three annotation updates: the receiver cannot publish what arrives meanwhile.
- ``200 idle sockets``: 200 TCP connections to the receiver that never send a byte, held
  ``--idle-hold-s`` (30 s) while the stream goes on; "back up" is the fault to the first ``/health``
  200 (during the hold or after it).
- ``build over cache cap``: the train worker restarted with ``LABELLOOP_CACHE_MAX_BYTES`` a quarter
  of the project's images, Start Training through Label Studio, the run's outcome awaited
  (``--outcome-wait-s``), then the worker restarted with the campaign's cap.
- ``1000-task /predict``: one ``/predict`` of 1,000 tasks (the project's tasks repeated, as Label
  Studio sends a "Retrieve Predictions" selection) while one-task ``/predict`` calls go on every 0.5 s.
- ``webhook disabled``: the project's webhook switched off in Label Studio (``PATCH
  /api/webhooks/<id>/ {"is_active": false}``); labelloop has to re-arm it or stay in sync through
  reconciliation. Whether it was re-armed is printed per fault and at the end.

Each injection returns the "back up" time and a note with what it saw, printed after the fault's
line; the campaign then probes "in sync" as for every fault.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import redis

from labelloop import keys
from labelloop.names import QUEUE_TRAIN, TASK_TRAIN

if TYPE_CHECKING:
    from bench.faults import Campaign

REDIS_PAUSED = "Redis paused > lock TTL"
TRAIN_REVOKED = "train revoked"
PUBLISH_FAILURE = "publish failure"
IDLE_SOCKETS = "200 idle sockets"
CACHE_CAP = "build over cache cap"
BIG_PREDICT = "1000-task /predict"
WEBHOOK_DISABLED = "webhook disabled"
EXTRA_KINDS = (REDIS_PAUSED, TRAIN_REVOKED, PUBLISH_FAILURE, IDLE_SOCKETS, CACHE_CAP, BIG_PREDICT, WEBHOOK_DISABLED)
IDLE_SOCKET_COUNT = 200
BIG_PREDICT_TASKS = 1000
OUTCOME_EVENTS = ("training_finished", "training_failed", "training_given_up")


# -- pure helpers ---------------------------------------------------------------------------------


def select_kinds(kinds: Sequence[str], spec: str) -> tuple[str, ...]:
    """The kinds ``spec`` names: comma-separated, each a case-insensitive substring of one or
    more kinds (``"redis,idle"``); in ``kinds``' order, each once. An empty spec selects all.

    Raises:
        ValueError: a part of ``spec`` matches no kind (the message lists the kinds).
    """
    parts = [p.strip().lower() for p in spec.split(",") if p.strip()]
    if not parts:
        return tuple(kinds)
    for part in parts:
        if not any(part in k.lower() for k in kinds):
            raise ValueError(f"{part!r} matches no fault kind; kinds: {', '.join(kinds)}")
    return tuple(k for k in kinds if any(p in k.lower() for p in parts))


def rotation(kinds: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """``n`` fault kinds in a seeded random order, every kind as often as ``n`` allows (counts
    differ by at most one): rounds of all kinds, each shuffled, the last one a random part of them.
    (Shuffling all rounds together and cutting at ``n`` can leave kinds out.)"""
    plan: list[str] = []
    while kinds and len(plan) < n:
        round_ = list(kinds)
        rng.shuffle(round_)
        plan += round_[: n - len(plan)]
    return plan


def big_selection(tasks: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` tasks as Label Studio's ``/predict`` carries them (``id``, ``data``), cycling
    through ``tasks`` (ids repeat when the project has fewer)."""
    if not tasks:
        raise ValueError("no tasks to select")
    return [{"id": int(t["id"]), "data": t["data"]} for t in (tasks[i % len(tasks)] for i in range(n))]


def _version_number(name: object) -> int:
    """N of a labelloop version name ``vN``; -1 for anything else (``base``, first picks, None)."""
    text = str(name)
    return int(text[1:]) if text[:1] == "v" and text[1:].isdigit() else -1


def selection_predictions(held: dict[int, list[str]], served: str) -> tuple[int, int]:
    """``(tasks holding a prediction of ``served`` or a newer version, tasks holding two of one
    version)`` among ``held`` (task id -> its predictions' model versions).

    Examples:
        >>> selection_predictions({1: ["v1"], 2: ["v2", "v1"], 3: [], 4: ["v1", "v1"]}, "v1")
        (3, 1)
    """
    floor = _version_number(served)
    holding = sum(1 for versions in held.values() if any(_version_number(v) >= floor >= 1 for v in versions))
    doubled = sum(1 for versions in held.values() if len(versions) != len(set(versions)))
    return holding, doubled


def queued_task_ids(raw_messages: Iterable[bytes | str], task_name: str) -> list[str]:
    """Ids of the Celery messages named ``task_name`` among kombu's Redis messages (the ``train``
    list's items, or the ``unacked`` hash's values: ``[message, exchange, routing_key]``);
    unreadable items are skipped."""
    ids = []
    for raw in raw_messages:
        try:
            item = json.loads(raw)
        except ValueError:
            continue
        message = item[0] if isinstance(item, list) and item else item
        headers = message.get("headers") if isinstance(message, dict) else None
        if isinstance(headers, dict) and headers.get("task") == task_name and headers.get("id"):
            ids.append(str(headers["id"]))
    return ids


def train_outcome(log: str) -> str | None:
    """The first end of a training in a train worker's JSON log: a labelloop outcome event
    (``training_finished``, ``training_failed`` with its error type, ``training_given_up``) or a
    ``labelloop.train`` task that raised out of Celery (``raised <error>``, no labelloop event);
    None while there is none. Lines that are not JSON are skipped."""
    for line in log.splitlines():
        try:
            event = json.loads(line) if line.startswith("{") else {}
        except ValueError:
            continue
        name = str(event.get("event", ""))
        if name in OUTCOME_EVENTS:
            return name + (f" ({event['error_type']})" if event.get("error_type") else "")
        if name.startswith(f"Task {TASK_TRAIN}[") and " raised unexpected: " in name:
            return "raised " + name.split(" raised unexpected: ", 1)[1].split("(", 1)[0]
    return None


def latency_summary(calls: Sequence[tuple[int, float]]) -> str:
    """ "n calls, k 200, median / max s, other statuses" over ``(status, seconds)`` pairs
    (status 0: no answer)."""
    if not calls:
        return "0 calls"
    ok = sum(1 for status, _ in calls if status == 200)
    seconds = [s for _, s in calls]
    others = Counter(status for status, _ in calls if status != 200)
    other_txt = ", ".join(f"{s or 'no answer'} x{k}" for s, k in sorted(others.items()))
    return f"{len(calls)} calls, {ok} answered 200, {statistics.median(seconds):.2f} / {max(seconds):.2f} s" + (
        f", {other_txt}" if other_txt else ""
    )


# -- the injections -------------------------------------------------------------------------------


def inject(c: Campaign, kind: str) -> tuple[float, float, str]:
    """Inject one of ``EXTRA_KINDS`` into the campaign's stack; returns (the moment the fault hit,
    ``time.monotonic()``; seconds from it until back up; a note of what the injection saw)."""
    return {
        REDIS_PAUSED: redis_paused,
        TRAIN_REVOKED: train_revoked,
        PUBLISH_FAILURE: publish_failure,
        IDLE_SOCKETS: idle_sockets,
        CACHE_CAP: build_over_cache_cap,
        BIG_PREDICT: big_predict,
        WEBHOOK_DISABLED: webhook_disabled,
    }[kind](c)


def ml_backend_id(c: Campaign, project_id: int) -> int:
    """The id of the project's ML backend in Label Studio (labelloop's connection)."""
    backends = c.ls("GET", "/api/ml/", params={"project": project_id})
    return int(backends[0]["id"])


def start_training(c: Campaign, project_id: int) -> str:
    """Press Start Training in Label Studio (its ML API sends START_TRAINING to the receiver);
    returns Label Studio's status or the error."""
    assert c.http is not None
    try:
        resp = c.http.post(f"/api/ml/{ml_backend_id(c, project_id)}/train", json={})
        c.count_sent()
        return str(resp.status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def owner_held(c: Campaign, project_id: int) -> bool:
    try:
        return bool(c.redis().exists(keys.training_owner(project_id)))
    except redis.RedisError:
        return False


def poll(check: Any, timeout_s: float, interval_s: float = 0.5) -> bool:
    """Whether ``check()`` became true within ``timeout_s`` (errors count as false)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (OSError, httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(interval_s)
    return False


def redis_ping(c: Campaign) -> bool:
    try:
        return bool(redis.Redis.from_url(c.stack.env["LABELLOOP_REDIS_URL"], socket_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_paused(c: Campaign) -> tuple[float, float, str]:
    project_id = c.projects[0].id
    at = time.monotonic()
    asked = "" if owner_held(c, project_id) else f"Start Training {start_training(c, project_id)}; "
    held = poll(lambda: owner_held(c, project_id), c.args.outcome_wait_s)
    ttl = int(c.stack.env["LABELLOOP_TRAIN_LOCK_TTL_S"])
    pause = ttl + 5.0
    run_id = c.redis().get(keys.training_lock(project_id))
    proc = c.stack.procs["redis"]
    os.kill(proc.pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        time.sleep(pause)  # the fault itself: Redis unreachable this long
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    poll(lambda: redis_ping(c), 30, 0.1)
    back = time.monotonic() - t_stop
    waited = t_stop - at
    run = run_id.decode() if isinstance(run_id, bytes) else str(run_id)
    what = f"run {run} held the lock" if held else "NO training held the lock"
    return t_stop, back, f"{asked}{what} after {waited:.0f} s; Redis stopped {pause:.0f} s (lock TTL {ttl} s)"


def train_revoked(c: Campaign) -> tuple[float, float, str]:
    from labelloop.settings import Settings
    from workers.celery_app import create_celery

    project_id = c.projects[0].id
    r = c.redis()
    # A free lock, so that Start Training enqueues a new run (its message then waits in the queue).
    free = poll(lambda: not r.exists(keys.training_lock(project_id)), c.args.outcome_wait_s)
    at = time.monotonic()
    c.kill("worker-train", signal.SIGTERM)
    asked = start_training(c, project_id)
    found: list[str] = []
    where = ""

    def queued() -> bool:
        nonlocal where
        in_list = queued_task_ids(r.lrange(QUEUE_TRAIN, 0, -1), TASK_TRAIN)
        # A delivery the stopped worker held comes back after the visibility timeout.
        in_unacked = queued_task_ids(r.hvals("unacked"), TASK_TRAIN)
        found[:] = in_list + in_unacked
        where = f"{len(in_list)} in the train queue, {len(in_unacked)} unacknowledged"
        return bool(found)

    poll(queued, c.args.outcome_wait_s)
    heard = False
    if found:
        app = create_celery(Settings(redis_url=c.stack.env["LABELLOOP_REDIS_URL"]))
        try:
            for task_id in found:
                app.control.revoke(task_id)

            def workers_know() -> bool:
                replies = app.control.inspect(timeout=1.0).revoked() or {}
                return any(set(found) <= set(ids) for ids in replies.values())

            heard = poll(workers_know, 15, 0.5)
        finally:
            app.close()
    offset = c.stack.log_size("worker-train")
    c.restart("worker-train")
    back = time.monotonic() - at
    if not found:
        return (
            at,
            back,
            f"Start Training {asked}; no labelloop.train message queued within {c.args.outcome_wait_s:.0f} s",
        )
    wait = c.args.outcome_wait_s
    discarded = poll(lambda: "discarding revoked task" in c.stack.log_since("worker-train", offset).lower(), wait)
    return (
        at,
        back,
        (
            f"lock {'free' if free else 'still held'} before; Start Training {asked}; revoked {len(found)} "
            f"labelloop.train message(s) ({where}; {'heard' if heard else 'NOT heard'} by the live workers); "
            f"train worker discarded it: {'yes' if discarded else f'no sign within {wait:.0f} s'}"
        ),
    )


def publish_failure(c: Campaign) -> tuple[float, float, str]:
    project = c.projects[0]
    at = time.monotonic()
    c.kill("redis", signal.SIGTERM)
    t_down = time.monotonic()
    asked = start_training(c, project.id)
    updates = 0
    for ann_id in sorted(project.annotations)[:3]:
        result = c.projects[0].samples[project.annotations[ann_id]].ls_result()
        try:
            c.ls("PATCH", f"/api/annotations/{ann_id}/", json={"result": result})
            c.count_sent()
            updates += 1
        except httpx.HTTPError:
            c.op_errors["publish failure PATCH"] += 1
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t_down)))  # down at least 1 s
    down = time.monotonic() - t_down
    c.restart("redis")
    return (
        at,
        time.monotonic() - at,
        (f"Redis down {down:.1f} s while Label Studio sent Start Training ({asked}) and {updates} annotation updates"),
    )


def idle_sockets(c: Campaign) -> tuple[float, float, str]:
    host, port = "127.0.0.1", c.receiver_port
    at = time.monotonic()
    socks = []
    refused = 0
    for _ in range(IDLE_SOCKET_COUNT):
        try:
            socks.append(socket.create_connection((host, port), timeout=2))
        except OSError:
            refused += 1
    health: list[tuple[int, float]] = []
    first_ok: float | None = None
    try:
        while time.monotonic() - at < c.args.idle_hold_s:
            t = time.monotonic()
            try:
                status = httpx.get(f"{c.receiver_url}/health", timeout=2).status_code
            except httpx.HTTPError:
                status = 0
            health.append((status, time.monotonic() - t))
            if status == 200 and first_ok is None:
                first_ok = time.monotonic() - at
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
    finally:
        for s in socks:
            s.close()
    if first_ok is None:
        poll(lambda: httpx.get(f"{c.receiver_url}/health", timeout=2).status_code == 200, 60, 0.1)
        first_ok = time.monotonic() - at
    return (
        at,
        first_ok,
        (
            f"{len(socks)} sockets open ({refused} refused) for {c.args.idle_hold_s:.0f} s; "
            f"/health meanwhile: {latency_summary(health)}"
        ),
    )


def project_image_bytes(c: Campaign) -> int:
    return sum(len(s.png) for s in c.projects[0].samples.values())


def build_over_cache_cap(c: Campaign) -> tuple[float, float, str]:
    project_id = c.projects[0].id
    cap = c.args.cache_cap_bytes or max(1, project_image_bytes(c) // 4)
    at = time.monotonic()
    c.kill("worker-train", signal.SIGTERM)
    before = c.stack.env.get("LABELLOOP_CACHE_MAX_BYTES")
    c.stack.env["LABELLOOP_CACHE_MAX_BYTES"] = str(cap)
    try:
        offset = c.stack.log_size("worker-train")
        c.restart("worker-train")
    finally:
        if before is None:
            c.stack.env.pop("LABELLOOP_CACHE_MAX_BYTES")
        else:
            c.stack.env["LABELLOOP_CACHE_MAX_BYTES"] = before
    asked = start_training(c, project_id)
    outcome: list[str] = []

    def ended() -> bool:
        outcome[:] = [o for o in [train_outcome(c.stack.log_since("worker-train", offset))] if o]
        return bool(outcome)

    poll(ended, c.args.outcome_wait_s, 1.0)
    errors = c.stack.log_since("worker-train", offset).count("FileNotFoundError")
    c.kill("worker-train", signal.SIGTERM)
    c.restart("worker-train")
    return (
        at,
        time.monotonic() - at,
        (
            f"train worker's cache cap {cap} bytes (the project's images: {project_image_bytes(c)}); Start Training "
            f"{asked}; outcome: {outcome[0] if outcome else f'none within {c.args.outcome_wait_s:.0f} s'}; "
            f"FileNotFoundError in its log: {errors}"
        ),
    )


def big_predict(c: Campaign) -> tuple[float, float, str]:
    from labelloop.dev.synthetic import LABEL_CONFIG

    project_id = c.projects[0].id
    tasks = c.ls_tasks(project_id)
    asked = ""
    if not c.registry.current_name(project_id):  # predicting needs a served version
        asked = f"no version served: Start Training {start_training(c, project_id)}; "
        poll(lambda: bool(c.registry.current_name(project_id)), c.args.outcome_wait_s, 1.0)
    served = c.registry.current_name(project_id) or "none"
    project = f"{project_id}.{int(time.time())}"
    big = {"tasks": big_selection(tasks, BIG_PREDICT_TASKS), "project": project, "label_config": LABEL_CONFIG}
    rng = random.Random(c.args.seed)
    interactive: list[tuple[int, float]] = []
    done = threading.Event()

    def one_by_one() -> None:
        with httpx.Client(base_url=c.receiver_url, timeout=60) as client:
            while not done.is_set():
                body = {
                    "tasks": big_selection([rng.choice(tasks)], 1),
                    "project": project,
                    "label_config": LABEL_CONFIG,
                }
                t = time.monotonic()
                try:
                    status = client.post("/predict", json=body).status_code
                except httpx.HTTPError:
                    status = 0
                interactive.append((status, time.monotonic() - t))
                done.wait(0.5)

    thread = threading.Thread(target=one_by_one, daemon=True)
    at = time.monotonic()
    thread.start()
    try:
        resp = httpx.post(f"{c.receiver_url}/predict", json=big, timeout=600)
        status, results = str(resp.status_code), len(resp.json().get("results") or []) if resp.is_success else 0
    except (httpx.HTTPError, ValueError) as exc:
        status, results = type(exc).__name__, 0
    big_s = time.monotonic() - at
    done.set()
    thread.join(timeout=70)
    poll(lambda: httpx.get(f"{c.receiver_url}/health", timeout=2).status_code == 200, 60, 0.1)
    written = ""
    if status == "202":  # handed to the pre-annotation queue: every task of it gets one prediction
        ids = sorted({int(t["id"]) for t in big["tasks"]})

        def held() -> dict[int, list[str]]:
            return {
                i: [str(p.get("model_version")) for p in c.ls("GET", "/api/predictions/", params={"task": i}) or []]
                for i in ids
            }

        poll(lambda: selection_predictions(held(), served)[0] == len(ids), c.args.outcome_wait_s, 2.0)
        holding, doubled = selection_predictions(held(), served)
        written = (
            f"; tasks of it holding a prediction of {served} or newer: {holding} of {len(ids)}, "
            f"with two of one version: {doubled}"
        )
    return (
        at,
        time.monotonic() - at,
        (
            f"{asked}served {served}; 1,000-task /predict answered {status} ({results} results) in {big_s:.1f} s; "
            f"one-task /predict meanwhile: {latency_summary(interactive)}{written}"
        ),
    )


def project_webhooks(c: Campaign, project_id: int) -> list[dict[str, Any]]:
    """Label Studio's webhooks of the project that point at labelloop's receiver."""
    hooks = c.ls("GET", "/api/webhooks/", params={"project": project_id}) or []
    return [h for h in hooks if str(h.get("url", "")).startswith(c.receiver_url)]


def webhook_disabled(c: Campaign) -> tuple[float, float, str]:
    project_id = c.projects[0].id
    hooks = project_webhooks(c, project_id)
    at = time.monotonic()
    if not hooks:
        return at, 0.0, "the project has no webhook to labelloop (disabled and not re-armed before?)"
    for hook in hooks:
        # PATCH clears ``actions`` unless they are sent again (labelloop.dev.demo.set_webhook_headers).
        keep = {k: hook[k] for k in ("actions", "send_for_all_actions", "send_payload") if k in hook}
        c.ls("PATCH", f"/api/webhooks/{hook['id']}/", json={"is_active": False, **keep})
    back = time.monotonic() - at
    rearmed = poll(lambda: all(h.get("is_active") for h in project_webhooks(c, project_id)), 20, 1.0)
    return (
        at,
        back,
        (f"{len(hooks)} webhook(s) switched off; re-armed by labelloop within 20 s: {'yes' if rearmed else 'NO'}"),
    )


def webhooks_active(c: Campaign) -> str:
    """ "k of n active" over the projects' webhooks to labelloop (for the final figures)."""
    try:
        hooks = [h for p in c.projects for h in project_webhooks(c, p.id)]
    except httpx.HTTPError as exc:
        return f"unknown ({type(exc).__name__})"
    return f"{sum(1 for h in hooks if h.get('is_active'))} of {len(hooks)} active"
