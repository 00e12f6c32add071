"""The image cache's cap never breaks a build: what a running build holds is pinned, images linked
into the live dataset are never evicted nor downloaded again, and two processes evicting at once
never delete a pinned file. Against a real HTTP image server and real processes."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from labelloop.dataset.images import build_dataset, cached_fetch
from labelloop.dev.synthetic import LABEL_CONFIG, make_sample
from labelloop.labelstudio.media import ImageCache, MediaConfig
from labelloop.task_types.labels import parse_detection_config

SPEC = parse_detection_config(LABEL_CONFIG)


class CountingServer:
    """The ``image_server``'s files served again by a server that counts the requests per path."""

    def __init__(self, root: Path) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                super().do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def served(image_server: tuple[str, Path]) -> Iterator[CountingServer]:
    server = CountingServer(image_server[1])
    yield server
    server.httpd.shutdown()


def tasks_for(server: CountingServer, n: int = 12, first_id: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "id": first_id + i,
            "data": {"image": f"{server.url}/img{i}.png"},
            "annotations": [
                {"id": first_id + i, "result": make_sample(i, 160, 120).ls_result(), "was_cancelled": False}
            ],
        }
        for i in range(n)
    ]


def config(cap: int) -> MediaConfig:
    return MediaConfig(None, None, allow_hosts=("127.0.0.1",), cache_max_bytes=cap, threads=4)


def image_size(root: Path) -> int:
    return max(p.stat().st_size for p in root.glob("img*.png"))


def build(server: CountingServer, cache_dir: Path, out: Path, cap: int, tasks: list[dict[str, Any]]) -> Any:
    with contextlib.ExitStack() as stack:
        return build_dataset(tasks, SPEC, out, cached_fetch(stack, cache_dir, config(cap)), 0.25, 2)


