"""/setup queues a project's first picks: once per minute however often Label Studio calls it, only
before the first version, and not when the project's extra params turn them off."""

from __future__ import annotations

import json
from pathlib import Path

import redis
from starlette.testclient import TestClient

from labelloop.names import QUEUE_PREANNOTATE, TASK_FIRST_PICKS
from labelloop.registry.params import ProjectParams, store
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from service.app import create_app
from tests.conftest import fixture
from tests.factories import make_settings, publish_version


def _first_picks_queued(redis_url: str) -> list[list[int]]:
    """The project ids of the first-picks messages waiting in the preannotate queue."""
    out = []
    for raw in redis.Redis.from_url(redis_url).lrange(QUEUE_PREANNOTATE, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == TASK_FIRST_PICKS:
            out.append(json.loads(message["headers"]["argsrepr"].replace("'", '"')))
    return out


def _settings(redis_url: str, tmp_path: Path) -> Settings:
    # A Label Studio URL is configured (nothing listens there: /setup never calls it here).
    return make_settings(tmp_path, redis_url=redis_url, label_studio=("http://127.0.0.1:9", "k"))


def test_setup_queues_first_picks_once_before_the_first_version(redis_url: str, tmp_path: Path) -> None:
    """Three /setup calls for a project without a version queue one first-picks task (routed to the
    preannotate queue); a project with a served version queues none; another project gets its own."""
    settings = _settings(redis_url, tmp_path)
    publish_version(Registry(settings.models_dir), 2, classes=["square", "disc"])
    with TestClient(create_app(settings)) as client:
        for project in ("1.1795268180", "1.1795268180", "1.1795268180", "2.1", "3.1"):
            resp = client.post("/setup", json={**fixture("ml_setup_request.json"), "project": project})
            assert resp.status_code == 200, resp.text
    assert sorted(_first_picks_queued(redis_url)) == [[1], [3]]


def test_first_picks_off_by_extra_param_or_without_label_studio(redis_url: str, tmp_path: Path) -> None:
    """The extra param "first_picks": false, or no LABEL_STUDIO_URL, queues nothing."""
    settings = _settings(redis_url, tmp_path)
    store(settings.models_dir, 1, ProjectParams(first_picks=False))  # as a /setup with them stored it
    with TestClient(create_app(settings)) as client:
        body = {**fixture("ml_setup_request.json"), "extra_params": {"first_picks": False}}
        assert client.post("/setup", json=body).status_code == 200
    plain = make_settings(tmp_path / "plain", redis_url=redis_url)
    with TestClient(create_app(plain)) as client:
        assert client.post("/setup", json={**fixture("ml_setup_request.json"), "project": "4.1"}).status_code == 200
    assert _first_picks_queued(redis_url) == []
