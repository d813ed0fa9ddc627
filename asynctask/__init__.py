"""asynctask: turn a function into a durable HTTP task service backed by MongoDB."""

from __future__ import annotations

from .attempt import cancelled, report_progress
from .connection import default_collection
from .errors import (
    AsyncTaskError,
    InvalidParams,
    InvalidTaskId,
    InvalidTransition,
    ResultNotStorable,
    ShuttingDown,
    TaskNotFound,
    TaskTimeout,
)
from .memory import MemoryCollection
from .status import TaskStatus
from .task import AsyncTask

__version__ = "0.1.0"

__all__ = [
    "AsyncTask",
    "AsyncTaskError",
    "InvalidParams",
    "InvalidTaskId",
    "InvalidTransition",
    "MemoryCollection",
    "ResultNotStorable",
    "ShuttingDown",
    "TaskNotFound",
    "TaskStatus",
    "TaskTimeout",
    "__version__",
    "cancelled",
    "default_collection",
    "report_progress",
]
