"""The receiver's front door under real uvicorn and real sockets: idle connections cannot take it
down, requests in flight are bounded inside the app (503 with a reason, and a gap for a refused
webhook), a request whose body never comes is answered 408 and gives its place back, and one
unauthenticated request cannot invalidate every project's change log."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from labelloop import keys
from labelloop.dev.stack import Stack, free_port, wait_until
from labelloop.events.changes import ChangeLog, ChangeLogUnusable
from tests.conftest import connect, fixture
from tests.factories import settings_env

SECRET = "front-door-secret-0123456789"
BODY_TIMEOUT_S = 2.0
AUTH = {"X-Labelloop-Secret": SECRET}


def _created(annotation_id: int) -> dict[str, Any]:
    body = fixture("webhook_ANNOTATION_CREATED.json")
    body["annotation"]["id"] = annotation_id
    return body


@pytest.fixture
def front(tmp_path: Path, redis_url: str) -> Iterator[tuple[Stack, str]]:
    """``labelloop serve`` (real uvicorn) with the webhook secret, a 2 s header timeout, a 2 s body
    timeout and at most 2 requests in flight; project 1 connected."""
    redis.Redis.from_url(redis_url).flushdb()
    stack = Stack(
        tmp_path,
        settings_env(
            tmp_path,
            redis_url=redis_url,
            LABELLOOP_WEBHOOK_SECRET=SECRET,
            LABELLOOP_HEADER_TIMEOUT_S="2",
            LABELLOOP_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
            LABELLOOP_MAX_CONCURRENT_REQUESTS="2",
        ),
    )
    url = stack.start_receiver(free_port())
    with httpx.Client(base_url=url, timeout=10, headers=AUTH) as http:
        connect(http)
    yield stack, url
    stack.stop_all()


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the receiver closed ``sock`` (EOF or reset); False while it stays open."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_idle_sockets_neither_block_requests_nor_stay_open(front: tuple[Stack, str]) -> None:
    """With 200 idle TCP connections held (no byte sent), /health and an authenticated webhook
    answer 200/201, and the idle connections (and one that sent half a request head) are closed
    by the receiver after the header timeout."""
    _stack, url = front
    idle = [socket.create_connection(_address(url), timeout=5) for _ in range(200)]
    slow = socket.create_connection(_address(url), timeout=5)
    slow.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.get("/health").status_code == 200
            assert http.post("/webhook", json=_created(1), headers=AUTH).status_code == 201
        wait_until(lambda: all(_closed_by_peer(s) for s in [*idle, slow]), 20, "idle connections closed")
    finally:
        for s in [*idle, slow]:
            s.close()


def _half_sent_webhook(url: str, path: str = "/webhook") -> socket.socket:
    """An authenticated webhook (to ``path``) whose head is sent and whose body is not: a request
    in flight."""
    body = json.dumps(_created(99)).encode()
    sock = socket.create_connection(_address(url), timeout=5)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Labelloop-Secret: {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:10])
    return sock


def test_requests_in_flight_are_bounded_in_the_app_and_a_refused_webhook_leaves_a_gap(
    front: tuple[Stack, str], redis_url: str
) -> None:
    """Beyond LABELLOOP_MAX_CONCURRENT_REQUESTS requests in flight, a webhook gets 503 with a reason
    and Retry-After, and the refusal marks the change logs (reconciliation reads Label Studio)
    and is counted in /metrics (also among the webhooks refused unread, which the alert watches);
    /health still answers; once the requests in flight end, webhooks are accepted again."""
    _stack, url = front
    client = redis.Redis.from_url(redis_url)
    log = ChangeLog(client)
    with httpx.Client(base_url=url, timeout=10, headers=AUTH) as http:
        assert http.post("/webhook", json=_created(1)).status_code == 201
        position = log.read(1, log.position(1)).position
        busy: list[socket.socket] = []
        try:
            ids = iter(range(1000, 2000))

            def refused() -> bool:
                # Two webhooks held in flight; a webhook sent before the receiver has read both
                # heads takes a place itself (one of the held ones is then refused), so each try
                # starts over with two fresh ones.
                for s in busy:
                    s.close()
                busy[:] = [_half_sent_webhook(url) for _ in range(2)]
                resp = http.post("/webhook", json=_created(next(ids)))
                assert resp.status_code in (201, 503), resp.text
                if resp.status_code != 503:
                    return False
                assert "in flight" in resp.json()["error"] and resp.headers["retry-after"]
                return True

            wait_until(refused, 20, "a webhook refused beyond the requests in flight")
            assert http.get("/health").status_code == 200
            with pytest.raises(ChangeLogUnusable, match="refused"):
                log.read(1, position)
        finally:
            for s in busy:
                s.close()
        wait_until(lambda: http.post("/webhook", json=_created(next(ids))).status_code == 201, 10, "accepted again")
        metrics = http.get("/metrics").text
        assert 'labelloop_requests_refused_busy_total{route="webhook"}' in metrics
        busy = re.search(r'labelloop_webhooks_refused_unread_total\{reason="busy"\} (\S+)', metrics)
        assert busy and float(busy[1]) >= 1, metrics


def _answer(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the receiver sends on ``sock`` until it closes it; fails after ``timeout_s``."""
    sock.setblocking(True)
    sock.settimeout(timeout_s)
    out = bytearray()
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        pytest.fail(f"no answer and the connection still open after {timeout_s:g} s; got {bytes(out)!r}")
    return bytes(out)


