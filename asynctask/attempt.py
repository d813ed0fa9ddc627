"""One attempt at running a task, which attempt the current thread runs, and what `main`
can ask of it: `cancelled()` and `report_progress()`.

The attempt number is the fencing token: the store applies an attempt's writes only while
that number is still the task's `attempts`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

#: At most one progress write per attempt in this many seconds; the rest are coalesced.
PROGRESS_INTERVAL = 0.5


@dataclass(eq=False)
class Attempt:
    """A claimed task: its id, its attempt number and the params `main` is called with.

    `stop(reason)` asks the attempt to end early ("timeout", "cancelled", "shutdown"); `wake`
    is set then, and when `main` finishes on a remote executor.
    """

    task_id: str
    number: int
    params: dict[str, Any]
    trace_id: str | None = None
    retries: int = 0
    stop_reason: str | None = None
    #: The final status this attempt wrote (success, failed, cancelled), if it wrote one.
    outcome: str | None = None
    wake: threading.Event = field(default_factory=threading.Event, repr=False)
    #: Writes progress somewhere: the store, or a queue to the parent process.
    reporter: Callable[[float, str | None], None] | None = field(default=None, repr=False)
    #: The newest progress not written yet because of throttling; written with the outcome.
    pending_progress: dict[str, Any] | None = field(default=None, repr=False)
    #: The newest progress reported, written or not; a child process sends it back with the outcome.
    latest_progress: dict[str, Any] | None = field(default=None, repr=False)
    _last_report: float = field(default=-math.inf, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """What a child process gets: no event, no reporter (it makes its own)."""
        return {**self.__dict__, "wake": None, "reporter": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, wake=threading.Event())

    def stop(self, reason: str) -> None:
        """Ask the attempt to end; the first reason given is kept."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.wake.set()

    def report(self, percent: float, message: str | None) -> None:
        """Write progress through `reporter`, at most once per `PROGRESS_INTERVAL` (100% always)."""
        now = time.monotonic()
        self.latest_progress = {"percent": percent, "message": message}
        if percent < 100.0 and now - self._last_report < PROGRESS_INTERVAL:
            self.pending_progress = {"percent": percent, "message": message}
            return
        self._last_report = now
        self.pending_progress = None
        if self.reporter is not None:
            self.reporter(percent, message)


_current: ContextVar[Attempt | None] = ContextVar("asynctask_attempt", default=None)


@contextmanager
def running(attempt: Attempt) -> Iterator[Attempt]:
    """Make `attempt` the current one for the code run inside the block."""
    token = _current.set(attempt)
    try:
        yield attempt
    finally:
        _current.reset(token)


def current(task_id: str | None = None) -> Attempt | None:
    """The attempt this thread is running (for `task_id`, when given), or None."""
    attempt = _current.get()
    if attempt is None or (task_id is not None and attempt.task_id != task_id):
        return None
    return attempt


def cancelled() -> bool:
    """True inside `main` once its attempt should stop (cancelled, timed out, shutting down).

    A `main` running in a thread checks this between steps and returns early; the task then
    ends `cancelled` (or `failed` on a timeout). Outside an attempt it is False.
    """
    attempt = _current.get()
    return attempt is not None and attempt.stop_reason is not None


def report_progress(percent: float, message: str | None = None) -> None:
    """Record the progress of the running task (0-100), shown as `progress` in its view.

    Calls are throttled: many per second cost a handful of writes, and the newest one is
    written with the task's outcome. Outside an attempt it does nothing.
    """
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not math.isfinite(percent):
        raise TypeError(f"percent must be a finite number, not {percent!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"message must be a string or None, not {type(message).__name__}")
    attempt = _current.get()
    if attempt is not None:
        attempt.report(min(max(float(percent), 0.0), 100.0), message)
