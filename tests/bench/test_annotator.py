"""bench.annotator against a real HTTP server on loopback that fails as Label Studio on SQLite does."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from bench.annotator import Annotator


class _Flaky(BaseHTTPRequestHandler):
    """``GET /api/projects/{id}/next/``: 500 for the first ``fail`` requests, then the task (or 404)."""

    fail = 0
    seen = 0
    task: dict | None = {"id": 7, "data": {}, "predictions": [], "queue": "Active learning or random queue"}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        cls = type(self)
        cls.seen += 1
        if cls.seen <= cls.fail:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"database is locked")
            return
        body = json.dumps(cls.task).encode() if cls.task is not None else b"{}"
        self.send_response(200 if cls.task is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Flaky]]]:
    handler = type("Handler", (_Flaky,), {"fail": 0, "seen": 0})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_next_task_asks_again_after_a_server_error(server: tuple[str, type[_Flaky]]) -> None:
    url, handler = server
    handler.fail = 2
    annotator = Annotator(url, "token")
    try:
        task = annotator.next_task(1, backoff_s=0.01)
    finally:
        annotator.close()
    assert task is not None and task["id"] == 7
    assert handler.seen == 3


def test_next_task_gives_up_after_five_server_errors_and_none_is_none(server: tuple[str, type[_Flaky]]) -> None:
    url, handler = server
    handler.fail = 100
    annotator = Annotator(url, "token")
    try:
        with pytest.raises(httpx.HTTPStatusError, match="500"):
            annotator.next_task(1, backoff_s=0.01)
        assert handler.seen == 5
        handler.fail, handler.task = 0, None
        assert annotator.next_task(1) is None  # 404: nothing left
    finally:
        annotator.close()
