"""labelloop's folders on disk: the model registry and the cache (``Settings.paths``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """labelloop's folders on disk (``Settings.paths``), both absolute: the model registry and the cache.

    Layout under ``cache_dir``: ``datasets/<project>`` (a project's dataset, updated in place),
    ``images`` and ``videos`` (media caches), ``ultralytics`` (Ultralytics' settings and fonts),
    ``weights`` (downloaded Ultralytics assets).
    """

    models_dir: Path
    cache_dir: Path

    def dataset_dir(self, project_id: int) -> Path:
        """Where a project's dataset is kept between builds (updated in place by each build)."""
        return self.cache_dir / "datasets" / str(int(project_id))

    @property
    def images_dir(self) -> Path:
        return self.cache_dir / "images"

    @property
    def videos_dir(self) -> Path:
        return self.cache_dir / "videos"

    @property
    def yolo_config_dir(self) -> Path:
        """Where Ultralytics keeps its settings and fonts for labelloop's processes."""
        return self.cache_dir / "ultralytics"

    @property
    def weights_dir(self) -> Path:
        return self.cache_dir / "weights"
