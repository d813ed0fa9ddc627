"""Long-polls (`GET {endpoint}/<id>?wait=S`, `api.wait`) of one task type in one process.

However many clients wait, one watcher thread reads the database for all of them: one query
for every awaited id per `INTERVAL` (served by the task-id index), never one per client. A
task that ends in this process wakes its waiters at once, without waiting for that read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

#: How often the watcher looks for awaited tasks that ended in other processes.
INTERVAL = 0.25


class LongPolls:
    """Waiters by task id, and the one thread that looks for their tasks' ends."""

    def __init__(self, finished_among: Callable[[list[str]], Iterable[str]], interval: float = INTERVAL) -> None:
        #: Which of the given ids have finished (one database read).
        self.finished_among = finished_among
        self.interval = interval
        self._lock = threading.Lock()
        self._waiting: dict[str, list[threading.Event]] = {}
        self._watcher: threading.Thread | None = None

    def wait(self, task_id: str, timeout: float) -> bool:
        """Block until `task_id` ends (True) or `timeout` seconds pass (False)."""
        ended = threading.Event()
        with self._lock:
            self._waiting.setdefault(task_id, []).append(ended)
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="asynctask-longpoll", daemon=True)
                self._watcher.start()
        try:
            return ended.wait(timeout)
        finally:
            with self._lock:
                events = self._waiting.get(task_id, [])
                if ended in events:
                    events.remove(ended)
                if not events:
                    self._waiting.pop(task_id, None)

    def ended(self, task_id: str) -> None:
        """A task ended in this process: wake its waiters now."""
        with self._lock:
            events = list(self._waiting.get(task_id, []))
        for event in events:
            event.set()

    def _watch(self) -> None:
        """While anyone waits: read which awaited tasks ended, wake their waiters, pause."""
        idle = threading.Event()
        while True:
            with self._lock:
                ids = list(self._waiting)
                if not ids:
                    self._watcher = None
                    return
            try:
                for task_id in self.finished_among(ids):
                    self.ended(task_id)
            except Exception as exc:  # the database away: the waiters time out, or the next read sees it
                logger.debug("long-poll read failed: %s", exc)
            idle.wait(self.interval)
