"""asynctask: turn a function into a durable HTTP task service backed by MongoDB."""

from __future__ import annotations

from . import metrics  # noqa: F401 - connects the Prometheus receivers of the lifecycle signals
from .async_client import AsyncClient
from .attempt import cancelled, report_progress
from .client import Client
from .errors import (
    AsyncTaskError,
    AuthenticationFailed,
    ClientError,
    InvalidParams,
    InvalidSchedule,
    InvalidTaskId,
    InvalidTransition,
    ResultNotStorable,
    ScheduleExists,
    ScheduleNotFound,
    ShuttingDown,
    TaskCancelled,
    TaskFailed,
    TaskIdTaken,
    TaskNotFound,
    TaskTimeout,
    Unauthorized,
)
from .schedules import Schedule
from .status import TaskStatus
from .store.connection import default_collection
from .store.memory import MemoryCollection
from .task import AsyncTask
from .version import __version__

__all__ = [
    "AsyncClient",
    "AsyncTask",
    "AsyncTaskError",
    "AuthenticationFailed",
    "Client",
    "ClientError",
    "InvalidParams",
    "InvalidSchedule",
    "InvalidTaskId",
    "InvalidTransition",
    "MemoryCollection",
    "ResultNotStorable",
    "Schedule",
    "ScheduleExists",
    "ScheduleNotFound",
    "ShuttingDown",
    "TaskCancelled",
    "TaskFailed",
    "TaskNotFound",
    "TaskIdTaken",
    "TaskStatus",
    "TaskTimeout",
    "Unauthorized",
    "__version__",
    "cancelled",
    "default_collection",
    "report_progress",
]
