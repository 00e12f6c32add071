"""A project's change log stays within its Redis budget (``LABELLOOP_CHANGE_LOG_PROJECT_BYTES``):
past it the receiver drops the log and marks a gap, and the next build reads Label Studio, so
nothing is lost. Real receiver, real Redis (``MEMORY USAGE``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from labelloop.events.changes import ChangeLog, ChangeLogUnusable, stream_key
from labelloop.labelstudio.export import sync_tasks
from service.app import create_app
from tests.conftest import connect
from tests.factories import make_settings
from tests.labelloop.test_tombstones import NEVER_VERIFY, PROJECT, FakeLabelStudio, client_of, dataset

BUDGET = 96 * 1024


@pytest.fixture
def receiver(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, redis_url=redis_url, change_log_project_bytes=BUDGET)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        connect(client)
        yield client


def test_a_project_over_its_change_log_budget_reads_label_studio_and_loses_nothing(
    receiver: TestClient, redis_url: str, tmp_path: Path
) -> None:
    """Webhooks with large results never take a project's change log past its budget (Redis MEMORY USAGE); the log
    dropped on the way leaves a gap, so the build reads Label Studio and the dataset equals the export."""
    client = redis.Redis.from_url(redis_url)
    changes = ChangeLog(client)
    ls = FakeLabelStudio()
    store = tmp_path / "tasks.json"
    body = ls.create(10)
    assert receiver.post("/webhook", json=body).status_code == 201
    sync_tasks(client_of(ls), PROJECT, store, changes, verify_every_s=NEVER_VERIFY)
    start = changes.position(PROJECT)

    peak = 0
    for i in range(40):
        body = ls.create(11 + i)
        region = {"id": f"r{i}", "type": "polygonlabels", "value": {"points": [[j / 7, j / 9] for j in range(400)]}}
        annotation = ls.tasks[11 + i]["annotations"][0]
        annotation["result"] = body["annotation"]["result"] = [region]
        assert receiver.post("/webhook", json=body).status_code == 201
        peak = max(peak, int(client.memory_usage(stream_key(PROJECT), samples=0) or 0))
    assert 0 < peak <= BUDGET, f"change log peaked at {peak} bytes, budget {BUDGET}"

    with pytest.raises(ChangeLogUnusable, match="gap"):
        changes.read(PROJECT, start)
    _, tasks, info = sync_tasks(client_of(ls), PROJECT, store, changes, verify_every_s=NEVER_VERIFY)
    assert info["mode"] == "incremental" and "gap" in info["change_log"], info
    assert dataset(tasks) == dataset(ls.export())
