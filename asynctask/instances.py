"""Every `AsyncTask` of this process, and when its worker starts.

A worker starts on first use (a submission, a request), never at import time, except in a
gunicorn worker process, which runs its loop from its start without waiting for a request.
A task built in a gunicorn master loading the app before it forks (`--preload`) starts its
worker in each forked worker instead, never in the master. gunicorn's hooks and the
`asynctask worker` command reach every task of the process through `start_all` and
`shutdown_all`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .task import AsyncTask

#: Every instance in this process, for gunicorn's worker hooks and forks.
_instances: weakref.WeakSet[AsyncTask] = weakref.WeakSet()
#: Instances built in a gunicorn master: their workers start in each forked worker process.
_deferred: weakref.WeakSet[AsyncTask] = weakref.WeakSet()
_autostart = threading.local()


@contextlib.contextmanager
def autostart(enabled: bool) -> Iterator[None]:
    """Within the block, a new `AsyncTask` does (not) start its worker on construction."""
    previous = getattr(_autostart, "enabled", True)
    _autostart.enabled = enabled
    try:
        yield
    finally:
        _autostart.enabled = previous


def start_all() -> None:
    """Start the worker of every `AsyncTask` of this process that runs one."""
    for task in list(_instances):
        task.start()


def shutdown_all(grace: float | None = None) -> int:
    """Gracefully stop every `AsyncTask` of this process (SIGTERM of `asynctask worker`,
    gunicorn's worker exit hook): every type stops claiming at once, then all share one grace.

    Returns how many attempts were still running when they were released: the caller should
    then exit at once, so that no released attempt runs on beside its next one.
    """
    tasks = list(_instances)
    for task in tasks:
        task.stop_claiming()
    if grace is None:
        return sum(task.shutdown(wait=True) for task in tasks)
    deadline = time.monotonic() + grace
    return sum(task.shutdown(wait=True, grace=max(deadline - time.monotonic(), 0.0)) for task in tasks)


def _after_fork_in_child() -> None:
    """Start the workers a gunicorn master deferred, in each worker it forks (the parent's
    threads are gone in the child: `PerProcess` values are made anew there)."""
    for task in list(_deferred):
        _deferred.discard(task)
        task.start()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _gunicorn_role() -> str | None:
    """"master" when a gunicorn master loads the app before it forks (`--preload`), "worker" in
    a gunicorn worker process, else None (read from the call stack: gunicorn says it nowhere)."""
    if "gunicorn.arbiter" not in sys.modules:
        return None
    frame: Any = sys._getframe(1)
    role = None
    while frame is not None:
        path = frame.f_code.co_filename.replace(os.sep, "/")
        if "/gunicorn/workers/" in path:
            return "worker"
        if path.endswith("/gunicorn/arbiter.py"):
            role = "master"
        frame = frame.f_back
    return role


def register(task: AsyncTask) -> None:
    """Note a new task; start its worker now if this is a gunicorn worker, or after the fork
    if this is a gunicorn master."""
    _instances.add(task)
    if not (task.worker or task.worker_token) or not getattr(_autostart, "enabled", True) or multiprocessing.parent_process() is not None:
        return
    role = _gunicorn_role()
    if role == "master":
        _deferred.add(task)
    elif role == "worker":
        task.start()


def forget(task: AsyncTask) -> None:
    """A task shut down: no forked worker starts it any more."""
    _deferred.discard(task)
