"""``labelloop.serving.selection``: a selection predicted in chunks within a deadline, with real Ultralytics
(an untrained yolov8n saved as a base .pt) on the image server's generated images."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from labelloop.dev.synthetic import LABEL_CONFIG
from labelloop.errors import UnavailableError
from labelloop.labelstudio.media import MediaConfig
from labelloop.registry.store import Registry
from labelloop.serving.predictor import Predictor
from labelloop.serving.selection import SelectionWritten, deadline_s, predict_selection, write_selection
from labelloop.task_types.labels import parse_detection_config
from tests.factories import make_settings, publish_version

SPEC = parse_detection_config(LABEL_CONFIG)
PROJECT = 61


def untrained_weights(work: Path) -> Path:
    """An untrained yolov8n (random weights) saved as a .pt in ``work``: a base model to serve."""
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(work / "yolo")
    from ultralytics.models import YOLO

    path = work / "yolov8n-untrained.pt"
    YOLO("yolov8n.yaml").save(str(path))
    return path


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained yolov8n saved as a .pt (``untrained_weights``)."""
    return untrained_weights(tmp_path_factory.mktemp("base"))


@pytest.fixture
def predictor(base_weights: Path, tmp_path: Path) -> Iterator[Predictor]:
    media = MediaConfig(None, None, allow_hosts=("127.0.0.1",))
    p = Predictor(
        Registry(tmp_path / "models"), str(base_weights), base_weights.parent / "yolo", tmp_path, 160, 0.25, media=media
    )
    yield p
    p.close()


def _tasks(base_url: str, n: int) -> list[dict[str, Any]]:
    return [{"id": i + 1, "data": {"image": f"{base_url}/img{i % 12}.png"}} for i in range(n)]


def test_past_the_deadline_no_further_chunk_starts_and_the_rest_get_no_prediction(
    predictor: Predictor, image_server: tuple[str, Path]
) -> None:
    """Past the deadline after the first chunk, the other tasks get [] (no prediction, Label Studio's
    list form); with time left every task gets its prediction, in order."""
    base_url, _ = image_server
    tasks = _tasks(base_url, 6)
    cut = predict_selection(predictor, PROJECT, SPEC, tasks, None, None, batch=2, deadline_s=1e-9)
    assert [isinstance(r, dict) for r in cut] == [True, True, False, False, False, False]
    assert cut[2:] == [[], [], [], []]
    full = predict_selection(predictor, PROJECT, SPEC, tasks, None, None, batch=4, deadline_s=600)
    assert all(isinstance(r, dict) and r["model_version"] == "base" for r in full)


def test_cuda_out_of_memory_on_a_chunk_is_unavailable_naming_predict_batch(
    predictor: Predictor, image_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """torch.cuda.OutOfMemoryError in a chunk's model call raises UnavailableError (503) naming
    LABELLOOP_PREDICT_BATCH, which reaches the receiver through Celery's result backend as itself;
    the model stays loaded and serves the next request."""
    import torch

    from workers.celery_app import create_celery

    base_url, _ = image_server
    tasks = _tasks(base_url, 3)
    assert all(isinstance(r, dict) for r in predict_selection(predictor, PROJECT, SPEC, tasks, None, None, 2, 600))
    loaded = predictor.model_for(PROJECT)
    assert loaded is not None

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(loaded.model, "predict", out_of_memory)
        with pytest.raises(
            UnavailableError, match="out of memory on a chunk of 2 tasks; lower LABELLOOP_PREDICT_BATCH"
        ) as err:
            predict_selection(predictor, PROJECT, SPEC, tasks, None, None, 2, 600)
    backend = create_celery(make_settings(tmp_path)).backend
    back = backend.exception_to_python(backend.prepare_exception(err.value))
    assert isinstance(back, UnavailableError) and back.status_code == 503
    assert predictor.model_for(PROJECT) is loaded
    assert all(isinstance(r, dict) for r in predict_selection(predictor, PROJECT, SPEC, tasks, None, None, 2, 600))


NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("configured", "expires", "expected"),
    [
        (60.0, None, 60.0),  # no expiry: the setting
        (60.0, NOW + timedelta(seconds=90), 60.0),  # the receiver waits longer than the setting
        (60.0, NOW + timedelta(seconds=50), 40.0),  # queued 40 s of a 90 s wait: 0.8 of the 50 s left
        (60.0, NOW - timedelta(seconds=5), 0.0),  # already expired: only the first chunk runs
    ],
)
def test_deadline_is_the_setting_or_less_when_the_receiver_stops_waiting_sooner(
    configured: float, expires: datetime | None, expected: float
) -> None:
    """deadline_s is LABELLOOP_PREDICT_DEADLINE_S, shortened to 0.8 of the time left before the task expires."""
    assert deadline_s(configured, expires, NOW) == pytest.approx(expected)


def test_a_promotion_between_chunks_leaves_the_selection_on_the_first_chunks_version(
    base_weights: Path, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    """v2 served (and warm) right after the first chunk: every chunk of the selection is still v1's."""
    base_url, _ = image_server
    registry = Registry(tmp_path / "models")
    for _ in ("v1", "v2"):
        publish_version(registry, PROJECT, base_weights, classes=["square", "disc"])
    registry.set_current(PROJECT, "v1")
    media = MediaConfig(None, None, allow_hosts=("127.0.0.1",))
    predictor = Predictor(registry, "yolov8n.yaml", base_weights.parent / "yolo", tmp_path, 160, 0.25, media=media)
    predict = predictor.predict
    calls: list[str] = []

    def promote_after_first_chunk(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        out = predict(*args, **kwargs)
        if not calls:
            registry.set_current(PROJECT, "v2")
            predictor.model_at(PROJECT, "v2")  # warm: the announcement swaps it in at once
            predictor.notice(PROJECT)
            assert predictor.model_for(PROJECT).version == "v2"  # type: ignore[union-attr]
        calls.append(str(out[0]["model_version"]))
        return out

    predictor.predict = promote_after_first_chunk  # type: ignore[method-assign]
    try:
        results = predict_selection(predictor, PROJECT, SPEC, _tasks(base_url, 6), None, None, batch=2, deadline_s=600)
    finally:
        predictor.close()
    assert calls == ["v1", "v1", "v1"]
    assert [r["model_version"] for r in results if isinstance(r, dict)] == ["v1"] * 6


def test_a_selection_handed_to_the_queue_writes_nothing_without_a_served_version(
    predictor: Predictor, image_server: tuple[str, Path]
) -> None:
    """``write_selection`` of a project that serves only the base model stops after its first chunk
    with "no served version" and never calls Label Studio (the client here has no method at all)."""
    base_url, _ = image_server
    out = write_selection(object(), predictor, PROJECT, SPEC, _tasks(base_url, 4), None, None, batch=2)
    assert out == SelectionWritten(tasks=4, written=0, version=None, stopped="no served version")
