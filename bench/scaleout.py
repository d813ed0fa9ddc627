"""Scale-out of the shared queue: makespan, submit-to-start latency, database calls, throughput.

1. Makespan: one submitting process (2 slots) plus 0, 1 and 3 idle `asynctask worker` processes
   (2 slots each) run N equal sleeping tasks; printed against the ideal N*len/(all slots), with
   the share of the tasks each process ran.
2. Submit-to-start latency, p50 and p99: (a) a free slot in the accepting process (claimed at
   once, no poll); (b) an idle worker in another process, accepting process API-only.
3. Database calls per task in steady state (a counting wrapper on the collection), and the
   queries an idle worker makes per poll interval.
4. No-op tasks per second through 1, 2 and 4 worker processes, against 0.1 run the same way
   (0.1 had no dedicated workers: its accepting process ran every task) when a checkout of 0.1
   is given with --baseline (a folder holding the 0.1 `asynctask` package).

Uses ASYNCTASK_TEST_MONGO_URI if set, else the test wire server (tests/mongo_wire.py).
Run from the repository root:

    python bench/scaleout.py [--tasks 24] [--seconds 0.25] [--baseline /tmp/asynctask-0.1] [--only 1 2 3 4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

os.environ["DISABLE_STREAM_HANDLER"] = "1"
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import apps  # noqa: E402
from mongo_wire import running_server  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from asynctask import AsyncTask, MemoryCollection  # noqa: E402


def wait_all(db: Any, name: str, keys: list[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not apps.all_in(db, name, keys, "success"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: not every task ended")
        time.sleep(0.02)


def makespan(uri: str, db: Any, logs: Path, count: int, seconds: float, poll: float) -> None:
    print(f"1. makespan of {count} tasks of {seconds}s; submitter 2 slots, workers 2 slots each, poll {poll}s")
    for helpers in (0, 1, 3):
        name = f"s_{uuid.uuid4().hex[:8]}"
        workers = [apps.WorkerProcess(uri, name, logs, concurrency=2, seconds=seconds, poll=poll, heartbeat=1)
                   for _ in range(helpers)]
        for worker in workers:
            worker.wait_ready()
        submitter = apps.build(uri, name, log_dir=str(logs), seconds=seconds, max_worker=2, poll=poll, heartbeat=1)
        keys = [f"k{i:03d}" for i in range(count)]
        began = time.monotonic()
        for key in keys:
            submitter.run(key=key)
        wait_all(db, name, keys)
        took = time.monotonic() - began
        ideal = count * seconds / (2 * (helpers + 1))
        shares = Counter(apps.calls(db, name)[key][0]["pid"] for key in keys)
        share = {("submitter" if pid == os.getpid() else f"worker{i}"): n
                 for i, (pid, n) in enumerate(sorted(shares.items(), key=lambda kv: kv[0] != os.getpid()))}
        print(f"   +{helpers} workers: {took:5.2f}s  ideal {ideal:4.2f}s  ratio {took / ideal:4.2f}x"
              f"  (vs ideal + poll: {took / (ideal + poll):4.2f}x)  share {share}")
        submitter.shutdown()
        for worker in workers:
            worker.stop()


def latency(uri: str, db: Any, logs: Path, samples: int, poll: float) -> None:
    print(f"2. submit-to-start latency ({samples} tasks, one at a time)")
    for where in ("free slot in the accepting process", f"idle worker process, poll {poll}s"):
        name = f"l_{uuid.uuid4().hex[:8]}"
        remote = where.startswith("idle")
        worker = apps.WorkerProcess(uri, name, logs, concurrency=2, poll=poll) if remote else None
        if worker is not None:
            worker.wait_ready()
        api = apps.build(uri, name, log_dir=str(logs), poll=poll, worker=not remote)
        waits = []
        for i in range(samples):
            key = f"k{i:03d}"
            submitted = time.time()
            api.run(key=key)
            wait_all(db, name, [key])
            waits.append(apps.calls(db, name)[key][0]["started"] - submitted)
        waits.sort()
        p99 = waits[min(len(waits) - 1, round(0.99 * (len(waits) - 1)))]
        print(f"   {where}: p50 {1000 * statistics.median(waits):6.1f} ms  p99 {1000 * p99:6.1f} ms")
        api.shutdown()
        if worker is not None:
            worker.stop()


class Counting:
    """A collection that counts the calls made through it, by method (an empty claim apart)."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not callable(value) or name in ("create_index", "database"):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            empty = name == "find_one_and_update" and result is None
            self.calls[f"{name} (empty)" if empty else name] += 1
            return result

        return counted


class Noop(AsyncTask):
    def main(self, logger: Any) -> None:
        return None


def _run_all(api: AsyncTask, shared: MemoryCollection, count: int) -> None:
    done = shared.count_documents({"status": "success"}) + count
    for _ in range(count):
        api.run()
    while shared.count_documents({"status": "success"}) < done:
        time.sleep(0.005)


