"""asynctask: turn a function into a durable HTTP task service backed by MongoDB."""

from __future__ import annotations

from .attempt import cancelled, report_progress
from .client import Client
from .connection import default_collection
from .errors import (
    AsyncTaskError,
    ClientError,
    InvalidParams,
    InvalidTaskId,
    InvalidTransition,
    ResultNotStorable,
    ShuttingDown,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskTimeout,
    Unauthorized,
)
from .memory import MemoryCollection
from .status import TaskStatus
from .task import AsyncTask

__version__ = "0.2.0"

__all__ = [
    "AsyncTask",
    "AsyncTaskError",
    "Client",
    "ClientError",
    "InvalidParams",
    "InvalidTaskId",
    "InvalidTransition",
    "MemoryCollection",
    "ResultNotStorable",
    "ShuttingDown",
    "TaskCancelled",
    "TaskFailed",
    "TaskNotFound",
    "TaskStatus",
    "TaskTimeout",
    "Unauthorized",
    "__version__",
    "cancelled",
    "default_collection",
    "report_progress",
]
