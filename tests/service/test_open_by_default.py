"""Open by default no more: the receiver warns when it is open to the network, the doctor fails
without usable credentials, Flower never listens open, the shipped placeholders are refused, and
the Kubernetes pods run as a non-root user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from labelloop.dev.stack import free_port, wait_until
from labelloop.settings import Settings
from service import ops_doctor as doctor
from tests.factories import make_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"

BASIC: dict[str, Any] = {"basic_auth_user": "labelstudio", "basic_auth_pass": "ml-backend-password"}
SECRET: dict[str, Any] = {"webhook_secret": "webhook-secret"}


@pytest.fixture(autouse=True)
def no_credentials_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built here see only what the test gives them."""
    for name in list(os.environ):
        if name.startswith(("LABELLOOP_", "BASIC_AUTH", "LABEL_STUDIO_", "FLOWER_")):
            monkeypatch.delenv(name)


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a labelloop subprocess: no labelloop or Label Studio setting but ``extra``."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("LABELLOOP_", "BASIC_AUTH", "LABEL_STUDIO_"))}
    return {**keep, "PYTHONUNBUFFERED": "1", **extra}


def _cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _k8s_secret_env() -> dict[str, str]:
    """The environment the shipped ``labelloop-secrets`` example gives every pod."""
    (secret,) = [d for d in _documents("config.yaml") if d["kind"] == "Secret"]
    return {k: str(v) for k, v in secret["stringData"].items()}


@pytest.mark.parametrize(
    ("host", "credentials", "warns"),
    [
        ("0.0.0.0", {}, True),
        ("::", {}, True),
        ("10.1.2.3", {}, True),
        ("labelloop.example.org", {}, True),
        ("0.0.0.0", {"basic_auth_user": "labelstudio"}, True),  # no password: Basic auth is off
        ("127.0.0.1", {}, False),
        ("127.8.9.10", {}, False),
        ("::1", {}, False),
        ("[::1]", {}, False),
        ("localhost", {}, False),
        ("0.0.0.0", BASIC, False),
        ("0.0.0.0", SECRET, False),
        ("0.0.0.0", {**BASIC, **SECRET}, False),
    ],
)
def test_open_warning_only_beyond_loopback_without_credentials(
    host: str, credentials: dict[str, Any], warns: bool, tmp_path: Path
) -> None:
    """open_warning names the host and the variables to set when the receiver listens beyond
    loopback with no credential, and is None on loopback or with any credential."""
    warning = doctor.open_warning(make_settings(tmp_path, **credentials), host)
    if not warns:
        assert warning is None
        return
    assert warning is not None and host in warning
    assert all(name in warning for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "LABELLOOP_WEBHOOK_SECRET"))


@pytest.mark.parametrize(
    ("credentials", "ok", "says"),
    [
        ({}, False, "no credential is configured"),
        (SECRET, False, "can only send Basic auth"),
        ({"basic_auth_user": "labelstudio"}, False, "BASIC_AUTH_USER is set without BASIC_AUTH_PASS"),
        ({"basic_auth_pass": "pw", **SECRET}, False, "BASIC_AUTH_PASS is set without BASIC_AUTH_USER"),
        ({**BASIC, "webhook_secret": "CHANGE-ME"}, False, "LABELLOOP_WEBHOOK_SECRET still hold"),
        ({**BASIC, **SECRET, "label_studio_api_key": "change-me"}, False, "LABEL_STUDIO_API_KEY still hold"),
        ({"basic_auth_user": "labelstudio", "basic_auth_pass": "replace-me"}, False, "BASIC_AUTH_PASS still hold"),
        (BASIC, True, "HTTP Basic auth (user labelstudio)"),
        ({**BASIC, **SECRET}, True, "X-Labelloop-Secret header"),
    ],
)
def test_credential_check_fails_what_leaves_a_route_open(
    credentials: dict[str, Any], ok: bool, says: str, tmp_path: Path
) -> None:
    """The doctor's credential check fails without any credential (loopback only), with half of
    Basic auth, with the webhook secret but no Basic auth, and with a placeholder; it passes with
    Basic auth, with or without the webhook secret."""
    verdict, what, fix = doctor.credential_check(make_settings(tmp_path, **credentials))
    assert verdict is ok and says in what, what
    assert bool(fix) is not ok
    if not credentials:
        assert "loopback" in what and "BASIC_AUTH_USER" in fix and "LABELLOOP_WEBHOOK_SECRET" in fix


