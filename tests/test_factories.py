"""The shared test factories (``tests/factories.py``) build what the shipped code reads: settings a
process given their environment gets too, and versions the registry's readers take."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from labelloop.registry.store import Registry
from labelloop.settings import Settings
from tests.factories import make_settings, publish_version, settings_env

LS = ("http://127.0.0.1:8080", "7e57")


def test_settings_put_models_and_caches_in_the_test_directory_and_overrides_win(tmp_path: Path) -> None:
    """Models and caches land under the test's directory, the Label Studio pair becomes URL and
    secret token, explicit fields win over the defaults, and a value out of range fails as at start-up."""
    settings = make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0", label_studio=LS, imgsz=160)
    assert (settings.models_dir, settings.cache_dir) == (tmp_path / "models", tmp_path / "cache")
    assert (settings.redis_url, settings.label_studio_url, settings.api_key) == ("redis://127.0.0.1:1/0", *LS)
    assert settings.imgsz == 160
    assert make_settings(tmp_path, models_dir=tmp_path / "elsewhere").models_dir == tmp_path / "elsewhere"
    assert make_settings(tmp_path).label_studio_url is None
    with pytest.raises(pydantic.ValidationError):
        make_settings(tmp_path, imgsz=8)


def test_a_process_given_the_settings_environment_reads_the_same_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``settings_env`` is the environment under which ``Settings()`` (what a worker or the receiver
    builds at start) equals ``make_settings`` with the same arguments."""
    env = settings_env(tmp_path, redis_url="redis://127.0.0.1:1/0", label_studio=LS, LABELLOOP_IMGSZ="160")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    want = make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0", label_studio=LS, imgsz=160)
    assert Settings().model_dump() == want.model_dump()


def test_a_published_version_is_served_with_a_manifest_the_registry_reads(tmp_path: Path) -> None:
    """With no manifest fields, the version is a served detect model of the generated images'
    classes (ids 0 and 1), with the given weights' bytes and nothing left beside the registry."""
    registry = Registry(tmp_path / "models")
    version = publish_version(registry, 3, b"not a model")
    assert registry.current_name(3) == version.name == "v1"
    assert version.weights.read_bytes() == b"not a model"
    record = version.record
    assert (record.task, record.class_names(), record.status) == ("detect", {0: "square", 1: "disc"}, "promoted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_manifest_fields_given_are_kept_and_classes_follow_names(tmp_path: Path) -> None:
    """Given names, classes are their values in id order; given fields are written as given; a
    rejected version is kept but not served; a field of the wrong type publishes nothing."""
    registry = Registry(tmp_path / "models")
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"w")
    names = {"0": "cat", "1": "dog", "10": "eel", "2": "fox"}
    served = publish_version(registry, 1, weights, task="classify", from_name="choice", names=names)
    assert served.manifest["classes"] == ["cat", "dog", "fox", "eel"]
    assert (served.manifest["task"], served.manifest["from_name"]) == ("classify", "choice")
    rejected = publish_version(registry, 1, weights, promote=False, classes=["a"], annotations={"7": "t"})
    assert rejected.record.class_names() == {0: "a"} and rejected.annotations() == {"7": "t"}
    assert registry.current_name(1) == served.name and rejected.record.status == "rejected"
    with pytest.raises(pydantic.ValidationError):
        publish_version(registry, 1, weights, metrics="high")
    assert [v.name for v in registry.list_versions(1)] == ["v1", "v2"]
