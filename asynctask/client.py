"""An HTTP client for an asynctask service (CONTRACT sections 4 and 8).

    client = Client("http://127.0.0.1:8000", token=os.environ.get("ASYNCTASK_API_TOKEN"))
    task_id = client.submit(text="to be or not to be", top=2)
    result = client.wait(task_id, timeout=60)

Errors: an answer in the error envelope becomes an exception carrying `.status_code` and
`.error_data`, its message being the server's `error_msg`:

| HTTP | exception |
| --- | --- |
| 400 | `InvalidParams` (the class the service itself raises for bad params) |
| 401 | `Unauthorized` (a `ClientError`) |
| 404 | `TaskNotFound` (a `LookupError`, as with a local `AsyncTask`) |
| other 4xx/5xx, or an answer that is not an envelope | `ClientError` |

A task id that is not valid (CONTRACT section 4) raises `InvalidTaskId` before any request,
so no id can steer a request, and its token, to another path. Network failures propagate as
the exceptions of `requests` (`requests.ConnectionError`, `requests.Timeout`, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from .errors import ClientError, InvalidParams, TaskCancelled, TaskFailed, TaskNotFound, Unauthorized
from .validation import check_task_id

#: The longest long-poll the service grants (CONTRACT section 8).
MAX_WAIT = 60
#: Shortest time between two polls, so a service that ignores `?wait=` is not flooded.
MIN_POLL_INTERVAL = 0.2
#: How long past a `wait` deadline a long-poll answer is still awaited.
DEADLINE_SLACK = 0.2
#: The longest long-poll while `on_update` watches: the service answers early only when a task ends.
UPDATE_INTERVAL = 1

_ERRORS: dict[int, type[Exception]] = {400: InvalidParams, 401: Unauthorized, 404: TaskNotFound}


class Client:
    """Submits, watches, cancels and lists the tasks of one asynctask service.

    Args:
        base_url: where the service runs, e.g. "http://127.0.0.1:8000".
        token: sent as `Authorization: Bearer <token>` when given (and not empty).
        endpoint: the path the task's routes are served at.
        timeout: seconds to connect and to wait for an ordinary answer.
    """

    def __init__(self, base_url: str, token: str | None = None, *, endpoint: str = "/api",
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        path = endpoint.strip("/")
        self.url = f"{self.base_url}/{path}" if path else self.base_url
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def submit(self, **params: Any) -> str:
        """Submit a task with `params` (or re-run one with `task_id=`); returns its id."""
        return self._request("POST", self.url, json={"data": params})["task_id"]

    def get(self, task_id: str) -> dict[str, Any]:
        """The task's public view: status, result, error, progress, times."""
        return self._request("GET", self._task_url(task_id))

    def wait(self, task_id: str, timeout: float | None = None, *,
             on_update: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        """Wait until the task is finished and return its result.

        Long-polls the service, calling `on_update(view)` with every view it gets (with
        `on_update`, at least once a second, so it sees progress). Raises
        `TaskFailed` (with the server's `.error` text), `TaskCancelled`, or `TimeoutError` once
        `timeout` seconds have passed (None: wait for ever; 0: look once).
        """
        url = self._task_url(task_id)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        longest = MAX_WAIT if on_update is None else UPDATE_INTERVAL
        while True:
            started = time.monotonic()
            view = self._poll(url, deadline, longest)
            if view is None:
                raise TimeoutError(f"task {task_id} did not finish within {timeout} s")
            if on_update is not None:
                on_update(view)
            status = view.get("status")
            if status == "success":
                return view.get("result")
            if status == "failed":
                raise TaskFailed(task_id, view.get("error") or "", view)
            if status == "cancelled":
                raise TaskCancelled(task_id, view)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"task {task_id} did not finish within {timeout} s (status {status})")
            pause = MIN_POLL_INTERVAL - (now - started)
            if pause > 0:
                time.sleep(pause if deadline is None else min(pause, deadline - now))

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a queued or running task; a finished one is a `ClientError` with status 409."""
        return self._request("DELETE", self._task_url(task_id))

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Last in the class: from here on, `list` in the class body names this method, not the builtin.
    def list(self, status: str | None = None, limit: int = 50, skip: int = 0) -> dict[str, Any]:
        """Tasks newest first: `{"tasks": [views], "total": n, "counts": {status: n}}`."""
        query: dict[str, Any] = {"limit": limit, "skip": skip}
        if status is not None:
            query["status"] = status
        return self._request("GET", self.url, params=query)

    # -- plumbing -------------------------------------------------------------------------

    def _task_url(self, task_id: str) -> str:
        return f"{self.url}/{check_task_id(task_id)}"

    def _poll(self, url: str, deadline: float | None, longest: int) -> dict[str, Any] | None:
        """One long-poll of at most `longest` s; None when the deadline passed before the answer."""
        if deadline is None:
            return self._request("GET", url, params={"wait": longest}, read_timeout=longest + self.timeout)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return self._request("GET", url)
        # Whole seconds suit any server; the read timeout keeps the deadline when they overshoot.
        seconds = min(longest, max(1, int(remaining)))
        try:
            return self._request("GET", url, params={"wait": seconds},
                                 read_timeout=min(seconds + self.timeout, remaining + DEADLINE_SLACK))
        except requests.ReadTimeout:
            if time.monotonic() >= deadline:
                return None
            raise

    def _request(self, method: str, url: str, *, read_timeout: float | None = None, **kwargs: Any) -> Any:
        """Send one request; return the envelope's `data` or raise the error it holds."""
        response = self.session.request(method, url, timeout=(self.timeout, read_timeout or self.timeout),
                                        **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.ok and isinstance(body, dict) and body.get("status") == "ok":
            return body.get("data")
        if not isinstance(body, dict):
            body = {}
        message = body.get("error_msg") or f"HTTP {response.status_code} {response.reason or ''}".strip()
        if response.ok:
            message = f"not an asynctask answer from {method} {url}: {message}"
        error_data = body.get("error_data") or []
        cls = _ERRORS.get(response.status_code, ClientError)
        if issubclass(cls, ClientError):
            raise cls(message, response.status_code, error_data)
        error = cls(message)
        error.status_code, error.error_data = response.status_code, error_data  # type: ignore[attr-defined]
        raise error
