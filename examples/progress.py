"""Progress: a task that says how far it has got, and a client that watches it.

Run the demo (one process, in-memory store):   python -m examples.progress
Serve it:    gunicorn 'examples.progress:app' --bind 127.0.0.1:8000
Then:        curl -s -X POST localhost:8000/api -H 'Content-Type: application/json' \
                  -d '{"data": {"files": 50}}'
             curl -s 'localhost:8000/api/<task_id>?wait=10'
             # ... "progress": {"percent": 34.0, "message": "indexed 17 of 50 files"} ...

Inside `main`, `asynctask.report_progress(percent, message)` records how far the task has
got, and the task's view shows it as "progress". The calls are throttled (a few writes a
second at most), so calling it in a tight loop costs nothing, and the last value is written
when the task ends. `?wait=S` answers as soon as the task has finished, or after S seconds.
"""

import logging
import os
import time

import asynctask
from asynctask import AsyncTask, default_collection


class IndexFiles(AsyncTask):
    """Pretends to index `files` files, `pause` seconds each, reporting progress after each."""

    def main(self, logger: logging.Logger, files: int = 50, pause: float = 0.1) -> dict:
        for done in range(1, files + 1):
            time.sleep(pause)  # the real work goes here
            asynctask.report_progress(100 * done / files, f"indexed {done} of {files} files")
        logger.info("indexed %d files", files)
        return {"indexed": files}


api = IndexFiles(default_collection(), os.environ.get("ASYNCTASK_LOG_DIR", "logs"), max_worker=4)
app = api.app("/api")


def demo(files: int = 20, pause: float = 0.1) -> dict:
    """Submit a task over HTTP and print its progress until it ends; returns its last view."""
    client = app.test_client()
    answer = client.post("/api", json={"data": {"files": files, "pause": pause}})
    task_id = answer.get_json()["data"]["task_id"]
    print(f"POST /api -> {answer.status_code}, task {task_id}")
    shown = None
    while True:
        view = client.get(f"/api/{task_id}?wait=0.2").get_json()["data"]
        progress = view["progress"]
        if progress and progress != shown:
            print(f"  {view['status']:<8} {progress['percent']:5.1f}%  {progress['message']}")
            shown = progress
        if view["status"] in ("success", "failed", "cancelled"):
            print(f"{view['status']}: {view['result'] or view['error']}")
            return view


if __name__ == "__main__":
    try:
        demo()
    finally:
        api.shutdown()