def test_a_build_whose_new_images_exceed_the_cap_succeeds(
    served: CountingServer, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """A build downloading 12 images into a cache capped at 3 images' size links them all into the dataset
    (eviction runs during the build but never removes what the build holds)."""
    cap = 3 * image_size(image_server[1])
    built = build(served, tmp_path / "images", tmp_path / "ds", cap, tasks_for(served))
    assert built.report.images_downloaded == 12 and built.report.skipped == []
    images = sorted((tmp_path / "ds" / "images").glob("*/*.png"))
    assert len(images) == 12
    for path in images:
        with Image.open(path) as im:
            assert im.size == (160, 120)
    assert not list((tmp_path / "images" / ".pins").iterdir())  # the build's pins are gone with it


def test_a_rebuild_after_eviction_does_not_download_the_dataset_images_again(
    served: CountingServer, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """After pre-annotation filled a capped cache with other tasks' images (evicting), and even after the cache
    folder was emptied by hand, a rebuild with one new task downloads only that task's image: the dataset's own
    links are reused."""
    cap = 4 * image_size(image_server[1])
    tasks = tasks_for(served, 11)
    build(served, tmp_path / "images", tmp_path / "ds", 0, tasks)
    assert len(served.hits) == 11
    with ImageCache(tmp_path / "images", config(cap)) as predict:  # pre-annotation of other tasks
        for i in range(12):
            predict.get(500 + i, f"{served.url}/img{i}.png")
    assert len(served.hits) == 23

    rebuilt = build(served, tmp_path / "images", tmp_path / "ds", cap, tasks_for(served, 12))
    assert rebuilt.report.images_downloaded == 1 and len(served.hits) == 24, served.hits[23:]

    for path in (tmp_path / "images").glob("*-v*.*"):  # an operator empties the cache folder
        path.unlink()
    again = build(served, tmp_path / "images", tmp_path / "ds", cap, tasks_for(served, 12)[::-1])
    assert again.report.images_downloaded == 0 and len(served.hits) == 24, served.hits[24:]
    assert again.report.fingerprint == rebuilt.report.fingerprint


PREDICT_LOOP = """
import sys, time
from pathlib import Path
from labelloop.labelstudio.media import ImageCache, MediaConfig
cache_dir, url, cap, until = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
config = MediaConfig(None, None, allow_hosts=("127.0.0.1",), cache_max_bytes=cap)
rounds = 0
with ImageCache(cache_dir, config) as cache:
    while not until.exists():
        for i in range(12):
            cache.get(1000 + rounds * 12 + i, f"{url}/img{i}.png")
            cache.evict()
        rounds += 1
        (cache_dir.parent / "rounds").write_text(str(rounds))
"""


def test_two_processes_evicting_at_once_never_delete_a_pinned_file(
    served: CountingServer, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """While a predict-style process stores and evicts in a loop under a cap of 2 images, a build pinning
    its images (and evicting too) still finds every one of them whole once the other process has run rounds."""
    cap = 2 * image_size(image_server[1])
    cache_dir, stop = tmp_path / "images", tmp_path / "stop"
    cache_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    other = subprocess.Popen(
        [sys.executable, "-c", PREDICT_LOOP, str(cache_dir), served.url, str(cap), str(stop)], env=env
    )
    try:
        with ImageCache(cache_dir, config(cap)) as cache, cache.pinned():
            got = cache.get_many([(1 + i, f"{served.url}/img{i}.png") for i in range(12)])
            start = time.monotonic()
            while not (tmp_path / "rounds").exists() or int((tmp_path / "rounds").read_text() or 0) < 3:
                assert other.poll() is None and time.monotonic() - start < 120
                cache.evict()
                time.sleep(0.05)
            for task_id, image in got.items():
                assert not isinstance(image, Exception), image
                with Image.open(image.path) as im:
                    im.load()
                    assert im.size == (160, 120), task_id
        assert not list((cache_dir / ".pins").iterdir())
    finally:
        stop.touch()
        other.wait(60)
    assert other.returncode == 0


def test_a_kept_image_moves_to_the_other_split_from_the_datasets_own_link(
    served: CountingServer, tmp_path: Path
) -> None:
    """With the cache emptied, a rebuild that moves images between train and val (a new val fraction) links
    them from the dataset's own files, downloads nothing and leaves no stale image behind."""
    tasks = tasks_for(served)
    with contextlib.ExitStack() as stack:
        build_dataset(tasks, SPEC, tmp_path / "ds", cached_fetch(stack, tmp_path / "images", config(0)), 0.2, 2)
    before = {p.name: p.parent.name for p in (tmp_path / "ds" / "images").glob("*/*.png")}
    for path in (tmp_path / "images").glob("*-v*.*"):
        path.unlink()
    with contextlib.ExitStack() as stack:
        moved = build_dataset(tasks, SPEC, tmp_path / "ds", cached_fetch(stack, tmp_path / "images", config(0)), 0.6, 2)
    after = {p.name: p.parent.name for p in (tmp_path / "ds" / "images").glob("*/*.png")}
    assert moved.report.images_downloaded == 0 and len(served.hits) == 12
    assert sorted(after) == sorted(before) and after != before
    for path in (tmp_path / "ds" / "images").glob("*/*.png"):
        with Image.open(path) as im:
            assert im.size == (160, 120)


PIN_AND_WAIT = """
import sys, time
from pathlib import Path
from labelloop.labelstudio.media import ImageCache, MediaConfig
cache_dir, url = Path(sys.argv[1]), sys.argv[2]
with ImageCache(cache_dir, MediaConfig(None, None, allow_hosts=("127.0.0.1",))) as cache, cache.pinned():
    print(cache.get(1, url).path, flush=True)
    time.sleep(600)
"""


def test_the_pins_of_a_killed_build_are_removed_when_a_cache_is_next_opened(
    served: CountingServer, tmp_path: Path
) -> None:
    """A build process SIGKILLed while it holds pins leaves its pin folder; the next cache opened on the host
    removes it (its process id is gone), and leaves a live process's pins alone."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-c", PIN_AND_WAIT, str(tmp_path / "images"), f"{served.url}/img0.png"]
    killed = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    alive = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout is not None and alive.stdout is not None
        killed_pin, alive_pin = Path(killed.stdout.readline().strip()), Path(alive.stdout.readline().strip())
        assert killed_pin.exists() and alive_pin.exists() and killed_pin.parent != alive_pin.parent
        killed.kill()
        killed.wait(30)
        with ImageCache(tmp_path / "images", config(0)):
            assert not killed_pin.parent.exists()
            assert alive_pin.exists()
    finally:
        for proc in (killed, alive):
            proc.kill()
            proc.wait(30)
