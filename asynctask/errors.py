"""Every error asynctask raises, under one base class.

Each class carries the HTTP status the web layer answers with, so one error handler maps
them all.
"""

from __future__ import annotations


class AsyncTaskError(Exception):
    """Base class of every asynctask error."""

    http_status = 500


class TaskNotFound(AsyncTaskError, LookupError):
    """Raised when a task id names no stored task."""

    http_status = 404


class InvalidTaskId(AsyncTaskError, ValueError):
    """Raised when a task id is not a string of 1-128 safe characters."""

    http_status = 400


class InvalidParams(AsyncTaskError, TypeError, ValueError):
    """Raised when params do not fit `main`'s signature or cannot be stored."""

    http_status = 400


class InvalidTransition(AsyncTaskError, RuntimeError):
    """Raised when a task cannot move from its current status to the one asked for."""

    http_status = 409


class ResultNotStorable(AsyncTaskError, TypeError):
    """Raised when `main` returns a value that cannot be stored as BSON or sent as JSON."""


class TaskTimeout(AsyncTaskError, TimeoutError):
    """Raised when a task runs longer than its `task_timeout`."""


class ShuttingDown(AsyncTaskError, RuntimeError):
    """Raised when a task is submitted to a process that is shutting down."""

    http_status = 503


class TaskFailed(AsyncTaskError):
    """Raised by Client.wait when the task ended failed; .error holds the server's error text."""

    def __init__(self, task_id: str, error: str, view: dict | None = None) -> None:
        lines = [line for line in (error or "").splitlines() if line.strip()]
        super().__init__(f"task {task_id} failed: {lines[-1].strip() if lines else 'no error text'}")
        self.task_id = task_id
        self.error = error
        self.view = view

    # Exceptions pickle only their args; keep every field when one crosses a process boundary.
    def __reduce__(self) -> tuple:
        return type(self), (self.task_id, self.error, self.view)


class TaskCancelled(AsyncTaskError):
    """Raised by Client.wait when the task ended cancelled."""

    def __init__(self, task_id: str, view: dict | None = None) -> None:
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id
        self.view = view

    def __reduce__(self) -> tuple:
        return type(self), (self.task_id, self.view)


class ClientError(AsyncTaskError):
    """Raised when a service answers a Client request with an HTTP error; .status_code holds it."""

    def __init__(self, message: str, status_code: int, error_data: list | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_data = error_data or []

    def __reduce__(self) -> tuple:
        return type(self), (self.args[0], self.status_code, self.error_data)


class Unauthorized(ClientError):
    """Raised when a service refuses a Client request for a missing or wrong token (HTTP 401)."""
