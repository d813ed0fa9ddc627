"""`HttpBackend`: the queue of one task type, reached over the service's HTTP API.

A remote worker (`asynctask worker MODULE:OBJ --url URL`) runs the same worker loop and the
same lifecycle as a local one, with this backend in place of the database: it claims,
heartbeats (learning of cancels), reports progress and log lines, and records outcomes through
`{endpoint}/worker/...`, each call naming the attempt so the service fences it. One pooled
HTTP session; network errors and 5xx answers raise `ServiceUnreachable`, which the worker
treats like a database that is away: it keeps running its tasks and tries again with backoff.
A 409 means the attempt was given to another worker meanwhile: the write is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import requests

from ..attempt import Attempt
from ..client import answer, split_url
from ..errors import AttemptSuperseded, ClientError, ServiceUnreachable
from ..status import TaskStatus

logger = logging.getLogger(__name__)

#: Waits between tries of an outcome the service did not take: about two minutes in all.
RECORD_BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
#: Log lines are sent at most this often, in one request per batch.
LOG_FLUSH_SECONDS = 0.5


class HttpBackend:
    """What one task type's remote worker does to the queue, over HTTP (see the module)."""

    remote = True
    record_backoff: tuple[float, ...] = RECORD_BACKOFF

    def __init__(self, endpoint_url: str, token: str | None, *, claim_wait: float = 1.0,
                 timeout: float = 30.0) -> None:
        self.url = endpoint_url.rstrip("/")
        self.claim_wait = claim_wait
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._status: dict[str, Any] = {"slots": 0, "running": 0, "started_at": datetime.now().astimezone().isoformat()}
        self._cancels: list[tuple[str, int]] = []
        self._owner = ""

    @classmethod
    def for_task(cls, url: str, token: str | None, task_name: str, **options: Any) -> HttpBackend:
        """The backend of `task_name` at a service: `url` is its base URL (each type's endpoint
        is asked of `/worker/types`) or one type's endpoint URL."""
        base, endpoint_url = split_url(url)
        if url.rstrip("/") != base:
            return cls(endpoint_url, token, **options)
        probe = cls(base, token, **options)
        types = probe._call("GET", f"{base}/worker/types")["types"]
        if task_name not in types:
            raise LookupError(f"the service at {base} takes no remote worker for {task_name!r} (it has {sorted(types)})")
        return cls(base + types[task_name].rstrip("/"), token, **options)

    # -- what the worker loop calls ----------------------------------------------------------

    def claim(self, owner: str, worker: str) -> Attempt | None:
        body = {"worker": self._me(owner), "wait": self.claim_wait}
        task = self._post("claim", body, read_timeout=self.claim_wait + self.timeout)["task"]
        if task is None:
            return None
        return Attempt(task["task_id"], task["attempt"], dict(task.get("params") or {}),
                       trace_id=task.get("trace_id"), retries=task.get("retries") or 0)

    def heartbeat(self, owner: str, task_ids: list[str]) -> set[str]:
        answered = self._post("heartbeat", {"worker": self._me(owner, self._status), "task_ids": task_ids})
        self._cancels = [(task_id, number) for task_id, number in answered["cancel"]]
        return set(answered["lost"])

    def cancel_requests(self, owner: str, task_ids: list[str]) -> list[tuple[str, int]]:
        """The cancels the last heartbeat brought (it asks for them: one request, not two)."""
        cancels, self._cancels = self._cancels, []
        return [(task_id, number) for task_id, number in cancels if task_id in task_ids]

    def register(self, owner: str, *, slots: int, running: int, started_at: datetime, **_: Any) -> None:
        """Noted for the next heartbeat, which registers the worker on the service."""
        self._status = {"slots": slots, "running": running, "started_at": started_at.isoformat()}

    def maintain(self, owner: str) -> None:
        """Nothing: the service sweeps (its processes hold the database)."""

    def leave(self, owner: str) -> None:
        with contextlib.suppress(ClientError):
            self._post("leave", {"worker": self._me(owner)})

    def progress(self, task_id: str, number: int, percent: float, message: str | None) -> bool:
        try:
            self._post("progress", {"task_id": task_id, "attempt": number, "percent": percent, "message": message})
        except AttemptSuperseded:
            return False
        return True

    def finish(self, attempt: Attempt, status: TaskStatus, *, result: Any = None, error: str | None = None,
               progress: dict[str, Any] | None = None) -> bool:
        body = {"ending": TaskStatus(status).value, "result": result, "error": error, "progress": progress}
        return self._end(attempt, body) is not None

    def retry_later(self, attempt: Attempt, *, error: str, wait: timedelta) -> str | None:
        return self._end(attempt, {"ending": "retry", "error": error, "wait": wait.total_seconds()})

    def release(self, owner: str, attempt: Attempt) -> str | None:
        return self._end(attempt, {"ending": "released"}, owner)

    def free(self, attempt: Attempt) -> None:
        """Nothing: the service frees the attempt's concurrency slot when it records its end."""

    @contextlib.contextmanager
    def log_shipping(self, task_log: logging.Logger, attempt: Attempt) -> Iterator[None]:
        """While the attempt runs, its log lines also go to the service, in batches."""
        handler = _Shipper(self, attempt)
        for existing in task_log.handlers[:1]:
            handler.setFormatter(existing.formatter)
        task_log.addHandler(handler)
        try:
            yield
        finally:
            task_log.removeHandler(handler)
            handler.close()

    def send_log(self, attempt: Attempt, lines: list[str]) -> None:
        """Append `lines` to the attempt's log on the service (dropped once it is superseded)."""
        with contextlib.suppress(AttemptSuperseded):
            self._post("log", {"task_id": attempt.task_id, "attempt": attempt.number, "lines": lines})

    # -- plumbing -------------------------------------------------------------------------

    def _me(self, owner: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self._owner = owner
        return {"owner": owner, "host": self.host, "pid": self.pid, **(extra or {})}

    def _end(self, attempt: Attempt, body: dict[str, Any], owner: str | None = None) -> str | None:
        body.update(task_id=attempt.task_id, attempt=attempt.number, retries=attempt.retries,
                    worker=self._me(owner or self._owner))
        try:
            return self._post("finish", body)["status"]
        except AttemptSuperseded:
            return None

    def _post(self, route: str, body: dict[str, Any], read_timeout: float | None = None) -> Any:
        return self._call("POST", f"{self.url}/worker/{route}", json=body, read_timeout=read_timeout)

    def _call(self, method: str, url: str, *, read_timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, url, timeout=(self.timeout, read_timeout or self.timeout),
                                             **kwargs)
        except requests.RequestException as exc:
            raise ServiceUnreachable(f"{method} {url}: {exc}", 0) from exc
        if response.status_code >= 500:
            raise ServiceUnreachable(f"{method} {url}: HTTP {response.status_code}", response.status_code)
        try:
            return answer(method, url, response.status_code, response.reason, response.content)
        except ClientError as exc:
            if exc.status_code == 409:
                raise AttemptSuperseded(str(exc)) from exc
            raise


class _Shipper(logging.Handler):
    """Buffers an attempt's formatted log lines and sends them in batches, off the caller's thread."""

    def __init__(self, backend: HttpBackend, attempt: Attempt) -> None:
        super().__init__(logging.DEBUG)
        self.backend, self.attempt = backend, attempt
        self.lines: list[str] = []
        self.guard = threading.Lock()
        self.closed = threading.Event()
        self.sender = threading.Thread(target=self._run, name=f"asynctask-log-{attempt.task_id}", daemon=True)
        self.sender.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self.guard:
            self.lines.append(line)

    def _run(self) -> None:
        while not self.closed.wait(LOG_FLUSH_SECONDS):
            self._send()
        self._send()

    def _send(self) -> None:
        with self.guard:
            lines, self.lines = self.lines, []
        if not lines:
            return
        try:
            self.backend.send_log(self.attempt, lines)
        except ClientError as exc:
            logger.warning("log lines of task %s were not sent: %s", self.attempt.task_id, exc)

    def close(self) -> None:
        self.closed.set()
        if self.sender is not threading.current_thread():
            self.sender.join(timeout=self.backend.timeout)
        super().close()
