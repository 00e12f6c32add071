"""`labelloop models list|promote|rollback` against a real registry and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from labelloop.registry.store import Registry
from tests.factories import publish_version, settings_env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env={**os.environ, **env}, capture_output=True, text=True
    )


@pytest.mark.slow
def test_models_commands(redis_url: str, tmp_path: Path) -> None:
    """list marks the served version; promote and rollback move it and queue its pre-annotation;
    errors exit 1 with a message."""
    registry = Registry(tmp_path / "models")
    for metric in (0.1, 0.2):
        publish_version(registry, 5, metrics={"map50_95": metric}, dataset_size={"train": 8, "val": 2})
    env = settings_env(tmp_path, redis_url=redis_url)
    listed = _cli(env, "models", "list", "5").stdout
    assert "* v2" in listed and "0.2000" in listed and "8/2" in listed
    assert _cli(env, "models", "promote", "5", "v1").returncode == 0
    assert registry.current_name(5) == "v1"
    rolled = _cli(env, "models", "rollback", "5")
    assert rolled.returncode == 0 and "v2" in rolled.stdout
    # Each served version is pre-annotated on the preannotate queue (kombu pushes on the left).
    queued = [json.loads(m)["headers"] for m in redis.Redis.from_url(redis_url).lrange("preannotate", 0, -1)]
    assert [(h["task"], h["argsrepr"]) for h in queued[::-1]] == [
        ("labelloop.preannotate", repr([5, "v1"])),
        ("labelloop.preannotate", repr([5, "v2"])),
    ]
    bad = _cli(env, "models", "promote", "5", "v7")
    assert bad.returncode == 1 and "labelloop: error: project 5 has no version v7" in bad.stderr


def test_models_list_prints_the_learning_curve(tmp_path: Path) -> None:
    """models list ends with the learning curve: one bar per version, as long as its metrics, the
    rejected candidate and the served version marked (the page's curve, as text)."""
    registry = Registry(tmp_path / "models")
    for map50, n, promote in ((0.3, 10, True), (0.9, 20, False), (0.6, 30, True)):
        seen = {str(i): "t" for i in range(n)}
        publish_version(registry, 5, promote=promote, annotations=seen, metrics={"map50": map50, "map50_95": map50 / 3})
    out = _cli(settings_env(tmp_path), "models", "list", "5").stdout
    curve = out[out.index("learning curve") :].splitlines()[1:]
    assert [line.split()[0] for line in curve] == ["v1", "v2", "v3"]
    bars = [line[line.index("|") + 1 : line.rindex("|")] for line in curve]
    assert [len(b.rstrip()) for b in bars] == [9, 27, 18] and {len(b) for b in bars} == {30}
    assert bars[2].startswith("======-") and "10 ann" in curve[0]
    assert curve[1].endswith("x rejected") and curve[2].endswith("*")
