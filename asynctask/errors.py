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
