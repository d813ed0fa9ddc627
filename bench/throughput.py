"""Throughput and HTTP latency of asynctask on the in-memory store, against bare baselines.

Measures, in one process:
1. no-op tasks through `AsyncTask.run()` to `success` on `max_worker` threads, in tasks/s;
2. a bare `ThreadPoolExecutor` making the same three store writes per task, in tasks/s;
3. database calls per task, counted by a proxy around the collection;
4. POST latency (p50/p99) through Flask's test client, against a trivial Flask route.

mongomock scans the whole collection on every query, so each batch of tasks (or requests)
gets a fresh collection and a fresh `AsyncTask`; the baseline is batched the same way.

Run from the repository root:

    python bench/throughput.py [--tasks 10000] [--batch 100] [--threads 8] [--posts 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

os.environ["DISABLE_STREAM_HANDLER"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask, jsonify, request  # noqa: E402
from pymongo import ReturnDocument  # noqa: E402

from asynctask import AsyncTask, MemoryCollection  # noqa: E402

BATCH_DEADLINE_S = 120.0
POST_BATCH = 200
PER_PROCESS_METHODS = ("create_index", "update_many")
FINISHED = ("success", "failed", "cancelled")


class NoOp(AsyncTask):
    """A task that does nothing, so only asynctask's own cost is measured."""

    def get_task_id(self, i: int) -> str:
        """One id per task number, unique across batches."""
        return f"t{i}"

    def main(self, logger: Any, i: int) -> None:
        """Do nothing."""
        return None


class CountingCollection:
    """Proxy that counts every method call by name and signals once `expected` tasks finished."""

    def __init__(self, target: Any, expected: int) -> None:
        self._target = target
        self._expected = expected
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.first_error: str | None = None
        self.done = threading.Event()
        self.owner_thread = threading.get_ident()
        self.owner_thread_seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = value(*args, **kwargs)
            if threading.get_ident() == self.owner_thread:
                self.owner_thread_seconds += time.perf_counter() - start
            self._record(name, args, kwargs, result)
            return result

        return counted

    def _record(self, name: str, args: tuple, kwargs: dict[str, Any], result: Any) -> None:
        """Count the call, and a finish write (success, failed, cancelled) that matched a task."""
        fields = _set_fields(args, kwargs) if name == "update_one" else {}
        finished = fields.get("status") in FINISHED and result.matched_count == 1
        with self._lock:
            self.calls[name] += 1
            if finished:
                self.finished[fields["status"]] += 1
                if fields["status"] != "success" and self.first_error is None:
                    self.first_error = str(fields.get("error"))
                if sum(self.finished.values()) >= self._expected:
                    self.done.set()

    def wait(self, timeout: float) -> None:
        """Block until `expected` tasks finished; raise unless all of them succeeded in time."""
        if not self.done.wait(timeout):
            raise TimeoutError(
                f"after {timeout:.0f} s only {dict(self.finished)} of {self._expected} tasks finished"
            )
        if self.finished["success"] < self._expected:
            raise RuntimeError(
                f"tasks did not all succeed: {dict(self.finished)}; first error:\n{self.first_error}"
            )