def test_doctor_fails_without_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`labelloop doctor` with no credential configured prints the failed check with its fix and exits 1."""
    settings = make_settings(
        tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0", base_model="yolov8n.yaml", offline=True
    )
    assert doctor.doctor(settings) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    line = next(i for i, s in enumerate(lines) if "no credential is configured" in s)
    assert lines[line].startswith("[FAIL]") and "BASIC_AUTH_PASS" in lines[line + 1] and "fix:" in lines[line + 1]


def test_serve_beyond_loopback_without_credentials_logs_receiver_open(redis_url: str, tmp_path: Path) -> None:
    """`labelloop serve --host 0.0.0.0` with no credential logs a receiver_open warning naming the
    host and the fix at start, and still serves."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = _clean_env(
        LABELLOOP_REDIS_URL=redis_url,
        LABELLOOP_MODELS_DIR=str(tmp_path / "models"),
        LABELLOOP_CACHE_DIR=str(tmp_path / "cache"),
        LABELLOOP_LOG_JSON="true",
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def events() -> list[dict[str, Any]]:
            return [json.loads(s) for s in log.read_text().splitlines() if s.startswith("{")]

        def health() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        wait_until(health, 30, "receiver")
        assert proc.poll() is None, log.read_text()
        (open_,) = [e for e in events() if e["event"] == "receiver_open"]
        assert open_["level"] == "warning" and open_["host"] == "0.0.0.0"
        assert "BASIC_AUTH_USER" in open_["detail"] and "LABELLOOP_WEBHOOK_SECRET" in open_["detail"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_refuses_the_shipped_kubernetes_placeholders() -> None:
    """`labelloop serve` with the example Secret of deploy/k8s/config.yaml as its environment exits 2
    naming every placeholder variable, and the doctor's credential check fails on it."""
    secret = _k8s_secret_env()
    assert "CHANGE-ME" in secret["BASIC_AUTH_PASS"] and "CHANGE-ME" in secret["FLOWER_BASIC_AUTH"]
    out = _cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), env=_clean_env(**secret), timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    for name in ("BASIC_AUTH_PASS", "LABELLOOP_WEBHOOK_SECRET", "LABEL_STUDIO_API_KEY"):
        assert name in out.stderr
    assert "CHANGE-ME" in out.stderr


def test_doctor_refuses_the_shipped_kubernetes_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read from the example Secret of deploy/k8s/config.yaml fail the doctor's credential check."""
    for name, value in _k8s_secret_env().items():
        monkeypatch.setenv(name, value)
    # Settings built by hand: the test is about the values read from the environment.
    ok, what, fix = doctor.credential_check(Settings())
    assert not ok and "BASIC_AUTH_PASS" in what and "placeholder" in what and fix


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--address", "0.0.0.0"], {}, "without authentication"),
        (["--address", "0.0.0.0", "--basic-auth", ""], {}, "without authentication"),
        (["--address", "0.0.0.0"], {"FLOWER_BASIC_AUTH": "admin:CHANGE-ME"}, "placeholder"),
        (["--address", "0.0.0.0", "--basic-auth", "admin"], {}, "user:password"),
    ],
)
def test_flower_refuses_to_listen_beyond_loopback_without_auth(args: list[str], env: dict[str, str], says: str) -> None:
    """`labelloop flower` bound beyond loopback exits 2 with the fix when it has no basic auth, a
    malformed one or the example's placeholder password."""
    out = _cli("flower", "--port", str(free_port()), *args, env=_clean_env(**env), timeout=30)
    assert out.returncode == 2 and says in out.stderr, out.stdout + out.stderr
    if says == "without authentication":
        assert "--basic-auth" in out.stderr and "FLOWER_BASIC_AUTH" in out.stderr


def test_flower_listens_on_loopback_unless_told() -> None:
    """`labelloop flower`'s default bind address is 127.0.0.1."""
    from service.cli import build_parser

    assert build_parser().parse_args(["flower"]).address == "127.0.0.1"


def test_kubernetes_pods_run_as_non_root() -> None:
    """Every Deployment's pod runs as a non-root user (labelloop's images as uid 10001, fsGroup too)
    and no container may escalate privileges."""
    deployments = [d for p in sorted(K8S.glob("*.yaml")) for d in _documents(p.name) if d["kind"] == "Deployment"]
    assert len(deployments) >= 6
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, d["metadata"]["name"]
        assert context["fsGroup"] == context["runAsUser"], d["metadata"]["name"]
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            if c["image"].startswith("labelloop:"):
                assert context["runAsUser"] == 10001, d["metadata"]["name"]


def test_kubernetes_redis_never_evicts() -> None:
    """The Kubernetes Redis runs with a maxmemory below its memory limit and maxmemory-policy noeviction."""
    (redis,) = [d for d in _documents("redis.yaml") if d["kind"] == "Deployment"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory = args[args.index("--maxmemory") + 1]
    assert maxmemory.endswith("mb") and container["resources"]["limits"]["memory"] == "1Gi"
    assert int(maxmemory[:-2]) < 1024


def test_kubernetes_flower_requires_basic_auth() -> None:
    """The Kubernetes Flower listens beyond loopback and takes its basic auth from labelloop-secrets."""
    (flower,) = [d for d in _documents("flower.yaml") if d["kind"] == "Deployment"]
    (container,) = flower["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["labelloop", "flower"] and args[args.index("--address") + 1] == "0.0.0.0"
    assert {"secretRef": {"name": "labelloop-secrets"}} in container["envFrom"]
    assert "FLOWER_BASIC_AUTH" in _k8s_secret_env()
