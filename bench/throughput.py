"""Cost per task of the in-memory store as the number of stored tasks grows.

For 500, 5,000 and 50,000 stored tasks (80% finished, 20% queued for later), times the
store calls asynctask makes for each task, in ms per task:
(a) the insert: the run rule's upsert (`find_one_and_update`, upsert, ReturnDocument.AFTER);
(b) the claim: `find_one_and_update` of the best due queued task (priority desc, run_at asc);
(c) the finish: `update_one` by task_id, status and attempt number.
The same calls on plain mongomock (what `MemoryCollection` was before its indexes) are the
baseline, at 500 and 5,000 stored tasks only: mongomock scans the collection on every call.
Then, if `AsyncTask` runs, no-op tasks through `run()` to success on a collection already
holding that many finished tasks, beside the same tasks through the original tool's calls and
through the floor: the three store calls and the log file the contract needs per task, with
nothing around them (see `library_figures`).

Run from the repository root:

    python bench/throughput.py [--tasks 300] [--baseline-tasks 40] [--threads 8]

Both tools create one log file per task in a temporary folder. On a disk, file creation can
swing several-fold from run to run with the journal's state (one run measured the original at
0.16 ms/task, the next at 0.73); `TMPDIR=/dev/shm` keeps the folder in memory, so the figures
compare the work per task rather than the disk.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

os.environ["DISABLE_STREAM_HANDLER"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mongomock  # noqa: E402
from pymongo import ASCENDING, DESCENDING, ReturnDocument  # noqa: E402

from asynctask.logs import opened, task_logger  # noqa: E402
from asynctask.store.memory import MemoryCollection  # noqa: E402
from asynctask.store.tasks import TaskStore  # noqa: E402

SIZES = (500, 5_000, 50_000)
BASELINE_SIZES = (500, 5_000)
TYPE = "bench"
CLAIMABLE = ["failed", "cancelled"]


def indexes(collection: Any) -> None:
    """The indexes asynctask creates for these calls."""
    collection.create_index([("task_id", ASCENDING)], unique=True, name="task_id_unique")
    collection.create_index(
        [("type", ASCENDING), ("status", ASCENDING), ("priority", DESCENDING), ("run_at", ASCENDING)], name="claim"
    )
    collection.create_index([("type", ASCENDING), ("created_at", DESCENDING), ("task_id", ASCENDING)], name="list")


def fill(collection: Any, stored: int) -> None:
    """`stored` tasks: 80% finished, 20% queued to run in a day (never due here)."""
    now = datetime.now(timezone.utc)
    docs = []
    for n in range(stored):
        queued = n % 5 == 0
        docs.append({
            "task_id": f"old{n}", "type": TYPE, "status": "queued" if queued else "success",
            "params": {"n": n}, "priority": 0, "attempts": 1, "lost": 0, "owner": None if queued else "w0",
            "created_at": now - timedelta(seconds=stored - n), "queued_at": now,
            "run_at": now + timedelta(days=1) if queued else now - timedelta(hours=1),
            "update_time": now,
        })
    collection.insert_many(docs)
    indexes(collection)  # after the documents: plain mongomock checks a unique index by scanning


def insert(collection: Any, task_id: str, status: str = "queued") -> Any:
    """(a) the run rule's upsert of a new task (`running` when the submitter claims it at once)."""
    now = datetime.now(timezone.utc)
    query = {"task_id": task_id, "type": TYPE, "$or": [
        {"status": {"$in": CLAIMABLE}}, {"status": {"$exists": False}},
        {"status": "running", "heartbeat_at": {"$lt": now - timedelta(minutes=5)}},
    ]}
    update = {
        "$set": {"status": status, "params": {"id": task_id}, "priority": 0, "run_at": now,
                 "queued_at": now, "update_time": now, "lost": 0},
        "$inc": {"attempts": 1},
        "$setOnInsert": {"created_at": now},
        "$unset": {"result": "", "error": "", "started_at": "", "finished_at": "", "cancel_requested": ""},
    }
    return collection.find_one_and_update(query, update, upsert=True, return_document=ReturnDocument.AFTER)


def claim(collection: Any) -> Any:
    """(b) the claim of the best due task."""
    now = datetime.now(timezone.utc)
    return collection.find_one_and_update(
        {"type": TYPE, "status": "queued", "run_at": {"$lte": now}},
        {"$set": {"status": "running", "owner": "w1", "started_at": now, "heartbeat_at": now, "update_time": now},
         "$inc": {"attempts": 1}},
        sort=[("priority", DESCENDING), ("run_at", ASCENDING)],
        return_document=ReturnDocument.AFTER,
    )


def finish(collection: Any, doc: Any) -> None:
    """(c) the finish of the claimed attempt."""
    now = datetime.now(timezone.utc)
    result = collection.update_one(
        {"task_id": doc["task_id"], "status": {"$in": ["running"]}, "attempts": doc["attempts"]},
        {"$set": {"status": "success", "finished_at": now, "result": None, "update_time": now},
         "$unset": {"owner": ""}},
    )
    if result.matched_count != 1:
        raise RuntimeError(f"the finish of {doc['task_id']} matched nothing")


