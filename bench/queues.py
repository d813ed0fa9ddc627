"""asynctask against the queues users would pick instead: the same no-op jobs through Huey,
Dramatiq and Celery on a private Redis, and through asynctask on its embedded store.

Each measurement runs in a fresh child process (so no system's idle threads cost another
one anything): it starts its workers (8 threads each by default), warms them up with a few
jobs, then times from the first enqueue to the last finish of `--jobs` no-op jobs. "Finish"
is: asynctask, the task's `success` is stored (the store's count of successes, polled); Huey
and Dramatiq, the job body ran (an in-process counter, polled; their workers run in the
child); Celery, the job body ran in the worker process (a Redis INCR, polled). Rounds are
interleaved (A B C D, A B C D, ...); the table gives medians in jobs per second.

Redis is started by this script (`redis-server` on a free port, nothing saved) and stopped
at the end. A system whose package or Redis is missing is skipped with the reason.

Run from the repository root (the packages: `pip install -e '.[bench]'`, and Debian's
`apt-get install redis-server`):

    python bench/queues.py [--jobs 2000] [--rounds 3] [--threads 8]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("asynctask", "huey", "dramatiq", "celery")
NEEDS = {"asynctask": [], "huey": ["huey", "redis"], "dramatiq": ["dramatiq", "redis"], "celery": ["celery", "redis"]}
DEADLINE = 300.0


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A private Redis for the duration (its URL), or None when `redis-server` is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="asynctask-redis-") as folder:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", folder, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait(lambda: _answers(port), 10, "redis-server did not start")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


def wait(done: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `done` until it is true; `TimeoutError(what)` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.002)


def missing(system: str, redis_url: str | None) -> str | None:
    """Why `system` cannot run here, or None."""
    absent = [name for name in NEEDS[system] if importlib.util.find_spec(name) is None]
    if absent:
        return f"needs {', '.join(absent)} (pip install -e '.[bench]')"
    if system != "asynctask" and redis_url is None:
        return "needs redis-server (apt-get install redis-server)"
    return None


# -- one measurement, in a child process -------------------------------------------------------


def run_asynctask(jobs: int, threads: int, redis_url: str | None) -> float:
    os.environ["DISABLE_STREAM_HANDLER"] = "1"
    sys.path.insert(0, str(ROOT))
    from asynctask import AsyncTask, MemoryCollection

    class NoOp(AsyncTask):
        def get_task_id(self, i: str) -> str:  # type: ignore[override]
            return i

        def main(self, logger: Any, i: str) -> None:  # type: ignore[override]
            return None

    collection = MemoryCollection()
    with tempfile.TemporaryDirectory(prefix="asynctask-bench-") as log_dir:
        task = NoOp(collection, log_dir, max_worker=threads)
        try:
            return timed(lambda i: task.run(i=f"{i}"), lambda: collection.count_documents({"status": "success"}),
                         jobs)
        finally:
            task.shutdown()


def run_huey(jobs: int, threads: int, redis_url: str | None) -> float:
    from huey import RedisHuey

    done = itertools.count()
    finished = [0]
    huey = RedisHuey("bench", url=redis_url, results=False)

    @huey.task()
    def noop(i: int) -> None:
        finished[0] = next(done) + 1

    consumer = huey.create_consumer(workers=threads, worker_type="thread", periodic=False,
                                    initial_delay=0.001, max_delay=0.01, check_worker_health=False)
    consumer.start()
    try:
        return timed(noop, lambda: finished[0], jobs)
    finally:
        consumer.stop(graceful=True)


def run_dramatiq(jobs: int, threads: int, redis_url: str | None) -> float:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    done = itertools.count()
    finished = [0]
    broker = RedisBroker(url=redis_url)
    dramatiq.set_broker(broker)

    @dramatiq.actor(max_retries=0)
    def noop(i: int) -> None:
        finished[0] = next(done) + 1

    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=10)
    worker.start()
    try:
        return timed(noop.send, lambda: finished[0], jobs)
    finally:
        worker.stop()
        broker.close()


CELERY_APP = """
import redis
from celery import Celery

