"""A fleet: API-only servers that queue tasks, and dedicated workers that run them.

With MongoDB (every process shares one queue; start as many of each as you need, on any host):

    ASYNCTASK_MONGO_URI=mongodb://db:27017 asynctask serve examples.fleet:api --no-worker \\
        --workers 4 --bind 0.0.0.0:8000
    ASYNCTASK_MONGO_URI=mongodb://db:27017 asynctask worker examples.fleet:api --concurrency 8

Without MongoDB, one process both serves and runs the tasks (the in-memory store is per process):

    asynctask serve examples.fleet:api --bind 127.0.0.1:8000
    (or: gunicorn 'examples.fleet:app' --bind 127.0.0.1:8000 --worker-class gthread --threads 8)

Then: curl -s -X POST localhost:8000/api -H 'Content-Type: application/json' \\
           -d '{"data": {"title": "q3", "pages": 5}, "priority": 10}'
      curl -s 'localhost:8000/api/<task_id>?wait=30'

The demo, in one process: python -m examples.fleet
It submits a few reports with priorities and one with a delay, waits for them, and exits.
"""

import logging
import os
import time

import asynctask
from asynctask import AsyncTask, default_collection


class Report(AsyncTask):
    """Builds a report of `pages` pages, `pause` seconds each, reporting progress after each."""

    task_timeout = 600  # options may be class attributes, as here, or constructor arguments

    def main(self, logger: logging.Logger, title: str, pages: int = 5, pause: float = 0.05) -> dict:
        for page in range(1, pages + 1):
            time.sleep(pause)  # the real work goes here
            asynctask.report_progress(100 * page / pages, f"page {page} of {pages}")
        logger.info("report %s: %d pages", title, pages)
        return {"title": title, "pages": pages}


# Two slots per process here; `asynctask worker --concurrency N` sets a worker's own.
api = Report(default_collection(), os.environ.get("ASYNCTASK_LOG_DIR", "logs"), max_worker=2)
app = api.app("/api")


def demo() -> list:
    """Submit five reports (one delayed), wait for each; returns their views in start order."""
    ids = [api.submit({"title": "daily", "pages": 10}, priority=0),
           api.submit({"title": "weekly", "pages": 10}, priority=0),
           api.submit({"title": "backlog", "pages": 2}, priority=-10),
           api.submit({"title": "urgent", "pages": 2}, priority=50),
           api.submit({"title": "later", "pages": 1}, delay=0.5)]
    views = [api.wait(task_id, 30) for task_id in ids]
    views.sort(key=lambda view: view["started_at"])
    for view in views:
        print(f"{view['params']['title']:<8} priority={view['priority']:<4} {view['status']}: {view['result']}")
    return views


if __name__ == "__main__":
    try:
        views = demo()
    finally:
        api.shutdown()
    raise SystemExit(0 if all(view["status"] == "success" for view in views) else 1)
