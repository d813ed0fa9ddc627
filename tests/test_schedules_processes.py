"""Schedules across real worker processes sharing one MongoDB (the test wire server).

Several `asynctask worker` processes declare the same `every=1s` schedule: with no leader and no
lock, each tick becomes exactly one task, run once, and no tick goes missing while they run. A
pause made at run time holds when every process restarts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import apps
import pytest
import schedule_apps
from waiting import wait_until

pytestmark = pytest.mark.timeout(120)

POLL = 0.2


class TickingWorker:
    """`asynctask worker schedule_apps:api` in a process group of its own."""

    def __init__(self, uri: str, collection: str, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / f"worker-{uuid.uuid4().hex[:8]}.err"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "asynctask.cli", "worker", "schedule_apps:api", "--concurrency", "2"],
                cwd=apps.ROOT, env=apps.environment(uri, collection, log_dir, poll=POLL), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err, start_new_session=True, text=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or "ready" not in line[0]:
            raise RuntimeError(f"the worker did not get ready: {line!r}\n{self.stderr_path.read_text()}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def fleet(mongo_uri: str, name: str, db: Any, tmp_path: Path) -> Iterator[Callable[[int], list[TickingWorker]]]:
    """Start n ticking worker processes, each ready; all killed at teardown."""
    started: list[TickingWorker] = []

    def start(n: int) -> list[TickingWorker]:
        workers = [TickingWorker(mongo_uri, name, tmp_path / "logs") for _ in range(n)]
        for worker in workers:
            worker.wait_ready()
        started.extend(workers)
        return workers

    yield start
    for worker in started:
        worker.stop()
    db.drop_collection(f"{name}.schedules")


def ticks_run(db: Any, name: str) -> list[datetime]:
    """The tick of every call of `main`, oldest first (a tick run twice appears twice)."""
    return sorted(datetime.fromisoformat(call["scheduled_for"]) for call in db[f"{name}_calls"].find())


def contiguous(ticks: list[datetime]) -> bool:
    return all(later - earlier == timedelta(seconds=1) for earlier, later in zip(ticks, ticks[1:], strict=False))


def test_several_processes_make_one_task_per_tick_and_miss_none(fleet, db, name):
    fleet(3)

    def six_in_a_row() -> list[datetime]:
        ran = ticks_run(db, name)
        # A tick missing for good keeps this false until the deadline (a slow one only for a while).
        return ran if len(ran) >= 6 and contiguous(sorted(set(ran))) else []

    seen = wait_until(six_in_a_row, "six ticks in a row, none missing", timeout=30, interval=0.1)
    assert len(seen) == len(set(seen)), f"a tick ran twice: {seen}"
    tasks = {doc["task_id"]: doc for doc in db[name].find({"task_id": {"$regex": "^sched:beat:"}})}
    ran = ticks_run(db, name)
    assert len(ran) == len(set(ran)), f"a tick ran twice: {ran}"
    # Every task is a tick of its own second, and each tick ran where its task says.
    assert {f"sched:beat:{tick:%Y%m%dT%H%M%SZ}" for tick in ran} <= set(tasks)
    assert all(doc["status"] in ("queued", "running", "success") for doc in tasks.values())
    assert len({call["pid"] for call in db[f"{name}_calls"].find()}) >= 1
    schedule = db[f"{name}.schedules"].find_one({"name": "beat"})
    assert schedule["enabled"] is True and len(schedule["runs"]) >= 6


def test_a_pause_holds_across_a_restart_of_every_process(fleet, db, name, mongo_uri, tmp_path):
    first = fleet(2)
    wait_until(lambda: len(ticks_run(db, name)) >= 2, "two ticks run", timeout=30, interval=0.1)
    manager = schedule_apps.build(mongo_uri, name, log_dir=str(tmp_path / "manager"), worker=False)
    try:
        manager.schedules.pause("beat")
        paused_at = manager.schedules.get("beat")["updated_at"]
        for worker in first:
            worker.stop()
        fleet(2)  # restarted: they declare the schedule again, enabled in the code
        assert manager.schedules.get("beat")["enabled"] is False
        # A live worker would have enqueued about 3 ticks in this time.
        deadline = datetime.now(paused_at.tzinfo) + timedelta(seconds=3)
        wait_until(lambda: datetime.now(paused_at.tzinfo) >= deadline, "three seconds", timeout=10)
        # (An evaluation that read the schedule just before the pause may still enqueue its tick.)
        ticks = [datetime.strptime(doc["task_id"].rsplit(":", 1)[1], "%Y%m%dT%H%M%S%z")
                 for doc in db[name].find({"task_id": {"$regex": "^sched:beat:"}})]
        assert [tick for tick in ticks if tick > paused_at + timedelta(seconds=2)] == []
        manager.schedules.resume("beat")
        count = len(ticks_run(db, name))
        wait_until(lambda: len(ticks_run(db, name)) >= count + 2, "ticks again after resume", timeout=30,
                   interval=0.1)
    finally:
        manager.shutdown()
