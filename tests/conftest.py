"""Shared fixtures: a real Redis, a real Label Studio, and the labelloop stack as processes.

Factories of settings, published versions and Label Studio projects are in ``tests/factories.py``.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labelloop.dataset.images import BuildResult, build_dataset, local_images
from labelloop.dev.stack import Stack, free_port, label_studio_binary
from labelloop.dev.synthetic import LABEL_CONFIG, make_sample
from labelloop.redis_client import client as redis_client
from labelloop.task_types.labels import parse_detection_config
from labelloop.training.process import run_training_process

FIXTURES = Path(__file__).parent / "fixtures" / "label-studio"
LS_TOKEN = "7e57000000000000000000000000000000000001"
LS_USER = "tests@labelloop.local"
LS_PASSWORD = "labelloop-tests"

# Small, fast training for tests: 2 CPU cores, minutes not hours.
TRAIN_ENV = {
    "LABELLOOP_EPOCHS": "2",
    "LABELLOOP_IMGSZ": "192",
    "LABELLOOP_BATCH": "4",
    "LABELLOOP_DATALOADER_WORKERS": "0",
    "LABELLOOP_BASE_MODEL": "yolov8n.yaml",
    "LABELLOOP_OFFLINE": "true",  # tests never download weights
    "LABELLOOP_LOG_JSON": "true",
    # A training due after annotations waits 3 s without one, not 15: the tests' annotations come
    # in bursts of API calls (tests/labelloop/test_quiet_period.py covers the wait itself).
    "LABELLOOP_TRAIN_QUIET_S": "3",
}


# Fixtures that start a real Label Studio or train a model: tests using them are the slow layer.
LABEL_STUDIO_FIXTURES = frozenset({"label_studio", "label_studio_local_files", "label_studio_data_dir"})
SLOW_FIXTURES = LABEL_STUDIO_FIXTURES | {"trained", "loop"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the slow layer (``-m "not slow"`` runs the rest in under a minute); a test that starts
    Label Studio without its ``labelstudio`` marker is a collection error (the marker selects them)."""
    unmarked = []
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if LABEL_STUDIO_FIXTURES & fixtures and not item.get_closest_marker("labelstudio"):
            unmarked.append(item.nodeid)
        if SLOW_FIXTURES & fixtures or item.get_closest_marker("labelstudio"):
            item.add_marker(pytest.mark.slow)
    if unmarked:
        raise pytest.UsageError("tests that start Label Studio need @pytest.mark.labelstudio: " + ", ".join(unmarked))


def fixture(name: str) -> dict:
    """A request a real Label Studio 1.23.2 sent, captured verbatim."""
    return json.loads((FIXTURES / name).read_text())


def connect(client: Any, project_id: int = 1, **kwargs: Any) -> None:
    """Connect a project as Label Studio does when labelloop is added as its ML backend (the
    captured ``/setup``), so that the receiver takes its webhooks."""
    body = {**fixture("ml_setup_request.json"), "project": f"{project_id}.1795268180"}
    resp = client.post("/setup", json=body, **kwargs)
    assert resp.status_code == 200, resp.text


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """A redis-server on a free loopback port for the whole session."""
    stack = Stack(tmp_path_factory.mktemp("redis"), {})
    url = stack.start_redis(free_port())
    yield stack, url
    stack.stop_all()


@pytest.fixture
def redis_url(redis_server: tuple[Stack, str]) -> str:
    """The session Redis, flushed before each test."""
    url = redis_server[1]
    redis_client(url, "cli").flushall()
    return url


def _label_studio_binary() -> Path:
    """The ``label-studio`` executable of ``$LABELLOOP_LS_VENV`` or ``~/.cache/labelloop/label-studio-<v>``
    (installed there on first use)."""
    from labelloop.dev.stack import LABEL_STUDIO_VERSION

    venv = (
        os.environ.get("LABELLOOP_LS_VENV")
        or Path.home() / ".cache" / "labelloop" / f"label-studio-{LABEL_STUDIO_VERSION}"
    )
    return label_studio_binary(Path(venv))


# Where the session's Label Studio keeps its data (``media/upload/<project>/<file>`` among it).
LABEL_STUDIO_DATA: dict[str, Path] = {}


