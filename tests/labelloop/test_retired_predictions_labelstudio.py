"""Reconciliation deletes from a real Label Studio 1.23.2 the predictions of versions retention
removed (real Redis, a real registry), pre-annotation on or off."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from labelloop import keys
from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import make_sample
from labelloop.jobs.jobs import Jobs
from labelloop.labelstudio.retired_predictions import model_versions
from labelloop.registry.store import Registry
from labelloop.settings import Settings


@pytest.mark.labelstudio
def test_reconciliation_deletes_the_predictions_of_versions_retention_removed(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """With v1 and v2 deleted by retention (v4 served, v3 its rollback target), a reconciliation
    deletes every v1 and v2 prediction (as ``/predict`` or a pre-annotation stored them) and keeps
    v3's and another ML backend's; a second one finds nothing to delete."""
    ls_url, token = label_studio
    api = LabelStudioAPI(ls_url, token)
    pid = api.create_project("retired predictions")
    ids = api.import_images(pid, [make_sample(800 + i, 96, 64) for i in range(4)])
    api.sdk.projects.import_predictions(
        id=pid,
        request=[
            {"task": t, "result": [], "score": 0.5, "model_version": v}
            for t in ids
            for v in ("v1", "v2", "v3", "other")
        ],
    )
    registry = Registry(tmp_path / "models")
    (tmp_path / "w.pt").write_bytes(b"weights")
    for _ in range(4):
        registry.publish(pid, tmp_path / "w.pt", {"classes": ["square", "disc"]})
    assert registry.prune(pid, keep_last=1) == ["v1", "v2"]
    redis.Redis.from_url(redis_url).sadd(keys.PROJECTS, pid)
    settings = Settings(
        redis_url=redis_url,
        label_studio_url=ls_url,
        label_studio_api_key=token,
        models_dir=tmp_path / "models",
        cache_dir=tmp_path / "cache",
    )
    jobs = Jobs(settings, lambda name, args, queue: None)

    jobs.reconcile()

    assert model_versions(api.sdk, pid) == {"v3": 4, "other": 4}
    jobs.reconcile()
    assert model_versions(api.sdk, pid) == {"v3": 4, "other": 4}
