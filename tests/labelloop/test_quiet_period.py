"""One training per burst of annotations: ``Jobs.train`` waits for a quiet period before it reads
the data and absorbs what is pending, against real Redis, with every training ``Jobs`` enqueues
run by the real train path (``Jobs.train`` in a thread). Label Studio is a local server that
records when a run reads it and answers 404 (the run then ends as "failed", releases the project
and starts whatever follow-up the trigger asks for); a gate holds its answer while a test needs a
run to be mid-read."""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from labelloop.dev.stack import wait_until
from labelloop.jobs.jobs import Jobs
from labelloop.jobs.policy import TriggerState
from labelloop.jobs.progress import ProgressStore
from labelloop.names import TASK_TRAIN
from tests.factories import make_settings

N = 10
WAITING = "waiting for a quiet period"


class LabelStudio:
    """A Label Studio that answers every request 404 once its gate is open; ``reads`` holds the
    time (``time.time()``) of each read of a project (a build reads the project and, at the same
    time, its tasks)."""

    def __init__(self) -> None:
        self.reads: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if re.fullmatch(r"/api/projects/\d+/?", self.path.split("?")[0]):
                    outer.reads.append(time.time())
                outer.gate.wait(60)
                body = b'{"detail": "Not found."}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Loop:
    """A ``Jobs`` whose enqueued trainings run at once, each ``Jobs.train`` in its own thread."""

    def __init__(self, redis_url: str, tmp_path: Path, ls: LabelStudio, **settings: Any) -> None:
        self.ls = ls
        self.runs: list[str] = []
        self.outcomes: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []
        self.settings = make_settings(
            tmp_path,
            redis_url=redis_url,
            label_studio=(ls.url, "not-a-real-token"),
            train_every_n=N,
            train_lock_ttl_s=10,  # renewed every third of it: a loaded machine must not lose the lease
            **settings,
        )
        self.jobs = Jobs(self.settings, self.send)
        self.next_annotation = 1

    def send(self, name: str, args: list[Any], queue: str) -> None:
        if name != TASK_TRAIN:
            return
        project_id, run_id = args
        self.runs.append(run_id)

        def train() -> None:
            self.outcomes.append(self.jobs.train(project_id, run_id, None, lambda meta: None))

        thread = threading.Thread(target=train, name=f"train-{run_id}")
        self.threads.append(thread)
        thread.start()

    def annotate(self, project_id: int, count: int, every_s: float) -> list[str]:
        """``count`` new annotations, one event each, ``every_s`` apart; ``handle_event``'s answers."""
        answers = []
        for _ in range(count):
            change = (self.next_annotation, "2026-01-01T00:00:00.000000Z")
            self.next_annotation += 1
            answers.append(self.jobs.handle_event(project_id, "ANNOTATION_CREATED", [change]))
            time.sleep(every_s)
        return answers

    def stage(self, project_id: int) -> str | None:
        return (ProgressStore(self.jobs.redis).get(project_id) or {}).get("stage")

    def settle(self) -> None:
        """Wait for every training run (and the follow-ups they start) to end."""
        while unfinished := [t for t in self.threads if t.is_alive()]:
            for thread in unfinished:
                thread.join(60)
                assert not thread.is_alive(), "a training run did not end"


@pytest.fixture
def fake_ls() -> Iterator[LabelStudio]:
    ls = LabelStudio()
    yield ls
    ls.gate.set()
    ls.server.shutdown()


def absorbed(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "training_absorbed_pending"]


def test_a_burst_of_20_annotations_makes_one_training(redis_url: str, tmp_path: Path, fake_ls: LabelStudio) -> None:
    """20 annotation events over ~4 s (N = 10): the 10th enqueues a run, which waits (stage
    "waiting for a quiet period") until 2 s passed without an annotation, absorbs the 10 events
    that arrived meanwhile and their follow-up request, reads the data once, and ends without a
    follow-up."""
    loop = Loop(redis_url, tmp_path, fake_ls, train_quiet_s=2.0, train_max_delay_s=60.0)
    with capture_logs() as logs:
        assert loop.annotate(1, N, every_s=0.2)[-1] == "started"
        wait_until(lambda: loop.stage(1) == WAITING, 5, "the run waiting for quiet", 0.02)
        assert loop.annotate(1, N, every_s=0.2)[-1] == "coalesced"
        last_event = time.time() - 0.2
        assert not fake_ls.reads, "the run waits; it has not read the data"
        loop.settle()
    assert len(loop.runs) == 1, "one training for the burst, no follow-up"
    [outcome] = loop.outcomes
    assert outcome["status"] == "failed" and "HTTP 404" in outcome["error"], "it read Label Studio"
    assert len(fake_ls.reads) == 1 and fake_ls.reads[0] - last_event >= 2.0 - 0.3
    [absorb] = absorbed(logs)
    assert (absorb["pending"], absorb["followup"]) == (10, True)
    assert [e for e in logs if e["event"] == "training_waiting_quiet"]
    assert loop.jobs.trigger().state(1) == TriggerState()


