"""Registry endpoints of the receiver stay off its event loop."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from labelloop.dev.stack import Stack, free_port
from labelloop.registry.store import Registry
from tests.factories import publish_version, settings_env

VERSIONS = 20
ANNOTATIONS = 10_000


def test_listing_versions_and_metrics_do_not_stall_the_event_loop(redis_url: str, tmp_path: Path) -> None:
    """With 20 versions trained on up to 10,000 annotations each, concurrent /projects/{id}/versions, /versions and
    /metrics requests to the real receiver never hold up a /health request for long (the loop is measured by
    /health's latency), and the listing still reports every version with its annotation count."""
    registry = Registry(tmp_path / "models")
    for v in range(1, VERSIONS + 1):
        n = ANNOTATIONS * v // VERSIONS
        seen = {str(i): f"2026-01-01T00:00:{i % 60:02d}.000000Z" for i in range(n)}
        publish_version(registry, 1, promote=v % 3 != 0, annotations=seen, metrics={"map50_95": v / 100})
    stack = Stack(tmp_path, settings_env(tmp_path, redis_url=redis_url))
    try:
        url = stack.start_receiver(free_port())
        with httpx.Client(base_url=url, timeout=60) as http:
            first = http.get("/projects/1/versions")
            assert first.status_code == 200
            listed = first.json()["versions"]
            assert [e["version"] for e in listed] == [f"v{v}" for v in range(1, VERSIONS + 1)]
            assert listed[-1]["annotations"] == ANNOTATIONS
        done = threading.Event()
        stalls: list[float] = []

        def probe() -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                while not done.is_set():
                    t0 = time.perf_counter()
                    assert http.get("/health").status_code == 200
                    stalls.append(time.perf_counter() - t0)

        def load(path: str) -> int:
            with httpx.Client(base_url=url, timeout=60) as http:
                return sum(http.get(path).status_code == 200 for _ in range(10))

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            with ThreadPoolExecutor(4) as pool:
                paths = ["/projects/1/versions", "/metrics", "/versions", "/projects/1/versions"]
                assert list(pool.map(load, paths)) == [10] * 4
        finally:
            done.set()
            prober.join(timeout=60)
        print(f"/health latency under registry load: max {max(stalls) * 1000:.1f} ms over {len(stalls)} requests")
        assert len(stalls) >= 5 and max(stalls) < 0.5
    finally:
        stack.stop_all()
