"""``labelloop models export`` and the download route, against a real receiver, predict worker, Redis
and Ultralytics: the exported pt and ONNX files, loaded with plain Ultralytics as README shows, give
the boxes ``/predict`` gives; exports are cached, streamed, removed with their version, and never
made in the receiver."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from labelloop.dataset.images import build_dataset, local_images
from labelloop.dev.stack import Stack, free_port
from labelloop.dev.synthetic import LABEL_CONFIG, make_sample
from labelloop.registry.model_export import EXPORT_TIMEOUT_S, STALE_MARGIN_S, downloads
from labelloop.registry.store import Registry
from labelloop.task_types.labels import parse_detection_config
from labelloop.training.process import run_training_process
from tests.factories import publish_version

PROJECT = 11
IMAGES = 48  # 30 epochs on 48 generated images: mAP50 about 0.7, boxes well above the threshold
AUTH = ("ops", "export-tests-pass")
SHOW_CONF = "0.2"  # LABELLOOP_SHOW_CONF for the stack and the command line alike
PREDICTED = [40, 41, 42, 43, 44, 45]  # images /predict and plain Ultralytics see

# What README shows, run in a child process: plain Ultralytics on the exported file (an ONNX file
# runs on onnxruntime), with the card's imgsz and threshold. ensure_torchvision_ops only makes this
# venv's CUDA torchvision wheel importable on a CPU torch (``labelloop.yolo_env``); it changes no box.
PLAIN = """
import json, sys
from labelloop.yolo_env import ensure_torchvision_ops
ensure_torchvision_ops()
from ultralytics import YOLO
card = json.load(open(sys.argv[1]))
model = YOLO(sys.argv[2], task=card["task"])
out = []
for image in sys.argv[3:]:
    r = model.predict(image, imgsz=card["imgsz"], conf=card["score_threshold"], verbose=False)[0]
    out.append([[int(c), *map(float, box)] for c, box in zip(r.boxes.cls.tolist(), r.boxes.xyxy.tolist())])
