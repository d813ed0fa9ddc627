"""The per-process background thread: heartbeats, timeouts, and recovery of orphaned tasks.

Heartbeats are one `update_many` per interval for all of a process's tasks, never one write
per task. A task whose owner stops heartbeating is orphaned: every interval, each live process
with a free slot claims orphans atomically (like RQ's `StartedJobRegistry.cleanup`, but by
claim, so two sweepers never take the same task).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from .attempt import Attempt
from .store import TaskStore, utcnow

logger = logging.getLogger(__name__)


class Monitor:
    """Every `interval` s: heartbeat `owner`'s tasks, then `on_sweep()`; `on_timeout(attempt)` at deadlines."""

    def __init__(
        self,
        store: TaskStore,
        owner: str,
        interval: float,
        on_timeout: Callable[[Attempt], None],
        on_sweep: Callable[[], None],
    ) -> None:
        self._store, self._owner, self._interval = store, owner, interval
        self._on_timeout, self._on_sweep = on_timeout, on_sweep
        self._cond = threading.Condition()
        self._deadlines: dict[Attempt, datetime] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._next_beat = time.monotonic() + interval

    def start(self) -> None:
        """Start the thread if it is not running; safe to call on every claim."""
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._loop, name="asynctask-monitor", daemon=True)
                self._thread.start()

    def track(self, attempt: Attempt, deadline: datetime) -> None:
        """Watch `attempt`, reporting it to `on_timeout` once `deadline` passes."""
        self.start()
        with self._cond:
            self._deadlines[attempt] = deadline
            self._cond.notify()

    def sweep_at(self, monotonic_time: float) -> None:
        """Run the next heartbeat and sweep no later than `monotonic_time` (a retry falls due)."""
        with self._cond:
            self._next_beat = min(self._next_beat, monotonic_time)
            self._cond.notify()

    def untrack(self, attempt: Attempt) -> None:
        """Stop watching `attempt` (it ended)."""
        with self._cond:
            self._deadlines.pop(attempt, None)

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = utcnow()
                expired = [a for a, deadline in self._deadlines.items() if deadline <= now]
                for attempt in expired:
                    del self._deadlines[attempt]
                beat_due = time.monotonic() >= self._next_beat
                if not expired and not beat_due:
                    waits = [self._next_beat - time.monotonic()]
                    waits += [(d - now).total_seconds() for d in self._deadlines.values()]
                    self._cond.wait(max(min(waits), 0.001))
                    continue
                if beat_due:
                    self._next_beat = time.monotonic() + self._interval
            for attempt in expired:
                _logged(self._on_timeout, attempt)
            if beat_due:
                _logged(self._store.heartbeat, self._owner)
                _logged(self._on_sweep)


def _logged(function: Callable, *args: object) -> None:
    """Run one step of the sweep; an error is logged so one bad task never stops the thread."""
    try:
        function(*args)
    except Exception:
        logger.exception("asynctask monitor: %s failed", getattr(function, "__name__", function))
