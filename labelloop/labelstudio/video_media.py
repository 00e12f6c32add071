"""Fetch the videos tasks point at, through the same guarded path as images (``labelloop.labelstudio.media``).

``VideoCache`` is ``labelloop.labelstudio.media.ImageCache`` with another codec (``VideoCodec``): the
same sources (Label Studio uploads read from the mounted media folder or downloaded, Local Storage,
cloud URIs through Label Studio's presign endpoint, allowed hosts), the same guard rails (Label
Studio's token only to its media paths, addresses checked when connecting, redirects by hand, a
size limit enforced while streaming to a temp file and a time limit per download), but the file is
checked to be a video OpenCV decodes (not a picture) and kept as it is. Files:
``<cache_dir>/<task_id>-<sha1(url)[:16]>-v<CACHE_VERSION>.video``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelloop.labelstudio.media import CachedImage, ImageCache, MediaConfig, MediaError
from labelloop.labelstudio.media_store import Codec, Settled

if TYPE_CHECKING:
    from labelloop.settings import Settings

VIDEO_EXT = "video"


@dataclass(frozen=True)
class VideoInfo:
    """What OpenCV reads of a video file: frame size in pixels, frames per second as the container
    says, decodable frame count and duration in seconds (``frames / fps``)."""

    width: int
    height: int
    fps: float
    frames: int
    duration_s: float


def probe_video(path: Path) -> VideoInfo:
    """Open a video with OpenCV and read its size, frame rate and frame count.

    Raises:
        MediaError: OpenCV cannot open it, or it has no frame or no size.
    """
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise MediaError("not a video OpenCV can decode")
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()
    if width <= 0 or height <= 0 or frames <= 0:
        raise MediaError(f"video without frames or size ({width}x{height}, {frames} frames)")
    return VideoInfo(width, height, fps, frames, frames / fps if fps > 0 else 0.0)


def video_config(settings: Settings) -> MediaConfig:
    """The media configuration for videos: as for images, with the video size and time limits."""
    return replace(
        MediaConfig.from_settings(settings),
        max_bytes=settings.media_video_max_bytes,
        timeout_s=settings.media_video_timeout_s,
    )


class VideoCodec:
    """Videos in the cache: ``<key>.video``, a file OpenCV decodes, kept as fetched
    (``media_store.Codec``)."""

    def find(self, base: str) -> tuple[Path, int, int] | None:
        """The cached video ``<base>.video`` and its frame size; None when absent or no longer
        decodable."""
        path = Path(f"{base}.{VIDEO_EXT}")
        try:
            info = probe_video(path)
        except MediaError:
            return None
        return path, info.width, info.height

    def settle(self, raw: Path) -> Settled:
        """Keep a fetched video as it is; raises ``MediaError`` when OpenCV cannot read it."""
        info = probe_video(raw)
        return Settled(VIDEO_EXT, info.width, info.height)


class VideoCache(ImageCache):
    """Task videos fetched once into ``cache_dir`` (see the module docstring); ``get`` returns a
    ``CachedImage`` whose ``width``/``height`` are the video's frame size."""

    codec: Codec = VideoCodec()


def cached_video_fetch(
    stack: contextlib.ExitStack[Any], cache_dir: Path, config: MediaConfig
) -> Callable[[list[tuple[int, str]]], dict[int, CachedImage | MediaError]]:
    """``[(task_id, url)] -> {task_id: CachedImage or MediaError}`` through a ``VideoCache`` in
    ``cache_dir``, opened on first use and closed with ``stack``."""

    def fetch(items: list[tuple[int, str]]) -> dict[int, CachedImage | MediaError]:
        cache = stack.enter_context(VideoCache(cache_dir, config))
        stack.enter_context(cache.pinned())
        return dict(cache.get_many(items))

    return fetch
