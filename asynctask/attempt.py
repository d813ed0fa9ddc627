"""One attempt at running a task, and which attempt the current thread is running.

The attempt number is the fencing token: the store applies an attempt's writes only while
that number is still the task's `attempts`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Attempt:
    """A claimed task: its id, its attempt number and the params `main` is called with.

    `stop(reason)` asks the attempt to end early ("timeout", "cancelled", "shutdown"); `wake`
    is set then, and when `main` finishes on a remote executor.
    """

    task_id: str
    number: int
    params: dict[str, Any]
    stop_reason: str | None = None
    wake: threading.Event = field(default_factory=threading.Event, repr=False)

    def stop(self, reason: str) -> None:
        """Ask the attempt to end; the first reason given is kept."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.wake.set()


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
