"""Project files a user relies on: README's configuration table, compose file and Procfile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.cli import build_parser
from service.settings_table import settings_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_configuration_table_is_current() -> None:
    """README's configuration table equals the one generated from Settings."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", readme, re.S)
    assert block, "README lacks the settings-table markers"
    assert block.group(1) == settings_table(), "regenerate it: labelloop settings-table --write README.md"


def test_readme_commands_exist() -> None:
    """The demo and test commands README gives exist, and CI runs the test command."""
    readme = (ROOT / "README.md").read_text()
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert script in readme and os.access(ROOT / script, os.X_OK)
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed"
)

# What `docker-compose config` needs to render: Label Studio's connection, the receiver's and Flower's credentials.
COMPOSE_ENV = {
    "LABEL_STUDIO_URL": "http://ls:8080",
    "LABEL_STUDIO_API_KEY": "k",
    "FLOWER_BASIC_AUTH": "a:b",
    "BASIC_AUTH_USER": "labelstudio",
    "BASIC_AUTH_PASS": "ml-backend-password",
    "LABELLOOP_WEBHOOK_SECRET": "webhook-secret",
}


def _compose_config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV and not k.startswith("LABELLOOP_")}
    return subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
    )


@pytest.mark.slow
@needs_compose
def test_compose_file_validates_and_requires_secrets() -> None:
    """`docker-compose config` accepts the file with secrets set and refuses it without each of them,
    naming the missing variable: Label Studio's URL and token, the receiver's Basic auth user and
    password, the webhook secret and Flower's basic auth."""
    ok = _compose_config(COMPOSE_ENV, "-q")
    assert ok.returncode == 0, ok.stderr
    for name in COMPOSE_ENV:
        refused = _compose_config({k: v for k, v in COMPOSE_ENV.items() if k != name}, "-q")
        assert refused.returncode != 0 and f"set {name}".encode() in refused.stderr, (name, refused.stderr)


@needs_compose
def test_compose_redis_never_evicts_and_has_a_memory_limit() -> None:
    """Compose's Redis runs with a maxmemory (512mb unless LABELLOOP_REDIS_MAXMEMORY says otherwise)
    and maxmemory-policy noeviction, so the Celery broker never loses a message to eviction."""

    def redis_args(env: dict[str, str]) -> list[str]:
        out = _compose_config(env)
        assert out.returncode == 0, out.stderr
        command = yaml.safe_load(out.stdout)["services"]["redis"]["command"]
        return [str(a) for a in command]

    args = redis_args(COMPOSE_ENV)
    assert args[args.index("--maxmemory") + 1] == "512mb"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    args = redis_args({**COMPOSE_ENV, "LABELLOOP_REDIS_MAXMEMORY": "2gb"})
    assert args[args.index("--maxmemory") + 1] == "2gb"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_images_run_as_a_non_root_user(name: str) -> None:
    """Each image creates uid 10001, gives it /data and runs as it (its last USER is 10001)."""
    text = (ROOT / name).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] == "10001"
    assert re.search(r"useradd [^\n]*--uid 10001", text)
    assert "chown -R 10001:10001 /data" in text
    assert text.index("chown -R 10001:10001 /data") < text.index('VOLUME ["/data"]') < text.rindex("USER 10001")


def test_procfile_and_compose_run_the_same_commands() -> None:
    """Every Procfile process has a compose service with the same labelloop subcommand and queues."""
    procs = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line and not line.startswith("#"):
            name, cmd = line.split(":", 1)
            procs[name] = [re.sub(r"\$\{PORT:-(\d+)\}", r"\1", a) for a in cmd.split()]
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    commands = [s.get("command") for s in services.values() if s.get("command")]
    parser = build_parser()
    for name, argv in procs.items():
        assert argv[0] == "labelloop", name
        assert any(c[: len(argv)] == argv for c in commands), f"Procfile {name}: no compose service runs {argv}"
        args = parser.parse_args(argv[1:])
        assert args.command == argv[1]


@pytest.mark.slow
@needs_compose
def test_compose_environment_guards_webhooks_and_leaves_the_recipe_unset(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver started with the environment `docker-compose config` renders for `web` (only the
    required settings exported) refuses an annotation webhook without credentials, takes Label Studio's
    /setup with Basic auth and then the webhook with the webhook secret header; every empty value
    means unset (epochs and imgsz stay the recipe's)."""
    import httpx

    from labelloop.dev.stack import Stack, free_port
    from labelloop.settings import Settings
    from tests.conftest import fixture

    out = _compose_config(COMPOSE_ENV)
    assert out.returncode == 0, out.stderr
    web = {k: str(v) for k, v in yaml.safe_load(out.stdout)["services"]["web"]["environment"].items()}
    assert web["LABELLOOP_WEBHOOK_SECRET"] == COMPOSE_ENV["LABELLOOP_WEBHOOK_SECRET"] and web["LABELLOOP_EPOCHS"] == ""
    web.update(
        LABELLOOP_REDIS_URL=redis_url,
        LABELLOOP_MODELS_DIR=str(tmp_path / "models"),
        LABELLOOP_CACHE_DIR=str(tmp_path / "cache"),
        LABEL_STUDIO_MEDIA_DIR=str(tmp_path / "media"),
        # Nothing answers at compose's Label Studio here; with one, /setup makes a project known only
        # once Label Studio confirms it (tests/service/test_front_door_setup.py), without, Basic auth does.
        LABEL_STUDIO_URL="",
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LABELLOOP_", "BASIC_AUTH"))}
    for name in set(os.environ) - set(clean):
        monkeypatch.delenv(name)
    for name, value in web.items():
        monkeypatch.setenv(name, value)
    # Settings built by hand: the test is about the values read from the rendered environment.
    rendered = Settings()
    assert rendered.basic_auth_user == COMPOSE_ENV["BASIC_AUTH_USER"] and rendered.webhook_secret is not None
    assert (rendered.epochs, rendered.imgsz, rendered.train_time_s, rendered.base_model) == (None, None, None, "auto")

    stack = Stack(tmp_path / "stack", {})
    stack.env = {**clean, **web, "PYTHONUNBUFFERED": "1"}
    event = fixture("webhook_ANNOTATION_CREATED.json")
    try:
        url = stack.start_receiver(free_port())
        bare = httpx.post(f"{url}/webhook", json=event, timeout=10)
        assert bare.status_code == 401, bare.text
        # Label Studio's /setup on connecting the ML backend, with the Basic auth of the connection.
        basic = (COMPOSE_ENV["BASIC_AUTH_USER"], COMPOSE_ENV["BASIC_AUTH_PASS"])
        setup = httpx.post(f"{url}/setup", json=fixture("ml_setup_request.json"), auth=basic, timeout=10)
        assert setup.status_code == 200, setup.text
        headers = {rendered.webhook_secret_header: COMPOSE_ENV["LABELLOOP_WEBHOOK_SECRET"]}
        resp = httpx.post(f"{url}/webhook", json=event, headers=headers, timeout=10)
        assert resp.status_code == 201, resp.text
    finally:
        stack.stop_all()
