"""An HTTP client for an asynctask service.

    client = Client("http://127.0.0.1:8000", token=os.environ.get("ASYNCTASK_API_TOKEN"))
    task_id = client.submit(text="to be or not to be", top=2)
    later = client.enqueue({"text": "to be", "top": 1}, priority=10, delay=60)
    result = client.wait(task_id, timeout=60)

Errors: every error the client raises for an answer is a `ClientError` carrying
`.status_code` and `.error_data`, its message being the server's `error_msg`:

| HTTP | exception |
| --- | --- |
| 400 | `RemoteInvalidParams`: also an `InvalidParams`, the class the service raises for bad params |
| 401 | `AuthenticationFailed` (`Unauthorized` is its deprecated old name) |
| 404 | `RemoteTaskNotFound`: also a `TaskNotFound` (a `LookupError`, as with a local `AsyncTask`) |
| other 4xx/5xx, or an answer that is not an envelope | `ClientError` |
| 200, the task ended failed or cancelled (`wait`) | `TaskFailed`, `TaskCancelled` |

A task id that is not valid (1-128 of A-Z a-z 0-9 _ . : -, not "." or "..") raises
`InvalidTaskId` before any request, so no id can steer a request, and its token, to another
path; queue options that are not valid raise `InvalidParams` before any request too. Network
failures propagate as the exceptions of `requests` (`requests.ConnectionError`, ...).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from .errors import (
    AuthenticationFailed,
    ClientError,
    RemoteInvalidParams,
    RemoteTaskNotFound,
    TaskCancelled,
    TaskFailed,
)
from .validation import MAX_WAIT, check_task_id, queue_options

#: The longest long-poll the service grants.
#: Shortest time between two polls, so a service that ignores `?wait=` is not flooded.
MIN_POLL_INTERVAL = 0.2
#: How long past a `wait` deadline a long-poll answer is still awaited.
DEADLINE_SLACK = 0.2
#: The longest long-poll while `on_update` watches: the service answers early only when a task ends.
UPDATE_INTERVAL = 1
#: Where a task's routes are when neither the URL nor `endpoint=` says.
DEFAULT_ENDPOINT = "/api"

_ERRORS: dict[int, type[ClientError]] = {
    400: RemoteInvalidParams, 401: AuthenticationFailed, 404: RemoteTaskNotFound,
}


def split_url(url: str, endpoint: str | None = None) -> tuple[str, str]:
    """(base URL, task endpoint URL) of a service, from its base URL or its endpoint's own URL.

    With `endpoint`, `url` is the base URL and the routes are at `url + endpoint`. Without,
    a URL with a path is the endpoint's own URL (`http://host:8000/api`), and one without
    (`http://host:8000`) is the base URL of a task served at `/api`.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"url must be the URL of an asynctask service, not {url!r}")
    url = url.strip().rstrip("/")
    if endpoint is not None:
        path = endpoint.strip("/")
        return url, f"{url}/{path}" if path else url
    parts = urlsplit(url)
    if parts.path.strip("/"):
        return urlunsplit((parts.scheme, parts.netloc, "", "", "")), url
    return url, url + DEFAULT_ENDPOINT


class Client:
    """Submits, watches, cancels and lists the tasks of one asynctask service.

    Args:
        url: the service's base URL ("http://127.0.0.1:8000", the task at /api) or the task
            endpoint's own URL ("http://127.0.0.1:8000/jobs"); a trailing slash is ignored.
        token: sent as `Authorization: Bearer <token>` when given (and not empty).
        endpoint: the path the task's routes are served at, under `url` taken as the base URL.
        timeout: seconds to connect and to wait for an ordinary answer.
    """

    def __init__(self, url: str, token: str | None = None, *, endpoint: str | None = None,
                 timeout: float = 30.0) -> None:
        self.base_url, self.url = split_url(url, endpoint)
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def submit(self, **params: Any) -> str:
        """Submit a task with `params` (or re-run one with `task_id=`); returns its id."""
        return self.enqueue(params)

    def enqueue(self, params: Mapping[str, Any], *, priority: int | None = None,
                delay: float | timedelta | None = None, run_at: datetime | str | None = None) -> str:
        """Submit a task with `params` and queue options; returns its id.

        `priority` (-100 to 100, default 0) runs it before tasks of lower priority; `delay`
        (seconds or a timedelta) or `run_at` (an aware datetime or an ISO 8601 string with a
        time zone) holds it until then. Options that are not valid raise `InvalidParams`
        before any request.
        """
        return self._request("POST", self.url, json=submission(params, priority, delay, run_at))["task_id"]

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
            if finished(task_id, view):
                return view.get("result")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"task {task_id} did not finish within {timeout} s (status {status})")
            pause = MIN_POLL_INTERVAL - (now - started)
            if pause > 0:
                time.sleep(pause if deadline is None else min(pause, deadline - now))

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a queued or running task; a finished one is a `ClientError` with status 409."""
        return self._request("DELETE", self._task_url(task_id))

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request to a route under the task endpoint (`path` such as "schedules"); returns
        the envelope's `data`, or raises as the other methods do. `kwargs` go to requests."""
        return self._request(method, f"{self.url}/{path.lstrip('/')}", **kwargs)

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
        return answer(method, url, response.status_code, response.reason, response.content)


def submission(params: Mapping[str, Any], priority: int | None, delay: float | timedelta | None,
               run_at: datetime | str | None) -> dict[str, Any]:
    """The body of a POST that submits `params` with queue options; checked before any request."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping, not {type(params).__name__}")
    queue_options(priority, delay, run_at)
    body: dict[str, Any] = {"data": dict(params)}
    if priority is not None:
        body["priority"] = priority
    if delay is not None:
        body["delay"] = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if run_at is not None:
        body["run_at"] = run_at.isoformat() if isinstance(run_at, datetime) else run_at
    return body


def finished(task_id: str, view: Mapping[str, Any]) -> bool:
    """True when the task succeeded; raise `TaskFailed`/`TaskCancelled` when it ended so."""
    status = view.get("status")
    if status == "failed":
        raise TaskFailed(task_id, view.get("error") or "", dict(view))
    if status == "cancelled":
        raise TaskCancelled(task_id, dict(view))
    return status == "success"


def answer(method: str, url: str, status_code: int, reason: str | None, content: bytes) -> Any:
    """The envelope's `data` of an answer, or the error it holds raised as a `ClientError`."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    ok = 200 <= status_code < 400
    if ok and isinstance(body, dict) and body.get("status") == "ok":
        return body.get("data")
    if not isinstance(body, dict):
        body = {}
    message = body.get("error_msg") or f"HTTP {status_code} {reason or ''}".strip()
    if ok:
        message = f"not an asynctask answer from {method} {url}: {message}"
    error_data = body.get("error_data") or []
    raise _ERRORS.get(status_code, ClientError)(message, status_code, error_data)
