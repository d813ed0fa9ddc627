"""HTTP submit throughput of asynctask under gunicorn with 1, 2 and 4 sync workers.

For each worker count, `examples.quickstart:app` is served by gunicorn against the test-only
MongoDB wire server (`tests/mongo_wire.py`, mongomock behind one lock), and a load generator
in a separate process POSTs distinct word-count texts from K client threads, each with its own
`http.client` connection. It reports requests/s and p50/p99 latency, next to the same load
against `baseline_app`, a trivial Flask app under the same gunicorn that answers 202 without a
database, so the ratio shows what asynctask and its database round trips cost per request.

The wire server runs every data command under one lock and mongomock scans the whole
collection, so the database is the bottleneck; every run gets a fresh, small collection.

Run from the repository root:

    python bench/http_scaling.py [--requests 2000] [--threads 16] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request

REPO = Path(__file__).resolve().parent.parent
ASYNCTASK_TARGET = "examples.quickstart:app"
BASELINE_TARGET = "bench.http_scaling:baseline_app"
STARTUP_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0
REQUEST_TIMEOUT_S = 60.0
DRAIN_DEADLINE_S = 30.0
SWEEP_INTERVAL_S = 0.25
FINISHED = ("success", "failed", "cancelled")
WORDS = "to be or not to be that is the question whether tis nobler in the mind".split()

baseline_app = Flask("baseline")


@baseline_app.post("/api")
def baseline_submit() -> Any:
    """Parse the body, hash an id as the quickstart does, and answer 202 in asynctask's envelope."""
    params = request.get_json(force=True)["data"]
    task_id = hashlib.sha1(f"{params.get('top', 10)}:{params['text']}".encode()).hexdigest()
    body = {"status": "ok", "data": {"task_id": task_id, "status": "queued"}, "error_data": [], "error_msg": ""}
    return jsonify(body), 202


@baseline_app.get("/ping")
def baseline_ping() -> Any:
    """Answer like asynctask's /ping."""
    return {"status": "ok"}


