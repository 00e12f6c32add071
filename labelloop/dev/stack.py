"""Start and stop labelloop's processes locally: Redis, receiver, workers, Flower, Label Studio.

Used by ``labelloop demo`` and by the end-to-end tests, so both run the same processes the
Procfile and docker-compose.yml describe. Each process logs to ``<workdir>/logs/<name>.log``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

LABEL_STUDIO_VERSION = "1.23.2"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Poll ``check`` until it returns True.

    Raises:
        TimeoutError: ``what`` did not happen within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):  # a process that is still starting refuses connections
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a structlog JSON log, one per line, in order; other lines and lines cut
    by a kill are skipped."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


class Stack:
    """A set of child processes sharing one environment.

    Args:
        workdir: logs and data of the processes.
        env: environment for every child (settings go here as ``LABELLOOP_*``).
    """

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = Path(workdir).absolute()
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one process (in its own session, so ``stop`` can end its children too)."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running")
        log = open(self.workdir / "logs" / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            cwd=str(Path(__file__).resolve().parents[2]),  # the repository root
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log events process ``name`` wrote, in order (across restarts; ``json_lines``)."""
        path = self.workdir / "logs" / f"{name}.log"
        return json_lines(path.read_text(errors="replace")) if path.exists() else []

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        """Stop a process and its process group; SIGKILL after ``timeout_s``."""
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)

    # The processes -------------------------------------------------------------------

    def start_redis(self, port: int, data_dir: Path | None = None, persist: bool = False) -> str:
        """Start ``redis-server`` on loopback; returns its URL.

        Args:
            persist: append-only file in ``data_dir`` (what production runs with), so a restart
                keeps the data; otherwise memory only.

        Raises:
            FileNotFoundError: redis-server is not installed (Debian: ``apt-get install redis-server``).
        """
        binary = shutil.which("redis-server")
        if not binary:
            raise FileNotFoundError("redis-server not found; install it (Debian: apt-get install redis-server)")
        data_dir = Path(data_dir or self.workdir / "redis").absolute()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.start(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data_dir),
                "--save",
                "",
                "--appendonly",
                "yes" if persist else "no",
                "--protected-mode",
                "no",
            ],
        )
        url = f"redis://127.0.0.1:{port}/0"

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_until(ping, 15, "redis")
        return url

    def _alive_and(self, name: str, check: Callable[[], bool]) -> Callable[[], bool]:
        """``check``, but raise at once with the log tail when process ``name`` has exited."""

        def probe() -> bool:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n" + self.log_tail(name))
            return check()

        return probe

    def _cli(self) -> list[str]:
        return [sys.executable, "-m", "service.cli"]

    def start_receiver(self, port: int) -> str:
        """Start the receiver (uvicorn) and wait for ``/health``; returns its base URL."""
        self.start("receiver", [*self._cli(), "serve", "--host", "127.0.0.1", "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        wait_until(self._alive_and("receiver", lambda: http_ok(url + "/health")), 30, "receiver")
        return url

    def log_since(self, name: str, offset: int) -> str:
        """What process ``name`` logged after the log's first ``offset`` bytes."""
        path = self.workdir / "logs" / f"{name}.log"
        if not path.exists():
            return ""
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def log_size(self, name: str) -> int:
        path = self.workdir / "logs" / f"{name}.log"
        return path.stat().st_size if path.exists() else 0

    def start_worker(
        self,
        queue: str,
        concurrency: int = 1,
        name: str | None = None,
        args: list[str] | None = None,
        timeout_s: float = 60,
    ) -> None:
        """Start a Celery worker consuming ``queue`` (process ``name``, default ``worker-<queue>``;
        ``args``: more ``labelloop worker`` options); waits until it logs " ready." (a restarted
        worker: in what it logged since this start, not an earlier run's line in the same log)."""
        name = name or f"worker-{queue}"
        offset = self.log_size(name)
        argv = [*self._cli(), "worker", "--queues", queue, "--concurrency", str(concurrency), *(args or [])]
        self.start(name, argv)

        wait_until(self._alive_and(name, lambda: " ready." in self.log_since(name, offset)), timeout_s, name)

    def start_flower(self, port: int) -> str:
        self.start("flower", [*self._cli(), "flower", "--port", str(port), "--address", "127.0.0.1"])
        url = f"http://127.0.0.1:{port}"
        wait_until(self._alive_and("flower", lambda: http_ok(url + "/healthcheck")), 30, "flower")
        return url

    def start_label_studio(
        self,
        binary: Path,
        port: int,
        data_dir: Path,
        username: str,
        password: str,
        token: str,
        timeout_s: float = 240,
        document_root: Path | None = None,
    ) -> str:
        """Start a Label Studio server on loopback with SQLite and legacy API tokens enabled.

        ML backends and webhooks on 127.0.0.1 are allowed (``SSRF_PROTECTION_ENABLED=false``,
        ``ML_BLOCK_LOCAL_IP=false``). The first start migrates the database (about 30-60 s).
        ``document_root`` becomes ``LOCAL_FILES_DOCUMENT_ROOT``, under which Local Storage
        connections must live (default: Label Studio's own).
        """
        data_dir = Path(data_dir).absolute()
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "SSRF_PROTECTION_ENABLED": "false",
            "ML_BLOCK_LOCAL_IP": "false",
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "DJANGO_DB": "sqlite",
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }
        if document_root is not None:
            env["LOCAL_FILES_DOCUMENT_ROOT"] = str(Path(document_root).absolute())
        self.start(
            "label-studio",
            [
                str(binary),
                "start",
                "--no-browser",
                "--port",
                str(port),
                "--internal-host",
                "127.0.0.1",
                "--data-dir",
                str(data_dir),
                "--username",
                username,
                "--password",
                password,
                "--user-token",
                token,
            ],
            env=env,
        )
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if self.procs["label-studio"].poll() is not None:
                raise RuntimeError("Label Studio exited:\n" + self.log_tail("label-studio"))
            return (
                http_ok(url + "/health", 2.0)
                and httpx.get(url + "/api/projects", headers={"Authorization": f"Token {token}"}, timeout=5).status_code
                == 200
            )

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if up():
                return url
            time.sleep(1.0)
        raise TimeoutError("Label Studio not ready:\n" + self.log_tail("label-studio"))


def label_studio_binary(venv: Path) -> Path:
    """``label-studio`` from its own virtual environment, installed there on first use.

    Label Studio pins its own label-studio-sdk and Django, so it never shares labelloop's
    environment. Set ``LABELLOOP_LS_VENV`` to reuse one.
    """
    venv = Path(venv).absolute()
    binary = venv / "bin" / "label-studio"
    if binary.exists():
        return binary
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", f"label-studio=={LABEL_STUDIO_VERSION}"], check=True
    )
    return binary