def test_annotations_after_the_build_read_the_data_cause_a_follow_up(
    redis_url: str, tmp_path: Path, fake_ls: LabelStudio
) -> None:
    """N annotations arrive while a run's build is reading Label Studio (after its quiet period):
    they are not absorbed, so the run's end starts one follow-up, which waits for its own quiet
    period and then ends without another."""
    loop = Loop(redis_url, tmp_path, fake_ls, train_quiet_s=1.0, train_max_delay_s=60.0)
    fake_ls.gate.clear()
    with capture_logs() as logs:
        loop.annotate(2, N, every_s=0.05)
        wait_until(lambda: len(fake_ls.reads) == 1, 30, "the build reading Label Studio", 0.05)
        answers = loop.annotate(2, N, every_s=0.05)
        assert answers[-1] == "coalesced" and loop.jobs.trigger().state(2).followup
        fake_ls.gate.set()
        wait_until(lambda: len(loop.runs) == 2, 30, "the follow-up", 0.05)
        loop.settle()
    assert len(loop.runs) == 2 and len(fake_ls.reads) == 2
    assert [o["status"] for o in loop.outcomes] == ["failed", "failed"]
    assert [(e["pending"], e["followup"]) for e in absorbed(logs)] == [(0, False), (0, False)]
    assert loop.jobs.trigger().state(2) == TriggerState()


def test_the_max_delay_bounds_the_wait_under_a_continuous_stream(
    redis_url: str, tmp_path: Path, fake_ls: LabelStudio
) -> None:
    """Annotations every 0.3 s never leave a quiet period of 2 s: the run reads the data
    train_max_delay_s (4 s) after it became due, not later."""
    loop = Loop(redis_url, tmp_path, fake_ls, train_quiet_s=2.0, train_max_delay_s=4.0)
    loop.annotate(3, N - 1, every_s=0.0)
    assert loop.annotate(3, 1, every_s=0.0) == ["started"]
    due = time.time()
    while not fake_ls.reads:
        assert time.time() - due < 30, "the run never read the data"
        loop.annotate(3, 1, every_s=0.3)
    waited = fake_ls.reads[0] - due
    print(f"read the data {waited:.2f} s after it became due")
    assert 4.0 - 0.3 <= waited <= 4.0 + 2.0
    loop.settle()


def test_start_training_does_not_wait_and_ends_a_wait(redis_url: str, tmp_path: Path, fake_ls: LabelStudio) -> None:
    """START_TRAINING trains at once though annotations just arrived (quiet period 60 s), and
    one that arrives while an annotation-started run waits ends the wait: the run absorbs it and
    no follow-up runs."""
    loop = Loop(redis_url, tmp_path, fake_ls, train_quiet_s=60.0, train_max_delay_s=120.0)
    loop.annotate(4, 3, every_s=0.0)
    requested = time.time()
    assert loop.jobs.handle_event(4, "START_TRAINING", []) == "started"
    wait_until(lambda: bool(fake_ls.reads), 10, "the build reading Label Studio", 0.05)
    assert fake_ls.reads[0] - requested < 5
    loop.settle()
    assert len(loop.runs) == 1

    with capture_logs() as logs:
        loop.annotate(4, N, every_s=0.0)
        wait_until(lambda: loop.stage(4) == WAITING, 10, "the run waiting for quiet", 0.05)
        requested = time.time()
        assert loop.jobs.handle_event(4, "START_TRAINING", []) == "coalesced"
        wait_until(lambda: len(fake_ls.reads) == 2, 10, "the build reading Label Studio", 0.05)
        assert fake_ls.reads[1] - requested < 5
        loop.settle()
    assert len(loop.runs) == 2, "the START_TRAINING that ended the wait made no follow-up"
    assert [(e["pending"], e["followup"]) for e in absorbed(logs)] == [(0, True)]


def test_a_cancel_stops_a_waiting_run_and_releases_the_project(
    redis_url: str, tmp_path: Path, fake_ls: LabelStudio
) -> None:
    """``labelloop cancel`` during the quiet period ends the run before it reads anything; the
    project is free again."""
    loop = Loop(redis_url, tmp_path, fake_ls, train_quiet_s=60.0, train_max_delay_s=120.0)
    loop.annotate(5, N, every_s=0.0)
    wait_until(lambda: loop.stage(5) == WAITING, 10, "the run waiting for quiet", 0.05)
    assert ProgressStore(loop.jobs.redis).request_cancel(5) == loop.runs[0]
    loop.settle()
    [outcome] = loop.outcomes
    assert outcome["status"] == "failed" and "cancelled while waiting" in outcome["error"]
    assert not fake_ls.reads and not loop.jobs.trigger().state(5).training
