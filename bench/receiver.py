"""Webhook throughput and ack latency: labelloop vs the official Label Studio ML backend vs a bare
uvicorn hello-world, on loopback, in one run.

    .venv/bin/python -m bench.receiver [--official-src PATH] [--duration 10]

Peers:
  (a) labelloop ``/webhook`` (receiver under uvicorn, real Redis, records and enqueues);
  (b) the official ML backend's ``/webhook`` with a no-op ``fit()``, served as its template
      serves it (gunicorn, 1 worker, 8 threads), installed into its own virtual environment from
      a source checkout (``--official-src``, e.g. a clone of HumanSignal/label-studio-ml-backend)
      or else from PyPI (``label-studio-ml``);
  (c) a bare uvicorn ASGI hello-world: the ceiling of this machine.

labelloop's webhook path is libraries only: Starlette's routing, Celery-built messages and
redis-py's asyncio client running one Lua script (``service.events``); the floor is 10x the
official backend's webhooks/s.

Load: ``wrk`` (Debian package) with 8 connections for throughput, each request a distinct
ANNOTATION_CREATED body (so labelloop's deduplication does not short-cut); then an open-loop
Python client at a fixed 500 requests/s for ack latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from labelloop.dev.stack import Stack, free_port, http_ok, wait_until

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "label-studio" / "webhook_ANNOTATION_CREATED.json"

HELLO = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"16")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"status": "ok"}'})
"""

OFFICIAL_WSGI = """
from label_studio_ml.api import init_app
from label_studio_ml.model import LabelStudioMLBase


class NoopModel(LabelStudioMLBase):
    def fit(self, event, data, **kwargs):
        return {}


app = init_app(model_class=NoopModel)
"""

WRK_LUA = """
local template = [[%s]]
local n = 0
request = function()
  n = n + 1
  local body = template:gsub("__ID__", tostring(n + %d))
  return wrk.format("POST", "/webhook", {["Content-Type"] = "application/json"}, body)
end
"""

# labelloop's webhooks/s against the official backend's: the floor, and what the README targets.
FLOOR_X = 10.0


def body_template() -> str:
    """The captured ANNOTATION_CREATED body with its annotation id and updated_at made variable."""
    body = json.loads(FIXTURE.read_text())
    body["annotation"]["id"] = 999_000_000
    body["annotation"]["updated_at"] = "2026-11-21T13:36:21.__ID__Z"
    return json.dumps(body).replace("999000000", "__ID__")


def official_venv(work: Path, src: Path | None) -> tuple[Path, str]:
    """A virtual environment with the official backend; returns (gunicorn path, what was installed)."""
    venv = work / ("official-src-venv" if src else "official-pypi-venv")
    if not (venv / "bin" / "gunicorn").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        if src:
            deps = [r for r in (src / "requirements.txt").read_text().splitlines() if r and not r.startswith("#")]
            deps = ["label-studio-sdk" if "label-studio-sdk" in d else d for d in deps]
            subprocess.run([*pip, *deps, "gunicorn"], check=True)
            subprocess.run([*pip, "--no-deps", str(src)], check=True)
        else:
            # 1.0.x imports rq without declaring it.
            subprocess.run([*pip, "label-studio-ml", "rq", "gunicorn"], check=True)
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import label_studio_ml; print(label_studio_ml.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return venv / "bin" / "gunicorn", f"label-studio-ml {version} from {'source ' + str(src) if src else 'PyPI'}"


def run_wrk(url: str, duration: int, connections: int, offset: int, work: Path) -> dict[str, float]:
    """Requests/s and latency percentiles (ms) from wrk."""
    script = work / f"wrk-{offset}.lua"
    script.write_text(WRK_LUA % (body_template(), offset))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(token: str) -> float:
        match = re.match(r"([\d.]+)(us|ms|s|m)$", token)
        if not match:
            raise ValueError(f"unexpected wrk latency {token!r} in:\n{out}")
        value, unit = match.groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "non2xx": float(errors.group(1)) if errors else 0.0}


