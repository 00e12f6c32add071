"""The annotation ledger: timestamp normalisation, diffs, effective changes, seeding."""

from __future__ import annotations

import pytest
import redis

from labelloop.ledger import Ledger, annotations_in_export, diff, normalize_ts


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-21T13:36:21.835436Z", "2026-11-21T13:36:21.835436Z"),
        ("2026-11-21T13:36:21.8354Z", "2026-11-21T13:36:21.835400Z"),
        ("2026-11-21T14:36:21.835436+01:00", "2026-11-21T13:36:21.835436Z"),
        ("2026-11-21T13:36:21", "2026-11-21T13:36:21.000000Z"),
        ("not a time", "not a time"),
        (None, ""),
    ],
)
def test_normalize_ts(raw: str | None, expected: str) -> None:
    """Webhook and export timestamps compare equal whatever their precision or offset."""
    assert normalize_ts(raw) == expected


def test_diff_reports_new_updated_and_deleted() -> None:
    """New and changed annotations carry their updated_at; deleted ones carry None."""
    seen = {1: "a", 2: "b", 3: "c"}
    current = {1: "a", 2: "B", 4: "d"}
    assert diff(seen, current) == [(2, "B"), (4, "d"), (3, None)]
    assert diff(current, current) == []


def test_annotations_in_export() -> None:
    """Every exported annotation, cancelled ones too, maps to its normalised updated_at."""
    tasks = [
        {"id": 1, "annotations": [{"id": 5, "updated_at": "2026-01-01T00:00:00Z"}]},
        {"id": 2, "annotations": [{"id": 6, "was_cancelled": True, "created_at": "2026-01-02T00:00:00Z"}]},
        {"id": 3},
    ]
    assert annotations_in_export(tasks) == {5: "2026-01-01T00:00:00.000000Z", 6: "2026-01-02T00:00:00.000000Z"}


def test_apply_counts_only_effective_changes(redis_url: str) -> None:
    """A resent update or a delete of an unknown annotation counts zero; real changes count one each."""
    ledger = Ledger(redis.Redis.from_url(redis_url))
    assert ledger.apply(1, [(10, "2026-01-01T00:00:00Z"), (11, "2026-01-01T00:00:00Z")]) == 2
    assert ledger.apply(1, [(10, "2026-01-01T00:00:00.000000Z")]) == 0
    assert ledger.apply(1, [(10, "2026-01-02T00:00:00Z"), (12, None)]) == 1
    assert ledger.apply(1, [(11, None)]) == 1
    assert ledger.seen(1) == {10: "2026-01-02T00:00:00.000000Z"}
    assert ledger.projects() == {1}


def test_seed_fills_only_an_absent_ledger(redis_url: str) -> None:
    """Seeding from a version's baseline works once, and never overwrites a live ledger."""
    ledger = Ledger(redis.Redis.from_url(redis_url))
    assert ledger.seed(2, {1: "2026-01-01T00:00:00Z"})
    assert not ledger.seed(2, {1: "other", 2: "x"})
    assert ledger.seen(2) == {1: "2026-01-01T00:00:00.000000Z"}
