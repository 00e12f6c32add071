"""The annotation ledger: timestamp normalisation, diffs, effective changes, seeding, and changes
applied in any arrival order (tombstones, time order)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from labelloop.events.ledger import Ledger, annotations_in_export, diff, is_newer, normalize_ts


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


@pytest.mark.parametrize(
    ("new", "old", "expected"),
    [
        # Label Studio prints times with and without fractional seconds, with "Z" or "+00:00":
        # as text "...:21Z" sorts after "...:21.5Z", as times it is earlier.
        ("2026-11-21T13:36:21.500000Z", "2026-11-21T13:36:21Z", True),
        ("2026-11-21T13:36:21Z", "2026-11-21T13:36:21.500000Z", False),
        ("2026-11-21T13:36:22+00:00", "2026-11-21T13:36:21.999999Z", True),
        ("2026-11-21T14:36:21+01:00", "2026-11-21T13:36:21Z", False),
        ("2026-11-21T13:36:21Z", None, True),
        (None, "2026-11-21T13:36:21Z", False),
    ],
)
def test_is_newer_compares_times_not_text(new: str | None, old: str | None, expected: bool) -> None:
    """Timestamps compare as times whatever their precision or offset."""
    assert is_newer(new, old) is expected


def test_a_delete_applied_before_its_create_leaves_the_annotation_deleted(redis_url: str) -> None:
    """A DELETE that arrives before the CREATE or UPDATE of the same annotation (two receiver
    replicas, a late delivery) leaves a tombstone: the late events change and count nothing."""
    ledger = Ledger(redis.Redis.from_url(redis_url))
    assert ledger.apply(1, [(1, "2026-11-21T10:00:00Z")]) == 1
    assert ledger.apply(1, [(2, None)]) == 0  # not seen yet: nothing to count, but remembered
    assert ledger.apply(1, [(2, "2026-11-21T10:00:01Z")]) == 0
    assert ledger.apply(1, [(1, None)]) == 1
    assert ledger.apply(1, [(1, "2026-11-21T10:00:02Z")]) == 0
    assert ledger.seen(1) == {} and ledger.deleted(1) == {1, 2}


def test_an_older_update_never_moves_the_ledger_back(redis_url: str) -> None:
    """An update older than the recorded one (an export read before a newer webhook, a late
    delivery) changes nothing and counts 0, so the newer one is never counted twice."""
    ledger = Ledger(redis.Redis.from_url(redis_url))
    assert ledger.apply(1, [(7, "2026-11-21T10:00:05.250000Z")]) == 1
    assert ledger.apply(1, [(7, "2026-11-21T10:00:05Z")]) == 0
    assert ledger.apply(1, [(7, "2026-11-21T10:00:05.250000+00:00")]) == 0
    assert ledger.seen(1) == {7: "2026-11-21T10:00:05.250000Z"}
    assert ledger.apply(1, [(7, "2026-11-21T10:00:06Z")]) == 1


def test_diff_leaves_out_older_times_and_changes_from_the_reads_start_on() -> None:
    """Reconciliation's diff: an export older than the ledger is no change, and an annotation
    updated, or seen but absent, from the export's start on is left to the next comparison."""
    start = datetime(2026, 11, 21, 10, 0, 10, tzinfo=UTC)
    seen = {1: "2026-11-21T10:00:05.000000Z", 2: "2026-11-21T10:00:12.000000Z", 3: "2026-11-21T10:00:01.000000Z"}
    current = {1: "2026-11-21T10:00:04.000000Z", 4: "2026-11-21T10:00:11.000000Z", 5: "2026-11-21T10:00:02.000000Z"}
    assert diff(seen, current, before=start) == [(5, "2026-11-21T10:00:02.000000Z"), (3, None)]


def test_diff_within_the_start_s_resolution_counts_updates_but_not_absences() -> None:
    """A read start known to the second (a Date header): an update the export shows within that
    second counts, an annotation absent from it but seen within that second is not deleted."""
    start = datetime(2026, 11, 21, 10, 0, 10, tzinfo=UTC)  # the read really started at 10:00:10.x
    seen = {2: "2026-11-21T10:00:10.400000Z"}
    current = {4: "2026-11-21T10:00:10.300000Z"}
    assert diff(seen, current, before=start) == []
    assert diff(seen, current, before=start, resolution=timedelta(seconds=1)) == [(4, "2026-11-21T10:00:10.300000Z")]