def per_task(collection: Any, tasks: int) -> tuple[float, float, float]:
    """ms per task of (a), (b) and (c), each call timed alone."""
    spent = [0.0, 0.0, 0.0]
    for i in range(tasks):
        start = time.perf_counter()
        insert(collection, f"new{i}")
        inserted = time.perf_counter()
        doc = claim(collection)
        claimed = time.perf_counter()
        if doc is None:
            raise RuntimeError("the claim found no due task")
        finish(collection, doc)
        done = time.perf_counter()
        spent[0] += inserted - start
        spent[1] += claimed - inserted
        spent[2] += done - claimed
    return spent[0] / tasks * 1e3, spent[1] / tasks * 1e3, spent[2] / tasks * 1e3


def plain_mongomock() -> Any:
    """The baseline: plain mongomock (single-threaded here, so no lock is needed)."""
    return mongomock.MongoClient().get_database("asynctask").get_collection("tasks")


def store_figures(name: str, make: Callable[[], Any], sizes: tuple[int, ...], tasks: int) -> None:
    """Print ms per task at each size, and the ratio of the last size to the first."""
    print(f"{name} ({tasks} tasks per size; ms per task)")
    print(f"  {'stored':>8}  {'insert':>8}  {'claim':>8}  {'finish':>8}  {'total':>8}  (fill s)")
    rows = []
    for size in sizes:
        collection = make()
        start = time.perf_counter()
        fill(collection, size)
        filled = time.perf_counter() - start
        figures = per_task(collection, tasks)
        rows.append((*figures, sum(figures)))
        print(f"  {size:>8,}  " + "  ".join(f"{v:8.3f}" for v in rows[-1]) + f"  ({filled:.1f})")
    ratios = [last / first for first, last in zip(rows[0], rows[-1], strict=True)]
    print(f"  {'ratio':>8}  " + "  ".join(f"{r:7.2f}x" for r in ratios)
          + f"  ({sizes[-1]:,} / {sizes[0]:,} stored; aim <= 1.5x)")


