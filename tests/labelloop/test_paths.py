"""``Settings.paths``: labelloop's folders, absolute, where they always were under the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labelloop.paths import Paths
from labelloop.settings import Settings


def test_paths_are_absolute_and_keep_the_cache_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative settings become absolute from the working directory; each folder keeps its place."""
    monkeypatch.chdir(tmp_path)
    paths = Settings(models_dir=Path("m"), cache_dir=Path("c")).paths
    cache = tmp_path / "c"
    assert paths == Paths(tmp_path / "m", cache)
    assert paths.dataset_dir(7) == cache / "datasets" / "7"
    assert (paths.images_dir, paths.videos_dir) == (cache / "images", cache / "videos")
    assert (paths.yolo_config_dir, paths.weights_dir) == (cache / "ultralytics", cache / "weights")
    assert all(os.path.isabs(p) for p in (paths.models_dir, paths.cache_dir, paths.dataset_dir(7)))
