"""Where a dataset build gets its task images: a ``Fetch`` callable, from the image cache or local files.

A fetch takes ``[(task_id, url)]`` and answers ``{task_id: ImageRef or the exception that makes the
image unusable}``; it never raises for one image. ``cached_fetch`` goes through
``labelloop.labelstudio.media.ImageCache`` (downloads, Label Studio's auth, EXIF orientation);
``local_images`` reads files already on disk (tests, benches, shared folders).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

if TYPE_CHECKING:
    from labelloop.labelstudio.media import MediaConfig


class ImageRef(Protocol):
    """A task image ready for the dataset (``labelloop.labelstudio.media.CachedImage`` is one).

    Attributes:
        path: the image file, EXIF orientation already applied.
        width, height: its size in pixels.
        downloaded: whether it was fetched for this build (False: from the cache).
    """

    @property
    def path(self) -> str | Path: ...

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def downloaded(self) -> bool: ...


Fetched = Mapping[int, "ImageRef | BaseException"]
Fetch = Callable[[list[tuple[int, str]]], Fetched]


@dataclass(frozen=True)
class LocalImage:
    """An upright image file that is already on disk (tests, benches, shared folders)."""

    path: str | Path
    width: int
    height: int
    downloaded: bool = False


def local_images(files: Mapping[int, Path]) -> Fetch:
    """A ``fetch`` for ``build_dataset`` that serves upright local files by task id.

    Returns:
        ``[(task_id, url)] -> {task_id: LocalImage or the exception reading it raised}``;
        a task id without a file gets a ``FileNotFoundError``.
    """

    def fetch(items: list[tuple[int, str]]) -> Fetched:
        out: dict[int, ImageRef | BaseException] = {}
        for task_id, _url in items:
            path = files.get(task_id)
            try:
                if path is None:
                    raise FileNotFoundError(f"no image for task {task_id}")
                with Image.open(path) as im:
                    out[task_id] = LocalImage(Path(path), im.width, im.height)
            except (OSError, ValueError) as exc:
                out[task_id] = exc
        return out

    return fetch


def cached_fetch(
    stack: contextlib.ExitStack[Any],
    cache_dir: Path,
    config: MediaConfig,
    on_done: Callable[[], None] | None = None,
) -> Fetch:
    """A ``fetch`` for ``build_dataset`` through the image cache in ``cache_dir``, opened on first use
    (a build that needs no new image opens none) and closed with ``stack``."""
    from labelloop.labelstudio.media import ImageCache

    def fetch(items: list[tuple[int, str]]) -> Fetched:
        cache = stack.enter_context(ImageCache(cache_dir, config))
        stack.enter_context(cache.pinned())
        return cache.get_many(items, on_done=on_done)

    return fetch
