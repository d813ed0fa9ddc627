"""Coroutine tasks in flight at once in one process, against the same tasks as threads.

On the in-memory store, in this process, each with `max_worker=N`:
(a) N no-op tasks (`async def main` that returns at once): the store's cost for N tasks;
(b) N coroutine tasks that each `await asyncio.sleep(S)`;
(c) N plain tasks that each `time.sleep(S)` (one thread per attempt), for comparison.
For each: the makespan (first submit to last success) and the peak thread count of the
process. Aim for (b): makespan within 2x of S + (a), threads under 50.

Run from the repository root:

    python bench/coroutines.py [--tasks 1000] [--seconds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ["DISABLE_STREAM_HANDLER"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asynctask import AsyncTask, MemoryCollection  # noqa: E402
from asynctask.status import FINISHED  # noqa: E402


class NoOp(AsyncTask):
    async def main(self, logger: logging.Logger, n: int, seconds: float = 0.0) -> int:
        return n


class AwaitSleep(AsyncTask):
    async def main(self, logger: logging.Logger, n: int, seconds: float = 1.0) -> int:
        await asyncio.sleep(seconds)
        return n


class ThreadSleep(AsyncTask):
    def main(self, logger: logging.Logger, n: int, seconds: float = 1.0) -> int:
        time.sleep(seconds)
        return n


def run(kind: type[AsyncTask], tasks: int, seconds: float) -> dict[str, Any]:
    """Submit `tasks` tasks of `kind` and wait for all; makespan and peak threads."""
    with tempfile.TemporaryDirectory() as logs:
        api = kind(MemoryCollection(), logs, max_worker=tasks, poll_interval=0.05)
        peak = threading.active_count()
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.02):
                peak = max(peak, threading.active_count())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.perf_counter()
        ids = [api.submit({"n": n, "seconds": seconds}) for n in range(tasks)]
        for task_id in ids:
            view = api.wait(task_id, 600)
            assert view is not None and view["status"] in FINISHED, view
            assert view["status"] == "success", view
        took = time.perf_counter() - began
        stop.set()
        sampler.join()
        api.shutdown()
    return {"makespan": took, "threads": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    n, s = args.tasks, args.seconds
    print(f"{n} tasks, max_worker={n}, in-memory store, {os.cpu_count()} CPUs")
    noop = run(NoOp, n, 0.0)
    print(f"(a) {n} no-op coroutine tasks:        makespan {noop['makespan']:6.2f} s, "
          f"peak threads {noop['threads']}")
    coros = run(AwaitSleep, n, s)
    bound = s + noop["makespan"]
    print(f"(b) {n} x await asyncio.sleep({s:g}):    makespan {coros['makespan']:6.2f} s, "
          f"peak threads {coros['threads']}  ({coros['makespan'] / bound:.2f}x of {s:g} s + (a) = {bound:.2f} s)")
    threads = run(ThreadSleep, n, s)
    print(f"(c) {n} x time.sleep({s:g}) in threads: makespan {threads['makespan']:6.2f} s, "
          f"peak threads {threads['threads']}")
    print(f"coroutines vs threads: {coros['makespan'] / threads['makespan']:.2f}x the makespan, "
          f"{coros['threads']} vs {threads['threads']} threads")


if __name__ == "__main__":
    main()
