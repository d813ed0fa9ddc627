"""Where attempts run.

Each attempt occupies a slot thread of this process for its whole lifecycle (start, `main`,
record). With threads, `main` runs in the slot itself. With any other executor, `main` is
sent to that executor and the slot waits for it, which is how a timeout ends it.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import logs

logger = logging.getLogger(__name__)


def check_max_worker(max_worker: Any) -> int | None:
    """Return `max_worker` if it is None or a positive int, else raise."""
    if max_worker is None:
        return None
    if isinstance(max_worker, bool) or not isinstance(max_worker, int):
        raise TypeError(f"max_worker must be an int or None, not {type(max_worker).__name__}")
    if max_worker < 1:
        raise ValueError(f"max_worker must be at least 1, not {max_worker}")
    return max_worker


class Executors:
    """The slot pool of this process and, when `main` runs elsewhere, the executor it runs on.

    Nothing is started until first use, so an `AsyncTask` built before a fork starts no thread.
    """

    def __init__(self, spec: Any, max_worker: int | None) -> None:
        self.max_worker = check_max_worker(max_worker)
        if spec is None or spec == "threads":
            self._given: Executor | None = None
        elif isinstance(spec, Executor):
            self._given = spec
        else:
            raise ValueError(
                f"executor must be 'threads' or a concurrent.futures.Executor, not {spec!r}"
            )
        self._lock = threading.Lock()
        self._slots: Executor | None = None
        self._pid: int | None = None

    @property
    def remote(self) -> Executor | None:
        """The executor `main` is sent to, or None when it runs in the slot thread."""
        if self._given is None or isinstance(self._given, ThreadPoolExecutor):
            return None
        return self._given

    def slots(self) -> Executor:
        """The executor attempts run on, made on first use in this process."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    if isinstance(self._given, ThreadPoolExecutor):
                        self._slots = self._given
                    else:
                        workers = self.max_worker or getattr(self._given, "_max_workers", None)
                        self._slots = ThreadPoolExecutor(workers, thread_name_prefix="asynctask")
                    self._pid = os.getpid()
        assert self._slots is not None
        return self._slots

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work; with `wait`, return once running attempts are done."""
        with self._lock:
            slots, self._slots, self._pid = self._slots, None, None
        if slots is not None:
            slots.shutdown(wait=wait, cancel_futures=not wait)
        if self.remote is not None:
            self.remote.shutdown(wait=wait)


def call_main(task: Any, task_id: str, params: dict[str, Any]) -> Any:
    """Run `task.main` where an executor put it, logging to the task's file."""
    logger_dir = Path(task.logger_dir)
    with logs.opened(task.get_logger(task_id), logger_dir, task_id) as task_log:
        return task.main(logger=task_log, **params)