@pytest.fixture(scope="session")
def label_studio_data_dir(label_studio: tuple[str, str]) -> Path:
    """The data directory of the ``label_studio`` server (its media folder is ``<dir>/media``)."""
    return LABEL_STUDIO_DATA["dir"]


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real Label Studio server (own virtual environment, SQLite) on a free loopback port.

    The virtual environment is ``$LABELLOOP_LS_VENV`` or ``~/.cache/labelloop/label-studio-<v>``,
    installed on first use.
    """
    if os.environ.get("LABELLOOP_TEST_LS_URL"):  # a Label Studio already running (faster local iterations)
        LABEL_STUDIO_DATA["dir"] = Path(os.environ["LABELLOOP_TEST_LS_DATA_DIR"])
        yield os.environ["LABELLOOP_TEST_LS_URL"], os.environ["LABELLOOP_TEST_LS_TOKEN"]
        return
    binary = _label_studio_binary()
    workdir = tmp_path_factory.mktemp("label-studio")
    LABEL_STUDIO_DATA["dir"] = workdir / "data"
    # Local Storage's root too (``label_studio_local_files``): one server start less per session.
    LABEL_STUDIO_DATA["document_root"] = document_root = (workdir / "document-root").resolve()
    document_root.mkdir()
    stack = Stack(workdir, {})
    try:
        url = stack.start_label_studio(
            binary, free_port(), workdir / "data", LS_USER, LS_PASSWORD, LS_TOKEN, document_root=document_root
        )
        yield url, LS_TOKEN
    finally:
        stack.stop_all()


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on loopback serving generated images (what http(s) task URLs point at)."""
    root = tmp_path_factory.mktemp("www")
    for i in range(12):
        (root / f"img{i}.png").write_bytes(make_sample(i, 160, 120).png)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def served_images_dataset(root: Path, dest: Path) -> BuildResult:
    """The YOLO dataset of the ``image_server``'s 12 generated images (``root``), each annotated with
    its truth (task and annotation ids 1-12), built in ``dest`` (val fraction 0.25, at least 2)."""
    tasks = [
        {
            "id": i + 1,
            "data": {"image": f"img{i}.png"},
            "annotations": [{"id": i + 1, "result": make_sample(i, 160, 120).ls_result(), "was_cancelled": False}],
        }
        for i in range(12)
    ]
    images = local_images({i + 1: root / f"img{i}.png" for i in range(12)})
    return build_dataset(tasks, parse_detection_config(LABEL_CONFIG), dest, images, 0.25, 2)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, image_server: tuple[str, Path]) -> dict:
    """One real 2-epoch training on 12 generated images (imgsz 160, yolov8n.yaml)."""
    _, root = image_server
    work = tmp_path_factory.mktemp("train")
    built = served_images_dataset(root, work / "ds")
    report = built.report
    spec = {
        "data": str(built.data),
        "weights": "yolov8n.yaml",
        "epochs": 2,
        "imgsz": 160,
        "batch": 4,
        "device": "",
        "workers": 0,
        "seed": 0,
        "config_dir": str(work / "yolo"),
    }
    result = run_training_process(spec, work / "run", timeout_s=600)
    return {"result": result, "work": work, "report": report}


@pytest.fixture(scope="session")
def label_studio_local_files(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[str, str, Path]]:
    """A real Label Studio whose ``LOCAL_FILES_DOCUMENT_ROOT`` is a directory of its own: the
    session's ``label_studio`` when the tests started it (with one), else (a server running
    outside the tests, ``LABELLOOP_TEST_LS_URL``) a server of its own.

    Yields ``(url, legacy_token, document_root)``; Local Storage connections must point at a
    subdirectory of ``document_root``.
    """
    url, token = request.getfixturevalue("label_studio")
    if "document_root" in LABEL_STUDIO_DATA:
        yield url, token, LABEL_STUDIO_DATA["document_root"]
        return
    binary = _label_studio_binary()
    workdir = tmp_path_factory.mktemp("label-studio-local-files")
    document_root = (workdir / "document-root").resolve()
    document_root.mkdir()
    stack = Stack(workdir, {})
    try:
        url = stack.start_label_studio(
            binary, free_port(), workdir / "data", LS_USER, LS_PASSWORD, LS_TOKEN, document_root=document_root
        )
        yield url, LS_TOKEN, document_root
    finally:
        stack.stop_all()


@pytest.fixture
def hanging_label_studio() -> Iterator[str]:
    """An address that accepts TCP connections and never answers (a Label Studio stuck mid-request)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
