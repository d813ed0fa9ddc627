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


class BadRequest(AsyncTaskError, ValueError):
    """Raised when an HTTP request's body or query is not what the route takes."""

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


class ClientError(AsyncTaskError):
    """Base of the errors a Client raises; .status_code holds the HTTP status of the answer.

    An answer in the error envelope is a `ClientError` (or, for 400 and 404, `InvalidParams`
    and `TaskNotFound`, the classes the service itself raises).
    """

    def __init__(self, message: str, status_code: int, error_data: list | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_data = error_data or []

    def __reduce__(self) -> tuple:
        return type(self), (self.args[0], self.status_code, self.error_data)


class TaskFailed(ClientError):
    """Raised by Client.wait when the task ended failed; .error holds the server's error text.

    Its `.status_code` is 200: the service answered, with the view of a failed task.
    """

    def __init__(self, task_id: str, error: str, view: dict | None = None) -> None:
        lines = [line for line in (error or "").splitlines() if line.strip()]
        super().__init__(f"task {task_id} failed: {lines[-1].strip() if lines else 'no error text'}", 200)
        self.task_id = task_id
        self.error = error
        self.view = view

    # Exceptions pickle only their args; keep every field when one crosses a process boundary.
    def __reduce__(self) -> tuple:
        return type(self), (self.task_id, self.error, self.view)


class TaskCancelled(ClientError):
    """Raised by Client.wait when the task ended cancelled (`.status_code` 200, as for `TaskFailed`)."""

    def __init__(self, task_id: str, view: dict | None = None) -> None:
        super().__init__(f"task {task_id} was cancelled", 200)
        self.task_id = task_id
        self.view = view

    def __reduce__(self) -> tuple:
        return type(self), (self.task_id, self.view)


class AuthenticationFailed(ClientError):
    """Raised when a service refuses a Client request for a missing or wrong token (HTTP 401)."""


#: The former name of `AuthenticationFailed` (deprecated; kept so that old imports work).
Unauthorized = AuthenticationFailed


class RemoteInvalidParams(ClientError, InvalidParams):
    """Raised by a Client when the service refuses a request as bad input (HTTP 400).

    Both a `ClientError` and an `InvalidParams`, the class the service itself raises.
    """


class RemoteTaskNotFound(ClientError, TaskNotFound):
    """Raised by a Client when the service knows no such task (HTTP 404); also a `TaskNotFound`."""


class TaskIdTaken(InvalidTransition):
    """Raised when a task id is already used by a task of another type in the same collection."""


class AttemptSuperseded(AsyncTaskError):
    """Raised when a remote worker writes for an attempt that is no longer its task's current one."""

    http_status = 409


class ServiceUnreachable(ClientError):
    """Raised when a remote worker cannot reach the service (network error, 5xx); it tries again."""

    transient = True


class InvalidSchedule(AsyncTaskError, ValueError):
    """Raised when a schedule's name, cron, time zone, interval, catch-up or params are not valid."""

    http_status = 400


class ScheduleNotFound(AsyncTaskError, LookupError):
    """Raised when a task type has no schedule of that name."""

    http_status = 404


class ScheduleExists(AsyncTaskError, ValueError):
    """Raised when a schedule is added under a name the task type already has."""

    http_status = 409
