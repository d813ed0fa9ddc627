"""Recovery time after SIGKILL, against `stale_after`.

For each `stale_after` (heartbeat_interval = stale_after / 3), serve `tests/apps.py` under
gunicorn with 2 workers and asynctask's hooks, then for each round: submit one task whose first
attempt works for 60 s (later attempts return at once), SIGKILL the worker that runs it, and time
from the kill to
- pickup: the recovery attempt's `main` starts in another process;
- success: the task's `finished_at` with status `success`.

Expected: pickup between stale_after - heartbeat_interval and stale_after + heartbeat_interval:
the last heartbeat is up to one interval old at the kill, and the other processes sweep once
per interval.

Uses ASYNCTASK_TEST_MONGO_URI if set, else the test wire server (tests/mongo_wire.py).
Run from the repository root:

    python bench/recovery.py [--stale 1 2 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ["DISABLE_STREAM_HANDLER"] = "1"
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import apps  # noqa: E402
from mongo_wire import running_server  # noqa: E402
from pymongo import MongoClient  # noqa: E402

ROUND_DEADLINE_S = 30.0


@contextlib.contextmanager
def database_uri() -> Iterator[str]:
    """ASYNCTASK_TEST_MONGO_URI, or a wire server for the duration of the benchmark."""
    uri = os.environ.get("ASYNCTASK_TEST_MONGO_URI")
    if uri:
        yield uri
        return
    with running_server() as uri:
        yield uri


def wait_for(condition: Any, what: str, timeout: float = ROUND_DEADLINE_S) -> Any:
    """Poll `condition` every 10 ms until it returns something truthy; raise at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(f"not within {timeout}s: {what}")


def one_round(server: apps.Server, db: Any, name: str, key: str) -> tuple[float, float]:
    """Submit `key`, SIGKILL its worker once `main` runs; (pickup, success) seconds after the kill."""
    status, body = server.submit(key)
    if status != 202:
        raise RuntimeError(f"POST answered {status}: {body}")
    calls = db[f"{name}_calls"]
    first = wait_for(lambda: calls.find_one({"task_id": key, "attempt": 1}), f"{key} starts")
    killed_at = time.time()
    os.kill(first["pid"], signal.SIGKILL)
    doc = wait_for(
        lambda: db[name].find_one({"task_id": key, "status": {"$in": ["success", "failed"]}}), f"{key} ends"
    )
    if doc["status"] != "success":
        raise RuntimeError(f"{key} ended {doc['status']}: {doc.get('error')}")
    second = calls.find_one({"task_id": key, "attempt": 2})
    if second is None or second["pid"] == first["pid"]:
        raise RuntimeError(f"{key} was not recovered by another process: {second}")
    return second["started"] - killed_at, doc["finished_at"].timestamp() - killed_at


def measure(uri: str, db: Any, stale_after: float, rounds: int, log_dir: str) -> list[tuple[float, float]]:
    """Serve the app with this `stale_after` and time `rounds` recoveries."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    server = apps.Server(
        uri, name, log_dir, mode="hooks", workers=2, seconds=60, retry_seconds=0,
        heartbeat=stale_after / 3, stale_after=stale_after,
    )
    try:
        server.wait_ready()
        return [one_round(server, db, name, f"r{i}") for i in range(rounds)]
    finally:
        server.stop()
        db.drop_collection(name)
        db.drop_collection(f"{name}_calls")


def main(argv: list[str] | None = None) -> int:
    """Print one row per `stale_after`: pickup and success times after SIGKILL (median, min, max)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stale", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="stale_after values (s)")
    parser.add_argument("--rounds", type=int, default=3, help="kills per stale_after value")
    args = parser.parse_args(argv)

    started = time.monotonic()
    print(f"recovery after SIGKILL: gunicorn, 2 workers, {args.rounds} kills per row, seconds after the kill")
    print(f"{'stale_after':>11} {'heartbeat':>9} | {'pickup median':>13} {'min':>6} {'max':>6}"
          f" | {'success median':>14} {'min':>6} {'max':>6}")
    with database_uri() as uri, tempfile.TemporaryDirectory(prefix="asynctask-bench-") as log_dir:
        client: MongoClient = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)
        db = client[apps.DEFAULT_DB]
        for stale_after in args.stale:
            times = measure(uri, db, stale_after, args.rounds, log_dir)
            pickup = [p for p, _ in times]
            success = [s for _, s in times]
            print(f"{stale_after:>11.2f} {stale_after / 3:>9.2f} | {statistics.median(pickup):>13.2f}"
                  f" {min(pickup):>6.2f} {max(pickup):>6.2f} | {statistics.median(success):>14.2f}"
                  f" {min(success):>6.2f} {max(success):>6.2f}", flush=True)
        client.close()
    print(f"total {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