@dataclass
class Figures:
    """The outcome of one load run, as seen by the client."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    outcomes: dict[str, int]
    connections: int
    client_cpu_s: float
    drained: tuple[dict[str, int], float] | None = None

    @property
    def rate(self) -> float:
        """Requests per second over the timed part of the run."""
        return self.requests / self.seconds

    @property
    def failures(self) -> dict[str, int]:
        """Outcomes other than 202, by status code or exception name."""
        return {key: n for key, n in self.outcomes.items() if key != "202"}


def body_for(label: str, index: int) -> bytes:
    """A distinct POST body: a short text unique to `label` and `index`."""
    words = [WORDS[(index + k) % len(WORDS)] for k in range(12)]
    text = f"{label} {index} " + " ".join(words)
    return json.dumps({"data": {"text": text, "top": 3}}).encode()


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    rank = min(max(1, math.ceil(fraction * len(ordered))), len(ordered))
    return ordered[rank - 1]


def post_all(port: int, bodies: list[bytes], threads: int) -> tuple[list[float], Counter[str], int]:
    """POST every body from `threads` clients; (latencies in s, outcomes, connections opened)."""
    lock = threading.Lock()
    position = iter(range(len(bodies)))
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    opened = [0]
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}

    def client() -> None:
        """Take the next body until none is left; one connection, reopened when the server closes it."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
        mine: list[float] = []
        seen: Counter[str] = Counter()
        connects = 0
        while True:
            with lock:
                index = next(position, None)
            if index is None:
                break
            connects += conn.sock is None
            started = time.perf_counter()
            try:
                conn.request("POST", "/api", bodies[index], headers)
                response = conn.getresponse()
                response.read()
                seen[str(response.status)] += 1
            except (OSError, http.client.HTTPException) as exc:
                seen[type(exc).__name__] += 1
                conn.close()
            mine.append(time.perf_counter() - started)
        conn.close()
        with lock:
            latencies.extend(mine)
            outcomes.update(seen)
            opened[0] += connects

    workers = [threading.Thread(target=client, name=f"client-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies, outcomes, opened[0]


def generate_load(port: int, label: str, requests: int, threads: int, warmup: int) -> dict[str, Any]:
    """The load generator's process: warm up, then time `requests` POSTs; figures as plain data."""
    post_all(port, [body_for(f"{label}-warmup", i) for i in range(warmup)], threads)
    bodies = [body_for(label, i) for i in range(requests)]
    cpu_before = time.process_time()
    started = time.perf_counter()
    latencies, outcomes, connections = post_all(port, bodies, threads)
    seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": requests, "seconds": seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
        "outcomes": dict(outcomes), "connections": connections,
        "client_cpu_s": time.process_time() - cpu_before,
    }


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_ping(proc: subprocess.Popen, port: int, log: Path) -> None:
    """Return once GET /ping answers 200; raise if gunicorn exits or the deadline passes."""
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer /ping within {STARTUP_DEADLINE_S:.0f}s:\n{log.read_text()[-2000:]}")


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM gunicorn's process group, then SIGKILL it if it has not exited in time."""
    for sig, wait in ((signal.SIGTERM, STOP_DEADLINE_S), (signal.SIGKILL, STOP_DEADLINE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def gunicorn(target: str, workers: int, env: dict[str, str], log: Path) -> Iterator[int]:
    """Serve `target` with `workers` sync workers in its own process group; yield its port."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--workers", str(workers),
               "--bind", f"127.0.0.1:{port}", target]
    with log.open("ab") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_ping(proc, port, log)
        yield port
    finally:
        stop_group(proc)


class Sweeper:
    """Deletes finished tasks from the run's collection every `SWEEP_INTERVAL_S`, counting them."""

    def __init__(self, uri: str, collection: str) -> None:
        from pymongo import MongoClient

        self.client: Any = MongoClient(uri, serverSelectionTimeoutMS=5000)
        self.tasks = self.client["asynctask"][collection]
        self.removed: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="sweeper", daemon=True)

    def sweep(self) -> None:
        """Delete the finished tasks once, counting them by status."""
        for status in FINISHED:
            self.removed[status] += self.tasks.delete_many({"status": status}).deleted_count

    def loop(self) -> None:
        """Sweep until stopped."""
        while not self.stopping.wait(SWEEP_INTERVAL_S):
            self.sweep()

    def drain(self, expected: int) -> float:
        """Sweep until `expected` tasks were removed or the deadline passes; the seconds it took."""
        self.stopping.set()
        self.thread.join()
        started = time.monotonic()
        while True:
            self.sweep()
            waited = time.monotonic() - started
            if sum(self.removed.values()) >= expected or waited > DRAIN_DEADLINE_S:
                return waited
            time.sleep(SWEEP_INTERVAL_S)

    def __enter__(self) -> Sweeper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()
        self.client.close()


def warmup(args: argparse.Namespace) -> int:
    """Untimed POSTs before each run: two per client thread."""
    return 2 * args.threads


def load(pool: ProcessPoolExecutor, port: int, label: str, args: argparse.Namespace) -> Figures:
    """Run the load generator in its own process against `port`."""
    return Figures(**pool.submit(generate_load, port, label, args.requests, args.threads, warmup(args)).result())


def measure_asynctask(pool: ProcessPoolExecutor, workers: int, env: dict[str, str], log: Path,
                      args: argparse.Namespace, label: str) -> Figures:
    """The load against asynctask, sweeping finished tasks, then waiting for the rest to finish."""
    with gunicorn(ASYNCTASK_TARGET, workers, env, log) as port, \
            Sweeper(env["ASYNCTASK_MONGO_URI"], env["ASYNCTASK_MONGO_COLLECTION"]) as sweeper:
        figures = load(pool, port, label, args)
        waited = sweeper.drain(args.requests + warmup(args))
    figures.drained = (dict(sweeper.removed), waited)
    return figures


def measure_baseline(pool: ProcessPoolExecutor, workers: int, env: dict[str, str], log: Path,
                     args: argparse.Namespace, label: str) -> Figures:
    """The same load against the trivial Flask app."""
    with gunicorn(BASELINE_TARGET, workers, env, log) as port:
        return load(pool, port, label, args)


def worker_counts(text: str) -> list[int]:
    """Parse '1,2,4' into positive worker counts."""
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive counts like 1,2,4, not {text!r}")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed POSTs per run (2000)")
    parser.add_argument("--threads", type=int, default=16, help="client threads of the load generator (16)")
    parser.add_argument("--workers", type=worker_counts, default=[1, 2, 4], help="gunicorn worker counts (1,2,4)")
    return parser.parse_args(argv)


def row(workers: int, ours: Figures, base: Figures) -> str:
    """One line of the table."""
    return (f"{workers:<8} {ours.rate:>15.0f} {ours.p50_ms:>7.1f} {ours.p99_ms:>7.1f}   "
            f"{base.rate:>14.0f} {base.p50_ms:>7.1f} {base.p99_ms:>7.1f}   {ours.rate / base.rate:>5.2f}")


def notes(workers: int, kind: str, figures: Figures) -> str:
    """Failures, connections and client CPU of one run, for the lines under the table."""
    other = ", ".join(f"{key}: {n}" for key, n in sorted(figures.failures.items())) or "none"
    return (f"  {workers} worker(s), {kind:<9}: non-202 outcomes: {other}; {figures.connections} connections "
            f"opened; load generator CPU {100 * figures.client_cpu_s / figures.seconds:.0f}% of one core")


def main(argv: list[str] | None = None) -> int:
    """Run every worker count against asynctask and the baseline, then print the table."""
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    from mongo_wire import running_server

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results: list[tuple[int, Figures, Figures]] = []
    with tempfile.TemporaryDirectory(prefix="http_scaling-") as tmp, running_server() as uri, \
            ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        for workers in args.workers:
            run = f"w{workers}-{uuid.uuid4().hex[:8]}"
            env = {**os.environ, "ASYNCTASK_MONGO_URI": uri, "ASYNCTASK_MONGO_COLLECTION": f"bench_{run}",
                   "ASYNCTASK_LOG_DIR": str(Path(tmp, run)), "DISABLE_STREAM_HANDLER": "1"}
            log = Path(tmp, f"gunicorn-{run}.log")
            ours = measure_asynctask(pool, workers, env, log, args, run)
            base = measure_baseline(pool, workers, env, log, args, f"{run}-baseline")
            results.append((workers, ours, base))

    print(f"HTTP submit throughput, gunicorn sync workers, load from a separate process "
          f"({args.threads} threads, {args.requests} POSTs)")
    print("workers  asynctask req/s  p50 ms  p99 ms   baseline req/s  p50 ms  p99 ms   ratio")
    for workers, ours, base in results:
        print(row(workers, ours, base))
    print()
    print(f"asynctask: {ASYNCTASK_TARGET} on the mongo_wire test server: mongomock under one lock, scanning\n"
          f"  the whole collection on every command, so the database is the bottleneck. Each worker count gets a\n"
          f"  fresh collection, and finished tasks are deleted every {SWEEP_INTERVAL_S}s so it holds little more\n"
          f"  than the tasks in flight ({warmup(args)} untimed warm-up POSTs first).")
    print(f"baseline: {BASELINE_TARGET}, parses the body and answers 202, no database.")
    print("ratio: asynctask req/s / baseline req/s. gunicorn sync workers close the connection after "
          "every response,\n  so each request opens a new connection.")
    for workers, ours, base in results:
        print(notes(workers, "asynctask", ours))
        print(notes(workers, "baseline", base))
    for workers, ours, _ in results:
        if ours.drained is not None:
            removed, waited = ours.drained
            counts = ", ".join(f"{n} {status}" for status, n in removed.items() if n) or "none"
            print(f"  {workers} worker(s): tasks finished: {counts} of {args.requests + warmup(args)}, "
                  f"the last {waited:.1f}s after the last response")
    print(f"runtime {time.monotonic() - started:.1f}s on {os.cpu_count()} CPU(s); 1-minute load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
