"""Retries: a task that calls a flaky service is tried again, waiting longer each time.

Run the demo (one process, in-memory store):   python -m examples.retries
Serve it:    gunicorn 'examples.retries:app' --bind 127.0.0.1:8000
Then:        curl -s -X POST localhost:8000/api -H 'Content-Type: application/json' \
                  -d '{"data": {"symbol": "ACME", "flaky": 2}}'
             curl -s localhost:8000/api/<task_id>
             # while a retry waits: "status": "queued", "attempts": 1, "next_retry_at": "..."

`max_retries=3, retry_delay=0.2, retry_backoff=2` runs a failed task again after 0.2 s,
0.4 s and 0.8 s; only the errors in `retry_on` are retried, any other fails the task at once.
A waiting retry blocks no worker: it is a date in the task's document, and any process
serving the same database picks it up when it is due.
"""

import logging
import os
from collections import Counter

from asynctask import AsyncTask, default_collection


class FetchQuote(AsyncTask):
    """Fetches a price from an upstream service whose first `flaky` calls time out."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = Counter()  # calls per task, in this process (the stand-in for flakiness)

    def main(self, logger: logging.Logger, symbol: str, flaky: int = 0) -> dict:
        self.calls[logger.name] += 1  # a task's logger is named after its id
        if self.calls[logger.name] <= flaky:
            raise ConnectionError(f"upstream timed out (call {self.calls[logger.name]})")
        if not symbol.isalpha():
            raise ValueError(f"no such symbol: {symbol!r}")  # not in retry_on: no retry
        logger.info("fetched %s", symbol)
        return {"symbol": symbol, "price": 42.0}


api = FetchQuote(
    default_collection(), os.environ.get("ASYNCTASK_LOG_DIR", "logs"), max_worker=4,
    max_retries=3, retry_delay=0.2, retry_backoff=2, retry_on=(ConnectionError,),
)
app = api.app("/api")


def follow(client, task_id: str) -> dict:
    """Print each change of the task's status until it ends; return its last view."""
    shown = None
    while True:
        view = client.get(f"/api/{task_id}?wait=0.1").get_json()["data"]
        state = (view["status"], view["attempts"], view["next_retry_at"])
        if state != shown:
            retry = f", next retry at {view['next_retry_at']}" if view["next_retry_at"] else ""
            print(f"  {view['status']:<8} attempts={view['attempts']}{retry}")
            shown = state
        if view["status"] in ("success", "failed", "cancelled"):
            last = (view["error"] or "").strip().splitlines()[-1:] or [view["result"]]
            print(f"  -> {view['status']}: {last[0]}")
            return view


def demo(flaky: int = 2) -> dict:
    """A task that fails `flaky` times then succeeds, and one that fails for good."""
    client = app.test_client()
    views = {}
    for name, params in (("flaky", {"symbol": "ACME", "flaky": flaky}), ("bad", {"symbol": "AC-ME"})):
        task_id = client.post("/api", json={"data": params}).get_json()["data"]["task_id"]
        print(f"{name}: {params}")
        views[name] = follow(client, task_id)
    return views


if __name__ == "__main__":
    try:
        demo()
    finally:
        api.shutdown()