def _set_fields(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The `$set` of an `update_one(filter, update)` call."""
    update = args[1] if len(args) > 1 else kwargs.get("update", {})
    return update.get("$set", {})


@dataclass
class Totals:
    """Elapsed seconds and database calls summed over batches."""

    seconds: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)

    def add(self, seconds: float, calls: Counter[str]) -> None:
        """Add one batch."""
        self.seconds += seconds
        self.calls.update(calls)


def library_batch(first: int, size: int, threads: int, log_dir: str) -> tuple[float, Counter[str]]:
    """Seconds from the first `run()` to the last success for one batch, and its database calls."""
    collection = CountingCollection(MemoryCollection(), size)
    task = NoOp(collection, log_dir, max_worker=threads)
    try:
        start = time.perf_counter()
        for i in range(first, first + size):
            task.run(i=i)
        collection.wait(BATCH_DEADLINE_S)
        elapsed = time.perf_counter() - start
    finally:
        task.shutdown()
    return elapsed, collection.calls


def _noop() -> None:
    """The baseline's task body."""


def _baseline_attempt(collection: CountingCollection, task_id: str, number: int) -> None:
    """Mark running, call the no-op, mark success: the library's writes with plain filters."""
    now = datetime.now(timezone.utc)
    collection.update_one(
        {"task_id": task_id, "status": "queued", "attempts": number},
        {
            "$set": {
                "status": "running",
                "started_at": now,
                "deadline": now + timedelta(hours=4),
                "heartbeat_at": now,
                "update_time": now,
            }
        },
    )
    _noop()
    now = datetime.now(timezone.utc)
    collection.update_one(
        {"task_id": task_id, "status": "running", "attempts": number},
        {
            "$set": {
                "status": "success",
                "finished_at": now,
                "result": None,
                "error": None,
                "update_time": now,
            },
            "$unset": {"owner": ""},
        },
    )


def baseline_batch(first: int, size: int, threads: int) -> tuple[float, Counter[str]]:
    """The same batch on a bare `ThreadPoolExecutor`: upsert here, running + success in a thread."""
    collection = CountingCollection(MemoryCollection(), size)
    start = time.perf_counter()
    collection.create_index([("task_id", 1)], unique=True)
    pool = ThreadPoolExecutor(threads)
    try:
        for i in range(first, first + size):
            now = datetime.now(timezone.utc)
            doc = collection.find_one_and_update(
                {"task_id": f"t{i}"},
                {
                    "$set": {
                        "status": "queued",
                        "params": {"i": i},
                        "owner": "bench",
                        "heartbeat_at": now,
                        "queued_at": now,
                        "update_time": now,
                    },
                    "$inc": {"attempts": 1},
                    "$setOnInsert": {"created_at": now},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            pool.submit(_baseline_attempt, collection, doc["task_id"], doc["attempts"])
        collection.wait(BATCH_DEADLINE_S)
        elapsed = time.perf_counter() - start
    finally:
        pool.shutdown()
    return elapsed, collection.calls


def batches(total: int, size: int) -> list[tuple[int, int]]:
    """(first task number, batch size) for each batch."""
    return [(first, min(size, total - first)) for first in range(0, total, size)]


def measure_throughput(tasks: int, batch: int, threads: int, log_dir: str) -> tuple[Totals, Totals]:
    """Library and baseline totals, their batches interleaved so drift hits both alike."""
    library, baseline = Totals(), Totals()
    for first, size in batches(tasks, batch):
        library.add(*library_batch(first, size, threads, log_dir))
        baseline.add(*baseline_batch(first, size, threads))
    return library, baseline


@dataclass
class Latencies:
    """Milliseconds per request, and of that the database time in the request's thread."""

    total: list[float] = field(default_factory=list)
    database: list[float] = field(default_factory=list)


def timed_posts(
    client: Any, path: str, numbers: range, into: Latencies, collection: CountingCollection | None = None
) -> None:
    """Time each POST of `{"data": {"i": n}}` into `into`; each must be accepted (202)."""
    for n in numbers:
        db_before = collection.owner_thread_seconds if collection else 0.0
        start = time.perf_counter()
        response = client.post(path, json={"data": {"i": n}})
        into.total.append((time.perf_counter() - start) * 1000)
        if collection is not None:
            into.database.append((collection.owner_thread_seconds - db_before) * 1000)
        if response.status_code != 202:
            raise RuntimeError(
                f"POST {path} answered {response.status_code}: {response.get_data(as_text=True)}"
            )


def asynctask_posts(posts: int, threads: int, log_dir: str, offset: int) -> Latencies:
    """POST latencies to `api.app("/api")`, a fresh collection and `AsyncTask` per batch."""
    latencies = Latencies()
    for first, size in batches(posts, POST_BATCH):
        collection = CountingCollection(MemoryCollection(), size)
        task = NoOp(collection, log_dir, max_worker=threads)
        try:
            client = task.app("/api").test_client()
            timed_posts(client, "/api", range(offset + first, offset + first + size), latencies, collection)
        finally:
            task.shutdown()
    return latencies


def trivial_app() -> Flask:
    """A Flask app whose POST /api parses the body and answers the same 202 envelope, no store."""
    app = Flask("trivial")

    @app.post("/api")
    def submit() -> Any:
        task_id = f"t{request.get_json()['data']['i']}"
        body = {
            "status": "ok",
            "data": {"task_id": task_id, "status": "queued"},
            "error_data": [],
            "error_msg": "",
        }
        return jsonify(body), 202, {"Location": f"/api/{task_id}"}

    return app


def trivial_posts(posts: int, offset: int) -> Latencies:
    """POST latencies to the trivial route."""
    latencies = Latencies()
    timed_posts(trivial_app().test_client(), "/api", range(offset, offset + posts), latencies)
    return latencies


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile of `values`."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def per_task_breakdown(calls: Counter[str], tasks: int) -> tuple[float, str, str]:
    """Per-task calls, their breakdown, and the calls made per process or per interval."""
    per_task = {name: n for name, n in calls.items() if name not in PER_PROCESS_METHODS}
    total = sum(per_task.values()) / tasks
    detail = ", ".join(f"{name} {n / tasks:.2f}" for name, n in sorted(per_task.items()))
    other = ", ".join(f"{name} {calls.get(name, 0)}" for name in PER_PROCESS_METHODS)
    return total, detail, other


def report_throughput(args: argparse.Namespace, library: Totals, baseline: Totals) -> None:
    """Print tasks/s of both sides, their ratio, and the database calls per task."""
    library_rate, baseline_rate = args.tasks / library.seconds, args.tasks / baseline.seconds
    ratio = baseline_rate / library_rate
    added_us = (library.seconds - baseline.seconds) / args.tasks * 1e6
    total, detail, other = per_task_breakdown(library.calls, args.tasks)
    baseline_total, _, _ = per_task_breakdown(baseline.calls, args.tasks)
    print(
        f"asynctask throughput (in-memory store, {args.threads} threads, "
        f"{args.tasks:,} no-op tasks in {len(batches(args.tasks, args.batch))} batches of {args.batch})"
    )
    print("  each batch runs on a fresh MemoryCollection and a fresh AsyncTask: mongomock scans the whole")
    print("  collection on every query, so one big collection would measure mongomock, not asynctask")
    print(f"  asynctask run() -> success : {library_rate:,.0f} tasks/s")
    print(
        f"  bare ThreadPoolExecutor     : {baseline_rate:,.0f} tasks/s "
        f"(same 3 writes per task, same batches; {baseline_total:.2f} calls/task)"
    )
    print(f"  ratio (baseline / asynctask): {ratio:.2f}x  [aim <= 1.5x: {_verdict(ratio <= 1.5)}]")
    print(
        f"  asynctask's added time      : {added_us:,.0f} us per task "
        f"(about constant; the ratio falls as --batch grows and mongomock's scans dominate both sides)"
    )
    print(f"  database calls per task     : {total:.2f}  [aim <= 3: {_verdict(total <= 3)}] ({detail})")
    per_instance = library.calls["create_index"] / len(batches(args.tasks, args.batch))
    print(
        f"  not per task, in all        : {other} "
        f"({per_instance:g} indexes per AsyncTask, here one per batch; one heartbeat per interval)"
    )


def report_http(ours: Latencies, trivial: Latencies) -> None:
    """Print POST latency percentiles of asynctask and of the trivial route."""
    print(
        f"HTTP POST latency (Flask test client, {len(ours.total):,} requests, "
        f"a fresh collection every {POST_BATCH}; the tasks run meanwhile)"
    )
    print(f"  asynctask POST /api   {_p50_p99(ours.total)}")
    print(f"    of which the claim  {_p50_p99(ours.database)}  (one find_one_and_update in mongomock)")
    print(f"  trivial Flask route   {_p50_p99(trivial.total)}")
    print(
        f"  ratio p50 (asynctask / trivial): {percentile(ours.total, 50) / percentile(trivial.total, 50):.1f}x"
    )


def _verdict(met: bool) -> str:
    """'met' or 'MISSED'."""
    return "met" if met else "MISSED"


def _p50_p99(values: list[float]) -> str:
    """'p50 x ms  p99 y ms'."""
    return f"p50 {percentile(values, 50):5.2f} ms  p99 {percentile(values, 99):6.2f} ms"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=_positive, default=10_000, help="no-op tasks to run (10000)")
    parser.add_argument("--batch", type=_positive, default=100, help="tasks per fresh collection (100)")
    parser.add_argument("--threads", type=_positive, default=8, help="worker threads (8)")
    parser.add_argument("--posts", type=_positive, default=1_000, help="HTTP POSTs to time (1000)")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    """An int of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def warm_up(log_dir: str, threads: int) -> None:
    """Run a few tasks and requests once so imports and first-use costs stay out of the figures."""
    library_batch(-20, 10, threads, log_dir)
    baseline_batch(-20, 10, threads)
    asynctask_posts(10, threads, log_dir, offset=-1_000_000)
    trivial_posts(10, offset=-1_000_000)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the report; returns the exit status."""
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="asynctask-bench-") as log_dir:
        warm_up(log_dir, args.threads)
        library, baseline = measure_throughput(args.tasks, args.batch, args.threads, log_dir)
        ours = asynctask_posts(args.posts, args.threads, log_dir, offset=args.tasks)
        trivial = trivial_posts(args.posts, offset=args.tasks)
    report_throughput(args, library, baseline)
    report_http(ours, trivial)
    print(
        f"(ran in {time.perf_counter() - started:.1f} s; 1-min load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs: figures are only comparable at low load)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
