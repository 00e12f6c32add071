"""Reconciliation deletes from a real Label Studio 1.23.2 the predictions of versions retention
removed (real Redis, a real registry), pre-annotation on or off."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelloop import keys
from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import make_sample
from labelloop.jobs.jobs import Jobs
from labelloop.labelstudio.retired_predictions import model_versions
from labelloop.redis_client import client as redis_client
from labelloop.registry.store import Registry
from tests.factories import image_project, make_settings, publish_version


@pytest.mark.labelstudio
def test_reconciliation_deletes_the_predictions_of_versions_retention_removed(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """With v1 and v2 deleted by retention (v4 served, v3 its rollback target), a reconciliation
    deletes every v1 and v2 prediction (as ``/predict`` or a pre-annotation stored them) and keeps
    v3's and another ML backend's; a second one finds nothing to delete."""
    api = LabelStudioAPI(*label_studio)
    pid, ids = image_project(api, "retired predictions", [make_sample(800 + i, 96, 64) for i in range(4)])
    api.sdk.projects.import_predictions(
        id=pid,
        request=[
            {"task": t, "result": [], "score": 0.5, "model_version": v}
            for t in ids
            for v in ("v1", "v2", "v3", "other")
        ],
    )
    settings = make_settings(tmp_path, redis_url=redis_url, label_studio=label_studio)
    registry = Registry(settings.models_dir)
    for _ in range(4):
        publish_version(registry, pid)
    assert registry.prune(pid, keep_last=1) == ["v1", "v2"]
    redis_client(redis_url, "cli").sadd(keys.PROJECTS, pid)
    jobs = Jobs(settings, lambda name, args, queue: None)

    jobs.reconcile()

    assert model_versions(api.sdk, pid) == {"v3": 4, "other": 4}
    jobs.reconcile()
    assert model_versions(api.sdk, pid) == {"v3": 4, "other": 4}
