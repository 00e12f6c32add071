"""The change log: webhook payloads the receiver records, applied to a stored project by rebuilds.

Entries are the webhooks a real Label Studio 1.23.2 sent (``tests/fixtures/label-studio``), fed
through the real receiver into a real Redis; the log's checks (gaps, counters) are proven to
refuse every case where it could be missing something.
"""

from __future__ import annotations

import copy
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from starlette.testclient import TestClient

from labelloop.dev.stack import Stack, free_port
from labelloop.events.changes import (
    ANNOTATION_FIELDS,
    TASK_FIELDS,
    ChangeLog,
    ChangeLogUnusable,
    apply_entries,
    entry_bytes,
    label_config_digest,
    seq_key,
    stream_key,
)
from service.app import create_app
from tests.conftest import connect, fixture
from tests.factories import make_settings

CONFIG = fixture("webhook_ANNOTATION_CREATED.json")["project"]["label_config"]


def created(annotation_id: int, task_id: int, updated_at: str, *, done: int, cancelled: int = 0) -> dict[str, Any]:
    """An ANNOTATION_CREATED webhook as Label Studio sends it, for one annotation of one task, with
    the project's and task's counters as they are after it (``done`` completed, ``cancelled``)."""
    body = copy.deepcopy(fixture("webhook_ANNOTATION_CREATED.json"))
    body["annotation"].update(id=annotation_id, task=task_id, updated_at=updated_at)
    body["task"].update(id=task_id, data={"image": f"/data/upload/1/img{task_id}.png"})
    body["project"].update(total_annotations_number=done, skipped_annotations_number=cancelled)
    return body


def entry(body: dict[str, Any]) -> dict[str, Any]:
    raw = entry_bytes(body)
    assert raw is not None
    return dict(orjson.loads(raw))


def with_task_counts(body: dict[str, Any], done: int, cancelled: int = 0) -> dict[str, Any]:
    body["task"].update(total_annotations=done, cancelled_annotations=cancelled)
    return body


# --- applying entries ----------------------------------------------------------------------


def test_entry_keeps_what_a_rebuild_reads_but_never_the_project_token() -> None:
    """An entry keeps the annotation's and task's fields a rebuild reads, the project's counters
    and a digest of its label config; nothing else (no token, no label config text)."""
    body = fixture("webhook_ANNOTATION_CREATED.json")
    e = entry(body)
    assert e["annotation"] == {k: body["annotation"][k] for k in ANNOTATION_FIELDS if k in body["annotation"]}
    assert e["task"] == {k: body["task"][k] for k in TASK_FIELDS if k in body["task"]}
    assert "completed_by" in body["annotation"] and "completed_by" not in e["annotation"]
    assert e["project"] == {
        "total_annotations_number": 1,
        "skipped_annotations_number": 0,
        "label_config_sha1": label_config_digest(CONFIG),
    }
    raw = entry_bytes(body) or b""
    assert body["project"]["token"].encode() not in raw and b"<View" not in raw
    assert len(raw) < len(orjson.dumps(body)) / 2


def test_start_training_and_oversized_webhooks_make_no_entry() -> None:
    """START_TRAINING changes no annotation (no entry); an entry over MAX_ENTRY_BYTES is not kept."""
    assert entry_bytes(fixture("ml_webhook_START_TRAINING.json")) is None
    big = fixture("webhook_ANNOTATION_CREATED.json")
    big["annotation"]["result"] = [{"value": {"points": [[1.5, 2.5]] * 40_000}}]
    assert entry_bytes(big) is None


def test_created_updated_deleted_turn_the_store_into_what_label_studio_has() -> None:
    """ANNOTATION_CREATED, ANNOTATION_UPDATED and ANNOTATIONS_DELETED entries add, replace and remove annotations;
    an older copy never undoes a newer update, and a task left without annotations is dropped."""
    tasks: dict[str, dict[str, Any]] = {}
    first = with_task_counts(created(1, 10, "2026-11-21T10:00:00.000000Z", done=1), 1)
    apply_entries(tasks, [entry(first)], CONFIG)
    assert list(tasks) == ["10"] and tasks["10"]["data"]["image"] == "/data/upload/1/img10.png"
    assert [a["id"] for a in tasks["10"]["annotations"]] == [1]

    second = with_task_counts(created(2, 10, "2026-11-21T10:00:01.000000Z", done=2), 2)
    other = with_task_counts(created(3, 11, "2026-11-21T10:00:02.000000Z", done=3), 1)
    updated = copy.deepcopy(second)
    updated["action"] = "ANNOTATION_UPDATED"
    updated["annotation"].update(updated_at="2026-11-21T10:05:00.000000Z", result=[])
    updated["project"]["total_annotations_number"] = 3
    apply_entries(tasks, [entry(second), entry(other), entry(updated)], CONFIG)
    assert [a["id"] for a in tasks["10"]["annotations"]] == [1, 2]
    assert tasks["10"]["annotations"][1]["result"] == []

    # The same update arriving again after an older copy changes nothing backwards.
    stale = copy.deepcopy(second)
    stale["action"] = "ANNOTATION_UPDATED"
    stale["project"]["total_annotations_number"] = 3
    apply_entries(tasks, [entry(stale)], CONFIG)
    assert tasks["10"]["annotations"][1]["result"] == []

    deleted = fixture("webhook_ANNOTATIONS_DELETED.json")
    deleted["annotations"] = [{"id": 3}]
    deleted["project"].update(total_annotations_number=2, skipped_annotations_number=0)
    apply_entries(tasks, [entry(deleted)], CONFIG)
    assert list(tasks) == ["10"], "a task left without annotations is dropped, as an export leaves it out"


