"""Dataset build time on a generated 1,000-task detection project in a real Label Studio:
labelloop's cold build and its rebuild after one new annotation vs label-studio-sdk's YOLO
converter with image download, in one run.

    .venv/bin/python -m bench.dataset [--tasks 1000] [--keep] [--reuse-ls URL TOKEN PROJECT]

Setup: a Label Studio 1.23.2 (its own virtual environment, SQLite, temporary data dir, free
loopback port) with a RectangleLabels project (``labelloop.dev.synthetic.LABEL_CONFIG``); ``--tasks``
generated 320x240 JPEG photos (smooth colour field, sensor noise, 1-3 shapes; about 20 KB each)
uploaded through ``POST /api/projects/{id}/import`` (100 files per request) and every task
annotated with its true boxes (``annotations.create``, 4 threads). ``--keep`` leaves that Label
Studio running and prints the ``--reuse-ls`` arguments that skip the generation next time.

Peers, each starting from nothing on disk:
  (c) label-studio-sdk, as its docs show a user: ``projects.exports.download_sync`` (JSON), then
      ``Converter(config, project_dir, download_resources=True, hostname, access_token)
      .convert_to_yolo(export.json, out, is_dir=False)``, which downloads every image;
  (a) labelloop cold: ``labelloop.jobs.datasets.build_project_dataset`` with an empty cache dir;
  (b) labelloop rebuild: one new task imported and annotated through the API, then the same
      call again with the same cache dir (one image to download). labelloop's receiver runs
      (with its own Redis) as the project's webhook, as it does once added as the ML backend,
      so the rebuild applies the recorded webhook (``labelloop.events.changes``) instead of asking
      Label Studio;
  (a') and (b') the same with Label Studio's media folder mounted (``LABEL_STUDIO_MEDIA_DIR``,
      uploads read from disk instead of downloaded), with a fresh cache dir.
Each is timed end to end around the call. Targets: (a) >= 5x faster than (c), (b) >= 50x
faster than (a). For reference (no target): the SDK converter copying uploads from the same
media folder (``project_dir``), and Label Studio's own server-side ``YOLO_WITH_IMAGES`` export,
one zip with every image read from the server's disk, downloaded and unzipped.
Also measured: Label Studio's raw ``/data/upload/...`` GET latency, sequential (new connection
per request as the SDK does, and keep-alive) and with 2, 4 and 8 threads.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.stack import LABEL_STUDIO_VERSION, Stack, free_port, label_studio_binary
from labelloop.dev.synthetic import LABEL_CONFIG, Sample, draw_shapes

ROOT = Path(__file__).resolve().parent.parent
LS_USER = "bench@labelloop.local"
LS_PASSWORD = "labelloop-bench"
LS_TOKEN = "be7c000000000000000000000000000000000001"
IMPORT_BATCH = 100
ANNOTATE_THREADS = 4


def photo_sample(seed: int, width: int = 320, height: int = 240, quality: int = 90) -> Sample:
    """A small photo-like JPEG (smooth colour field, sensor noise, 1-3 shapes) with its boxes.

    ``labelloop.dev.synthetic.make_sample`` draws uniform noise into a PNG (190 KB at 320x240, 0.17 s
    each in pure Python): neither the size nor the cost of a photo. Same shapes and labels here.
    """
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    coarse = nrng.integers(40, 220, (3, 4, 3), dtype=np.uint8)
    field = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(field, dtype=np.int16) + nrng.normal(0, 8, (height, width, 3)).astype(np.int16)
    im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    boxes = draw_shapes(im, rng)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Sample(buf.getvalue(), width, height, boxes)


def sample_name(seed: int) -> str:
    return f"img{seed:05d}.jpg"


# Label Studio project --------------------------------------------------------------------


def import_files(api: LabelStudioAPI, project_id: int, files: list[tuple[str, bytes]]) -> None:
    """Upload images as tasks in one ``POST /api/projects/{id}/import`` (one form field per file)."""
    api.upload(project_id, [(name, data, "image/jpeg") for name, data in files])


def list_tasks(api: LabelStudioAPI, project_id: int) -> list[dict[str, Any]]:
    """Every task of the project: id, image URL, upload name and number of annotations."""
    tasks: list[dict[str, Any]] = []
    pager: Any = api.sdk.tasks.list(project=project_id, page_size=500)
    for task in pager:
        image = str(task.data["image"])
        name = image.rsplit("/", 1)[-1].split("-", 1)[-1]  # /data/upload/<p>/<uuid8>-<name>
        tasks.append({"id": int(task.id), "image": image, "name": name, "annotations": task.total_annotations or 0})
    return sorted(tasks, key=lambda t: t["id"])


def generate_project(api: LabelStudioAPI, n: int, width: int, height: int) -> tuple[int, dict[str, float]]:
    """A detection project of ``n`` generated, fully annotated tasks; returns (project id, seconds)."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    project_id = api.create_project(f"bench dataset {n} tasks {time.strftime('%H:%M:%S')}", LABEL_CONFIG)
    samples: dict[str, Sample] = {}
    t_gen = 0.0
    t1 = time.perf_counter()
    for start in range(0, n, IMPORT_BATCH):
        g = time.perf_counter()
        batch = {sample_name(s): photo_sample(s, width, height) for s in range(start, min(n, start + IMPORT_BATCH))}
        t_gen += time.perf_counter() - g
        samples.update(batch)
        import_files(api, project_id, [(name, s.png) for name, s in batch.items()])
        print(f"  imported {min(n, start + IMPORT_BATCH)}/{n}", flush=True)
    seconds["images (generate)"] = t_gen
    seconds["import (upload)"] = time.perf_counter() - t1 - t_gen
    t1 = time.perf_counter()
    tasks = list_tasks(api, project_id)
    if len(tasks) != n:
        raise RuntimeError(f"expected {n} tasks after import, Label Studio has {len(tasks)}")
    seconds["list tasks"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    with ThreadPoolExecutor(ANNOTATE_THREADS) as pool:
        list(pool.map(lambda t: api.annotate(t["id"], samples[t["name"]].ls_result()), tasks))
    seconds[f"annotate ({ANNOTATE_THREADS} threads)"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    return project_id, seconds


def add_annotated_task(api: LabelStudioAPI, project_id: int, seed: int, width: int, height: int) -> int:
    """Import one new image and annotate it: the "one new annotation" a rebuild has to pick up."""
    before = {t["id"] for t in list_tasks(api, project_id)}
    sample = photo_sample(seed, width, height)
    import_files(api, project_id, [(sample_name(seed), sample.png)])
    new = [t for t in list_tasks(api, project_id) if t["id"] not in before]
    if len(new) != 1:
        raise RuntimeError(f"expected one new task, found {len(new)}")
    api.annotate(new[0]["id"], sample.ls_result())
    return int(new[0]["id"])


# Label Studio's raw image GET latency -----------------------------------------------------


def _stats(latencies: list[float], wall: float) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {"n": len(latencies), "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "per_s": len(latencies) / wall}


def image_get_latency(
    url: str, token: str, paths: list[str], threads: tuple[int, ...] = (2, 4, 8)
) -> dict[str, dict[str, float]]:
    """GET ``/data/upload/...`` images from Label Studio: new connection per request (sequential),
    keep-alive (sequential) and keep-alive with each number of ``threads``."""
    headers = {"Authorization": f"Token {token}"}
    out: dict[str, dict[str, float]] = {}

    def timed(get: Callable[[str], httpx.Response], path: str) -> float:
        t = time.perf_counter()
        r = get(url + path)
        r.raise_for_status()
        return time.perf_counter() - t

    t0 = time.perf_counter()
    lat = [timed(lambda u: httpx.get(u, headers=headers, timeout=30), p) for p in paths]
    out["sequential, new connection each"] = _stats(lat, time.perf_counter() - t0)
    most = max(threads, default=1)
    limits = httpx.Limits(max_connections=most, max_keepalive_connections=most)
    with httpx.Client(headers=headers, timeout=30, limits=limits) as client:
        t0 = time.perf_counter()
        lat = [timed(client.get, p) for p in paths]
        out["sequential, keep-alive"] = _stats(lat, time.perf_counter() - t0)
        for n in threads:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                lat = list(pool.map(lambda p: timed(client.get, p), paths))
            out[f"{n} threads, keep-alive"] = _stats(lat, time.perf_counter() - t0)
    return out


# Peers ------------------------------------------------------------------------------------


@contextmanager
def count_sdk_downloads() -> Iterator[dict[str, float]]:
    """Count the SDK's media GETs and the seconds spent in them (wraps its ``http_get``; the
    requests themselves are unchanged)."""
    from label_studio_sdk._extensions.label_studio_tools.core.utils import io as sdk_io

    stats = {"gets": 0.0, "seconds": 0.0, "errors": 0.0}
    original = sdk_io.http_get

    def http_get(url: str, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            r = original(url, **kwargs)
            if r.status_code >= 400:
                stats["errors"] += 1
            return r
        finally:
            stats["gets"] += 1
            stats["seconds"] += time.perf_counter() - t

    sdk_io.http_get = http_get
    try:
        yield stats
    finally:
        sdk_io.http_get = original


def run_sdk_converter(
    url: str, token: str, project_id: int, work: Path, media_dir: Path | None = None
) -> dict[str, Any]:
    """(c) label-studio-sdk: export JSON, then ``Converter.convert_to_yolo`` downloading images;
    with ``media_dir`` (Label Studio's media folder) the converter copies uploads from its
    ``upload/`` folder instead (reference row, like-for-like with labelloop's mounted builds)."""
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.converter import Converter

    work.mkdir(parents=True)
    export = work / "export.json"
    out = work / "yolo"
    t0 = time.perf_counter()
    ls = LabelStudio(base_url=url, api_key=token)
    config = ls.projects.get(id=project_id).label_config
    with export.open("wb") as f:
        for chunk in ls.projects.exports.download_sync(project_id, export_type="JSON"):
            f.write(chunk)
    t_export = time.perf_counter() - t0
    # project_dir: an empty folder, so the converter cannot copy uploads from a local Label Studio
    # data dir and really downloads each image from the server.
    converter = Converter(
        config=config,
        project_dir=str(media_dir or work / "project"),
        download_resources=True,
        hostname=url,
        access_token=token,
    )
    with count_sdk_downloads() as gets:
        t1 = time.perf_counter()
        converter.convert_to_yolo(input_data=str(export), output_dir=str(out), is_dir=False)
        t_convert = time.perf_counter() - t1
    total = time.perf_counter() - t0
    images = [p for p in (out / "images").iterdir() if p.is_file()]
    labels = list((out / "labels").glob("*.txt"))
    return {
        "total": total,
        "seconds": {"export": t_export, "convert": t_convert},
        "images": len(images),
        "labels": len(labels),
        "downloaded": len(images),
        "cached": 0,
        "gets": gets,
    }


def run_ls_zip_export(url: str, token: str, project_id: int, work: Path) -> dict[str, Any]:
    """Reference: Label Studio's own server-side ``YOLO_WITH_IMAGES`` export, one zip with every
    image read from the server's disk (Community edition's synchronous export), then unzipped."""
    work.mkdir(parents=True)
    archive = work / "export.zip"
    t0 = time.perf_counter()
    with (
        httpx.stream(
            "GET",
            f"{url}/api/projects/{project_id}/export",
            params={"exportType": "YOLO_WITH_IMAGES"},
            headers={"Authorization": f"Token {token}"},
            timeout=600,
        ) as resp,
        archive.open("wb") as f,
    ):
        resp.raise_for_status()
        for chunk in resp.iter_bytes(1 << 20):
            f.write(chunk)
    t_export = time.perf_counter() - t0
    t1 = time.perf_counter()
    with zipfile.ZipFile(archive) as z:
        z.extractall(work / "yolo")
    t_unzip = time.perf_counter() - t1
    images = [p for p in (work / "yolo" / "images").iterdir() if p.is_file()]
    return {
        "total": time.perf_counter() - t0,
        "seconds": {"export (server zip)": t_export, "unzip": t_unzip},
        "images": len(images),
        "labels": len(list((work / "yolo" / "labels").glob("*.txt"))),
        "downloaded": len(images),
        "cached": 0,
        "MB": archive.stat().st_size / 1e6,
    }


def count_dataset(data_yaml: Path) -> dict[str, int]:
    """Image and label files next to a YOLO data.yaml (``images/<split>``, ``labels/<split>``)."""
    import yaml

    spec = yaml.safe_load(data_yaml.read_text())
    base = Path(spec.get("path") or data_yaml.parent)
    if not base.is_absolute():
        base = data_yaml.parent / base
    counts: dict[str, int] = {}
    for split in ("train", "val"):
        images = base / str(spec[split])
        labels = Path(str(images).replace(f"{os.sep}images", f"{os.sep}labels", 1))
        counts[f"{split}_images"] = sum(1 for p in images.iterdir() if p.is_file()) if images.is_dir() else 0
        counts[f"{split}_labels"] = len(list(labels.glob("*.txt"))) if labels.is_dir() else 0
    return counts


def labelloop_builder() -> Callable[..., Any]:
    """``labelloop.jobs.datasets.build_project_dataset``, or SystemExit with what is missing."""
    try:
        from labelloop.jobs.datasets import build_project_dataset  # type: ignore[attr-defined,unused-ignore]
    except ImportError as e:
        raise LookupError(
            f"labelloop's builder is not available: {e}. bench/dataset expects "
            "labelloop.jobs.datasets.build_project_dataset(settings, project_id, out_dir=None) -> BuildResult "
            "(.report: DatasetReport with seconds, images_downloaded, images_cached, images; .data: data.yaml)"
        ) from e
    return build_project_dataset  # type: ignore[no-any-return,unused-ignore]


def run_labelloop(build: Callable[..., Any], settings: Any, project_id: int, changes: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = build(settings, project_id, changes=changes)
    total = time.perf_counter() - t0
    report = result.report
    data = Path(result.data)
    return {
        "total": total,
        "seconds": dict(getattr(report, "seconds", {}) or {}),
        "images": sum(dict(getattr(report, "images", {}) or {}).values()),
        "downloaded": getattr(report, "images_downloaded", None),
        "cached": getattr(report, "images_cached", None),
        "files": count_dataset(data),
        "data": str(data),
        "sync": dict(getattr(report, "sync", {}) or {}),
    }


# Main -------------------------------------------------------------------------------------


def fmt_seconds(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--keep", action="store_true", help="leave Label Studio running and its data in place")
    parser.add_argument(
        "--reuse-ls",
        nargs=3,
        metavar=("URL", "TOKEN", "PROJECT"),
        help="use a project generated by an earlier --keep run instead of generating one",
    )
    parser.add_argument("--latency-images", type=int, default=200, help="images for the raw GET latency probe")
    parser.add_argument("--latency-threads", default="2,4,8", help="thread counts of the raw GET latency probe")
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench-dataset")
    parser.add_argument(
        "--media-dir", type=Path, help="with --reuse-ls: that Label Studio's media folder (<data dir>/media)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("label_studio_sdk", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    work = args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    stack: Stack | None = None
    media_dir: Path | None = args.media_dir
    gen_seconds: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    try:
        if args.reuse_ls:
            url, token, project = args.reuse_ls
            project_id = int(project)
            api = LabelStudioAPI(url, token)
            print(f"reusing Label Studio {url}, project {project_id}")
        else:
            venv = Path(
                os.environ.get("LABELLOOP_LS_VENV")
                or Path.home() / ".cache" / "labelloop" / f"label-studio-{LABEL_STUDIO_VERSION}"
            )
            ls_dir = run_dir / "label-studio"
            stack = Stack(ls_dir, {})
            t0 = time.perf_counter()
            url = stack.start_label_studio(
                label_studio_binary(venv), free_port(), ls_dir / "data", LS_USER, LS_PASSWORD, LS_TOKEN
            )
            token = LS_TOKEN
            media_dir = ls_dir / "data" / "media"
            print(f"Label Studio {LABEL_STUDIO_VERSION} on {url} (started in {time.perf_counter() - t0:.1f} s)")
            api = LabelStudioAPI(url, token)
            print(f"generating {args.tasks} tasks ({args.width}x{args.height} JPEG q90) ...", flush=True)
            project_id, gen_seconds = generate_project(api, args.tasks, args.width, args.height)
            print(f"generation: {fmt_seconds(gen_seconds)} s")
            if args.keep:
                pid = stack.procs["label-studio"].pid
                print(
                    f"--keep: Label Studio (pid {pid}) stays up; re-run with --reuse-ls {url} {token} {project_id} "
                    f"--media-dir {media_dir}"
                )
        tasks = list_tasks(api, project_id)
        annotated = sum(1 for t in tasks if t["annotations"])
        image_bytes = 0
        probe = [t["image"] for t in tasks[: args.latency_images]]
        if probe:
            image_bytes = len(httpx.get(url + probe[0], headers={"Authorization": f"Token {token}"}).content)
        print(f"project {project_id}: {len(tasks)} tasks, {annotated} annotated; first image {image_bytes} bytes")

        print(f"Label Studio image GETs ({len(probe)} images) ...", flush=True)
        threads = tuple(int(n) for n in args.latency_threads.split(",") if n.strip())
        latency = image_get_latency(url, token, probe, threads)

        print("(c) label-studio-sdk converter ...", flush=True)
        results["SDK converter"] = run_sdk_converter(url, token, project_id, run_dir / "sdk")

        if media_dir is not None:
            print("reference: label-studio-sdk converter copying uploads from the media folder ...", flush=True)
            results["SDK converter, mounted (ref)"] = run_sdk_converter(
                url, token, project_id, run_dir / "sdk-mounted", media_dir
            )
        print("reference: Label Studio's server-side YOLO_WITH_IMAGES export ...", flush=True)
        results["LS zip export (ref)"] = run_ls_zip_export(url, token, project_id, run_dir / "ls-zip")

        from labelloop.events.changes import ChangeLog
        from labelloop.settings import Settings

        # labelloop's receiver records the project's webhooks (as it does once added as the ML
        # backend), so rebuilds can apply them instead of asking Label Studio.
        stack = stack or Stack(run_dir / "stack", {})
        redis_url = stack.start_redis(free_port(), run_dir / "redis")
        stack.env.update(LABELLOOP_REDIS_URL=redis_url, LABELLOOP_MODELS_DIR=str(run_dir / "receiver-models"))
        receiver = stack.start_receiver(free_port())
        hook: Any = api.sdk.webhooks.create(
            project=project_id, url=receiver + "/webhook", send_payload=True, send_for_all_actions=True
        )
        changes = ChangeLog.from_url(redis_url)
        settings = Settings(
            label_studio_url=url,
            label_studio_api_key=token,
            redis_url=redis_url,
            cache_dir=run_dir / "labelloop" / "cache",
            models_dir=run_dir / "labelloop" / "models",
        )
        try:
            build = labelloop_builder()
        except LookupError as e:
            failures["labelloop"] = str(e)
        else:
            try:
                print("(a) labelloop cold ...", flush=True)
                results["labelloop cold"] = run_labelloop(build, settings, project_id, changes)
                new_task = add_annotated_task(api, project_id, 10_000_000 + len(tasks), args.width, args.height)
                print(f"(b) labelloop rebuild after annotating new task {new_task} ...", flush=True)
                results["labelloop rebuild"] = run_labelloop(build, settings, project_id, changes)
                if media_dir is not None:
                    mounted = settings.model_copy(
                        update={
                            "cache_dir": run_dir / "labelloop-mounted" / "cache",
                            "models_dir": run_dir / "labelloop-mounted" / "models",
                            "label_studio_media_dir": media_dir,
                        }
                    )
                    print("(a') labelloop cold, media folder mounted ...", flush=True)
                    results["labelloop cold, mounted"] = run_labelloop(build, mounted, project_id, changes)
                    new_task = add_annotated_task(api, project_id, 20_000_000 + len(tasks), args.width, args.height)
                    print(f"(b') labelloop rebuild, media folder mounted, new task {new_task} ...", flush=True)
                    results["labelloop rebuild, mounted"] = run_labelloop(build, mounted, project_id, changes)
            except Exception as e:  # the SDK's figures are still worth printing
                traceback.print_exc()
                failures["labelloop"] = f"build_project_dataset failed: {type(e).__name__}: {e}"
            finally:
                api.sdk.webhooks.delete(id=hook.id)
    finally:
        if stack is not None:
            for name in ("receiver", "redis"):
                if name in stack.procs:
                    stack.stop(name)
            if not args.keep:
                stack.stop_all()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    print(
        f"\ndataset benchmark: {len(tasks)} tasks ({annotated} annotated), {args.width}x{args.height} JPEG "
        f"(~{image_bytes / 1024:.0f} KB), Label Studio {LABEL_STUDIO_VERSION} (SQLite) on loopback; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    if gen_seconds:
        print(f"generation: {fmt_seconds(gen_seconds)} s")
    print("\nLabel Studio /data/upload GET (one image each)")
    print(f"{'mode':<34} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'images/s':>9}")
    for mode, m in latency.items():
        print(f"{mode:<34} {m['n']:>5.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['per_s']:>9.1f}")

    print(f"\n{'peer':<27} {'seconds':>8} {'images':>7} {'downloaded':>11} {'cached':>7}   stages (s)")
    for name, r in results.items():
        dl = "?" if r["downloaded"] is None else str(r["downloaded"])
        cached = "?" if r["cached"] is None else str(r["cached"])
        print(f"{name:<27} {r['total']:>8.2f} {r['images']:>7} {dl:>11} {cached:>7}   {fmt_seconds(r['seconds'])}")
    for name in ("labelloop cold", "labelloop rebuild"):
        if name not in results:
            print(f"{name:<27} {'n/a':>8}")
    sdk = results["SDK converter"]
    gets = sdk["gets"]
    print(
        f"\nSDK converter: {sdk['images']} images, {sdk['labels']} label files; {gets['gets']:.0f} media GETs "
        f"({gets['errors']:.0f} >= 400), {gets['seconds']:.2f} s in them "
        f"({gets['seconds'] / sdk['seconds']['convert'] * 100:.0f}% of the conversion)"
    )
    ref = results["LS zip export (ref)"]
    print(
        f"LS zip export (reference, not a target): {ref['images']} images, {ref['labels']} label files, "
        f"{ref['MB']:.1f} MB zip in one request"
    )
    for name in ("labelloop cold", "labelloop rebuild", "labelloop cold, mounted", "labelloop rebuild, mounted"):
        if name in results:
            sync = ", ".join(f"{k} {v}" for k, v in results[name]["sync"].items())
            print(f"{name}: read {sync}; files {results[name]['files']}")
    print()
    if "labelloop" in failures:
        print(f"labelloop not measured: {failures['labelloop']}")
        return 1
    cold, rebuild = results["labelloop cold"]["total"], results["labelloop rebuild"]["total"]
    print("images downloaded through Label Studio's HTTP API (as the SDK converter does):")
    print(f"  labelloop cold vs SDK converter: {sdk['total'] / cold:.1f}x   (target >= 5x)")
    print(f"  rebuild vs cold: {cold / rebuild:.1f}x faster   (target >= 50x)")
    if "labelloop cold, mounted" in results:
        cold_m, rebuild_m = results["labelloop cold, mounted"]["total"], results["labelloop rebuild, mounted"]["total"]
        print("Label Studio's media folder mounted (uploads read from disk; the SDK converter still downloads):")
        print(f"  labelloop cold vs SDK converter: {sdk['total'] / cold_m:.1f}x   (target >= 5x)")
        print(f"  rebuild vs cold: {cold_m / rebuild_m:.1f}x faster   (target >= 50x)")
        ref = results.get("SDK converter, mounted (ref)")
        if ref is not None:
            print(
                f"  reference, no target: labelloop cold vs the SDK converter copying uploads from the same folder: "
                f"{ref['total'] / cold_m:.1f}x (both wait for Label Studio's JSON export)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
