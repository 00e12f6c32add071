"""Receiver robustness: a Redis outage mid-run, and thousands of generated bodies and headers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from labelloop.dev.stack import Stack, free_port
from labelloop.events.changes import ChangeLog, ChangeLogUnusable
from labelloop.settings import Settings
from service.app import create_app
from service.events import EVENT_STREAM
from service.protocol import ACCEPTED_ACTIONS
from service.resp import RedisReplyError, RespClient, Script, encode_command
from tests.conftest import connect, fixture


def _created(annotation_id: int) -> dict[str, Any]:
    body = fixture("webhook_ANNOTATION_CREATED.json")
    body["annotation"]["id"] = annotation_id
    return body


def _queued_args(client: redis.Redis, queue: str = "events") -> list[list[Any]]:
    """Decoded task arguments of the Celery messages waiting in ``queue``."""
    out = []
    for raw in client.lrange(queue, 0, -1):
        msg = json.loads(raw)
        assert msg["headers"]["task"] == "labelloop.handle_event"
        args, kwargs, _embed = json.loads(base64.b64decode(msg["body"]))
        assert kwargs == {}
        out.append(args)
    return out


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Stack, str, int]]:
    """The receiver under uvicorn (its own process) over a Redis with an append-only file."""
    port = free_port()
    stack = Stack(tmp_path, {"LABELLOOP_MODELS_DIR": str(tmp_path / "models")})
    stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(port, tmp_path / "redis", persist=True)
    url = stack.start_receiver(free_port())
    with httpx.Client(base_url=url, timeout=10) as http:
        connect(http)
    yield stack, url, port
    stack.stop_all()


def test_redis_outage_gives_fast_503_then_recovers_without_duplicates(
    receiver: tuple[Stack, str, int], tmp_path: Path
) -> None:
    """While Redis is down every webhook gets 503 within 1 s; after Redis restarts the same receiver
    accepts new events, and deliveries accepted before the outage stay deduplicated. The refused
    webhooks leave a gap in the project's change log, so rebuilds read Label Studio again."""
    stack, url, port = receiver
    with httpx.Client(base_url=url, timeout=5) as http:
        empty = ChangeLog(redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])).position(1)
        for i in range(1, 21):
            assert http.post("/webhook", json=_created(i)).status_code == 201
        before = ChangeLog(redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])).read(1, empty)
        assert len(before.entries) == 20

        stack.stop("redis")
        for i in range(21, 31):
            t0 = time.perf_counter()
            resp = http.post("/webhook", json=_created(i))
            assert resp.status_code == 503, resp.text
            assert time.perf_counter() - t0 < 5.0  # not a hang (the Redis timeout is 0.3 s)
            assert "Redis" in resp.json()["error"]
        metrics = http.get("/metrics").text
        assert 'labelloop_webhook_events_total{action="ANNOTATION_CREATED",outcome="unavailable"} 10.0' in metrics

        stack.start_redis(port, tmp_path / "redis", persist=True)
        for i in range(21, 31):
            assert http.post("/webhook", json=_created(i)).status_code == 201
        for i in range(1, 31):
            resp = http.post("/webhook", json=_created(i))
            assert (resp.status_code, resp.json()) == (200, {"status": "duplicate"})

    client = redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])
    assert client.xlen(EVENT_STREAM) == 30
    ids = sorted(args[2][0][0] for args in _queued_args(client))
    assert ids == list(range(1, 31))
    with pytest.raises(ChangeLogUnusable, match="gap"):
        ChangeLog(client).read(1, before.position)


# --- generated input -----------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_action = st.sampled_from(sorted(ACCEPTED_ACTIONS) + ["PROJECT_UPDATED", "", "annotation_created"]) | st.text(
    max_size=12
)
_id = st.integers(-3, 2**40) | st.text(max_size=5) | st.none() | st.floats(allow_nan=False)
_annotation = st.fixed_dictionaries(
    {"id": _id}, optional={"updated_at": st.text(max_size=30) | st.none(), "task": _id, "was_cancelled": _json}
)
_body = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"action": _action},
        optional={
            "project": st.fixed_dictionaries({"id": _id}) | _id | _json,
            "annotation": _annotation | st.lists(_annotation, max_size=3) | _json,
            "annotations": st.lists(st.fixed_dictionaries({"id": _id}), max_size=3) | _json,
        },
    ),
)
_content_type = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "",
        "application/x-www-form-urlencoded",
        "application/vnd.api+json",
        "multipart/form-data",
    ]
)