def test_cancelled_annotations_are_kept_and_counted_as_skipped() -> None:
    """A cancelled annotation is kept with was_cancelled true, and the counters check out with it counted as skipped
    (the project's skipped_annotations_number, the task's cancelled_annotations)."""
    tasks: dict[str, dict[str, Any]] = {}
    skipped = created(5, 20, "2026-11-21T10:00:00.000000Z", done=0, cancelled=1)
    skipped["annotation"]["was_cancelled"] = True
    with_task_counts(skipped, 0, 1)
    apply_entries(tasks, [entry(skipped)], CONFIG)
    assert tasks["20"]["annotations"][0]["was_cancelled"] is True


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("project counters disagree", "Label Studio reports"),
        ("task counters disagree", "webhook reports"),
        ("task unknown", "neither in the webhook nor stored"),
        ("no project object", "no project counters"),
        ("unexpected action", "unexpected action"),
        ("malformed counters", "malformed change-log entry"),
        ("malformed entry", "malformed change-log entry"),
        ("task data not an object", "data is not an object"),
        ("result not a list", "result is not a list"),
    ],
)
def test_entries_that_cannot_be_trusted_are_refused(case: str, reason: str) -> None:
    """An entry whose project or task counters disagree with the store, whose task is unknown, whose action is
    unexpected or whose fields are malformed makes the log unusable (ChangeLogUnusable, naming the reason)."""
    body = with_task_counts(created(1, 10, "2026-11-21T10:00:00.000000Z", done=1), 1)
    e = entry(body)
    if case == "project counters disagree":  # e.g. an annotation whose webhook was lost
        e["project"]["total_annotations_number"] = 2
    elif case == "task counters disagree":
        e["task"]["total_annotations"] = 2
    elif case == "task unknown":  # a bulk webhook without its tasks, for a task never stored
        del e["task"]
    elif case == "no project object":
        e["project"] = None
    elif case == "malformed counters":  # the receiver validates ids, not every field it keeps
        e["task"]["total_annotations"] = "many"
    elif case == "task data not an object":
        e["task"]["data"] = "/data/upload/1/x.png"
    elif case == "result not a list":
        e["annotation"]["result"] = {"value": {}}
    elif case == "malformed entry":
        e["annotation"]["result"] = None
        e["task"] = ["not", "a", "task"]
        e["tasks"] = 5
    else:
        e["action"] = "TASKS_DELETED"
    with pytest.raises(ChangeLogUnusable, match=reason):
        apply_entries({}, [e], CONFIG)


def test_a_webhook_never_changes_the_label_config() -> None:
    """An entry whose label config is not the one last read from Label Studio (changed there, or
    forged in a webhook) makes the log unusable: the rebuild reads Label Studio's."""
    body = with_task_counts(created(1, 10, "2026-11-21T10:00:00Z", done=1), 1)
    body["project"]["label_config"] = CONFIG.replace('value="dog"', 'value="wolf"')
    with pytest.raises(ChangeLogUnusable, match="label config changed"):
        apply_entries({}, [entry(body)], CONFIG)


# --- the log in Redis, written by the receiver -------------------------------------------------


