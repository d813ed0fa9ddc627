"""`AsyncClient`: the `Client`'s methods as coroutines, for FastAPI and other async callers.

    async with AsyncClient("http://127.0.0.1:8000") as client:
        task_id = await client.submit(text="to be or not to be", top=2)
        result = await client.wait(task_id, timeout=60)

It raises the same errors as `Client` (see `asynctask.client`); network failures propagate as
httpx's exceptions. Needs httpx: `pip install 'asynctask[async]'`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from .client import (
    DEADLINE_SLACK,
    MIN_POLL_INTERVAL,
    UPDATE_INTERVAL,
    answer,
    finished,
    split_url,
    submission,
)
from .validation import MAX_WAIT, check_task_id


class AsyncClient:
    """Submits, watches, cancels and lists the tasks of one asynctask service, asynchronously.

    Takes the same arguments as `Client`: the service's base URL or its task endpoint's URL,
    an optional bearer `token`, `endpoint=` and `timeout=` (seconds).
    """

    def __init__(self, url: str, token: str | None = None, *, endpoint: str | None = None,
                 timeout: float = 30.0) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise RuntimeError("AsyncClient needs httpx: pip install 'asynctask[async]'") from exc
        self.base_url, self.url = split_url(url, endpoint)
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(headers=headers, timeout=timeout)

    async def submit(self, **params: Any) -> str:
        """Submit a task with `params` (or re-run one with `task_id=`); returns its id."""
        return await self.enqueue(params)

    async def enqueue(self, params: Mapping[str, Any], *, priority: int | None = None,
                      delay: float | timedelta | None = None, run_at: datetime | str | None = None) -> str:
        """Submit a task with `params` and queue options (as `Client.enqueue`); returns its id."""
        body = submission(params, priority, delay, run_at)
        return (await self._request("POST", self.url, json=body))["task_id"]

    async def get(self, task_id: str) -> dict[str, Any]:
        """The task's public view: status, result, error, progress, times."""
        return await self._request("GET", self._task_url(task_id))

    async def wait(self, task_id: str, timeout: float | None = None, *,
                   on_update: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        """Wait until the task is finished and return its result (as `Client.wait`); raises
        `TaskFailed`, `TaskCancelled`, or `TimeoutError` once `timeout` seconds have passed."""
        url = self._task_url(task_id)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        longest = MAX_WAIT if on_update is None else UPDATE_INTERVAL
        while True:
            started = time.monotonic()
            view = await self._poll(url, deadline, longest)
            if view is None:
                raise TimeoutError(f"task {task_id} did not finish within {timeout} s")
            if on_update is not None:
                on_update(view)
            if finished(task_id, view):
                return view.get("result")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"task {task_id} did not finish within {timeout} s (status {view.get('status')})")
            pause = MIN_POLL_INTERVAL - (now - started)
            if pause > 0:
                await asyncio.sleep(pause if deadline is None else min(pause, deadline - now))

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a queued or running task; a finished one is a `ClientError` with status 409."""
        return await self._request("DELETE", self._task_url(task_id))

    async def list(self, status: str | None = None, limit: int = 50, skip: int = 0) -> dict[str, Any]:
        """Tasks newest first: `{"tasks": [views], "total": n, "counts": {status: n}}`."""
        query: dict[str, Any] = {"limit": limit, "skip": skip}
        if status is not None:
            query["status"] = status
        return await self._request("GET", self.url, params=query)

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request to a route under the task endpoint (`path` such as "schedules"); returns
        the envelope's `data`, or raises as the other methods do. `kwargs` go to httpx."""
        return await self._request(method, f"{self.url}/{path.lstrip('/')}", **kwargs)

    async def close(self) -> None:
        """Close the pooled connections (as `Client.close`)."""
        await self.http.aclose()

    async def aclose(self) -> None:
        """`close`, under httpx's name for it."""
        await self.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _task_url(self, task_id: str) -> str:
        return f"{self.url}/{check_task_id(task_id)}"

    async def _poll(self, url: str, deadline: float | None, longest: int) -> dict[str, Any] | None:
        """One long-poll of at most `longest` s; None when the deadline passed before the answer."""
        import httpx

        if deadline is None:
            return await self._request("GET", url, params={"wait": longest}, read_timeout=longest + self.timeout)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return await self._request("GET", url)
        seconds = min(longest, max(1, int(remaining)))
        try:
            return await self._request("GET", url, params={"wait": seconds},
                                       read_timeout=min(seconds + self.timeout, remaining + DEADLINE_SLACK))
        except httpx.ReadTimeout:
            if time.monotonic() >= deadline:
                return None
            raise

    async def _request(self, method: str, url: str, *, read_timeout: float | None = None, **kwargs: Any) -> Any:
        """Send one request; return the envelope's `data` or raise the error it holds."""
        import httpx

        timeout = httpx.Timeout(self.timeout, read=read_timeout or self.timeout)
        response = await self.http.request(method, url, timeout=timeout, **kwargs)
        return answer(method, url, response.status_code, response.reason_phrase, response.content)