@pytest.fixture(scope="module")
def fuzz_client(redis_server: tuple[Stack, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = redis_server[1]
    redis.Redis.from_url(url).flushall()
    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app(Settings(redis_url=url, models_dir=tmp / "m", cache_dir=tmp / "c"))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=_body, content_type=_content_type, raw=st.booleans(), junk=st.binary(max_size=64))
def test_generated_webhooks_never_5xx_and_enqueue_only_valid_events(
    fuzz_client: TestClient, body: Any, content_type: str, raw: bool, junk: bytes
) -> None:
    """5,000 generated bodies and headers: never a 5xx, never a traceback, and every enqueued event
    has a positive project id, an accepted action and well-formed changes."""
    content = junk if raw else json.dumps(body).encode()
    resp = fuzz_client.post("/webhook", content=content, headers={"content-type": content_type})
    assert resp.status_code < 500, resp.text
    assert "Traceback" not in resp.text
    client = redis.Redis.from_url(str(fuzz_client.app.state.labelloop.settings.redis_url))  # type: ignore[attr-defined]
    for project_id, action, changes in _queued_args(client):
        assert isinstance(project_id, int) and project_id > 0
        assert action in ACCEPTED_ACTIONS
        assert all(isinstance(i, int) and i > 0 and (u is None or isinstance(u, str)) for i, u in changes)
    client.delete("events")


# --- the webhook path's Redis client (service.resp) -------------------------------------------

_LOOPS = ["asyncio", "uvloop"]  # uvicorn runs the receiver on uvloop; tests run both


def _run(loop: str, coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro_fn())


def _connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


@pytest.mark.parametrize("loop", _LOOPS)
def test_resp_pipelined_replies_match_requests_in_order(redis_url: str, loop: str) -> None:
    """Hundreds of concurrent commands of every reply type, some with replies large enough to
    arrive in pieces, go over one connection and each caller gets its own reply."""
    big = os.urandom(300_000)

    async def main() -> list[Any]:
        client = RespClient(redis_url, timeout=5)
        try:
            await client.execute("SET", "big", big)
            await client.execute("RPUSH", "list", "a", "b", "c")
            calls = []
            for i in range(300):
                kind = i % 6
                if kind == 0:
                    calls.append(client.execute("ECHO", f"echo-{i}" * (i % 7 + 1)))
                elif kind == 1:
                    calls.append(client.execute("INCRBY", "counter", i))
                elif kind == 2:
                    calls.append(client.execute("GET", "big"))
                elif kind == 3:
                    calls.append(client.execute("LRANGE", "list", 0, -1))
                elif kind == 4:
                    calls.append(client.execute("GET", f"missing-{i}"))
                else:
                    calls.append(client.execute("PING"))
            return list(await asyncio.gather(*calls))
        finally:
            await client.close()

    admin = redis.Redis.from_url(redis_url)
    before = _connections_received(admin)
    replies = _run(loop, main)
    assert _connections_received(admin) - before == 1
    total = 0
    for i, reply in enumerate(replies):
        kind = i % 6
        if kind == 0:
            assert reply == (f"echo-{i}" * (i % 7 + 1)).encode()
        elif kind == 1:
            total += i
            assert reply == total
        elif kind == 2:
            assert reply == big
        elif kind == 3:
            assert reply == [b"a", b"b", b"c"]
        elif kind == 4:
            assert reply is None
        else:
            assert reply == b"PONG"


@pytest.mark.parametrize("loop", _LOOPS)
def test_resp_error_replies_are_raised_and_do_not_desync(redis_url: str, loop: str) -> None:
    """An error reply is raised to its own caller only; the commands around it get their replies,
    a script's runtime error surfaces, and EVALSHA falls back to EVAL after SCRIPT FLUSH."""
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    failing = Script("return redis.call('INCR', KEYS[1])")

    async def main() -> None:
        client = RespClient(redis_url)
        try:
            await client.execute("SET", "text", "not a number")
            results = await asyncio.gather(
                client.execute("SET", "a", 1),
                client.execute("INCR", "text"),
                client.execute("GET", "a"),
                client.execute("NOSUCHCOMMAND"),
                client.execute("ECHO", "after"),
                return_exceptions=True,
            )
            assert results[0] == b"OK" and results[2] == b"1" and results[4] == b"after"
            assert isinstance(results[1], RedisReplyError) and "not an integer" in str(results[1])
            assert isinstance(results[3], RedisReplyError) and "unknown command" in str(results[3]).lower()
            await client.execute("SCRIPT", "FLUSH")
            assert await client.evalsha(script, ["n"], [5]) == 5  # NOSCRIPT, then EVAL
            assert await client.evalsha(script, ["n"], [2]) == 7  # cached now
            with pytest.raises(RedisReplyError, match="not an integer"):
                await client.evalsha(failing, ["text"], [])
        finally:
            await client.close()

    _run(loop, main)


def _silent_server() -> tuple[socket.socket, int]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server, server.getsockname()[1]


@pytest.mark.parametrize("loop", _LOOPS)
def test_resp_timeouts_are_bounded(loop: str) -> None:
    """A Redis that accepts but never answers: every pending command fails with TimeoutError at
    its deadline; a connection whose AUTH is never answered fails within the connect timeout."""
    server, port = _silent_server()

    async def main() -> None:
        client = RespClient(f"redis://127.0.0.1:{port}/0", connect_timeout=0.2, timeout=0.3)
        t0 = time.perf_counter()
        results = await asyncio.gather(*[client.execute("PING") for _ in range(5)], return_exceptions=True)
        elapsed = time.perf_counter() - t0
        assert all(isinstance(r, TimeoutError) for r in results), results
        # At the deadline, all at once: one after the other would take 5 x 0.3 s.
        assert 0.25 < elapsed < 1.4
        await client.close()

        authed = RespClient(f"redis://:secret@127.0.0.1:{port}/0", connect_timeout=0.2, timeout=2)
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError):
            await authed.execute("PING")
        assert time.perf_counter() - t0 < 1.8  # the connect timeout (0.2 s), not the command timeout (2 s)
        await authed.close()

    try:
        _run(loop, main)
    finally:
        server.close()


