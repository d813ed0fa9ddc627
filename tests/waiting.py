"""Waiting with a deadline, never a bare sleep: the helpers every test module shares."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from asynctask.status import FINISHED


def wait_until(condition: Callable[[], Any], what: str = "the condition", timeout: float = 10.0,
               interval: float = 0.01) -> Any:
    """Poll `condition` until it returns something truthy and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


def wait_for(task: Any, task_id: str, statuses: tuple[str, ...] = FINISHED, timeout: float = 10.0) -> dict[str, Any]:
    """Poll the task's public view until its status is one of `statuses`; fail at the deadline."""
    views: list[Any] = [None]

    def reached() -> bool:
        views[0] = task.retrieve(task_id)
        return views[0] is not None and views[0]["status"] in statuses

    try:
        wait_until(reached, timeout=timeout, interval=0.005)
    except AssertionError:
        raise AssertionError(f"task {task_id} did not reach {statuses} within {timeout}s: {views[0]}") from None
    return views[0]


def process_exists(pid: int) -> bool:
    """Whether a process with this pid is alive (or a zombie not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
