"""Pre-annotation's superseding rules (real Redis, a real registry) and its batched inference (a
real trained model, Ultralytics' own batch callback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from labelloop.dev.synthetic import LABEL_CONFIG
from labelloop.labelstudio.media import MediaConfig
from labelloop.registry.store import Registry
from labelloop.serving.preannotate import Generation, cluster_offset, ranked_picks, superseded_by
from labelloop.serving.predictor import Predictor
from labelloop.task_types.labels import parse_detection_config
from tests.factories import FAKE_WEIGHTS, publish_version

PROJECT = 5


def _registry(tmp_path: Path, weights: Path | None = None, versions: int = 2) -> Registry:
    registry = Registry(tmp_path / "models")
    for _ in range(versions):
        publish_version(registry, PROJECT, FAKE_WEIGHTS if weights is None else weights, classes=["square", "disc"])
    registry.set_current(PROJECT, "v1")
    return registry


def _predictor(registry: Registry, tmp_path: Path) -> Predictor:
    media = MediaConfig(label_studio_url=None, api_key=None, allow_hosts=("127.0.0.1",))
    return Predictor(registry, "yolov8n.yaml", tmp_path / "yolo", tmp_path / "cache", 160, 0.01, media=media)


def test_a_newer_run_supersedes_an_older_one(redis_url: str, tmp_path: Path) -> None:
    """A run holds the project while no newer run has claimed it and its version is still served;
    a second claim or a promotion of another version makes it stop, each with its reason."""
    client = redis.Redis.from_url(redis_url)
    predictor = _predictor(_registry(tmp_path), tmp_path)
    first = Generation.claim(client, PROJECT)
    assert superseded_by(predictor, PROJECT, "v1", first) is None
    second = Generation.claim(client, PROJECT)
    assert superseded_by(predictor, PROJECT, "v1", first) == "newer_run"
    assert superseded_by(predictor, PROJECT, "v1", second) is None
    predictor.registry.set_current(PROJECT, "v2")
    assert superseded_by(predictor, PROJECT, "v1", second) == "version"
    assert Generation.claim(client, PROJECT + 1).newest(), "projects have their own generations"


def test_without_redis_only_the_registry_supersedes(tmp_path: Path) -> None:
    """With Redis unreachable a run still goes on (the generation is unknown), and still stops when
    the registry serves another version."""
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    predictor = _predictor(_registry(tmp_path), tmp_path)
    generation = Generation.claim(client, PROJECT)
    assert generation.number is None and superseded_by(predictor, PROJECT, "v1", generation) is None
    predictor.registry.set_current(PROJECT, "v2")
    assert superseded_by(predictor, PROJECT, "v1", generation) == "version"


def test_a_batch_of_tasks_is_one_ultralytics_batch(
    trained: dict, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """Predicting 6 tasks with a given version sends the 6 images to Ultralytics as one batch of 6
    (counted by Ultralytics' on_predict_batch_end callback), not 6 batches of one; the results
    carry that version although the registry serves another one."""
    base_url, _ = image_server
    registry = _registry(tmp_path, Path(trained["result"]["best"]))
    registry.set_current(PROJECT, "v2")
    predictor = _predictor(registry, tmp_path)
    loaded = predictor.model_at(PROJECT, "v1")
    assert loaded is not None and loaded.version == "v1"
    batches: list[int] = []

    def count(ultralytics_predictor: Any) -> None:
        batches.append(len(ultralytics_predictor.batch[0]))

    loaded.model.add_callback("on_predict_batch_end", count)
    tasks = [{"id": i, "data": {"image": f"{base_url}/img{i}.png"}} for i in range(6)]
    results = predictor.predict(PROJECT, parse_detection_config(LABEL_CONFIG), tasks, None, None, version="v1")
    assert [r["model_version"] for r in results] == ["v1"] * 6
    assert batches == [6]


@pytest.mark.parametrize(("version", "offset"), [("v1", 1000), ("v12", 12000), ("labelloop-first-picks", 0), ("", 0)])
def test_cluster_offset(version: str, offset: int) -> None:
    """A newer version's clusters are larger, so Label Studio's Max(cluster) over a task's predictions is its newest."""
    assert cluster_offset(version) == offset


def test_ranked_picks_put_unreadable_images_last() -> None:
    """Tasks whose image could not be fetched come after every ranked task, with no cluster; the
    scores run from 0.0 to 1.0 in pick order and the clusters carry the version's offset."""
    rng = np.random.default_rng(0)
    vectors: list[Any] = [rng.normal(size=4).astype(np.float32) for _ in range(5)]
    vectors[1] = None
    picks, mode = ranked_picks([10, 11, 12, 13, 14], vectors, [], None, 2, 3000)
    assert mode == "coverage" and picks[-1].task == 11 and picks[-1].cluster is None
    assert [p.score for p in picks] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(p.cluster is not None and p.cluster >= 3000 for p in picks[:-1])


def test_spool_reads_from_many_threads_at_once():
    """The import threads read the spool at once (CI saw an empty line when reads shared one
    file position): every read gives back what was appended at that index."""
    from concurrent.futures import ThreadPoolExecutor

    from labelloop.serving.spool import Spool as _Spool

    spool = _Spool()
    try:
        results = [[{"id": str(i), "value": {"x": i, "pad": "x" * (i * 37 % 20000)}}] for i in range(2000)]
        for result in results:
            spool.append(result)
        with ThreadPoolExecutor(max_workers=8) as pool:
            read = list(pool.map(lambda i: spool[i], reversed(range(len(results)))))
        assert read == list(reversed(results))
    finally:
        spool.close()
