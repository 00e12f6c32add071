"""``Jobs.reconcile`` against a real Label Studio and a real Redis: one reconciliation per project at
a time, and an export never undoes what the webhooks recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from labelloop import keys
from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import make_sample
from labelloop.events.ledger import PROJECTS_KEY, normalize_ts, parse_ts
from labelloop.jobs.jobs import Jobs
from labelloop.redis_client import client as redis_client
from tests.factories import image_project, make_settings


@pytest.mark.labelstudio
def test_reconcile_takes_turns_and_never_moves_the_ledger_back_nor_past_the_exports_start(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """A project another reconciliation holds the lock of is skipped; an export older than the
    ledger (a newer webhook arrived meanwhile) and an annotation the ledger got after the export
    started are not missed changes: nothing is counted twice, nothing deleted."""
    api = LabelStudioAPI(*label_studio)
    samples = [make_sample(300 + i, 96, 64) for i in range(3)]
    pid, ids = image_project(api, "reconcile", samples)
    first = api.annotate(ids[0], samples[0].ls_result())
    client = redis_client(redis_url, "cli")
    client.sadd(PROJECTS_KEY, pid)
    sent: list[Any] = []
    settings = make_settings(tmp_path, redis_url=redis_url, label_studio=label_studio)
    jobs = Jobs(settings, lambda name, args, queue: sent.append((name, args)))
    assert jobs.reconcile() == {str(pid): 1}

    # Another beat tick (or worker) holds the project: this reconciliation leaves it alone.
    other = client.lock(keys.reconcile_lock(pid), timeout=120)
    assert other.acquire(blocking=False)
    second = api.annotate(ids[1], samples[1].ls_result())
    assert str(pid) not in jobs.reconcile()
    assert set(jobs.ledger().seen(pid)) == {first}
    other.release()
    assert jobs.reconcile() == {str(pid): 1}

    # The webhook of a newer update of ``first`` reached the ledger after the export was read, and
    # the webhook of an annotation created after it started: neither is a change the export shows.
    seen = jobs.ledger().seen(pid)
    stamp = parse_ts(seen[first])
    assert stamp is not None
    newer = (stamp + timedelta(seconds=30)).isoformat()
    created_later = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    assert jobs.ledger().apply(pid, [(first, newer), (10**9, created_later)]) == 2
    assert jobs.reconcile() == {str(pid): 0}
    seen = jobs.ledger().seen(pid)
    assert seen[first] == normalize_ts(newer) and 10**9 in seen and second in seen
    assert jobs.ledger().deleted(pid) == set()
