"""`Engine`: the machinery of one task type, built by its `AsyncTask` and handed to the web
layer, the worker command and metrics, so that none of them reaches into the user's subclass.

The subclass is the task's definition (`main`, hooks, options); the engine holds what runs it:
the store of its documents, the queue backend workers use, the worker registry, and the
submission and worker entry points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import Backend, StoreBackend
    from .store.registry import Workers
    from .store.tasks import TaskStore
    from .worker import Worker


@dataclass(frozen=True)
class Engine:
    """What runs one task type (see the module's docstring)."""

    #: The task documents of this type.
    store: TaskStore
    #: The queue as local workers and the remote-worker routes reach it.
    backend: StoreBackend
    #: The worker registry.
    workers: Workers
    #: Validate and submit by the run rule; the task's document as it was left. Keywords:
    #: `task_id` (re-run a stored task), `priority`, `delay`, `run_at`, `trace_id`, `new_task_id`.
    submit: Callable[..., dict[str, Any]]
    #: This process's worker of the type, made on first use.
    runtime: Callable[[], Worker]
    #: Run as a dedicated worker: `start_worker(concurrency, remote_backend_or_None)`.
    start_worker: Callable[[int | None, Backend | None], None]
