"""A task type with a schedule that ticks every second, for the real-process tests of schedules.

`asynctask worker schedule_apps:api` imports it; everything comes from the environment that
`apps.environment` makes (`ASYNCTASK_MONGO_URI`, `ASYNCTASK_MONGO_DB`, `APPS_COLLECTION`,
`APPS_POLL`, `APPS_LOG_DIR`). `main` records each call in `<APPS_COLLECTION>_calls`, so the
test sees what every process ran.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from apps import DEFAULT_DB

from asynctask import AsyncTask, Schedule
from asynctask.store.connection import LazyMongoCollection


class Ticking(AsyncTask):
    """Runs once per second of the clock, by its schedule; records the tick it was given."""

    schedules = [Schedule("beat", every=1)]

    def __init__(self, collection: Any, logger_dir: str, *, calls: Any, **options: Any) -> None:
        super().__init__(collection, logger_dir, **options)
        self.calls = calls

    def main(self, logger: logging.Logger, scheduled_for: str) -> str:
        self.calls.insert_one({"scheduled_for": scheduled_for, "pid": os.getpid(), "at": time.time()})
        return scheduled_for


def build(uri: str, collection: str, *, database: str = DEFAULT_DB, log_dir: str = "logs", poll: float = 1.0,
          worker: bool | None = None) -> Ticking:
    """A `Ticking` task on `database.collection` at `uri`, its calls in `<collection>_calls`."""
    return Ticking(
        LazyMongoCollection(uri, database, collection), log_dir,
        calls=LazyMongoCollection(uri, database, f"{collection}_calls"), poll_interval=poll, worker=worker,
        max_worker=4,
    )


def from_environment() -> Ticking | None:
    uri = os.environ.get("ASYNCTASK_MONGO_URI")
    if not uri:
        return None
    return build(uri, os.environ.get("APPS_COLLECTION", "tasks"),
                 database=os.environ.get("ASYNCTASK_MONGO_DB") or DEFAULT_DB,
                 log_dir=os.environ.get("APPS_LOG_DIR", "logs"), poll=float(os.environ.get("APPS_POLL", "1")))


api = from_environment()