def test_a_webhook_whose_body_never_comes_gets_408_and_gives_its_place_back(
    front: tuple[Stack, str], redis_url: str
) -> None:
    """Authenticated webhooks that send their head and part of their body, then nothing, as many
    as the requests in flight allowed, are each answered 408 with a reason once
    LABELLOOP_BODY_TIMEOUT_S has passed and their connections closed; each refusal marks the change
    logs as any refused webhook does, and a webhook sent afterwards is accepted (their places are
    free again). A JSON route's body (/setup) has the same deadline."""
    _stack, url = front
    client = redis.Redis.from_url(redis_url)
    log = ChangeLog(client)
    with httpx.Client(base_url=url, timeout=10, headers=AUTH) as http:
        assert http.post("/webhook", json=_created(1)).status_code == 201
        position = log.read(1, log.position(1)).position
        refused = int(client.get(keys.WEBHOOKS_REFUSED) or 0)
        t0 = time.monotonic()
        held = [_half_sent_webhook(url) for _ in range(2)]
        try:
            answers = [_answer(s, BODY_TIMEOUT_S + 5) for s in held]
        finally:
            for s in held:
                s.close()
        elapsed = time.monotonic() - t0
        for answer in answers:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), answer
            assert b"LABELLOOP_BODY_TIMEOUT_S" in body, answer
        assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + 5, elapsed
        assert int(client.get(keys.WEBHOOKS_REFUSED) or 0) == refused + len(held)
        with pytest.raises(ChangeLogUnusable, match="refused"):
            log.read(1, position)
        assert http.post("/webhook", json=_created(2)).status_code == 201
    setup = _half_sent_webhook(url, "/setup")
    try:
        assert _answer(setup, BODY_TIMEOUT_S + 5).startswith(b"HTTP/1.1 408 ")
    finally:
        setup.close()


def test_an_unauthenticated_refusal_leaves_every_change_log_valid(front: tuple[Stack, str], redis_url: str) -> None:
    """A webhook refused for lack of a credential (401, or 415 without one) leaves the refused
    counter and every project's change log valid; an authenticated refused one (415) marks them."""
    _stack, url = front
    client = redis.Redis.from_url(redis_url)
    log = ChangeLog(client)
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/webhook", json=_created(1), headers=AUTH).status_code == 201
        position = log.read(1, log.position(1)).position
        counter = client.get(keys.WEBHOOKS_REFUSED)
        assert http.post("/webhook", json=_created(2), headers={"X-Labelloop-Secret": "wrong"}).status_code == 401
        assert http.post("/webhook", json=_created(2)).status_code == 401
        assert http.post("/webhook", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
        assert http.post("/webhook", content=b"{", headers={"content-type": "application/json"}).status_code == 401
        assert client.get(keys.WEBHOOKS_REFUSED) == counter
        log.read(1, position)  # still usable
        assert http.post("/webhook", content=b"{}", headers={**AUTH, "content-type": "text/plain"}).status_code == 415
        with pytest.raises(ChangeLogUnusable, match="refused"):
            log.read(1, position)