print(json.dumps(out))
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env={**os.environ, **env}, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real 30-epoch training published as v2 (served) of PROJECT, v1 a rejected copy; Redis, the
    receiver (Basic auth) and a predict worker; the images on a loopback HTTP server."""
    work = tmp_path_factory.mktemp("export")
    www = work / "www"
    www.mkdir()
    tasks = []
    for i in range(IMAGES):
        sample = make_sample(i, 160, 120)
        (www / f"img{i}.png").write_bytes(sample.png)
        tasks.append(
            {
                "id": i + 1,
                "data": {"image": f"img{i}.png"},
                "annotations": [{"id": i + 1, "result": sample.ls_result(), "was_cancelled": False}],
            }
        )
    images = local_images({i + 1: www / f"img{i}.png" for i in range(IMAGES)})
    built = build_dataset(tasks, parse_detection_config(LABEL_CONFIG), work / "ds", images, 0.25, 2)
    spec = {
        "data": str(built.data),
        "weights": "yolov8n.yaml",
        "epochs": 30,
        "imgsz": 160,
        "batch": 8,
        "device": "",
        "workers": 0,
        "seed": 0,
        "config_dir": str(work / "yolo"),
    }
    result = run_training_process(spec, work / "run", timeout_s=900)
    manifest = {
        "names": {str(k): v for k, v in built.names.items()},
        "from_name": built.spec.from_name,
        "to_name": built.spec.to_name,
        "train_args": {"imgsz": 160},
        "metrics": result["metrics"],
        "show_conf": result["show_conf"],
        "dataset": {"sync": {"label_config_sha1": "f" * 40}},
    }
    seen = {str(t["id"]): "2026-01-01T00:00:00Z" for t in tasks}
    registry = Registry(work / "models")
    publish_version(registry, PROJECT, result["best"], promote=False, annotations=seen, **manifest)
    publish_version(registry, PROJECT, result["best"], annotations=seen, **manifest)
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "LABELLOOP_MODELS_DIR": str(work / "models"),
        "LABELLOOP_CACHE_DIR": str(work / "cache"),
        "LABELLOOP_IMGSZ": "160",
        "LABELLOOP_SHOW_CONF": SHOW_CONF,
        "LABELLOOP_MEDIA_ALLOW_HOSTS": "127.0.0.1",
        "LABELLOOP_BASIC_AUTH_USER": AUTH[0],
        "LABELLOOP_BASIC_AUTH_PASS": AUTH[1],
        "LABELLOOP_LOG_JSON": "true",
    }
    stack = Stack(work, env)
    try:
        env["LABELLOOP_REDIS_URL"] = stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port())
        url = stack.start_receiver(free_port())
        stack.start_worker("predict")
        yield {
            "url": url,
            "env": env,
            "stack": stack,
            "registry": registry,
            "www": www,
            "base": f"http://127.0.0.1:{server.server_address[1]}",
            "names": built.names,
            "label_config": LABEL_CONFIG,
            "work": work,
        }
    finally:
        stack.stop_all()
        server.shutdown()


def _predict_boxes(served: dict[str, Any]) -> list[list[list[float]]]:
    """``/predict`` of the PREDICTED images: per image ``[class id, x1, y1, x2, y2]`` in pixels."""
    body = {
        "tasks": [{"id": i + 1, "data": {"image": f"{served['base']}/img{i}.png"}} for i in PREDICTED],
        "project": f"{PROJECT}.1",
        "label_config": served["label_config"],
    }
    resp = httpx.post(f"{served['url']}/predict", json=body, auth=AUTH, timeout=120)
    assert resp.status_code == 200, resp.text
    ids = {label: i for i, label in served["names"].items()}
    out = []
    for item in resp.json()["results"]:
        assert item["model_version"] == "v2"
        boxes = []
        for region in item["result"]:
            v, w, h = region["value"], region["original_width"], region["original_height"]
            x1, y1 = v["x"] * w / 100, v["y"] * h / 100
            boxes.append([ids[v["rectanglelabels"][0]], x1, y1, x1 + v["width"] * w / 100, y1 + v["height"] * h / 100])
        out.append(boxes)
    return out


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _same_boxes(got: list[list[list[float]]], want: list[list[list[float]]]) -> list[float]:
    """Match each image's boxes one to one (best IoU first); asserts equal counts and classes; returns
    the IoUs of the matched pairs."""
    ious = []
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w), (g, w)
        left = list(w)
        for box in g:
            best = max(left, key=lambda o: _iou(box[1:], o[1:]))
            left.remove(best)
            assert box[0] == best[0], (box, best)
            ious.append(_iou(box[1:], best[1:]))
    return ious


def _receiver_libraries(stack: Stack) -> str:
    """The shared objects mapped into the receiver process (``/proc/<pid>/maps``)."""
    return Path(f"/proc/{stack.procs['receiver'].pid}/maps").read_text()


def test_exported_pt_and_onnx_give_the_boxes_of_predict(served: dict[str, Any], tmp_path: Path) -> None:
    """``models export`` of the served version to pt and onnx, loaded with plain Ultralytics at the
    card's imgsz and threshold, gives the boxes ``/predict`` gives on the same images: the same
    classes, IoU >= 0.99 for every box; the card names the classes in id order with their labels."""
    want = _predict_boxes(served)
    assert sum(len(b) for b in want) >= 3, want  # a comparison of nothing proves nothing
    images = [str(served["www"] / f"img{i}.png") for i in PREDICTED]
    for fmt, file in (("pt", "weights.pt"), ("onnx", "weights.onnx")):
        out = tmp_path / fmt
        done = _cli(served["env"], "models", "export", str(PROJECT), "--format", fmt, "--out", str(out))
        assert done.returncode == 0, done.stderr
        card = json.loads((out / "model_card.json").read_text())
        assert card["version"] == "v2" and card["format"] == fmt and card["file"] == file
        assert card["classes"] == [{"id": i, "label": label} for i, label in sorted(served["names"].items())]
        assert (card["imgsz"], card["score_threshold"]) == (160, float(SHOW_CONF))
        assert card["score_threshold_source"] == "LABELLOOP_SHOW_CONF"
        assert card["annotations"] == IMAGES and card["label_config_sha1"] == "f" * 40
        assert card["lineage"]["parent"] is None and card["lineage"]["ancestors"] == []  # v1 never served
        plain = subprocess.run(
            [sys.executable, "-c", PLAIN, str(out / "model_card.json"), str(out / file), *images],
            capture_output=True,
            text=True,
            env={**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_CONFIG_DIR": str(tmp_path / "y")},
        )
        assert plain.returncode == 0, plain.stderr[-2000:]
        ious = _same_boxes(json.loads(plain.stdout.splitlines()[-1]), want)
        print(f"{fmt}: {len(ious)} boxes, min IoU with /predict {min(ious):.5f}")
        assert min(ious) >= 0.99
    # The exports were made by the command line's child processes: the receiver never loaded torch.
    libraries = _receiver_libraries(served["stack"])
    assert "libtorch" not in libraries and "onnxruntime" not in libraries


def test_a_second_export_is_cached_and_the_receiver_serves_it_streamed(served: dict[str, Any]) -> None:
    """A second export of a format returns the cached files without running Ultralytics (well under a
    second); the download route streams the weights, the export and its card byte for byte, behind the
    receiver's credentials, and names the command for a format not exported yet (404, nothing made)."""
    env, url = served["env"], served["url"]
    first = _cli(env, "models", "export", str(PROJECT), "v2", "--format", "torchscript")
    assert first.returncode == 0, first.stderr
    t0 = time.monotonic()
    again = _cli(env, "models", "export", str(PROJECT), "v2", "--format", "torchscript")
    seconds = time.monotonic() - t0
    assert again.returncode == 0 and "(cached)" in again.stdout, again.stdout + again.stderr
    print(f"cached export through the command line: {seconds:.2f} s")
    logged = again.stdout + again.stderr
    assert "model_export_cached" in logged and "model_exported" not in logged and seconds < 5.0

    v2 = served["registry"].get(PROJECT, "v2")
    files = f"{url}/projects/{PROJECT}/versions/v2/files"
    for name, path in (
        ("weights.pt", v2.weights),
        ("torchscript/weights.torchscript", v2.path / "exports/torchscript/weights.torchscript"),
        ("torchscript/model_card.json", v2.path / "exports/torchscript/model_card.json"),
    ):
        with httpx.stream("GET", f"{files}/{name}", auth=AUTH, timeout=60) as resp:
            assert resp.status_code == 200, resp.read()
            assert resp.headers["content-length"] == str(path.stat().st_size)
            assert b"".join(resp.iter_bytes()) == path.read_bytes()
    assert httpx.get(f"{files}/weights.pt", timeout=10).status_code == 401
    missing = httpx.get(f"{files}/openvino/weights_openvino_model.zip", auth=AUTH, timeout=10)
    assert missing.status_code == 404 and "labelloop models export" in missing.json()["error"]
    assert not (v2.path / "exports/openvino").exists()
    assert httpx.get(f"{files}/..%2Fmanifest.json", auth=AUTH, timeout=10).status_code == 404
    page = httpx.get(f"{url}/projects/{PROJECT}", auth=AUTH, timeout=10).text
    assert f'href="/projects/{PROJECT}/versions/v2/files/torchscript/weights.torchscript"' in page


