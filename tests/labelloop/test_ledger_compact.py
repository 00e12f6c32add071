"""The ledger is kept for ever, so it is compact: bytes per annotation measured with Redis' own
``MEMORY USAGE`` on a real Redis, and a ledger in the earlier form is moved over unchanged."""

from __future__ import annotations

import redis

from labelloop import keys
from labelloop.events.ledger import Ledger, normalize_ts

N = 5_000


def ledger_bytes(client: redis.Redis, project_id: int) -> int:
    """Every key of the project's ledger, as Redis counts its memory (SAMPLES 0: exact)."""
    found = [k for k in client.scan_iter(match=keys.project(project_id, "seen*"), count=1000)]
    return sum(int(client.memory_usage(k, samples=0) or 0) for k in found)


def test_the_ledger_takes_under_25_bytes_per_annotation(redis_url: str) -> None:
    """5,000 annotations (Label Studio ids, one project among four interleaved) cost under 25 bytes each in Redis,
    against about 92 for one hash of ISO strings; every one reads back as recorded."""
    client = redis.Redis.from_url(redis_url)
    ledger = Ledger(client)
    recorded = {7_000_000 + 4 * i: f"2026-11-21T10:{i // 600 % 60:02d}:{i % 60:02d}.{i:06d}Z" for i in range(N)}
    items = list(recorded.items())
    for start in range(0, N, 500):
        assert ledger.apply(3, items[start : start + 500]) == 500
    per_annotation = ledger_bytes(client, 3) / N
    assert per_annotation < 25, f"{per_annotation:.1f} bytes per annotation"
    assert ledger.seen(3) == {i: normalize_ts(u) for i, u in recorded.items()}


def test_a_ledger_in_the_earlier_form_is_moved_over_unchanged(redis_url: str) -> None:
    """A ledger written as one hash of ISO strings (before the compact form) reads back the same, is moved into the
    compact form on first use, and keeps ordering updates by time."""
    client = redis.Redis.from_url(redis_url)
    old = {5: "2026-11-21T10:00:05.250000Z", 300: "2026-11-21T10:00:06.000000Z", 301: "not a time", 302: ""}
    client.hset(keys.seen(4), mapping={str(i): u for i, u in old.items()})
    ledger = Ledger(client)
    assert ledger.seen(4) == old
    assert not client.exists(keys.seen(4))
    assert ledger.apply(4, [(5, "2026-11-21T10:00:05Z"), (300, "2026-11-21T10:00:07Z")]) == 1
    assert ledger.seen(4)[300] == "2026-11-21T10:00:07.000000Z" and ledger.seen(4)[5] == old[5]
