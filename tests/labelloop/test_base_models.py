"""Base models: asset names, offline fallback to the family's YAML, names only from extra params."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelloop.errors import ParamsError
from labelloop.registry.base_models import default_base_model, for_task, resolve
from labelloop.registry.params import parse_extra_params


def test_default_is_the_recommended_nano_model_of_installed_ultralytics() -> None:
    """ultralytics 8.4 ships YOLO26 model YAMLs: the default base model is yolo26n.pt."""
    import importlib.metadata

    major, minor = (int(x) for x in importlib.metadata.version("ultralytics-opencv-headless").split(".")[:2])
    assert (major, minor) >= (8, 4)
    assert default_base_model() == "yolo26n.pt"


@pytest.mark.parametrize(
    ("name", "task", "expected"),
    [
        ("yolo26n.pt", "segment", "yolo26n-seg.pt"),
        ("yolo11s.pt", "classify", "yolo11s-cls.pt"),
        ("yolo26n.pt", "detect", "yolo26n.pt"),
        ("yolo26n-seg.pt", "segment", "yolo26n-seg.pt"),
        ("yolov8n.yaml", "detect", "yolov8n.yaml"),
        ("yolov8n.yaml", "segment", "yolov8n-seg.yaml"),
        ("yolo11s.yaml", "obb", "yolo11s-obb.yaml"),
        ("yolov8n.yaml", "pose", "yolov8n-pose.yaml"),
        ("yolov8n.yaml", "classify", "yolov8n-cls.yaml"),
        ("/models/mine.pt", "segment", "/models/mine.pt"),
        ("configs/custom.yaml", "pose", "configs/custom.yaml"),
    ],
)
def test_asset_names_become_the_task_variant(name: str, task: str, expected: str) -> None:
    """A detection asset or model YAML becomes the task's variant; paths are used as given."""
    assert for_task(name, task) == expected


def test_offline_asset_trains_its_family_yaml_and_says_why(tmp_path: Path) -> None:
    """Offline and not on disk: the same family from its YAML, not pretrained, with a note."""
    base = resolve("auto", "pose", tmp_path, offline=True)
    assert (base.requested, base.weights, base.pretrained, base.source) == (
        "yolo26n.pt",
        "yolo26n-pose.yaml",
        False,
        "offline-yaml",
    )
    assert "offline" in base.note and "yolo26n-pose.pt" in base.note


def test_asset_on_disk_is_used_and_online_downloads_into_the_weights_dir(tmp_path: Path) -> None:
    """An asset already in labelloop's weights folder is loaded from there; online, a missing one
    is fetched by Ultralytics into that folder."""
    online = resolve("yolo11n.pt", "detect", tmp_path, offline=False)
    assert (online.weights, online.pretrained, online.source) == (str(tmp_path / "yolo11n.pt"), True, "download")
    (tmp_path / "yolo11n.pt").write_bytes(b"weights")
    on_disk = resolve("yolo11n.pt", "detect", tmp_path, offline=True)
    assert (on_disk.weights, on_disk.source) == (str(tmp_path / "yolo11n.pt"), "disk")


def test_model_yaml_trains_from_scratch(tmp_path: Path) -> None:
    """A model YAML name is trained from scratch, for the task's variant."""
    base = resolve("yolov8n.yaml", "segment", tmp_path, offline=True)
    assert (base.weights, base.pretrained, base.source) == ("yolov8n-seg.yaml", False, "yaml")


@pytest.mark.parametrize(
    "value",
    ["/tmp/payload.pt", "../models/x.pt", "https://example.com/yolo26n.pt", "evil.yaml", "yolo26n.pt/../x"],
)
def test_extra_params_never_name_a_file_or_url(value: str, tmp_path: Path) -> None:
    """From extra params only Ultralytics model names are accepted: paths and URLs are a 422."""
    with pytest.raises(ParamsError, match="base_model"):
        parse_extra_params({"base_model": value})
    with pytest.raises(ValueError):
        resolve(value, "detect", tmp_path, offline=True, from_operator=False)


def test_extra_params_accept_asset_names() -> None:
    """Asset and model YAML names pass validation."""
    assert parse_extra_params({"base_model": "yolo11s.pt"}).base_model == "yolo11s.pt"
    assert parse_extra_params({"base_model": "yolov8n.yaml"}).base_model == "yolov8n.yaml"
