"""The webhook secret is not proof: webhooks sent with the valid secret but not by Label Studio
never reach the dataset (the build reads the tasks they name from a real Label Studio), and an
``updated_at`` in the future is refused."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from starlette.testclient import TestClient

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import make_sample
from labelloop.events.changes import CLOCK_SKEW_S, ChangeLog, apply_entries, entry_bytes
from labelloop.labelstudio.export import differing_tasks, export_tasks, sync_tasks
from service.app import create_app
from tests.conftest import connect, fixture
from tests.factories import make_settings

SECRET = "s3cret-shared-with-every-webhook"
HEADERS = {"X-Labelloop-Secret": SECRET}


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def forged(
    action: str, annotation_id: int, task_id: int, result: list[Any], *, done: int, config: str, project_id: int
) -> dict[str, Any]:
    """A webhook body as Label Studio would send it, but written by whoever holds the secret."""
    body = copy.deepcopy(fixture("webhook_ANNOTATION_CREATED.json"))
    body["action"] = action
    body["annotation"].update(id=annotation_id, task=task_id, result=result, updated_at=iso(datetime.now(UTC)))
    body["task"].update(id=task_id, total_annotations=1, cancelled_annotations=0)
    body["project"].update(id=project_id, total_annotations_number=done, skipped_annotations_number=0)
    body["project"]["label_config"] = config
    return body


@pytest.fixture
def receiver(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, redis_url=redis_url, webhook_secret=SECRET)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.labelstudio
def test_a_forged_webhook_with_the_valid_secret_does_not_reach_the_dataset(
    receiver: TestClient, label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """With the valid secret, a CREATE of an annotation Label Studio does not have and an UPDATE that erases a real
    annotation's result are accepted by the receiver, but the build reads the tasks they name from Label Studio:
    the dataset equals Label Studio's export, and the log is still used (nothing else read)."""
    api = LabelStudioAPI(*label_studio)
    samples = [make_sample(300 + i, 96, 64) for i in range(4)]
    pid = api.create_project("forged-webhooks")
    ids = api.import_images(pid, samples)
    real = [api.annotate(ids[i], samples[i].ls_result()) for i in (0, 1)]
    connect(receiver, project_id=pid, headers=HEADERS)
    config = str(api.sdk.projects.get(id=pid).label_config)
    changes = ChangeLog(redis.Redis.from_url(redis_url))
    store = tmp_path / "tasks.json"
    assert sync_tasks(api.sdk, pid, store, changes)[2]["mode"] == "full"

    phantom = max(real) + 1000
    bodies = [
        forged("ANNOTATION_CREATED", phantom, ids[2], samples[2].ls_result(), done=3, config=config, project_id=pid),
        forged("ANNOTATION_UPDATED", real[0], ids[0], [], done=3, config=config, project_id=pid),
    ]
    for body in bodies:
        assert receiver.post("/webhook", json=body, headers=HEADERS).status_code == 201
    # The forged entries alone would pass every check of the log: counters and label config agree.
    alone = {str(t["id"]): t for t in export_tasks(api.sdk, pid)}
    apply_entries(alone, [dict(orjson.loads(entry_bytes(b) or b"{}")) for b in bodies], config)
    assert str(ids[2]) in alone

    _, tasks, info = sync_tasks(api.sdk, pid, store, changes)
    assert phantom not in {a["id"] for t in tasks for a in t["annotations"]}, info
    assert differing_tasks({str(t["id"]): t for t in tasks}, export_tasks(api.sdk, pid)) == [], info
    assert info["mode"] == "change log" and info["disagreed"] == 2, info


def test_an_updated_at_in_the_future_is_refused(receiver: TestClient, redis_url: str) -> None:
    """A webhook whose annotation ``updated_at`` is beyond the clock-skew tolerance answers 400 with the reason and
    is not recorded; one within the tolerance is accepted."""
    connect(receiver, headers=HEADERS)
    config = fixture("webhook_ANNOTATION_CREATED.json")["project"]["label_config"]
    late = forged("ANNOTATION_CREATED", 7, 70, [], done=1, config=config, project_id=1)
    late["annotation"]["updated_at"] = iso(datetime.now(UTC) + timedelta(seconds=CLOCK_SKEW_S + 3600))
    resp = receiver.post("/webhook", json=late, headers=HEADERS)
    assert resp.status_code == 400 and "in the future" in resp.text, resp.text
    assert ChangeLog(redis.Redis.from_url(redis_url)).position(1).seq == 1, "a refused webhook makes a gap, no entry"
    assert redis.Redis.from_url(redis_url).xlen("labelloop:project:1:changes") == 0

    skewed = forged("ANNOTATION_CREATED", 8, 80, [], done=1, config=config, project_id=1)
    skewed["annotation"]["updated_at"] = iso(datetime.now(UTC) + timedelta(seconds=CLOCK_SKEW_S / 2))
    assert receiver.post("/webhook", json=skewed, headers=HEADERS).status_code == 201
