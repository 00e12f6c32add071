"""The receiver's asyncio Redis client (``service.redis_client``) and the event recorder's use of
it: replies matched to callers, error replies, scripts reloaded after a Redis restart, bounded
time against a silent, paused or stopped Redis, recovery afterwards. Real redis-servers; the
only fakes are a TCP server that never answers and a proxy that goes silent (faults)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import uvloop
from celery import Celery

from labelloop.dev.stack import Stack, free_port
from labelloop.errors import UnavailableError
from service import redis_client
from service.events import EventRecorder
from service.protocol import WebhookEvent
from tests.conftest import fixture

_LOOPS = ["asyncio", "uvloop"]  # uvicorn runs the receiver on uvloop; tests run both
_UNAVAILABLE = (redis.RedisError, OSError)


def _run(loop: str, coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro_fn())


def _silent_server() -> tuple[socket.socket, int]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server, server.getsockname()[1]


@pytest.mark.parametrize("loop", _LOOPS)
def test_concurrent_commands_each_get_their_own_reply(redis_url: str, loop: str) -> None:
    """Hundreds of concurrent commands of every reply type, some with replies large enough to
    arrive in pieces, each get their own reply."""
    big = os.urandom(300_000)

    async def main() -> list[Any]:
        client = redis_client.client(redis_url, timeout_s=5)
        try:
            await client.set("big", big)
            await client.rpush("list", "a", "b", "c")  # type: ignore[misc]
            calls: list[Any] = []
            for i in range(300):
                kind = i % 6
                if kind == 0:
                    calls.append(client.echo(f"echo-{i}" * (i % 7 + 1)))
                elif kind == 1:
                    calls.append(client.incrby("counter", i))
                elif kind == 2:
                    calls.append(client.get("big"))
                elif kind == 3:
                    calls.append(client.lrange("list", 0, -1))
                elif kind == 4:
                    calls.append(client.get(f"missing-{i}"))
                else:
                    calls.append(client.ping())
            return list(await asyncio.gather(*calls))
        finally:
            await client.aclose()

    replies = _run(loop, main)
    increments = []
    for i, reply in enumerate(replies):
        kind = i % 6
        if kind == 0:
            assert reply == (f"echo-{i}" * (i % 7 + 1)).encode()
        elif kind == 1:
            increments.append(reply)
        elif kind == 2:
            assert reply == big
        elif kind == 3:
            assert reply == [b"a", b"b", b"c"]
        elif kind == 4:
            assert reply is None
        else:
            assert reply is True
    # Concurrent INCRBYs: every caller saw its own step of the running total.
    assert max(increments) == sum(range(1, 300, 6)) and len(set(increments)) == len(increments)


@pytest.mark.parametrize("loop", _LOOPS)
def test_error_replies_reach_their_caller_and_scripts_reload_after_script_flush(redis_url: str, loop: str) -> None:
    """An error reply is raised to its own caller only; the commands around it get their replies,
    a script's runtime error surfaces, and a registered script runs again after SCRIPT FLUSH
    (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA: redis-py's fallback)."""

    async def main() -> None:
        client = redis_client.client(redis_url, timeout_s=5)
        script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        failing = client.register_script("return redis.call('INCR', KEYS[1])")
        try:
            await client.set("text", "not a number")
            results = await asyncio.gather(
                client.set("a", 1),
                client.incr("text"),
                client.get("a"),
                client.execute_command("NOSUCHCOMMAND"),  # type: ignore[no-untyped-call]
                client.echo("after"),
                return_exceptions=True,
            )
            assert results[0] is True and results[2] == b"1" and results[4] == b"after"
            assert isinstance(results[1], redis.ResponseError) and "not an integer" in str(results[1])
            assert isinstance(results[3], redis.ResponseError) and "unknown command" in str(results[3]).lower()
            await client.script_flush()
            assert await script(["n"], [5]) == 5  # NOSCRIPT, then loaded
            assert await script(["n"], [2]) == 7  # cached now
            with pytest.raises(redis.ResponseError, match="not an integer"):
                await failing(["text"], [])
        finally:
            await client.aclose()

    _run(loop, main)


@pytest.mark.parametrize("loop", _LOOPS)
def test_a_silent_redis_fails_every_command_in_bounded_time(loop: str) -> None:
    """A Redis that accepts connections but never answers: every pending command fails at its
    bound (2 x the timeout per reply, all at once, not one after the other), with a password in
    the URL too (its AUTH never answered)."""
    server, port = _silent_server()

    async def main() -> None:
        for url in (f"redis://127.0.0.1:{port}/0", f"redis://:secret@127.0.0.1:{port}/2"):
            client = redis_client.client(url, timeout_s=0.2)
            t0 = time.perf_counter()
            results = await asyncio.gather(*[client.ping() for _ in range(5)], return_exceptions=True)
            elapsed = time.perf_counter() - t0
            assert all(isinstance(r, redis.RedisError) for r in results), results
            # One after the other would take 5 x 0.4 s.
            assert elapsed < 1.4
            await client.aclose()

    try:
        _run(loop, main)
    finally:
        server.close()


@pytest.mark.parametrize("loop", _LOOPS)
def test_the_recorder_gives_up_at_its_deadline_and_marks_the_project_lost(loop: str) -> None:
    """A webhook recorded against a Redis that never answers is refused (UnavailableError, the
    receiver's 503 "Redis unavailable") at the recorder's own deadline, however long the
    client's timeouts, and its project is marked for a change-log gap once Redis answers."""
    server, port = _silent_server()
    event = WebhookEvent.model_validate(fixture("webhook_ANNOTATION_CREATED.json"))

    async def main() -> None:
        client = redis_client.client(f"redis://127.0.0.1:{port}/0", timeout_s=30)
        recorder = EventRecorder(client, Celery("test"), deadline_s=0.3)
        try:
            t0 = time.perf_counter()
            with pytest.raises(UnavailableError, match="Redis unavailable"):
                await recorder.record_and_enqueue(event)
            assert time.perf_counter() - t0 < 1.5  # the 0.3 s deadline, not the client's 30 s
            assert event.project.id in recorder._lost
        finally:
            await client.aclose()

    try:
        _run(loop, main)
    finally:
        server.close()


@pytest.mark.parametrize("loop", _LOOPS)
def test_a_command_past_its_bound_on_paused_redis_fails_then_the_client_recovers(redis_url: str, loop: str) -> None:
    """A real Redis that stops answering (CLIENT PAUSE) fails the command at its bound; the same
    client then works again once Redis answers."""

    async def main() -> None:
        client = redis_client.client(redis_url, timeout_s=0.1)
        try:
            assert await client.ping() is True  # type: ignore[misc]
            admin = redis.Redis.from_url(redis_url)
            admin.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # WRITE: UNPAUSE still gets through
            t0 = time.perf_counter()
            try:
                with pytest.raises(redis.TimeoutError):
                    await client.set("k", "v")
                assert time.perf_counter() - t0 < 10.0  # the 0.2 s bound, not the 30 s pause
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
            assert await client.set("k", "back") is True
            assert await client.get("k") == b"back"
        finally:
            await client.aclose()

    _run(loop, main)


@pytest.mark.parametrize("loop", _LOOPS)
def test_the_client_reconnects_after_a_redis_restart(tmp_path: Path, loop: str) -> None:
    """Redis stopped: commands fail fast with a connection error (no hang, no retries); Redis
    started again on the same port: the same client reconnects on the next command, and its
    registered script loads into the fresh Redis."""
    port = free_port()
    stack = Stack(tmp_path, {})
    url = stack.start_redis(port, tmp_path / "redis")

    async def main() -> None:
        client = redis_client.client(url, timeout_s=0.3)
        script = client.register_script("return redis.call('INCR', KEYS[1])")
        try:
            assert await script(["n"]) == 1
            stack.stop("redis")
            for _ in range(3):
                t0 = time.perf_counter()
                with pytest.raises(_UNAVAILABLE):
                    await client.ping()  # type: ignore[misc]
                assert time.perf_counter() - t0 < 2.0  # refused at once: no hang, no backoff
            stack.start_redis(port, tmp_path / "redis")
            assert await script(["n"]) == 1  # a fresh, empty Redis: NOSCRIPT, SCRIPT LOAD
        finally:
            await client.aclose()

    try:
        _run(loop, main)
    finally:
        stack.stop_all()


@pytest.mark.parametrize("loop", _LOOPS)
def test_a_caller_that_gives_up_does_not_disturb_the_others(redis_url: str, loop: str) -> None:
    """A caller cancelled while its connection opens leaves the other callers their replies; the
    password and db of the URL are honoured."""
    redis.Redis.from_url(redis_url).execute_command("CONFIG", "SET", "requirepass", "pw")
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    url = f"redis://:pw@{host_port}/3"

    async def main() -> list[int]:
        client = redis_client.client(url, timeout_s=5)
        try:
            quitter = asyncio.ensure_future(client.incr("shared"))
            await asyncio.sleep(0)  # the connection attempt has started
            quitter.cancel()
            return list(await asyncio.gather(*[client.incr("shared") for _ in range(50)]))
        finally:
            await client.aclose()

    admin = redis.Redis.from_url(f"redis://:pw@{host_port}/0")
    try:
        results = _run(loop, main)
        assert len(set(results)) == 50  # each caller its own reply
        assert int(redis.Redis.from_url(url).get("shared") or 0) == max(results)
        assert admin.get("shared") is None  # db 3, not db 0
    finally:
        admin.execute_command("CONFIG", "SET", "requirepass", "")


@pytest.mark.parametrize("loop", _LOOPS)
def test_an_idle_connection_dropped_silently_costs_one_bounded_failure(redis_url: str, loop: str) -> None:
    """A connection that went silent while idle (a NAT or a dead peer: no FIN, no RST) is caught by
    the PING before the next command, within the reply bound (that one command fails: it is not
    retried, the receiver answers 503 and records a gap); the command after it goes over a fresh
    connection; a busy connection is not PINGed."""
    host, port = redis_url.split("//", 1)[1].split("/", 1)[0].split(":")

    async def main() -> None:
        links: list[dict[str, Any]] = []

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: dict[str, Any]) -> None:
            while data := await reader.read(65536):
                if not link["silent"]:
                    writer.write(data)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            link = {"silent": False, "writers": (writer, up_writer)}
            links.append(link)
            await asyncio.gather(pipe(reader, up_writer, link), pipe(up_reader, writer, link))

        proxy = await asyncio.start_server(accept, "127.0.0.1", 0)
        proxy_port = proxy.sockets[0].getsockname()[1]
        client: aioredis.Redis = redis_client.client(
            f"redis://127.0.0.1:{proxy_port}/0", timeout_s=0.2, health_check_s=0.3
        )
        admin = redis.Redis.from_url(redis_url)
        try:
            assert await client.set("k", "v") is True
            pings = admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
            assert await client.get("k") == b"v"  # not idle: no PING
            assert admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0) == pings
            links[0]["silent"] = True
            await asyncio.sleep(0.4)
            t0 = time.perf_counter()
            with pytest.raises(redis.TimeoutError):
                await client.get("k")
            assert time.perf_counter() - t0 < 1.0  # the PING's 0.4 s bound
            assert await client.get("k") == b"v"
            assert len(links) == 2  # reconnected once
        finally:
            await client.aclose()
            for link in links:
                for writer in link["writers"]:
                    writer.close()
            proxy.close()

    _run(loop, main)
