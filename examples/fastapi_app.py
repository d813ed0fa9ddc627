"""FastAPI and asynctask in one ASGI app: an `async def main` task, its service mounted at
/tasks, and a FastAPI route that submits a task and awaits its result with `AsyncClient`.

Run:  pip install -e '.[async]' fastapi uvicorn a2wsgi
      uvicorn examples.fastapi_app:app --port 8000
Then: curl -s -X POST 'localhost:8000/summaries?text=to+be+or+not+to+be&words=3'
      curl -s localhost:8000/tasks/api/<task_id>        # the task service itself

The Flask service is mounted through a2wsgi's WSGI-to-ASGI adapter; its dashboard is at
http://127.0.0.1:8000/tasks/dashboard. Set ASYNCTASK_URL when the app is served elsewhere
than http://127.0.0.1:8000.
"""

import asyncio
import logging
import os

from a2wsgi import WSGIMiddleware
from fastapi import FastAPI

from asynctask import AsyncClient, AsyncTask, default_collection


class Summarize(AsyncTask):
    """Keeps the first words of a text, after awaiting some I/O (here a sleep)."""

    async def main(self, logger: logging.Logger, text: str, words: int = 5) -> str:
        logger.info("summarizing %d characters", len(text))
        await asyncio.sleep(0.2)  # awaits hold no thread: max_worker=100 costs no 100 threads
        return " ".join(text.split()[:words])


api = Summarize(default_collection(), os.environ.get("ASYNCTASK_LOG_DIR", "logs"), max_worker=100)
app = FastAPI(title="summaries")
app.mount("/tasks", WSGIMiddleware(api.app("/api")))
SERVICE = os.environ.get("ASYNCTASK_URL", "http://127.0.0.1:8000") + "/tasks/api"


@app.post("/summaries")
async def summarize(text: str, words: int = 5) -> dict:
    """Submit a summary task and await its result; the service keeps it, with its log."""
    async with AsyncClient(SERVICE) as client:
        task_id = await client.submit(text=text, words=words)
        return {"task_id": task_id, "summary": await client.wait(task_id, timeout=30)}
