"""``labelloop dataset build`` never writes a project's live training dataset unless told to with
``--live``: against a real Label Studio project, through the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import make_sample

pytestmark = pytest.mark.labelstudio

ROOT = Path(__file__).resolve().parents[2]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "dataset", "build", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )


def test_the_live_dataset_is_written_only_with_live(label_studio: tuple[str, str], tmp_path: Path) -> None:
    """Without a folder the command refuses (exit 2, saying --live) and writes nothing, the live folder given
    as OUT is refused too, a folder of one's own is written, and --live writes the live training dataset."""
    url, token = label_studio
    api = LabelStudioAPI(url, token)
    pid = api.create_project("cli-dataset-build")
    samples = [make_sample(300 + i, 160, 120) for i in range(4)]
    for task_id, sample in zip(api.import_images(pid, samples), samples, strict=True):
        api.annotate(task_id, sample.ls_result())
    env = {
        "LABEL_STUDIO_URL": url,
        "LABEL_STUDIO_API_KEY": token,
        "LABELLOOP_CACHE_DIR": str(tmp_path / "cache"),
        "LABELLOOP_MODELS_DIR": str(tmp_path / "models"),
    }
    live = tmp_path / "cache" / "datasets" / str(pid) / "yolo"

    refused = cli(env, str(pid))
    assert refused.returncode == 2 and "--live" in refused.stderr and "Traceback" not in refused.stderr
    refused = cli(env, str(pid), str(live))
    assert refused.returncode == 2 and "live training dataset" in refused.stderr, refused.stderr
    assert not live.exists()

    own = cli(env, str(pid), str(tmp_path / "mine"))
    assert own.returncode == 0, own.stderr
    assert (tmp_path / "mine" / "data.yaml").exists() and not live.exists()

    written = cli(env, str(pid), "--live")
    assert written.returncode == 0, written.stderr
    assert (live / "data.yaml").exists() and f"dataset (detect): {live}" in written.stdout