@pytest.mark.parametrize("loop", _LOOPS)
def test_resp_command_past_deadline_on_paused_redis_then_recovers(redis_url: str, loop: str) -> None:
    """A real Redis that stops answering (CLIENT PAUSE) fails the command at its deadline; the
    same client then reconnects and works once Redis answers again."""

    async def main() -> None:
        client = RespClient(redis_url, timeout=0.2)
        try:
            assert await client.execute("PING") == b"PONG"
            admin = redis.Redis.from_url(redis_url)
            admin.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # WRITE: UNPAUSE still gets through
            t0 = time.perf_counter()
            try:
                with pytest.raises(TimeoutError):
                    await client.execute("SET", "k", "v")
                assert time.perf_counter() - t0 < 10.0  # the 0.2 s deadline, not the 30 s pause
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
            assert await client.execute("SET", "k", "back") == b"OK"
            assert await client.execute("GET", "k") == b"back"
        finally:
            await client.close()

    _run(loop, main)


@pytest.mark.parametrize("loop", _LOOPS)
def test_resp_reconnects_after_redis_restart(tmp_path: Path, loop: str) -> None:
    """Redis stopped: commands fail fast with a connection error (no hang); Redis started again on
    the same port: the same client reconnects on the next command, and its script reloads."""
    port = free_port()
    stack = Stack(tmp_path, {})
    url = stack.start_redis(port, tmp_path / "redis")
    script = Script("return redis.call('INCR', KEYS[1])")

    async def main() -> None:
        client = RespClient(url, connect_timeout=0.3, timeout=0.6)
        try:
            assert await client.evalsha(script, ["n"], []) == 1
            stack.stop("redis")
            for _ in range(3):
                t0 = time.perf_counter()
                with pytest.raises(OSError):
                    await client.execute("PING")
                assert time.perf_counter() - t0 < 5.0  # no hang
            assert not client.connected
            stack.start_redis(port, tmp_path / "redis")
            assert await client.evalsha(script, ["n"], []) == 1  # a fresh, empty Redis: NOSCRIPT, EVAL
            assert client.connected
        finally:
            await client.close()

    try:
        _run(loop, main)
    finally:
        stack.stop_all()


