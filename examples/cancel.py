"""Cancel: stop a task that waits in the queue, and one that is running.

Run the demo (one process, in-memory store):   python -m examples.cancel
Serve it:    gunicorn 'examples.cancel:app' --bind 127.0.0.1:8000
Then:        curl -s -X POST localhost:8000/api -H 'Content-Type: application/json' \
                  -d '{"data": {"frames": 600}}'
             curl -s -X DELETE localhost:8000/api/<task_id>

`DELETE /api/<id>` cancels a queued task at once (200, "cancelled"; `main` never starts).
For a running task it answers 202 ("running", cancel requested): in a thread,
`asynctask.cancelled()` turns True and `main` returns at its next check; with
`executor="processes"` the child process is ended. A finished task answers 409.
"""

import logging
import os
import time

import asynctask
from asynctask import AsyncTask, default_collection


class Render(AsyncTask):
    """Renders `frames` frames, `pause` seconds each; stops early once cancelled."""

    def main(self, logger: logging.Logger, frames: int = 600, pause: float = 0.05) -> dict:
        for frame in range(frames):
            if asynctask.cancelled():
                logger.info("cancelled after %d frames", frame)
                return {"rendered": frame}
            time.sleep(pause)  # the real work goes here
            asynctask.report_progress(100 * (frame + 1) / frames, f"frame {frame + 1} of {frames}")
        return {"rendered": frames}


# One task at a time, so that a second one waits in the queue.
api = Render(default_collection(), os.environ.get("ASYNCTASK_LOG_DIR", "logs"), max_worker=1)
app = api.app("/api")


def demo(pause: float = 0.05) -> dict:
    """Cancel a queued and a running task over HTTP; returns what each request answered."""
    client = app.test_client()
    answers = {}

    def call(what: str, method: str, path: str, **kwargs) -> dict:
        response = client.open(path, method=method, **kwargs)
        body = response.get_json()
        data = body["data"] or {}
        said = body["error_msg"] or ", ".join(f"{k}={data[k]}" for k in ("status", "result", "error") if data.get(k))
        shown = path if len(path) <= 20 else f"{path[:17]}..."
        print(f"{what:<26} {method:<6} {shown:<20} -> {response.status_code} {said}")
        answers[what] = (response.status_code, body)
        return body

    running = call("submit a long task", "POST", "/api", json={"data": {"frames": 10_000, "pause": pause}})
    running_id = running["data"]["task_id"]
    deadline = time.monotonic() + 10
    while client.get(f"/api/{running_id}").get_json()["data"]["status"] != "running":
        if time.monotonic() > deadline:
            raise RuntimeError("the long task never started")
        time.sleep(0.01)
    queued = call("submit a second task", "POST", "/api", json={"data": {"frames": 10}})
    queued_id = queued["data"]["task_id"]

    call("cancel the queued one", "DELETE", f"/api/{queued_id}")
    call("cancel the running one", "DELETE", f"/api/{running_id}")
    call("wait for the running one", "GET", f"/api/{running_id}?wait=10")
    call("cancel it again", "DELETE", f"/api/{running_id}")
    return answers


if __name__ == "__main__":
    try:
        demo()
    finally:
        api.shutdown()
