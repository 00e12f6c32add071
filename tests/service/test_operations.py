"""Operations: every CLI command's --help, the Kubernetes manifests, and the Procfile's processes."""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from labelloop.dev.stack import free_port, http_ok, wait_until
from labelloop.events.ledger import Ledger
from service.cli import build_parser
from tests.factories import make_settings, publish_version
from workers.celery_app import QUEUE_EVENTS, TASK_HANDLE_EVENT, create_celery

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*prefix, name))
    return out


@pytest.mark.slow
def test_every_cli_command_has_help() -> None:
    """`labelloop ... --help` exits 0 and describes every command and subcommand."""
    commands = _commands(build_parser())
    assert {("models", "rollback"), ("dataset", "build"), ("doctor",), ("status",), ("demo",)} <= set(commands)
    for command in commands:
        out = subprocess.run([str(BIN / "labelloop"), *command, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, (command, out.stderr)
        assert out.stdout.startswith("usage: labelloop"), command


def test_kubernetes_manifests_validate(tmp_path: Path) -> None:
    """Every manifest passes strict schema validation, and a broken one does not."""
    manifests = sorted(str(p) for p in (ROOT / "deploy" / "k8s").glob("*.yaml"))
    assert len(manifests) >= 5
    ok = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", *manifests], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "broken.yaml"
    text = (ROOT / "deploy" / "k8s" / "receiver.yaml").read_text().replace("replicas: 2", 'replicas: "two"')
    broken.write_text(text)
    bad = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(broken)], capture_output=True, text=True)
    assert bad.returncode != 0


def _free_port_base(processes: int) -> int:
    """A base port whose ``base + 100 * i`` (honcho's port of process i) are all free now, below the
    kernel's ephemeral range (``ip_local_port_range``, 32768-60999 by default) so that no client
    connection or other test server takes one before its process binds it (Flower once failed: address in use)."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(10, 30) * 1000 + 100
        ports = [base + 100 * i for i in range(processes)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port base for the Procfile's processes")


@pytest.mark.slow
def test_procfile_processes_start_and_answer(redis_url: str, tmp_path: Path) -> None:
    """`honcho start` runs every Procfile process: the receiver answers /health, Flower /healthcheck,
    the three workers answer Celery's ping, and a worker serves Prometheus metrics of its tasks."""
    procfile = ROOT.joinpath("Procfile").read_text().splitlines()
    base = _free_port_base(sum(1 for line in procfile if line.strip() and not line.lstrip().startswith("#")))
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "LABELLOOP_REDIS_URL": redis_url,
        "LABELLOOP_MODELS_DIR": str(tmp_path / "models"),
        "LABELLOOP_CACHE_DIR": str(tmp_path / "cache"),
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    log = open(tmp_path / "honcho.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "honcho"), "start", "-p", str(base)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        web, events_metrics, flower = base, base + 100, base + 500
        wait_until(lambda: http_ok(f"http://127.0.0.1:{web}/health"), 60, "web")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{flower}/healthcheck"), 60, "flower")
        app = create_celery(make_settings(tmp_path, redis_url=redis_url))

        def workers() -> set[str]:
            return {name.split("@")[0] for reply in app.control.ping(timeout=1.0) or [] for name in reply}

        wait_until(lambda: workers() == {"events", "train", "predict", "preannotate"}, 60, "four workers")
        app.send_task(
            TASK_HANDLE_EVENT, args=[3, "ANNOTATION_CREATED", [[1, "2026-01-01T00:00:00Z"]]], queue=QUEUE_EVENTS
        )
        line = 'labelloop_worker_tasks_total{state="success",task="labelloop.handle_event"} 1.0'
        wait_until(lambda: line in httpx.get(f"http://127.0.0.1:{events_metrics}/metrics").text, 30, "metrics")
        assert 1 in Ledger(redis.Redis.from_url(redis_url)).seen(3)
    except TimeoutError:
        log.flush()
        pytest.fail((tmp_path / "honcho.log").read_text()[-5000:])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LABELLOOP_LOG_JSON": "true", **env},
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.slow
def test_unreachable_label_studio_and_redis_are_one_line_with_the_fix(tmp_path: Path) -> None:
    """`labelloop dataset build` against an unreachable Label Studio and `labelloop train` with
    Redis down print one error line naming what to check, exit 1, and no traceback."""
    closed = str(free_port())
    env = {
        "LABEL_STUDIO_URL": f"http://127.0.0.1:{closed}",
        "LABEL_STUDIO_API_KEY": "k",
        "LABELLOOP_REDIS_URL": f"redis://127.0.0.1:{closed}/0",
        "LABELLOOP_MODELS_DIR": str(tmp_path / "models"),
        "LABELLOOP_CACHE_DIR": str(tmp_path / "cache"),
    }
    build = _cli(env, "dataset", "build", "1", str(tmp_path / "ds"))
    assert build.returncode == 1, build.stderr
    assert "Traceback" not in build.stderr
    assert f"labelloop: error: Label Studio at http://127.0.0.1:{closed} is unreachable" in build.stderr
    assert "check LABEL_STUDIO_URL" in build.stderr
    train = _cli(env, "train", "5")
    assert train.returncode == 1 and "Traceback" not in train.stderr
    assert f"labelloop: error: Redis at redis://127.0.0.1:{closed}/0 is unreachable" in train.stderr
    assert "LABELLOOP_REDIS_URL" in train.stderr


@pytest.mark.labelstudio
def test_a_refused_token_names_the_setting(label_studio: tuple[str, str], tmp_path: Path) -> None:
    """A token Label Studio refuses is one line telling to check LABEL_STUDIO_API_KEY."""
    url, _token = label_studio
    env = {
        "LABEL_STUDIO_URL": url,
        "LABEL_STUDIO_API_KEY": "0123456789abcdef0123456789abcdef01234567",
        "LABELLOOP_MODELS_DIR": str(tmp_path / "models"),
        "LABELLOOP_CACHE_DIR": str(tmp_path / "cache"),
    }
    build = _cli(env, "dataset", "build", "1", str(tmp_path / "ds"))
    assert build.returncode == 1 and "Traceback" not in build.stderr, build.stderr
    assert "refuses the token" in build.stderr and "check LABEL_STUDIO_API_KEY" in build.stderr


def test_status_shows_the_preannotate_queue_and_a_running_preannotation(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`labelloop status` lists the preannotate queue's depth and a running pre-annotation's
    version and done/total tasks, as the preannotate worker records them."""
    from labelloop.jobs.progress import ProgressStore
    from labelloop.registry.store import Registry
    from service.ops_status import status

    client = redis.Redis.from_url(redis_url)
    client.rpush("preannotate", "queued message")
    publish_version(Registry(tmp_path / "models"), 4, classes=["a"])
    ProgressStore(client).set_preannotation(4, {"project_id": 4, "version": "v1", "done": 32, "total": 120})
    assert status(make_settings(tmp_path, redis_url=redis_url)) == 0
    out = capsys.readouterr().out
    assert "preannotate 1" in out
    assert "project 4: pre-annotating with v1: 32/120 tasks" in out