def database_calls(logs: Path, count: int) -> None:
    print(f"3. database calls per task ({count} no-op tasks, in-memory store; heartbeats off)")
    for label, claim_at_once in (("free slot: claimed at submission", True), ("queued, claimed by a worker", False)):
        shared = MemoryCollection()
        counting = Counting(shared)
        api = Noop(counting, logs, max_worker=4, worker=claim_at_once, heartbeat_interval=3600, poll_interval=3600)
        other = None if claim_at_once else Noop(counting, logs, max_worker=4, poll_interval=0.05,
                                                heartbeat_interval=3600)
        if other is not None:
            other.start()
        _run_all(api, shared, 20)  # warm up: the first heartbeat and registry writes pass
        before = Counter(counting.calls)
        began = time.monotonic()
        _run_all(api, shared, count)
        took = time.monotonic() - began
        used = Counter(counting.calls) - before
        empty = used.pop("find_one_and_update (empty)", 0)
        per_task = sum(used.values()) / count
        print(f"   {label}: {per_task:4.2f} calls per task {dict(used)}; plus {empty} empty polls in {took:.2f}s")
        api.shutdown()
        if other is not None:
            other.shutdown()
    shared = MemoryCollection()
    counting = Counting(shared)
    idle = Noop(counting, logs, poll_interval=0.1, heartbeat_interval=3600)
    idle.start()
    time.sleep(0.3)
    before = sum(counting.calls.values())
    time.sleep(2.0)
    polls = sum(counting.calls.values()) - before
    print(f"   idle worker, poll 0.1s: {polls} queries in 2 s ({polls / 20:.2f} per interval)")
    idle.shutdown()


NOOP_0_1 = """
import os, sys, time, tempfile
sys.path.insert(0, sys.argv[1])
from pymongo import MongoClient
from asynctask import AsyncTask
class Noop(AsyncTask):
    def main(self, logger):
        return None
coll = MongoClient(sys.argv[2], tz_aware=True)["bench"][sys.argv[3]]
api = Noop(coll, tempfile.mkdtemp(), max_worker=8)
count = int(sys.argv[4])
began = time.monotonic()
ids = [api.run() for _ in range(count)]
while coll.count_documents({"status": "success"}) < count:
    time.sleep(0.01)
print(count / (time.monotonic() - began))
api.shutdown()
"""


def throughput(uri: str, db: Any, logs: Path, count: int, baseline: str | None) -> None:
    print(f"4. no-op tasks per second through worker processes ({count} tasks, 4 slots each)")
    if baseline:
        name = f"b_{uuid.uuid4().hex[:8]}"
        done = subprocess.run([sys.executable, "-c", NOOP_0_1, baseline, uri, name, str(count)],
                              capture_output=True, text=True, timeout=600)
        print(f"   0.1 (the accepting process runs all): {float(done.stdout.strip() or 0):7.1f} tasks/s"
              + (f"  [{done.stderr.strip()[-200:]}]" if done.returncode else ""))
    name = f"a_{uuid.uuid4().hex[:8]}"
    api = apps.build(uri, name, log_dir=str(logs), max_worker=8, poll=0.05)
    began = time.monotonic()
    for i in range(count):
        api.run(key=f"n{i:04d}")
    while db[name].count_documents({"status": "success"}) < count:
        time.sleep(0.01)
    print(f"   0.2 (the accepting process runs all):  {count / (time.monotonic() - began):7.1f} tasks/s")
    api.shutdown()
    for processes in (1, 2, 4):
        name = f"t_{uuid.uuid4().hex[:8]}"
        workers = [apps.WorkerProcess(uri, name, logs, concurrency=4, poll=0.05) for _ in range(processes)]
        for worker in workers:
            worker.wait_ready()
        api = apps.build(uri, name, log_dir=str(logs), worker=False)
        keys = [f"n{i:04d}" for i in range(count)]
        began = time.monotonic()
        for key in keys:
            api.run(key=key)
        while db[name].count_documents({"status": "success"}) < count:
            time.sleep(0.01)
        rate = count / (time.monotonic() - began)
        print(f"   0.2, {processes} worker process(es): {rate:7.1f} tasks/s")
        api.shutdown()
        for worker in workers:
            worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=0.25)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--noop", type=int, default=300)
    parser.add_argument("--baseline", default=None, help="a folder holding asynctask 0.1's package")
    parser.add_argument("--only", type=int, nargs="*", default=[1, 2, 3, 4], help="which parts to run")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="asynctask-bench-"))
    given = os.environ.get("ASYNCTASK_TEST_MONGO_URI")
    with running_server() if not given else contextlib.nullcontext(given) as uri:
        client: MongoClient = MongoClient(uri, tz_aware=True)
        db = client[apps.DEFAULT_DB]
        if 1 in args.only:
            makespan(uri, db, logs, args.tasks, args.seconds, args.poll)
        if 2 in args.only:
            latency(uri, db, logs, args.samples, args.poll)
        if 3 in args.only:
            database_calls(logs, 300)
        if 4 in args.only:
            throughput(uri, db, logs, args.noop, args.baseline)
        client.close()


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
