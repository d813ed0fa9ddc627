"""What rate limits and per-key concurrency cost a claim: claims per second against no limit.

For each store (the in-memory one, and MongoDB through pymongo: the test wire server, or
`ASYNCTASK_TEST_MONGO_URI`), queues `--tasks` tasks, then times one worker's claims
(`StoreBackend.claim`, one thread, no task run) until the queue is empty, for:

- no limit: one `find_one_and_update` per claim;
- a rate limit for the type ("1000/s burst=1000000": it never holds a claim back here, so the
  figure is the cost of the bookkeeping: the blocked-keys read, the pick, the GCRA write);
- a rate limit per key, over `--keys` distinct keys;
- per-key concurrency (at most 1 per key) over `--keys` distinct keys: the shares are taken
  and never given back here (no task ends), so every claimed key stays full (while no task of
  it waits, a claim does not read it);
- both per key;
- per-key concurrency with `--keys` held tasks ahead: every key runs one task and has a second
  one queued (held back), and `--held-claims` claims take tasks of other keys queued behind
  those: each claim passes over the held ones (first found, then marked and skipped in the
  index walk, whose cost grows with how many are ahead).

Rounds are interleaved so that machine noise hits every scenario alike; the medians are
printed with their ratio to no limit.

Run from the repository root:

    python bench/limits.py [--tasks 1000] [--keys 1000] [--rounds 3] [--mongo-tasks 300]
                           [--held-claims 100] [--memory-only]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ["DISABLE_STREAM_HANDLER"] = "1"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from asynctask import AsyncTask, MemoryCollection  # noqa: E402

FAST = "1000/s burst=1000000"
SCENARIOS: dict[str, dict[str, Any]] = {
    "no limit": {},
    "rate limit (type)": {"rate_limit": FAST},
    "rate limit per key": {"rate_limit": FAST, "rate_limit_key": "tenant"},
    "concurrency per key": {"concurrency_key": "tenant", "max_concurrency_per_key": 1},
    "both per key": {"rate_limit": FAST, "rate_limit_key": "tenant", "concurrency_key": "tenant",
                     "max_concurrency_per_key": 1},
}


HELD_AHEAD = "held tasks ahead"


class Noop(AsyncTask):
    name = "bench_limits"

    def main(self, logger: logging.Logger, tenant: str) -> None:
        return None


def claims_per_second(collection: Any, logs: str, options: dict[str, Any], tasks: int, keys: int,
                      held_ahead: bool = False) -> float:
    """Queue `tasks` tasks over `keys` tenants, then time claims until the queue is empty. With
    `held_ahead`, each tenant first runs one task and queues another (held back) ahead of them."""
    api = Noop(collection, logs, worker=False, **options)
    try:
        backend = api.asynctask_engine.backend
        owner, worker = f"bench:{os.getpid()}:{uuid.uuid4().hex[:8]}", f"bench:{os.getpid()}"
        if held_ahead:
            for i in range(keys):
                api.submit({"tenant": f"busy-{i:04d}"})
            while backend.claim(owner, worker) is not None:
                pass
            for i in range(keys):
                api.submit({"tenant": f"busy-{i:04d}"})
        for i in range(tasks):
            api.submit({"tenant": f"tenant-{i % keys:04d}"})
        claimed = empty = 0
        began = time.perf_counter()
        while claimed < tasks:
            # A claim that found many keys held back takes nothing and asks to be called again
            # (a worker's loop does at once), the keys it found marked for the next claims.
            if backend.claim(owner, worker) is not None:
                claimed += 1
            elif (empty := empty + 1) > keys:
                raise RuntimeError(f"claimed {claimed} of {tasks} tasks")
        elapsed = time.perf_counter() - began
        return claimed / elapsed
    finally:
        api.shutdown()


@contextlib.contextmanager
def mongo_collections(uri: str | None) -> Iterator[Callable[[], Any]]:
    """Fresh collections on MongoDB (the test wire server unless `uri`), dropped afterwards."""
    from pymongo import MongoClient

    with contextlib.ExitStack() as stack:
        if uri is None:
            from mongo_wire import running_server

            uri = stack.enter_context(running_server())
        client: MongoClient = MongoClient(uri, tz_aware=True)
        database = client["asynctask_bench_limits"]
        made: list[str] = []

        def fresh() -> Any:
            made.append(f"c_{uuid.uuid4().hex[:10]}")
            return database[made[-1]]

        try:
            yield fresh
        finally:
            for name in made:
                for suffix in ("", ".limits", ".workers", ".slots"):
                    database.drop_collection(f"{name}{suffix}")
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks queued and claimed per round")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys of the per-key scenarios")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mongo-tasks", type=int, default=300, help="tasks per round on MongoDB")
    parser.add_argument("--held-claims", type=int, default=100, help="claims timed behind the held tasks")
    parser.add_argument("--memory-only", action="store_true", help="skip the MongoDB store")
    args = parser.parse_args(argv)
    started = time.monotonic()
    stores: list[tuple[str, Callable[[], Any], int]] = [("memory", MemoryCollection, args.tasks)]
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as logs, contextlib.ExitStack() as stack:
        if not args.memory_only:
            uri = os.environ.get("ASYNCTASK_TEST_MONGO_URI")
            label = "MongoDB" if uri else "MongoDB wire server (tests/mongo_wire.py)"
            stores.append((label, stack.enter_context(mongo_collections(uri)), args.mongo_tasks))
        for label, make, tasks in stores:
            keys = min(args.keys, tasks)
            figures: dict[str, list[float]] = {scenario: [] for scenario in [*SCENARIOS, HELD_AHEAD]}
            for _ in range(args.rounds):
                for scenario, options in SCENARIOS.items():
                    figures[scenario].append(claims_per_second(make(), logs, options, tasks, keys))
                figures[HELD_AHEAD].append(claims_per_second(
                    make(), logs, SCENARIOS["concurrency per key"], min(args.held_claims, tasks), keys,
                    held_ahead=True))
            base = statistics.median(figures["no limit"])
            print(f"{label}: {tasks} tasks over {keys} keys, one claiming thread, medians of {args.rounds} rounds")
            print(f"  {'scenario':<24} {'claims/s':>10} {'vs no limit':>12}")
            for scenario, rates in figures.items():
                rate = statistics.median(rates)
                shown = f"{scenario} ({keys})" if scenario == HELD_AHEAD else scenario
                print(f"  {shown:<24} {rate:>10.0f} {rate / base:>11.2f}x")
    print(f"runtime {time.monotonic() - started:.0f}s on {os.cpu_count()} CPU(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
