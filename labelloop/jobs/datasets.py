"""The dataset room's collaborators made from ``Settings`` (a composition root): the Label Studio
connection, the folders, the media configurations and the values a project's dataset build
(``labelloop.dataset.images.DatasetSource``) and its pseudo-labels (``labelloop.dataset.pseudo.PseudoSource``)
read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from labelloop.dataset.images import BuildResult, DatasetSource
from labelloop.dataset.images import build_project_dataset as build_from_source
from labelloop.dataset.pseudo import PseudoSource
from labelloop.events.changes import ChangeLog
from labelloop.labelstudio.client import Connection
from labelloop.labelstudio.media_types import MediaConfig
from labelloop.labelstudio.video_media import video_config
from labelloop.settings import Settings


def connection(settings: Settings) -> Connection:
    """Label Studio's URL and token (``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``)."""
    return Connection(settings.label_studio_url, settings.api_key)


def dataset_source(settings: Settings) -> DatasetSource:
    """What ``labelloop.dataset.images.build_project_dataset`` reads, from the environment's settings."""
    return DatasetSource(
        label_studio=connection(settings),
        paths=settings.paths,
        media=MediaConfig.from_settings(settings),
        video_media=video_config(settings),
        defaults=settings,
        verify_s=settings.dataset_verify_s,
        min_val_images=settings.min_val_images,
        video_frame_stride=settings.video_frame_stride,
    )


def pseudo_source(settings: Settings) -> PseudoSource:
    """What ``labelloop.dataset.pseudo.prepare`` reads (``LABELLOOP_PSEUDO_*``, ``LABELLOOP_PREDICT_CONF``)."""
    return PseudoSource(
        label_studio=connection(settings),
        images_dir=settings.paths.images_dir,
        media=MediaConfig.from_settings(settings),
        conf=settings.pseudo_conf,
        low_conf=settings.predict_conf,
        ratio=settings.pseudo_ratio,
        pool=settings.pseudo_pool,
    )


def build_project_dataset(
    settings: Settings,
    project_id: int,
    out_dir: Path | None = None,
    on_image: Callable[[], None] | None = None,
    changes: ChangeLog | None = None,
) -> BuildResult:
    """``labelloop.dataset.images.build_project_dataset`` with the source of ``settings`` (arguments,
    result and errors there; default ``out_dir``: ``<cache_dir>/datasets/<project>/yolo``)."""
    return build_from_source(dataset_source(settings), project_id, out_dir, on_image, changes)
