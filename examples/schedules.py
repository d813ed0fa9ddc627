"""Schedules: a task type that runs by itself, on a cron expression and on an interval.

Serve it (the schedules tick in every worker process, with no extra scheduler process):

    asynctask serve examples.schedules:api --bind 127.0.0.1:8000
    (or: gunicorn 'examples.schedules:app' --bind 127.0.0.1:8000 --worker-class gthread --threads 8)

Then: curl -s localhost:8000/api/schedules                        # each with its next tick
      curl -s -X POST localhost:8000/api/schedules/heartbeat/pause -H 'Content-Type: application/json'
      curl -s -X POST localhost:8000/api/schedules/nightly/trigger -H 'Content-Type: application/json'
      curl -s -X POST localhost:8000/api/schedules -H 'Content-Type: application/json' \\
           -d '{"name": "weekly", "cron": "0 8 * * MON", "tz": "Europe/Berlin", "params": {"scope": "week"}}'
      open http://127.0.0.1:8000/dashboard/schedules

With MongoDB (ASYNCTASK_MONGO_URI), every process of the fleet evaluates the schedules and each
tick still becomes exactly one task; `asynctask worker examples.schedules:api` adds workers.

The demo, in one process: python -m examples.schedules
It runs the 2-second heartbeat for a few ticks, triggers the nightly report once, and exits.
"""

import logging
import os
import time
from datetime import timedelta

from asynctask import AsyncTask, Schedule, default_collection


class Report(AsyncTask):
    """A report of `scope`; `scheduled_for` is the time of the tick that made the task."""

    poll_interval = 0.5  # ticks are enqueued within about this long after their time
    schedules = [
        Schedule("nightly", cron="0 2 * * *", tz="Asia/Shanghai", params={"scope": "all"}),
        Schedule("heartbeat", every=timedelta(seconds=2), params={"scope": "ping"}, catch_up="none"),
    ]

    def main(self, logger: logging.Logger, scope: str, scheduled_for: str = "") -> dict:
        logger.info("report %s for %s", scope, scheduled_for)
        return {"scope": scope, "scheduled_for": scheduled_for}


api = Report(default_collection(), os.environ.get("ASYNCTASK_LOG_DIR", "logs"), max_worker=2)
app = api.app("/api")


def demo(ticks: int = 3, timeout: float = 30.0) -> list:
    """Wait for `ticks` heartbeats to run and trigger the nightly report; returns their views."""
    api.start()  # this process's worker evaluates the schedules in its loop
    nightly = api.schedules.trigger("nightly")
    deadline = time.monotonic() + timeout
    beats: list = []
    while len(beats) < ticks and time.monotonic() < deadline:
        beats = [view for view in api.list("success")["tasks"] if view["task_id"].startswith("sched:heartbeat:")]
        time.sleep(0.1)
    views = sorted(beats, key=lambda view: view["task_id"])[:ticks] + [api.wait(nightly, timeout)]
    for view in views:
        print(f"{view['task_id']} {view['status']}: {view['result']}")
    for schedule in api.schedules.list():
        print(f"{schedule['name']}: {schedule['description']} ({schedule['tz']}), next {schedule['next_tick']}")
    return views


if __name__ == "__main__":
    demo()
    api.shutdown()