app = Celery("bench_celery", broker={url!r})
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
counter = redis.Redis.from_url({url!r})


@app.task
def noop(i):
    counter.incr("bench-celery-done")
"""


def run_celery(jobs: int, threads: int, redis_url: str | None) -> float:
    import redis

    folder = Path(tempfile.mkdtemp(prefix="asynctask-celery-"))
    (folder / "bench_celery.py").write_text(textwrap.dedent(CELERY_APP.format(url=redis_url)))
    sys.path.insert(0, str(folder))
    import bench_celery  # type: ignore[import-not-found]

    counter = redis.Redis.from_url(str(redis_url))
    counter.delete("bench-celery-done")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_celery", "worker", "--pool", "threads", "-c", str(threads),
         "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        return timed(bench_celery.noop.delay, lambda: int(counter.get("bench-celery-done") or 0), jobs)
    finally:
        worker.terminate()
        worker.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


RUNNERS: dict[str, Callable[[int, int, str | None], float]] = {
    "asynctask": run_asynctask, "huey": run_huey, "dramatiq": run_dramatiq, "celery": run_celery,
}


def timed(enqueue: Callable[[Any], Any], finished: Callable[[], int], jobs: int, warmup: int = 20) -> float:
    """Warm up with `warmup` jobs, then jobs per second from the first enqueue of `jobs` more
    to the moment `finished()` counts them all."""
    for i in range(warmup):
        enqueue(f"warm-{i}")
    wait(lambda: finished() >= warmup, 60, "the warm-up jobs did not finish")
    start = time.perf_counter()
    for i in range(jobs):
        enqueue(f"job-{i}")
    wait(lambda: finished() >= warmup + jobs, DEADLINE, f"{jobs} jobs did not finish within {DEADLINE:.0f} s")
    return jobs / (time.perf_counter() - start)


# -- the parent ----------------------------------------------------------------------------------


def measure(system: str, jobs: int, threads: int, redis_url: str | None) -> float:
    """One measurement of `system` in a child process: jobs per second."""
    answer = subprocess.run(
        [sys.executable, __file__, "--one", system, "--jobs", str(jobs), "--threads", str(threads),
         "--redis", redis_url or ""],
        capture_output=True, text=True, timeout=DEADLINE + 120, check=False,
    )
    lines = [line for line in answer.stdout.splitlines() if line.startswith("RATE ")]
    if answer.returncode != 0 or not lines:
        raise RuntimeError(f"{system} failed: {answer.stderr.strip()[-500:]}")
    return float(lines[-1].split()[1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs timed per round (2000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads of each system (8)")
    parser.add_argument("--one", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--redis", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the table (or, as a child, one rate)."""
    args = parse_args(argv)
    if args.one:
        print(f"RATE {RUNNERS[args.one](args.jobs, args.threads, args.redis or None):.1f}", flush=True)
        return 0
    started = time.perf_counter()
    with redis_server() as redis_url:
        systems = []
        for system in SYSTEMS:
            reason = missing(system, redis_url)
            if reason:
                print(f"{system}: skipped, {reason}")
            else:
                systems.append(system)
        rates: dict[str, list[float]] = {system: [] for system in systems}
        for _ in range(args.rounds):
            for system in systems:
                rates[system].append(measure(system, args.jobs, args.threads, redis_url))
    print(f"{args.jobs} no-op jobs, {args.threads} worker threads each, median of {args.rounds} interleaved "
          "rounds (first enqueue to last finish)")
    print(f"  {'system':<10} {'jobs/s':>8}   {'rounds':<28} asynctask / it")
    ours = statistics.median(rates["asynctask"]) if "asynctask" in rates else None
    for system, values in rates.items():
        median = statistics.median(values)
        ratio = f"{ours / median:.2f}x" if ours else "-"
        print(f"  {system:<10} {median:8.0f}   {', '.join(f'{v:.0f}' for v in values):<28} {ratio}")
    print(f"(ran in {time.perf_counter() - started:.0f} s on {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