@pytest.fixture
def receiver(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, redis_url=redis_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        connect(client)
        yield client


def test_receiver_appends_each_new_delivery_once_numbered(receiver: TestClient, redis_url: str) -> None:
    """The receiver appends each new webhook to the project's Redis stream once (a redelivery answers duplicate),
    numbered in order and without the token; a read from a position returns only the entries after it."""
    log = ChangeLog(redis.Redis.from_url(redis_url))
    start = log.position(1)
    assert (start.seq, start.id) == (0, "0-0") and start.run_id
    bodies = [with_task_counts(created(i, 10 + i, f"2026-11-21T10:00:0{i}.000000Z", done=i), 1) for i in (1, 2, 3)]
    for body in bodies:
        assert receiver.post("/webhook", json=body).status_code == 201
    assert receiver.post("/webhook", json=bodies[0]).json() == {"status": "duplicate"}
    batch = log.read(1, start)
    assert [e["annotation"]["id"] for e in batch.entries] == [1, 2, 3]
    assert batch.position.seq == 3 and log.position(1) == batch.position
    assert b"token" not in b"".join(f[b"entry"] for _, f in redis.Redis.from_url(redis_url).xrange(stream_key(1)))

    tasks: dict[str, dict[str, Any]] = {}
    apply_entries(tasks, batch.entries, CONFIG)
    assert sorted(tasks) == ["11", "12", "13"]

    # Read again from where the batch ended: nothing new.
    assert log.read(1, batch.position).entries == []
    receiver.post("/webhook", json=with_task_counts(created(4, 14, "2026-11-21T10:00:04.000000Z", done=4), 1))
    assert [e["annotation"]["id"] for e in log.read(1, batch.position).entries] == [4]


def test_gaps_trims_and_a_wiped_redis_make_the_log_unusable(receiver: TestClient, redis_url: str) -> None:
    """A gap (a change reconciliation found without its webhook), entries trimmed before a reader read them and a
    Redis that lost its data (the counter restarted) make reads unusable; reading on from a full sync works again."""
    client = redis.Redis.from_url(redis_url)
    log = ChangeLog(client)
    post = receiver.post
    empty = log.position(1)
    post("/webhook", json=with_task_counts(created(1, 11, "2026-11-21T10:00:01.000000Z", done=1), 1))
    first = log.read(1, empty)

    # Reconciliation found a change whose webhook never came: a gap.
    log.invalidate(1)
    post("/webhook", json=with_task_counts(created(2, 12, "2026-11-21T10:00:02.000000Z", done=2), 1))
    with pytest.raises(ChangeLogUnusable, match="gap"):
        log.read(1, first.position)
    with pytest.raises(ChangeLogUnusable, match="gap"):
        log.read(1, empty)
    # A full read of Label Studio starts from the log's end, and is then usable again.
    after_sync = log.position(1)
    post("/webhook", json=with_task_counts(created(3, 13, "2026-11-21T10:00:03.000000Z", done=3), 1))
    assert [e["annotation"]["id"] for e in log.read(1, after_sync).entries] == [3]

    # Trimmed entries a reader had not consumed: a gap for that reader.
    post("/webhook", json=with_task_counts(created(4, 14, "2026-11-21T10:00:04.000000Z", done=4), 1))
    log.trim(1, log.position(1))
    with pytest.raises(ChangeLogUnusable, match="gap"):
        log.read(1, after_sync)

    # Redis lost its data: the counter restarts below what was read.
    end = log.position(1)
    client.delete(seq_key(1), stream_key(1))
    post("/webhook", json=with_task_counts(created(5, 15, "2026-11-21T10:00:05.000000Z", done=5), 1))
    with pytest.raises(ChangeLogUnusable, match="restarted"):
        log.read(1, end)


def test_a_store_written_by_this_process_is_reused_once_and_never_when_changed(tmp_path: Path) -> None:
    """``sync_tasks``' store: the state this process wrote is reused instead of parsed again, but
    only while the file is the one written, and only by one reader (it may change what it got)."""
    from labelloop.files import write_atomic
    from labelloop.labelstudio.export_store import read_store as _read_store
    from labelloop.labelstudio.export_store import write_store as _write_store

    store = tmp_path / "tasks.json"
    state = {"tasks": {"1": {"id": 1}}}
    _write_store(store, state)
    assert _read_store(store) is state
    again = _read_store(store)
    assert again == state and again is not state, "taken by the first reader: parsed from disk"

    _write_store(store, state)
    write_atomic(store, orjson.dumps({"tasks": {"2": {"id": 2}}}))  # another process wrote it
    assert _read_store(store) == {"tasks": {"2": {"id": 2}}}


# --- arrival order, and Redis losing its last writes ------------------------------------------


def deleted_webhook(annotation_id: int, *, done: int) -> dict[str, Any]:
    """An ANNOTATIONS_DELETED webhook as Label Studio sends it, with the counters after it."""
    body = copy.deepcopy(fixture("webhook_ANNOTATIONS_DELETED.json"))
    body["annotations"] = [{"id": annotation_id}]
    body["project"].update(total_annotations_number=done, skipped_annotations_number=0)
    return body


def test_a_delete_recorded_before_its_create_never_brings_the_annotation_back(
    receiver: TestClient, redis_url: str, tmp_path: Path
) -> None:
    """A DELETE that two receiver replicas record before the CREATE of the same annotation (in the
    same build's entries or a later one) leaves a tombstone: the annotation never comes back, and
    the counters then disagree so the build reads Label Studio instead of trusting the log."""
    log = ChangeLog(redis.Redis.from_url(redis_url))
    settings = make_settings(tmp_path / "replica", redis_url=redis_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as replica:
        start = log.position(1)
        receiver.post("/webhook", json=with_task_counts(created(1, 11, "2026-11-21T10:00:01.000000Z", done=1), 1))
        first = log.read(1, start)
        tasks: dict[str, dict[str, Any]] = {}
        gone: set[int] = set()
        apply_entries(tasks, first.entries, CONFIG, gone)

        # Label Studio: annotation 2 created (counters 2), then deleted (counters 1); the replica
        # with the CREATE is slower than the one with the DELETE.
        assert replica.post("/webhook", json=deleted_webhook(2, done=1)).status_code == 201
        create = with_task_counts(created(2, 12, "2026-11-21T10:00:02.000000Z", done=2), 1)
        assert receiver.post("/webhook", json=create).status_code == 201
        batch = log.read(1, first.position)
        assert [e["action"] for e in batch.entries] == ["ANNOTATIONS_DELETED", "ANNOTATION_CREATED"]
        same = copy.deepcopy(tasks)
        with pytest.raises(ChangeLogUnusable, match="Label Studio reports"):
            apply_entries(same, batch.entries, CONFIG, set(gone))
        assert "12" not in same

        # The DELETE consumed by one build, its CREATE arriving after it: the next build's entry.
        apply_entries(tasks, batch.entries[:1], CONFIG, gone)
        assert gone == {2}
        with pytest.raises(ChangeLogUnusable, match="Label Studio reports"):
            apply_entries(tasks, batch.entries[1:], CONFIG, gone)
        assert "12" not in tasks


def test_updates_apply_in_time_order_whatever_the_timestamp_precision() -> None:
    """An update printed without fractional seconds is older than one printed with them in the
    same second: the later one wins in whichever order they arrive (times, not text, compared)."""
    later = with_task_counts(created(1, 10, "2026-11-21T10:00:00.500000Z", done=1), 1)
    later["annotation"]["result"] = []
    earlier = with_task_counts(created(1, 10, "2026-11-21T10:00:00Z", done=1), 1)
    earlier["action"] = "ANNOTATION_UPDATED"
    for order in ([later, earlier], [earlier, later]):
        tasks: dict[str, dict[str, Any]] = {}
        apply_entries(tasks, [entry(b) for b in order], CONFIG)
        assert tasks["10"]["annotations"][0]["updated_at"] == "2026-11-21T10:00:00.500000Z"


def test_a_redis_restarted_without_its_last_writes_makes_the_log_unusable(tmp_path: Path) -> None:
    """A Redis restarted from a snapshot taken before its last writes numbers new entries over the
    lost ones (no gap in the numbers); the change log notices the restart and is unusable."""
    stack = Stack(tmp_path / "stack", {})
    port = free_port()
    url = stack.start_redis(port, tmp_path / "redis")
    try:
        settings = make_settings(tmp_path, redis_url=url)
        client = redis.Redis.from_url(url)
        log = ChangeLog(client)
        with TestClient(create_app(settings), raise_server_exceptions=False) as app:
            connect(app)
            start = log.position(1)
            app.post("/webhook", json=with_task_counts(created(1, 11, "2026-11-21T10:00:01.000000Z", done=1), 1))
            consumed = log.read(1, start).position
            client.save()  # what a restart will come back with
            update = with_task_counts(created(1, 11, "2026-11-21T10:00:02.000000Z", done=1), 1)
            update["action"] = "ANNOTATION_UPDATED"
            assert app.post("/webhook", json=update).status_code == 201  # acknowledged, then lost
            assert log.read(1, consumed).entries

            stack.stop("redis", signal.SIGKILL)
            stack.start_redis(port, tmp_path / "redis")
            assert int(client.get(seq_key(1)) or 0) == consumed.seq  # the update is gone
            later = with_task_counts(created(3, 13, "2026-11-21T10:00:03.000000Z", done=2), 1)
            assert app.post("/webhook", json=later).status_code == 201
        assert int(client.get(seq_key(1)) or 0) == consumed.seq + 1  # numbered over the lost entry
        with pytest.raises(ChangeLogUnusable, match="not the server last read"):
            log.read(1, consumed)
    finally:
        stack.stop_all()


def test_the_annotation_trained_on_is_the_newest_by_time() -> None:
    """Of two annotations of a task, the one updated later is trained on, also when the earlier
    one's ``updated_at`` is printed without fractional seconds (as text it sorts last)."""
    from labelloop.labelstudio.export import select_annotation

    task = {
        "annotations": [
            {"id": 1, "updated_at": "2026-11-21T10:00:00Z", "result": []},
            {"id": 2, "updated_at": "2026-11-21T10:00:00.500000+00:00", "result": []},
        ]
    }
    chosen = select_annotation(task)
    assert chosen is not None and chosen["id"] == 2