def test_retention_removes_a_version_with_its_exports_and_its_download(served: dict[str, Any]) -> None:
    """An export of the rejected v1 lives in v1's directory; once retention removes v1, its exports
    are gone with it and the download of its weights and export answers 404."""
    env, url, registry = served["env"], served["url"], served["registry"]
    done = _cli(env, "models", "export", str(PROJECT), "v1", "--format", "pt")
    assert done.returncode == 0, done.stderr
    files = f"{url}/projects/{PROJECT}/versions/v1/files"
    assert httpx.get(f"{files}/pt/weights.pt", auth=AUTH, timeout=30).status_code == 200
    v1 = registry.get(PROJECT, "v1").path
    assert registry.prune(PROJECT, keep_last=1) == ["v1"]
    assert not v1.exists()
    for name in ("weights.pt", "pt/weights.pt", "pt/model_card.json"):
        resp = httpx.get(f"{files}/{name}", auth=AUTH, timeout=10)
        assert resp.status_code == 404 and "has no version v1" in resp.json()["error"], resp.text
    gone = _cli(env, "models", "export", str(PROJECT), "v1", "--format", "pt")
    assert gone.returncode == 1 and "project 11 has no version v1" in gone.stderr


def test_a_killed_export_leaves_no_half_export_and_the_next_one_sweeps_it(served: dict[str, Any]) -> None:
    """SIGKILL of ``models export`` and its Ultralytics child mid-export leaves no onnx export to list
    or download (only its .tmp- directory); the next export completes, and removes that directory
    once it is older than the export timeout."""
    env, url, registry = served["env"], served["url"], served["registry"]
    registry.publish(PROJECT, registry.get(PROJECT, "v2").weights, registry.get(PROJECT, "v2").manifest, promote=False)
    v3 = registry.get(PROJECT, "v3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "models", "export", str(PROJECT), "v3", "--format", "onnx"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not list((v3.path / "exports").glob(".tmp-*/.job.json")):  # the child is being started
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    [dead] = list((v3.path / "exports").glob(".tmp-*"))
    assert not (v3.path / "exports/onnx").exists() and "onnx/weights.onnx" not in downloads(v3)
    resp = httpx.get(f"{url}/projects/{PROJECT}/versions/v3/files/onnx/weights.onnx", auth=AUTH, timeout=10)
    assert resp.status_code == 404

    old = time.time() - EXPORT_TIMEOUT_S - STALE_MARGIN_S - 1
    os.utime(dead, (old, old))
    done = _cli(env, "models", "export", str(PROJECT), "v3", "--format", "onnx")
    assert done.returncode == 0, done.stderr
    assert not dead.exists() and not list((v3.path / "exports").glob(".tmp-*"))
    got = httpx.get(f"{url}/projects/{PROJECT}/versions/v3/files/onnx/weights.onnx", auth=AUTH, timeout=60)
    assert got.status_code == 200 and got.content == (v3.path / "exports/onnx/weights.onnx").read_bytes()
