"""A project deleted in a real Label Studio 1.23.2 is retired after repeated 404s at reconciliation
(real Redis): no more reconciliation or pre-annotation, and ``labelloop status`` says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labelloop import keys
from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import make_sample
from labelloop.events import retired_projects
from labelloop.jobs.jobs import Jobs
from labelloop.labelstudio.media import MediaConfig
from labelloop.redis_client import client as redis_client
from labelloop.registry.store import Registry
from labelloop.serving.preannotate import Generation, superseded_by
from labelloop.serving.predictor import Predictor
from service.ops_status import status
from tests.factories import image_project, make_settings, publish_version


@pytest.mark.labelstudio
def test_a_project_deleted_in_label_studio_is_retired_after_repeated_404s(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleted in Label Studio, a trained project is not retired by one or two 404s but by the third
    reconciliation in a row; from then on reconciliation no longer asks Label Studio about it
    (no 404 counted), its pre-annotation stops as "project_retired", status says "retired", and a
    live project reconciled alongside is untouched."""
    api = LabelStudioAPI(*label_studio)
    gone, _ = image_project(api, "to delete", [make_sample(701, 96, 64)], annotate=1)
    live, _ = image_project(api, "stays", [make_sample(702, 96, 64)], annotate=1)
    store = redis_client(redis_url, "cli")
    store.sadd(keys.PROJECTS, gone, live)
    settings = make_settings(tmp_path, redis_url=redis_url, label_studio=label_studio)
    registry = Registry(settings.models_dir)
    publish_version(registry, gone)
    jobs = Jobs(settings, lambda name, args, queue: None)
    assert jobs.reconcile() == {str(gone): 1, str(live): 1}
    api.sdk.projects.delete(id=gone)

    for attempt in range(1, retired_projects.MISSING_AFTER):
        jobs.reconcile()
        assert not retired_projects.is_retired(store, gone)
        assert int(store.get(retired_projects.misses_key(gone)) or 0) == attempt
    jobs.reconcile()

    assert retired_projects.is_retired(store, gone) and not retired_projects.is_retired(store, live)
    assert {int(p) for p in store.smembers(keys.PROJECTS)} == {live}
    jobs.reconcile()
    assert store.get(retired_projects.misses_key(gone)) is None, "a retired project was read again"
    media = MediaConfig(label_studio_url=None, api_key=None, allow_hosts=("127.0.0.1",))
    predictor: Any = Predictor(registry, "yolov8n.yaml", tmp_path / "yolo", tmp_path / "cache", 160, 0.01, media=media)
    assert superseded_by(predictor, gone, "v1", Generation.claim(store, gone)) == "project_retired"
    assert superseded_by(predictor, live, "v1", Generation.claim(store, live)) == "version"
    status(settings)
    assert f"project {gone}: retired: Label Studio answered 404 3 times in a row" in capsys.readouterr().out
