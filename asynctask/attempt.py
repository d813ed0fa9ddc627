"""One attempt at running a task, which attempt the current thread runs, and what `main`
can ask of it: `cancelled()` and `report_progress()`.

The attempt number is the fencing token: the store applies an attempt's writes only while
that number is still the task's `attempts`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

#: At most one progress write per attempt in this many seconds; the rest are coalesced, and
#: the newest of them is written when the interval is over (or with the outcome, if sooner).
PROGRESS_INTERVAL = 0.5

logger = logging.getLogger(__name__)


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
    final_status: str | None = None
    #: Set once the outcome is being written: that write is fenced, so a heartbeat's verdict no longer matters.
    recording: bool = False
    wake: threading.Event = field(default_factory=threading.Event, repr=False)
    #: Writes progress somewhere: the store, or a queue to the parent process.
    reporter: Callable[[float, str | None], object] | None = field(default=None, repr=False)
    #: Called by `stop()`: cancels a coroutine `main` at its current `await`.
    on_stop: Callable[[], object] | None = field(default=None, repr=False)
    #: The newest progress not written yet because of throttling; written with the outcome.
    pending_progress: dict[str, Any] | None = field(default=None, repr=False)
    #: The newest progress reported, written or not; a child process sends it back with the outcome.
    latest_progress: dict[str, Any] | None = field(default=None, repr=False)
    _last_report: float = field(default=-math.inf, repr=False)
    #: Guards the progress fields and the flush timer.
    _progress_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Held while a progress write is under way, so that writes land in the order reported.
    _write_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: The pending trailing-edge write of a throttled report, if one is scheduled.
    _flush_timer: threading.Timer | None = field(default=None, repr=False)
    #: Set when the attempt has ended here: no write is scheduled any more.
    _ended: bool = field(default=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """What a child process gets: no event, no reporter (it makes its own), no lock or timer."""
        return {
            **self.__dict__, "wake": None, "reporter": None, "on_stop": None,
            "_progress_lock": None, "_write_lock": None, "_flush_timer": None,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(
            state, wake=threading.Event(), _progress_lock=threading.Lock(), _write_lock=threading.Lock(),
            _flush_timer=None,
        )

    def stop(self, reason: str) -> None:
        """Ask the attempt to end; the first reason given is kept."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.wake.set()
        if (cancel := self.on_stop) is not None:
            cancel()

    def report(self, percent: float, message: str | None) -> None:
        """Write progress through `reporter`, at most once per `PROGRESS_INTERVAL` (100% always).

        A report that comes too soon after the last write is kept in `pending_progress`, and a
        write of the newest pending report is scheduled for the end of the interval: the view
        never lags behind `main` by much more than the interval while the attempt runs.
        """
        progress = {"percent": percent, "message": message}
        with self._progress_lock:
            self.latest_progress = progress
            self.pending_progress = progress
            now = time.monotonic()
            due = self._last_report + PROGRESS_INTERVAL
            if percent < 100.0 and now < due:
                if self._flush_timer is None and not self._ended:
                    timer = threading.Timer(due - now, self._flush)
                    timer.daemon = True
                    timer.name = f"asynctask-progress-{self.task_id}"
                    self._flush_timer = timer
                    timer.start()
                return
            self._last_report = now
        try:
            self._write()
        except Exception:  # progress is best effort: it never fails `main`, and is kept for the outcome
            logger.warning("writing the progress of task %s failed; it goes with the outcome", self.task_id,
                           exc_info=True)

    def _flush(self) -> None:
        """The trailing edge of the throttle: write the newest report held back."""
        with self._progress_lock:
            self._flush_timer = None
            if self._ended:
                return
            self._last_report = time.monotonic()
        try:
            self._write()
        except Exception:  # a write from `main`'s own call would raise into main; here, log it
            logger.warning("writing the progress of task %s failed", self.task_id, exc_info=True)

    def _write(self) -> None:
        """Write the newest pending report, if any. It stays pending until written, so that an
        outcome recorded meanwhile (which writes `pending_progress` with it) still carries it."""
        with self._write_lock:
            with self._progress_lock:
                progress = self.pending_progress
            if progress is None:
                return
            if self.reporter is not None:
                self.reporter(progress["percent"], progress["message"])
            with self._progress_lock:
                if self.pending_progress is progress:
                    self.pending_progress = None

    def end_progress(self) -> None:
        """The attempt has ended here: cancel a scheduled write; later reports are only kept."""
        with self._progress_lock:
            self._ended = True
            timer, self._flush_timer = self._flush_timer, None
        if timer is not None:
            timer.cancel()


_current: ContextVar[Attempt | None] = ContextVar("asynctask_attempt", default=None)


@contextmanager
def running(attempt: Attempt) -> Iterator[Attempt]:
    """Make `attempt` the current one for the code run inside the block."""
    token = _current.set(attempt)
    with attempt._progress_lock:
        attempt._ended = False
    try:
        yield attempt
    finally:
        _current.reset(token)
        attempt.end_progress()


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

    Calls are throttled: many per second cost at most about two writes a second, and the newest
    one is written within about `PROGRESS_INTERVAL` seconds, or with the task's outcome if that
    comes first. Outside an attempt it does nothing.
    """
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not math.isfinite(percent):
        raise TypeError(f"percent must be a finite number, not {percent!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"message must be a string or None, not {type(message).__name__}")
    attempt = _current.get()
    if attempt is not None:
        attempt.report(min(max(float(percent), 0.0), 100.0), message)
