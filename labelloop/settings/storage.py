"""Storage settings: the Redis labelloop uses, the model registry's and the cache's folders, and how
much of each is kept."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from labelloop.paths import Paths


class StorageFields(BaseModel):
    """Redis, the model registry and the image cache (``LABELLOOP_REDIS_URL``, ``LABELLOOP_MODELS_DIR``...).

    A field group of ``Settings``, never built alone.
    """

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the Celery broker, results and events.")
    models_dir: Path = Field(Path("var/models"), description="Model registry root: the source of truth for versions.")
    cache_dir: Path = Field(Path("var/cache"), description="Downloaded images and training run directories.")
    cache_max_bytes: int = Field(
        10 * 1024**3,
        ge=0,
        description="Size cap of the image cache (<cache_dir>/images, bytes); the least recently used images are "
        "removed above it (0: no cap). A target above the working set: images a running build holds or a dataset "
        "links are never removed, so set it above the datasets' total size.",
    )
    keep_versions: int = Field(
        10,
        ge=1,
        description="Model versions kept per project: the newest N, plus the served one and those the next N "
        "rollbacks serve; older versions (rejected ones included) are deleted after each publish.",
    )

    @property
    def paths(self) -> Paths:
        """The registry and cache folders, absolute (``Paths``)."""
        return Paths(Path(self.models_dir).absolute(), Path(self.cache_dir).absolute())
