"""The model card (``labelloop.registry.model_card``) and the export's refusals (``labelloop.registry.model_export``),
against a real registry on disk and the real command line; no training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labelloop.manifest import Manifest
from labelloop.registry.model_card import model_card, score_threshold, serving_imgsz
from labelloop.registry.model_export import UnknownFormatError, downloads, missing_packages
from labelloop.registry.store import Registry
from tests.factories import publish_version, settings_env


def _registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "models")
    for _ in range(3):
        publish_version(
            registry,
            4,
            b"not a model",
            annotations={"1": "a", "2": "b", "3": "c"},
            names={"1": "disc", "0": "square", "2": "Traffic light"},
            train_args={"imgsz": 320},
            show_conf={"value": 0.4},
            metrics={"map50": 0.5},
        )
    return registry


@pytest.mark.parametrize(
    ("project", "setting", "own", "expected"),
    [
        (0.6, 0.5, 0.4, (0.6, "project show_conf")),
        (None, 0.5, 0.4, (0.5, "LABELLOOP_SHOW_CONF")),
        (None, None, 0.4, (0.4, "version show_conf")),
        (None, None, None, (0.25, "LABELLOOP_PREDICT_CONF")),
        (0.0, 0.5, 0.4, (0.0, "project show_conf")),
    ],
)
def test_score_threshold_follows_predicts_order(
    project: float | None, setting: float | None, own: float | None, expected: tuple[float, str]
) -> None:
    """The card's threshold is the one /predict applies: project param, setting, the version's own, predict_conf."""
    record = Manifest.model_validate({"show_conf": {"value": own}} if own is not None else {})
    assert score_threshold(record, project, setting, 0.25) == expected


def test_serving_imgsz_prefers_the_override_then_the_trained_size() -> None:
    """imgsz is the project's or LABELLOOP_IMGSZ, else the trained one, else Ultralytics' 640."""
    trained = Manifest.model_validate({"train_args": {"imgsz": 320}})
    assert serving_imgsz(trained, None) == (320, 320)
    assert serving_imgsz(trained, 480) == (480, 320)
    assert serving_imgsz(Manifest(), None) == (640, None)


def test_card_lists_classes_in_id_order_and_the_lineage_as_far_as_it_exists(tmp_path: Path) -> None:
    """Classes come in id order with their Label Studio labels; the lineage walks the parents and
    stops at one retention removed; the annotations are counted from annotations.json."""
    registry = _registry(tmp_path)
    registry.set_current(4, "v1")
    registry.set_current(4, "v3")
    v3 = registry.get(4, "v3")
    card = model_card(registry, v3, "onnx", "weights.onnx", predict_conf=0.25)
    assert card["classes"] == [
        {"id": 0, "label": "square"},
        {"id": 1, "label": "disc"},
        {"id": 2, "label": "Traffic light"},
    ]
    assert (card["imgsz"], card["score_threshold"], card["annotations"]) == (320, 0.4, 3)
    assert card["lineage"]["ancestors"] == ["v2", "v1"] and card["label_config_sha1"] is None
    (registry.get(4, "v1").path / "manifest.json").unlink()
    assert model_card(registry, v3, "pt", "weights.pt")["lineage"]["ancestors"] == ["v2", "v1"]
    import shutil

    shutil.rmtree(registry.get(4, "v2").path)
    assert model_card(registry, v3, "pt", "weights.pt")["lineage"]["ancestors"] == ["v2"]


def test_unknown_format_is_refused() -> None:
    """A format labelloop does not offer is a 4xx error naming the ones it does."""
    with pytest.raises(UnknownFormatError, match="one of pt, onnx, torchscript, openvino"):
        missing_packages("tflite")


def test_pt_export_writes_the_card_next_to_a_copy_and_lists_it_for_download(tmp_path: Path) -> None:
    """``models export P --format pt`` of the served version copies its weights with the card into
    exports/pt and --out; the download list holds them; a second run says cached."""
    registry = _registry(tmp_path)
    env = {**os.environ, **settings_env(tmp_path)}
    cmd = [sys.executable, "-m", "service.cli", "models", "export", "4", "--out", str(tmp_path / "out")]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "project 4 v3 as pt (exported" in first.stdout
    assert (tmp_path / "out/weights.pt").read_bytes() == b"not a model"
    assert set(downloads(registry.get(4, "v3"))) == {"weights.pt", "pt/weights.pt", "pt/model_card.json"}
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "(cached)" in again.stdout


def test_a_format_whose_package_is_missing_is_refused_naming_it(tmp_path: Path) -> None:
    """With onnxslim not importable, ``models export --format onnx`` exits 1 naming onnxslim and the
    pip command, starts no export and installs nothing (YOLO_AUTOINSTALL stays unused)."""
    registry = _registry(tmp_path)
    block = tmp_path / "block"
    block.mkdir()
    # A fault injected for real: the package cannot be imported in the command's process.
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['onnxslim'] = None\n")
    env = {**os.environ, **settings_env(tmp_path, PYTHONPATH=str(block))}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "export", "4", "v2", "--format", "onnx"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 1
    assert "exporting to onnx needs onnxslim, not installed: pip install onnxslim" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (registry.get(4, "v2").path / "exports" / "onnx").exists()
    assert not any((registry.get(4, "v2").path / "exports").glob(".tmp-*"))


def test_export_without_a_served_version_or_of_an_unknown_one_fails_clearly(tmp_path: Path) -> None:
    """No served version and no version named, or a version that does not exist: exit 1, one line."""
    env = {**os.environ, **settings_env(tmp_path)}
    cli = [sys.executable, "-m", "service.cli", "models", "export"]
    none = subprocess.run([*cli, "9"], env=env, capture_output=True, text=True)
    assert none.returncode == 1 and "project 9 serves no version" in none.stderr
    _registry(tmp_path)
    unknown = subprocess.run([*cli, "4", "v8"], env=env, capture_output=True, text=True)
    assert unknown.returncode == 1 and "project 4 has no version v8" in unknown.stderr
    bad = subprocess.run([*cli, "4", "--format", "tflite"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'tflite'" in bad.stderr
