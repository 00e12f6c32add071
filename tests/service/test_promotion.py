"""``service.promotion.serve``: the one "serve once warm, then queue the pre-annotation", behind
the receiver's promote and rollback routes and ``labelloop models promote``/``rollback``
(``test_cli_models``), against a real registry and Redis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from starlette.testclient import TestClient

from labelloop.registry.store import Registry
from service.app import create_app
from service.promotion import serve
from tests.factories import make_settings, publish_version
from workers.celery_app import create_celery

PROJECT = 5


def _registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "models")
    for metric in (0.1, 0.2):
        publish_version(registry, PROJECT, metrics={"map50_95": metric})
    return registry


def _preannotations(redis_url: str) -> list[str]:
    """The argsrepr of the pre-annotation messages waiting, oldest first (kombu pushes left)."""
    raw = redis.Redis.from_url(redis_url).lrange("preannotate", 0, -1)
    return [json.loads(m)["headers"]["argsrepr"] for m in raw[::-1]]


def test_promote_and_rollback_routes_serve_and_queue_the_preannotation(redis_url: str, tmp_path: Path) -> None:
    """POST /projects/{id}/promote and /rollback move the served version and queue one
    pre-annotation of the project with each version served."""
    registry = _registry(tmp_path)
    settings = make_settings(tmp_path, redis_url=redis_url)
    with TestClient(create_app(settings)) as client:
        resp = client.post(f"/projects/{PROJECT}/promote", json={"version": "v1"})
        assert (resp.status_code, resp.json()) == (200, {"model_version": "v1"})
        assert registry.current_name(PROJECT) == "v1"
        resp = client.post(f"/projects/{PROJECT}/rollback")
        assert (resp.status_code, resp.json()) == (200, {"model_version": "v2"})
    assert registry.current_name(PROJECT) == "v2"
    assert _preannotations(redis_url) == [repr([PROJECT, "v1"]), repr([PROJECT, "v2"])]


class _RefusingBroker(Celery):
    """A Celery app whose broker refuses every message (fault injection)."""

    def send_task(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("broker down")


def test_a_refused_preannotation_does_not_undo_the_serving(redis_url: str, tmp_path: Path) -> None:
    """With the broker refusing the pre-annotation, the version is served all the same and the
    result says the pre-annotation was not queued, and why; with pre-annotation off nothing is
    sent."""
    registry = _registry(tmp_path)
    settings = make_settings(tmp_path, redis_url=redis_url)
    served = serve(settings, registry, _RefusingBroker("test"), PROJECT, "v1", "promoted by operator")
    assert registry.current_name(PROJECT) == "v1"
    assert (served.preannotation, served.error) == ("not queued", "ConnectionRefusedError: broker down")

    off = settings.model_copy(update={"preannotate": False})
    served = serve(off, registry, create_celery(off), PROJECT, "v2", "promoted by operator")
    assert (registry.current_name(PROJECT), served.preannotation) == ("v2", "off")
    assert _preannotations(redis_url) == []
