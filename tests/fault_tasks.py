"""The task of the fault-injection run (`bench/faults.py`): its `main` appends to a ground-truth
log, so that what really ran can be checked against what the database says.

Configured by the environment: `ASYNCTASK_MONGO_URI` (the shared database), `FAULT_COLLECTION`,
`FAULT_LOG` (the ground-truth file), `FAULT_LOG_DIR` (task logs), and the liveness options
`FAULT_HEARTBEAT`, `FAULT_STALE_AFTER`, `FAULT_POLL`, `FAULT_MAX_CONCURRENCY`.

Each line of the ground truth is JSON: `{"event": "start"|"end", "task_id", "attempt", "pid",
"t"}`, `t` being `time.monotonic()`: one clock for every process of the machine, which no
skew of the wall clock (time-machine) touches.
"""

from __future__ import annotations

import json
import logging
import os
import time

import asynctask
from asynctask import AsyncTask
from asynctask.attempt import current
from asynctask.store.connection import LazyMongoCollection


def record(event: str, task_id: str, attempt: int | None) -> None:
    """Append one line to the ground truth (O_APPEND: whole lines, whatever the processes)."""
    line = json.dumps({"event": event, "task_id": task_id, "attempt": attempt, "pid": os.getpid(),
                       "t": time.monotonic()}) + "\n"
    fd = os.open(os.environ["FAULT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Fault(AsyncTask):
    """Works `seconds` in small steps, stopping early when cancelled; the first try raises if asked."""

    def get_task_id(self, key: str, seconds: float = 0.2, fail_first: bool = False) -> str:
        return key

    def main(self, logger: logging.Logger, key: str, seconds: float = 0.2, fail_first: bool = False) -> dict:
        attempt = current(key)
        number = attempt.number if attempt else None
        record("start", key, number)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not asynctask.cancelled():
                time.sleep(0.02)
            if fail_first and attempt is not None and attempt.retries == 0:
                raise RuntimeError("the first try fails, as asked")
            return {"pid": os.getpid(), "attempt": number}
        finally:
            record("end", key, number)


def build() -> Fault:
    env = os.environ
    limit = env.get("FAULT_MAX_CONCURRENCY")
    return Fault(
        LazyMongoCollection(env.get("ASYNCTASK_MONGO_URI", "mongodb://127.0.0.1:9"), "asynctask_faults",
                            env.get("FAULT_COLLECTION", "tasks")),
        env.get("FAULT_LOG_DIR", "logs"),
        max_worker=3,
        heartbeat_interval=float(env.get("FAULT_HEARTBEAT", "0.3")),
        stale_after=float(env.get("FAULT_STALE_AFTER", "1.0")),
        poll_interval=float(env.get("FAULT_POLL", "0.1")),
        max_concurrency=int(limit) if limit else None,
        max_retries=2, retry_delay=0.2, max_attempts=50,
    )


api = build()
app = api.app("/api")