@pytest.mark.parametrize("loop", _LOOPS)
def test_resp_concurrent_callers_share_one_connect(redis_url: str, loop: str) -> None:
    """Callers that arrive while the connection opens wait for the same attempt, and a caller that
    gives up does not cancel it for the others; db and password from the URL are honoured."""
    redis.Redis.from_url(redis_url).execute_command("CONFIG", "SET", "requirepass", "pw")
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    url = f"redis://:pw@{host_port}/3"

    async def main() -> None:
        client = RespClient(url)
        try:
            quitter = asyncio.ensure_future(client.execute("INCR", "shared"))
            await asyncio.sleep(0)  # the connection attempt has started
            quitter.cancel()
            results = await asyncio.gather(*[client.execute("INCR", "shared") for _ in range(50)])
            assert sorted(results) == list(range(1, 51))
        finally:
            await client.close()

    admin = redis.Redis.from_url(f"redis://:pw@{host_port}/0")
    try:
        before = _connections_received(admin)
        _run(loop, main)
        assert _connections_received(admin) - before == 1
        assert redis.Redis.from_url(url).get("shared") == b"50"
    finally:
        admin.execute_command("CONFIG", "SET", "requirepass", "")


def test_resp_encodes_commands_as_bulk_strings() -> None:
    """str as UTF-8, int as decimal, bytes as they are; booleans and other types are refused."""
    assert (
        encode_command(("SET", b"k\r\n", 42, "é"))
        == b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n42\r\n$2\r\n\xc3\xa9\r\n"
    )
    for bad in (True, None, [1]):
        with pytest.raises(TypeError):
            encode_command(("SET", "k", bad))


def test_webhook_under_uvicorn_streams_and_limits_chunked_bodies(receiver: tuple[Stack, str, int]) -> None:
    """Through uvicorn (uvloop, httptools): a chunked body without Content-Length is read whole,
    a chunked body over the limit is a 413, and GET /webhook is a 405."""
    _stack, url, _port = receiver
    raw = json.dumps(_created(7)).encode()

    def pieces(data: bytes, size: int) -> Iterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    with httpx.Client(base_url=url, timeout=10) as http:
        resp = http.post("/webhook", content=pieces(raw, 500), headers={"content-type": "application/json"})
        assert resp.status_code == 201, resp.text
        big = raw + b" " * (11 * 1024 * 1024)
        resp = http.post("/webhook", content=pieces(big, 1024 * 1024), headers={"content-type": "application/json"})
        assert resp.status_code == 413
        assert http.get("/webhook").status_code == 405


@pytest.mark.parametrize("loop", _LOOPS)
def test_resp_idle_connection_dropped_silently_is_replaced(redis_url: str, loop: str) -> None:
    """A connection that went silent while idle (a NAT or a dead peer: no FIN, no RST) is caught by
    the PING before the next command, and the command goes over a fresh connection instead of
    timing out; a busy connection is not PINGed."""
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
        client = RespClient(f"redis://127.0.0.1:{proxy_port}/0", connect_timeout=0.2, timeout=0.6)
        client.health_check_interval = 0.3
        admin = redis.Redis.from_url(redis_url)
        try:
            assert await client.execute("SET", "k", "v") == b"OK"
            pings = admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
            assert await client.execute("GET", "k") == b"v"  # not idle: no PING
            assert admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0) == pings
            links[0]["silent"] = True
            await asyncio.sleep(0.4)
            t0 = time.perf_counter()
            assert await client.execute("GET", "k") == b"v"
            assert time.perf_counter() - t0 < 0.6
            assert len(links) == 2  # reconnected once
        finally:
            await client.close()
            for link in links:
                for writer in link["writers"]:
                    writer.close()
            proxy.close()

    _run(loop, main)


