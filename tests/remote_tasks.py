"""A task for the remote-worker tests: its `main` touches no database, so a remote worker (which
has none) can run it. Configured by the environment, like `apps`:

| variable | meaning |
| --- | --- |
| `ASYNCTASK_MONGO_URI` | the service's database; a remote worker gets an address where nothing answers |
| `REMOTE_COLLECTION` | the task collection |
| `REMOTE_HEARTBEAT`, `REMOTE_STALE_AFTER`, `REMOTE_POLL` | liveness options, in seconds |
| `REMOTE_LOG_DIR` | the task logs |

`main(seconds, steps)` logs each step, reports progress, stops early when cancelled, and
returns the pid and host of the process that ran it.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import asynctask
from asynctask import AsyncTask
from asynctask.store.connection import LazyMongoCollection


class Remote(AsyncTask):
    """Works `seconds` in `steps` steps, logging and reporting progress at each."""

    def main(self, logger: logging.Logger, seconds: float = 0.0, steps: int = 1, big: int = 0) -> dict:
        for step in range(steps):
            if asynctask.cancelled():
                logger.info("cancelled at step %d", step)
                return {"cancelled_at": step}
            logger.info("step %d of %d", step + 1, steps)
            asynctask.report_progress(100.0 * step / steps, f"step {step + 1}")
            time.sleep(seconds / steps)
        return {"pid": os.getpid(), "host": socket.gethostname(), "padding": "x" * big}


def build() -> Remote:
    env = os.environ
    return Remote(
        LazyMongoCollection(env.get("ASYNCTASK_MONGO_URI", "mongodb://127.0.0.1:9"), "asynctask_remote",
                            env.get("REMOTE_COLLECTION", "tasks")),
        env.get("REMOTE_LOG_DIR", "logs"),
        heartbeat_interval=float(env.get("REMOTE_HEARTBEAT", "10")),
        stale_after=float(env["REMOTE_STALE_AFTER"]) if env.get("REMOTE_STALE_AFTER") else None,
        poll_interval=float(env.get("REMOTE_POLL", "1")),
        max_worker=2,
    )


api = build()
app = api.app("/api")
