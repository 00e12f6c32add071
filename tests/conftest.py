"""Shared fixtures: a real Redis, a real Label Studio, and the labelloop stack as processes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.stack import Stack, free_port, label_studio_binary

FIXTURES = Path(__file__).parent / "fixtures" / "label-studio"
LS_TOKEN = "7e57000000000000000000000000000000000001"
LS_USER = "tests@labelloop.local"
LS_PASSWORD = "labelloop-tests"

# Small, fast training for tests: 2 CPU cores, minutes not hours.
TRAIN_ENV = {
    "LABELLOOP_EPOCHS": "2",
    "LABELLOOP_IMGSZ": "192",
    "LABELLOOP_BATCH": "4",
    "LABELLOOP_DATALOADER_WORKERS": "0",
    "LABELLOOP_BASE_MODEL": "yolov8n.yaml",
    "LABELLOOP_LOG_JSON": "true",
}


def fixture(name: str) -> dict:
    """A request a real Label Studio 1.23.2 sent, captured verbatim."""
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """A redis-server on a free loopback port for the whole session."""
    stack = Stack(tmp_path_factory.mktemp("redis"), {})
    url = stack.start_redis(free_port())
    yield stack, url
    stack.stop_all()


@pytest.fixture
def redis_url(redis_server: tuple[Stack, str]) -> str:
    """The session Redis, flushed before each test."""
    url = redis_server[1]
    redis.Redis.from_url(url).flushall()
    return url


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real Label Studio server (own virtual environment, SQLite) on a free loopback port.

    The virtual environment is ``$LABELLOOP_LS_VENV`` or ``~/.cache/labelloop/label-studio-<v>``,
    installed on first use.
    """
    from service.stack import LABEL_STUDIO_VERSION

    venv = Path(
        os.environ.get("LABELLOOP_LS_VENV")
        or Path.home() / ".cache" / "labelloop" / f"label-studio-{LABEL_STUDIO_VERSION}"
    )
    binary = label_studio_binary(venv)
    workdir = tmp_path_factory.mktemp("label-studio")
    stack = Stack(workdir, {})
    try:
        url = stack.start_label_studio(binary, free_port(), workdir / "data", LS_USER, LS_PASSWORD, LS_TOKEN)
        yield url, LS_TOKEN
    finally:
        stack.stop_all()
