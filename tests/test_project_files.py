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
from service.settings import settings_table

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


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed")
def test_compose_file_validates_and_requires_secrets() -> None:
    """`docker-compose config` accepts the file with secrets set and refuses it without them."""
    env = {**os.environ, "LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": "k", "FLOWER_BASIC_AUTH": "a:b"}
    ok = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT, env=env)
    assert ok.returncode == 0
    bare = {k: v for k, v in env.items() if k not in {"LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"}}
    refused = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT, env=bare, capture_output=True
    )
    assert refused.returncode != 0 and b"LABEL_STUDIO_URL" in refused.stderr


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


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed")
def test_compose_environment_accepts_webhooks_and_leaves_the_recipe_unset(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver started with the environment `docker-compose config` renders for `web` (only the
    required settings exported) accepts an annotation webhook without any header: the empty
    LABELLOOP_WEBHOOK_SECRET and Basic-auth values mean unset, as does every empty value (epochs and
    imgsz stay the recipe's)."""
    import httpx

    from service.settings import Settings
    from service.stack import Stack, free_port
    from tests.conftest import fixture

    env = {**os.environ, "LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": "k", "FLOWER_BASIC_AUTH": "a:b"}
    for name in [k for k in env if k.startswith("LABELLOOP_") or k.startswith("BASIC_AUTH")]:
        env.pop(name)
    out = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config"], cwd=ROOT, env=env, capture_output=True, check=True
    )
    web = {k: str(v) for k, v in yaml.safe_load(out.stdout)["services"]["web"]["environment"].items()}
    assert web["LABELLOOP_WEBHOOK_SECRET"] == "" and web["LABELLOOP_EPOCHS"] == ""
    web.update(
        LABELLOOP_REDIS_URL=redis_url,
        LABELLOOP_MODELS_DIR=str(tmp_path / "models"),
        LABELLOOP_CACHE_DIR=str(tmp_path / "cache"),
        LABEL_STUDIO_MEDIA_DIR=str(tmp_path / "media"),
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LABELLOOP_", "BASIC_AUTH"))}
    for name in set(os.environ) - set(clean):
        monkeypatch.delenv(name)
    for name, value in web.items():
        monkeypatch.setenv(name, value)
    rendered = Settings()
    assert rendered.webhook_secret is None and rendered.basic_auth_user is None and rendered.basic_auth_pass is None
    assert (rendered.epochs, rendered.imgsz, rendered.train_time_s, rendered.base_model) == (None, None, None, "auto")

    stack = Stack(tmp_path / "stack", {})
    stack.env = {**clean, **web, "PYTHONUNBUFFERED": "1"}
    try:
        url = stack.start_receiver(free_port())
        resp = httpx.post(f"{url}/webhook", json=fixture("webhook_ANNOTATION_CREATED.json"), timeout=10)
        assert resp.status_code == 201, resp.text
    finally:
        stack.stop_all()