async def fixed_rate(url: str, rate: float, seconds: float, offset: int) -> dict[str, float]:
    """Open-loop load at ``rate`` requests/s over keep-alive connections; latency from the scheduled
    send time to the end of the response (ms), so a server that falls behind shows it.

    A minimal HTTP/1.1 client on asyncio streams: general-purpose async clients spend more CPU
    per request than the servers under test, which would measure the client.
    """
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    template = body_template()
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(32):
        idle.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    failures = 0

    async def one(i: int, scheduled: float) -> None:
        nonlocal failures
        reader, writer = await idle.get()
        body = template.replace("__ID__", str(offset + i)).encode()
        head = (
            f"POST /webhook HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            writer.write(head + body)
            raw = await reader.readuntil(b"\r\n\r\n")
            status = int(raw.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", raw).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            if status >= 300:
                failures += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            failures += 1
            reader, writer = await asyncio.open_connection(host, port)
        latencies.append((time.perf_counter() - scheduled) * 1000)
        idle.put_nowait((reader, writer))

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait()[1].close()
    q = statistics.quantiles(latencies, n=100)
    return {"p50_ms": q[49], "p99_ms": q[98], "failures": float(failures), "n": float(len(latencies))}


def fixed_rate_in_subprocess(url: str, rate: float, seconds: float, offset: int) -> dict[str, float]:
    """``fixed_rate`` in a fresh interpreter, so the load generator's timing does not depend on
    the state of this long-lived process."""
    code = (
        "import asyncio, json, sys; from bench.receiver import fixed_rate; "
        f"print(json.dumps(asyncio.run(fixed_rate({url!r}, {rate}, {seconds}, {offset}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-src", type=Path, default=None)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench-receiver")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    work = args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    officials = [official_venv(work, None)]
    if args.official_src:
        officials.append(official_venv(work, args.official_src.absolute()))
    tmp = Path(tempfile.mkdtemp(dir=work))
    (tmp / "hello_app.py").write_text(HELLO)
    (tmp / "_wsgi.py").write_text(OFFICIAL_WSGI)

    stack = Stack(work, {"LABELLOOP_LOG_JSON": "true", "LABELLOOP_MODELS_DIR": str(work / "models")})
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, float]] = {}
    peers: list[tuple[str, str, str]] = []
    rk = int(args.rate)
    try:
        stack.env["LABELLOOP_REDIS_URL"] = stack.start_redis(free_port(), work / "redis")
        peers.append(("labelloop", stack.start_receiver(free_port()), "labelloop receiver, uvicorn, 1 process"))
        for n, (gunicorn, what) in enumerate(officials):
            port, name = free_port(), f"official-{n + 1}"
            (tmp / name).mkdir()
            argv = [str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8"]
            stack.start(name, [*argv, "--chdir", str(tmp), "_wsgi:app"], env={"MODEL_DIR": str(tmp / name)})
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda u=url: http_ok(u + "/health"), 30, name)  # type: ignore[misc]
            peers.append((name, url, what + ", gunicorn 1 worker 8 threads (its template's defaults)"))
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp), "--port", str(port)]
        stack.start("hello", [*argv, "--log-level", "warning", "--no-access-log", "hello_app:app"])
        hello = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(hello + "/"), 30, "hello-world")
        peers.append(("hello-world", hello, "bare ASGI app, uvicorn, 1 process"))

        for offset, (name, url, _what) in enumerate(peers, start=1):
            if name == "labelloop":
                # labelloop takes webhooks only for connected projects: connect it as Label Studio does.
                setup = json.loads((FIXTURE.parent / "ml_setup_request.json").read_text())
                assert httpx.post(url + "/setup", json=setup, timeout=5).status_code == 200, name
            warm = body_template().replace("__ID__", "1")
            httpx.post(url + "/webhook", content=warm, headers={"content-type": "application/json"}, timeout=5)
            # Open-loop latency first, on a server not yet loaded, then closed-loop throughput.
            rate = fixed_rate_in_subprocess(url, args.rate, 5.0, offset * 10_000_000 + 5_000_000)
            results[name] = run_wrk(url + "/webhook", args.duration, args.connections, offset * 10_000_000, work)
            results[name].update({f"at{rk}_{k}": v for k, v in rate.items()})
    finally:
        stack.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()[0]

    print(
        f"\nreceiver benchmark: wrk -t2 -c{args.connections} -d{args.duration}s, then {args.rate:.0f} req/s "
        f"open loop for 5 s (Python client); {os.cpu_count()} CPUs, "
        f"1-min load average {load_before:.2f} before, {load_after:.2f} after"
    )
    for name, _url, what in peers:
        print(f"  {name}: {what}")
    print(
        f"{'peer':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
        f"{'p50@' + str(rk):>9} {'p99@' + str(rk):>9} {'fail@' + str(rk):>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<12} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['non2xx']:>8.0f} "
            f"{r[f'at{rk}_p50_ms']:>9.2f} {r[f'at{rk}_p99_ms']:>9.2f} {r[f'at{rk}_failures']:>9.0f}"
        )
    ll, hw = results["labelloop"]["rps"], results["hello-world"]["rps"]
    print()
    for name, r in results.items():
        if name.startswith("official"):
            print(f"labelloop / {name} requests/s: {ll / r['rps']:.1f}x   (floor >= {FLOOR_X:g}x)")
    print(f"labelloop / hello-world requests/s: {ll / hw * 100:.0f}%   (target >= 30%)")
    p99 = results["labelloop"][f"at{rk}_p99_ms"]
    print(f"labelloop p99 at {args.rate:.0f} req/s: {p99:.2f} ms   (target < 10 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
