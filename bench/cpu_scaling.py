"""CPU-bound tasks: a spawned process pool scales with workers, a thread pool does not (GIL).

Runs N tasks (default 8) of about one second of pure-Python work each, on the in-memory
store, three ways:

1. `executor="processes"`, `max_worker=1`: the serial baseline;
2. `executor="processes"`, `max_worker=2`: should approach 2x on two free cores;
3. `executor="threads"`,   `max_worker=2`: stays near 1x, since the GIL lets one thread
   run Python at a time.

The loop count is calibrated first so that one task takes about `--seconds` here. Each
process pool is warmed up (its children spawned and importing asynctask) before the clock
starts, so the figures compare running tasks, not starting interpreters.

Besides wall times and speedups, each setup shows its parallelism: the CPU seconds its tasks
spent (each measured with `time.thread_time()` inside `main`) divided by the wall time, i.e.
how many cores it kept busy; and "at once", the most tasks whose `main` overlapped in time.
Threads overlap as much as processes but share one core. On a machine shared with other
work every figure but "at once" moves with the load, which is printed first.

Run from the repository root (about 25 s with the defaults):

    python bench/cpu_scaling.py [--tasks 8] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["DISABLE_STREAM_HANDLER"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asynctask import AsyncTask, MemoryCollection  # noqa: E402

FINISHED = ("success", "failed", "cancelled")
DEADLINE_S = 120.0
POLL_S = 0.02


def burn(loops: int) -> int:
    """Pure-Python integer work that holds the GIL throughout; returns a checksum."""
    acc = 0
    for i in range(loops):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


class Burn(AsyncTask):
    """A task that spends `loops` iterations of `burn`. Spawned children import it from this
    script, which multiprocessing runs in them as `__mp_main__`."""

    def get_task_id(self, name: str, loops: int) -> str:
        return name

    def main(self, logger: Any, name: str, loops: int) -> dict[str, Any]:
        began, started = time.time(), time.thread_time()
        checksum = burn(loops)
        return {"checksum": checksum, "cpu": time.thread_time() - started, "span": [began, time.time()]}


def calibrate(seconds: float) -> tuple[int, float, float]:
    """A loop count for which `burn` takes about `seconds` of CPU, and the CPU and wall
    seconds it took once. CPU time, unlike wall time, does not grow when other processes
    compete for the cores."""
    loops = 100_000
    while True:
        started = time.thread_time()
        burn(loops)
        took = time.thread_time() - started
        if took >= 0.2:
            break
        loops *= 2
    loops = int(loops * seconds / took)
    cpu, wall = time.thread_time(), time.perf_counter()
    burn(loops)
    return loops, time.thread_time() - cpu, time.perf_counter() - wall


def most_at_once(spans: list[list[float]]) -> int:
    """The largest number of (start, end) spans that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def wait_all(task: AsyncTask, task_ids: list[str]) -> tuple[float, int]:
    """Once every task finished successfully, the CPU seconds they report and how many ran
    at once at most; raise if one did not succeed."""
    deadline = time.monotonic() + DEADLINE_S
    pending = list(task_ids)
    cpu = 0.0
    spans = []
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} task(s) unfinished after {DEADLINE_S:.0f} s")
        time.sleep(POLL_S)
        still = []
        for task_id in pending:
            view = task.retrieve(task_id)
            if view is None or view["status"] not in FINISHED:
                still.append(task_id)
            elif view["status"] != "success":
                raise RuntimeError(f"task {task_id} ended {view['status']}: {view['error']}")
            else:
                cpu += view["result"]["cpu"]
                spans.append(view["result"]["span"])
        pending = still
    return cpu, most_at_once(spans)


def timed_run(executor: str, workers: int, tasks: int, loops: int, log_dir: str) -> tuple[float, float, float, int]:
    """Warm-up seconds, seconds from the first `run()` to the last success, the tasks' CPU
    seconds, and how many tasks ran at once at most, for one setup."""
    label = f"{executor}-{workers}"
    task = Burn(MemoryCollection(), log_dir, max_worker=workers, executor=executor)
    try:
        started = time.perf_counter()
        wait_all(task, [task.run(name=f"{label}-warm-{i}", loops=1) for i in range(workers)])
        warm = time.perf_counter() - started
        started = time.perf_counter()
        cpu, at_once = wait_all(task, [task.run(name=f"{label}-{i}", loops=loops) for i in range(tasks)])
        return warm, time.perf_counter() - started, cpu, at_once
    finally:
        task.shutdown(wait=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="tasks per setup (8)")
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per task (1.0)")
    args = parser.parse_args(argv)
    if args.tasks < 1 or not args.seconds > 0:
        parser.error("--tasks must be at least 1 and --seconds positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    begun = time.perf_counter()
    loops, one, one_wall = calibrate(args.seconds)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"cpus: {os.cpu_count()}; load average {load}")
    print(f"calibration: {loops:,} loops per task; one task took {one:.2f} s of CPU ({one_wall:.2f} s wall) here")
    print(f"{args.tasks} tasks per setup, in-memory store; ideal serial time {args.tasks * one:.1f} s")
    setups = [("processes", 1), ("processes", 2), ("threads", 2)]
    walls: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="asynctask-bench-") as log_dir:
        for executor, workers in setups:
            warm, wall, cpu, at_once = timed_run(executor, workers, args.tasks, loops, log_dir)
            walls[executor, workers] = wall
            warm_note = f"  (pool warm-up {warm:.2f} s, not counted)" if executor == "processes" else ""
            print(f"  {executor:<9} max_worker={workers}: wall {wall:6.2f} s, task CPU {cpu:6.2f} s, "
                  f"parallelism {cpu / wall:.2f}, at once {at_once}{warm_note}")
    serial = walls["processes", 1]
    print(f"speedup processes 2 vs 1 workers: {serial / walls['processes', 2]:.2f}x  [approaches 2 on 2 free cores]")
    print(f"speedup threads 2 vs processes 1: {serial / walls['threads', 2]:.2f}x  [about 1: the GIL]")
    print(f"(benchmark ran in {time.perf_counter() - begun:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
