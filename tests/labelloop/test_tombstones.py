"""Tombstones on every path: whatever order webhooks arrive in and however builds interleave reads
of Label Studio with the change log, the dataset ends equal to Label Studio's export.

Webhooks go through the real receiver into a real Redis; builds are ``labelloop.labelstudio.export.sync_tasks``
with the real change log. Label Studio is a small in-memory model (``FakeLabelStudio``) that
keeps tasks and annotations the way Label Studio 1.23.2 does (counters, export of annotated tasks
only, webhook bodies from the captured fixtures): a property test needs hundreds of histories.
"""

from __future__ import annotations

import copy
import email.utils
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from labelloop.events.changes import ChangeLog
from labelloop.events.ledger import normalize_ts
from labelloop.labelstudio.export import sync_tasks
from service.app import create_app
from tests.conftest import connect, fixture
from tests.factories import make_settings

PROJECT = 1
START = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
NEVER_VERIFY = 10**9


class FakeLabelStudio:
    """One project's tasks and annotations, the webhook each change sends, and the parts of the
    label-studio-sdk client ``sync_tasks`` calls (export, project with its ``Date`` header, task list)."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self.next_id = 1
        self.clock = 0
        self.label_config = fixture("webhook_ANNOTATION_CREATED.json")["project"]["label_config"]
        self.projects = SimpleNamespace(
            exports=SimpleNamespace(download_sync=lambda pid, export_type: [orjson.dumps(self.export())]),
            with_raw_response=SimpleNamespace(get=self._project),
        )
        self.tasks_api = SimpleNamespace(list=lambda **kw: copy.deepcopy(list(self.tasks.values())))

    # --- what Label Studio holds -------------------------------------------------------------

    def export(self) -> list[dict[str, Any]]:
        return copy.deepcopy([t for t in self.tasks.values() if t["annotations"]])

    def annotations(self) -> dict[int, dict[str, Any]]:
        return {a["id"]: a for t in self.tasks.values() for a in t["annotations"]}

    def _counts(self) -> tuple[int, int]:
        done = sum(1 for t in self.tasks.values() for a in t["annotations"] if not a["was_cancelled"])
        return done, sum(len(t["annotations"]) for t in self.tasks.values()) - done

    def _project(self, id: int) -> Any:
        done, cancelled = self._counts()
        data = SimpleNamespace(
            total_annotations_number=done, skipped_annotations_number=cancelled, label_config=self.label_config
        )
        return SimpleNamespace(data=data, headers={"date": email.utils.formatdate(usegmt=True)})

    # --- changes, each returning the webhook Label Studio sends -------------------------------

    def _now(self) -> str:
        self.clock += 1
        return (START + timedelta(seconds=self.clock)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _body(self, action: str, annotation: dict[str, Any]) -> dict[str, Any]:
        name = (
            "webhook_ANNOTATION_UPDATED.json" if action == "ANNOTATION_UPDATED" else "webhook_ANNOTATION_CREATED.json"
        )
        body = copy.deepcopy(fixture(name))
        body["action"] = action
        task = self.tasks[annotation["task"]]
        body["annotation"] = {**body["annotation"], **annotation}
        body["task"].update(
            id=task["id"], data=task["data"], total_annotations=len(task["annotations"]), cancelled_annotations=0
        )
        done, cancelled = self._counts()
        body["project"].update(total_annotations_number=done, skipped_annotations_number=cancelled)
        return body

    def create(self, task_id: int) -> dict[str, Any]:
        task = self.tasks.setdefault(
            task_id, {"id": task_id, "data": {"image": f"/data/upload/1/img{task_id}.png"}, "annotations": []}
        )
        now = self._now()
        annotation = {
            "id": self.next_id,
            "task": task_id,
            "result": [],
            "was_cancelled": False,
            "ground_truth": False,
            "created_at": now,
            "updated_at": now,
        }
        self.next_id += 1
        task["annotations"].append(annotation)
        return self._body("ANNOTATION_CREATED", annotation)

    def update(self, annotation_id: int) -> dict[str, Any]:
        annotation = self.annotations()[annotation_id]
        annotation.update(updated_at=self._now(), result=[{"id": f"r{self.clock}"}])
        return self._body("ANNOTATION_UPDATED", annotation)

    def delete(self, annotation_id: int) -> dict[str, Any]:
        for task in self.tasks.values():
            task["annotations"] = [a for a in task["annotations"] if a["id"] != annotation_id]
        body = copy.deepcopy(fixture("webhook_ANNOTATIONS_DELETED.json"))
        body["annotations"] = [{"id": annotation_id}]
        done, cancelled = self._counts()
        body["project"].update(total_annotations_number=done, skipped_annotations_number=cancelled)
        return body


def client_of(ls: FakeLabelStudio) -> Any:
    """The SDK-shaped client over the model (``client.tasks`` is the task API)."""
    return SimpleNamespace(projects=ls.projects, tasks=ls.tasks_api)


def dataset(tasks: list[dict[str, Any]]) -> dict[int, list[tuple[int, str, str]]]:
    """What a training reads of tasks: per task, (annotation id, updated_at, result) sorted."""
    return {
        int(t["id"]): sorted(
            (int(a["id"]), normalize_ts(a["updated_at"]), orjson.dumps(a.get("result")).decode())
            for a in t["annotations"]
        )
        for t in tasks
        if t.get("annotations")
    }


@pytest.fixture
def receiver(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings_ = make_settings(tmp_path, redis_url=redis_url)
    with TestClient(create_app(settings_), raise_server_exceptions=False) as client:
        connect(client)
        yield client


def replay(receiver: TestClient, redis_url: str, store: Path, timeline: list[tuple[str, Any]]) -> None:
    """Run a history: ``("op", (kind, pick))`` changes the model, ``("deliver", i)`` posts the
    webhook of the i-th op, ``("build", verify)`` syncs the store (``verify``: a full read of
    Label Studio, else the change log when usable); then a last build must equal the export."""
    ls = FakeLabelStudio()
    changes = ChangeLog(redis.Redis.from_url(redis_url))
    bodies: list[dict[str, Any]] = []
    for what, arg in timeline:
        if what == "op":
            kind, pick = arg
            ids = sorted(ls.annotations())
            if kind == "create" or not ids:
                bodies.append(ls.create(10 + pick % 3))
            elif kind == "update":
                bodies.append(ls.update(ids[pick % len(ids)]))
            else:
                bodies.append(ls.delete(ids[pick % len(ids)]))
        elif what == "deliver":
            assert receiver.post("/webhook", json=bodies[arg]).status_code == 201
        else:
            sync_tasks(client_of(ls), PROJECT, store, changes, verify_every_s=0 if arg else NEVER_VERIFY)
    _, tasks, info = sync_tasks(client_of(ls), PROJECT, store, changes, verify_every_s=NEVER_VERIFY)
    assert dataset(tasks) == dataset(ls.export()), (info, timeline)


def test_a_delete_absorbed_by_a_read_still_stops_its_late_create(
    receiver: TestClient, redis_url: str, tmp_path: Path
) -> None:
    """A DELETE whose entry a full read of Label Studio absorbed leaves a tombstone: the CREATE webhook arriving
    after that read does not bring the annotation back (the sequence the property test first found)."""
    timeline: list[tuple[str, Any]] = [
        ("op", ("create", 0)),  # annotation 1 on task 10
        ("deliver", 0),
        ("build", True),
        ("op", ("create", 1)),  # annotation 2 on task 11: its webhook is late
        ("op", ("delete", 1)),  # annotation 2 deleted
        ("deliver", 2),
        ("build", True),  # reads Label Studio: the DELETE entry is consumed, not applied
        ("deliver", 1),  # the late CREATE
    ]
    replay(receiver, redis_url, tmp_path / "tasks.json", timeline)


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Changes in Label Studio's order, each webhook delivered at a drawn later point, builds
    (full reads or change-log reads) at drawn points in between."""
    ops = draw(
        st.lists(
            st.tuples(st.sampled_from(["create", "create", "update", "delete"]), st.integers(0, 5)),
            min_size=1,
            max_size=8,
        )
    )
    n = len(ops)
    items: list[tuple[int, int, tuple[str, Any]]] = [(i, -1, ("op", op)) for i, op in enumerate(ops)]
    for i in range(n):
        slot = min(n - 1, i + draw(st.sampled_from([0, 0, 1, n])))  # on time, a little late, last
        items.append((slot, draw(st.integers(0, 9)), ("deliver", i)))
    for _ in range(draw(st.integers(1, 6))):
        items.append((draw(st.integers(-1, n - 1)), draw(st.integers(0, 9)), ("build", draw(st.booleans()))))
    items.sort(key=lambda item: (item[0], item[1]))
    return [item[2] for item in items]


def test_reordered_webhooks_and_interleaved_reads_end_equal_to_the_export(
    receiver: TestClient, redis_url: str, tmp_path: Path
) -> None:
    """Property: created, updated and deleted annotations whose webhooks arrive late and out of order, with builds
    reading Label Studio or the change log in between, always end with the dataset equal to Label Studio's export."""
    client = redis.Redis.from_url(redis_url)
    runs = iter(range(10**6))

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(histories())
    def check(timeline: list[tuple[str, Any]]) -> None:
        client.flushall()
        connect(receiver)
        replay(receiver, redis_url, tmp_path / f"tasks-{next(runs)}.json", timeline)

    check()