SECRET = "refusal-test-secret-0123456789"


def test_refused_webhooks_leave_their_gap_in_redis_across_a_killed_receiver(redis_url: str, tmp_path: Path) -> None:
    """A webhook refused with 422 (a known project named in its body) or 413 (its project not
    read) makes the change log unusable through Redis at once: killing the receiver right after
    the refusal loses nothing, and a webhook of an unknown project still writes nothing."""
    env = {
        "LABELLOOP_MODELS_DIR": str(tmp_path / "models"),
        "LABELLOOP_REDIS_URL": redis_url,
        "LABELLOOP_WEBHOOK_SECRET": SECRET,
        "LABELLOOP_MAX_BODY_BYTES": str(64 * 1024),
    }
    stack = Stack(tmp_path, env)
    port = free_port()
    url = stack.start_receiver(port)
    client = redis.Redis.from_url(redis_url)
    log = ChangeLog(client)
    auth = {"X-Labelloop-Secret": SECRET}
    invalid = _created(2)
    invalid["annotation"]["id"] = "not an id"
    big = _created(3)
    big["annotation"]["result"] = [{"value": {"text": "x" * 70_000}}]
    refusals: list[tuple[str, int, dict[str, Any], dict[str, str]]] = [
        ("gap", 422, invalid, auth),
        ("refused", 413, big, auth),
    ]
    try:
        with httpx.Client(base_url=url, timeout=10, headers=auth) as http:
            connect(http)
            unknown = _created(5)
            unknown["project"]["id"] = 4242
            unknown["annotation"]["id"] = "not an id"
            before = set(client.keys("*"))
            assert http.post("/webhook", json=unknown).status_code == 422
            assert set(client.keys("*")) == before
        for n, (reason, status, body, headers) in enumerate(refusals):
            with httpx.Client(base_url=url, timeout=10) as http:
                assert http.post("/webhook", json=_created(100 + n), headers=auth).status_code == 201
                position = log.read(1, log.position(1)).position
                assert http.post("/webhook", json=body, headers=headers).status_code == status
            stack.stop("receiver", signal.SIGKILL)  # whatever it kept in memory is gone
            url = stack.start_receiver(port)
            with pytest.raises(ChangeLogUnusable, match=reason):
                log.read(1, position)
    finally:
        stack.stop_all()


def test_a_receiver_killed_while_redis_refused_writes_still_leaves_a_gap(
    receiver: tuple[Stack, str, int],
) -> None:
    """A webhook refused with 503 while Redis refuses writes (out of memory under noeviction), by a
    receiver killed before Redis took writes again, still makes the change log unusable: the
    receiver that starts next makes one gap in every log."""
    stack, url, _port = receiver
    client = redis.Redis.from_url(stack.env["LABELLOOP_REDIS_URL"])
    log = ChangeLog(client)
    with httpx.Client(base_url=url, timeout=5) as http:
        assert http.post("/webhook", json=_created(1)).status_code == 201
        position = log.read(1, log.position(1)).position
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        try:
            assert http.post("/webhook", json=_created(2)).status_code == 503
        finally:
            client.config_set("maxmemory", 0)
    stack.stop("receiver", signal.SIGKILL)
    url = stack.start_receiver(int(url.rsplit(":", 1)[1]))
    with httpx.Client(base_url=url, timeout=5) as http:
        assert http.post("/webhook", json=_created(3)).status_code == 201
    with pytest.raises(ChangeLogUnusable, match="refused"):
        log.read(1, position)