def library_figures(sizes: tuple[int, ...], tasks: int, threads: int, rounds: int = 3) -> None:
    """No-op tasks to success, side by side on one store holding `size` finished tasks:
    - AsyncTask's `run()`;
    - the floor: only what the contract needs per task, in a bare `ThreadPoolExecutor` with
      nothing around it: the store layer's submit (a queued task), claim and fenced finish, and
      the task's log file with one line;
    - a bare pool making two of those writes (submit as running, finish), without claim or log;
    - the original tool's work per task (a `find_one`, an upsert, an update by task_id and a
      rotating log file).
    Medians of interleaved rounds, ms per task."""
    from concurrent.futures import ThreadPoolExecutor
    from logging.handlers import RotatingFileHandler

    try:
        from asynctask import AsyncTask
    except Exception as exc:  # noqa: BLE001 - the library may be mid-change
        print(f"AsyncTask end to end: skipped ({type(exc).__name__}: {exc})")
        return

    class NoOp(AsyncTask):  # type: ignore[misc, valid-type]
        """A task that does nothing."""

        def get_task_id(self, i: str) -> str:
            return i

        def main(self, logger: Any, i: str) -> None:
            return None

    def asynctask_round(collection: Any, log_dir: str, ids: list[str]) -> None:
        task = NoOp(collection, log_dir, max_worker=threads)
        for task_id in ids:
            task.run(i=task_id)
        wait_done(collection, ids)
        task.shutdown()

    def floor_round(collection: Any, log_dir: str, ids: list[str]) -> None:
        store = TaskStore(collection, "NoOp")
        claim_for = store.claim_fields("floor-owner", "floor-worker")

        def one(_: str) -> None:
            doc = store.claim(claim_for)
            if doc is None:
                raise RuntimeError("the floor's claim found no due task")
            with opened(task_logger(doc["task_id"]), Path(log_dir), doc["task_id"], doc["trace_id"]) as log:
                log.info("task succeeded")
            store.finish(doc["task_id"], "success", attempt=doc["attempts"])

        with ThreadPoolExecutor(threads) as pool:
            done = []
            for task_id in ids:
                store.submit(task_id, {"i": task_id}, trace_id="0" * 32)
                done.append(pool.submit(one, task_id))
        for future in done:
            future.result()  # a failed claim or write is raised here, not waited out
        wait_done(collection, ids)  # (returns at once; the other kinds end the same way)

    def bare_round(collection: Any, log_dir: str, ids: list[str]) -> None:
        def one(task_id: str) -> None:
            finish(collection, insert(collection, task_id, status="running"))

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, ids))

    def original_round(collection: Any, log_dir: str, ids: list[str]) -> None:
        def work(task_id: str) -> None:
            handler = RotatingFileHandler(os.path.join(log_dir, f"orig-{task_id}.log"), maxBytes=10 << 20,
                                          backupCount=10)
            handler.emit(logging.LogRecord(task_id, logging.INFO, __file__, 0, "done", None, None))
            handler.close()  # the original never closes it (one descriptor leaked per task)
            collection.update_one({"task_id": task_id}, {"$set": {"status": "success", "result": None}})

        with ThreadPoolExecutor(threads) as pool:
            for task_id in ids:  # the original's run(): look, then upsert, then hand to the pool
                collection.find_one({"task_id": task_id})
                collection.update_one({"task_id": task_id}, {"$set": {"status": "queued", "params": {}}}, upsert=True)
                pool.submit(work, task_id)
        wait_done(collection, ids)

    kinds = {"asynctask": asynctask_round, "floor": floor_round, "bare pool": bare_round,
             "original": original_round}
    print(f"Side by side ({tasks} no-op tasks, {threads} threads, median of {rounds} interleaved rounds;"
          " ms per task, submit to success; asynctask's store calls per task and open descriptors"
          " after its rounds minus before)")
    print(f"  {'stored':>8}  " + "  ".join(f"{k:>10}" for k in kinds)
          + "   vs floor   floor vs original   vs original   calls/task   fds")
    with tempfile.TemporaryDirectory(prefix="asynctask-bench-") as log_dir:
        for size in sizes:
            collection = MemoryCollection()
            fill(collection, size)
            times: dict[str, list[float]] = {k: [] for k in kinds}
            fds_before = open_fds()
            for round_no in range(rounds):
                for kind, run in kinds.items():
                    ids = [f"{kind[:4]}-{size}-{round_no}-{i}" for i in range(tasks)]
                    global _successes_before
                    _successes_before = collection.count_documents({"status": "success"})
                    start = time.perf_counter()
                    run(collection, log_dir, ids)
                    times[kind].append((time.perf_counter() - start) / tasks * 1e3)
            fds = open_fds() - fds_before
            with counting_calls() as calls:  # one more round, untimed
                _successes_before = collection.count_documents({"status": "success"})
                asynctask_round(collection, log_dir, [f"count-{size}-{i}" for i in range(tasks)])
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"  {size:>8,}  " + "  ".join(f"{med[k]:10.3f}" for k in kinds)
                  + f"   {med['asynctask'] / med['floor']:7.2f}x   {med['floor'] / med['original']:16.2f}x"
                  + f"   {med['asynctask'] / med['original']:10.2f}x"
                  + f"   {sum(calls.values()) / tasks:10.2f}   {fds:+d}")
            print(f"  {'':>8}  (calls: " + ", ".join(f"{k} {v / tasks:.2f}" for k, v in calls.most_common()) + ")")


_successes_before = 0
_bench = threading.local()  # set while this script itself reads the store (waiting for the tasks)


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def counting_calls() -> Iterator[collections.Counter[str]]:
    """Count the calls made to every `MemoryCollection` meanwhile, by method, except this
    script's own waiting."""
    counts: collections.Counter[str] = collections.Counter()
    methods = ["insert_one", "insert_many", "find", "find_one", "find_one_and_update", "update_one",
               "update_many", "replace_one", "delete_one", "delete_many", "count_documents", "aggregate"]
    originals = {name: getattr(MemoryCollection, name) for name in methods}

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not getattr(_bench, "waiting", False):
                counts[name] += 1
            return method(self, *args, **kwargs)
        return call

    for name, method in originals.items():
        setattr(MemoryCollection, name, counted(name, method))
    try:
        yield counts
    finally:
        for name, method in originals.items():
            setattr(MemoryCollection, name, method)


def wait_done(collection: Any, ids: list[str]) -> None:
    """Wait until every task of `ids` succeeded: the store's count of successes grows by that
    many (an index-served count, so the polling does not hold the store's lock for long)."""
    target = _successes_before + len(ids)
    deadline = time.monotonic() + 120
    _bench.waiting = True
    try:
        while collection.count_documents({"status": "success"}) < target:
            if time.monotonic() > deadline:
                raise TimeoutError("tasks did not all succeed within 120 s")
            time.sleep(0.002)
    finally:
        _bench.waiting = False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300, help="tasks timed per size (300)")
    parser.add_argument("--baseline-tasks", type=int, default=40, help="tasks timed per size on plain mongomock (40)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads end to end (8)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print every figure."""
    args = parse_args(argv)
    started = time.perf_counter()
    store_figures("MemoryCollection (indexed)", MemoryCollection, SIZES, args.tasks)
    store_figures("plain mongomock (baseline)", plain_mongomock, BASELINE_SIZES, args.baseline_tasks)
    library_figures(SIZES, args.tasks, args.threads)
    print(f"(ran in {time.perf_counter() - started:.1f} s on {os.cpu_count()} CPUs, "
          f"1-min load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
