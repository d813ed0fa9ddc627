"""Task classes for tests/test_executors.py, importable by the processes that run them.

With `executor="processes"` the pool spawns fresh interpreters, which unpickle the task by
its module and class name, so these classes live at module level and hold nothing that
cannot be pickled (no locks or events, unlike some classes of tests/tasks.py).

A spawned child finds this module because multiprocessing's spawn start method hands the
parent's `sys.path` to the child before anything is unpickled, and pytest's
`pythonpath = [".", "tests"]` setting (pyproject.toml) has put `tests` on that path.
No PYTHONPATH is needed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from asynctask import AsyncTask


def whereabouts() -> dict[str, Any]:
    """The process and thread the caller runs in."""
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


class Where(AsyncTask):
    """Reports where `main` ran; logs one line through its logger and one through `getLogger`."""

    def get_task_id(self, name: str) -> str:
        return name

    def main(self, logger: logging.Logger, name: str) -> dict[str, Any]:
        here = whereabouts()
        logger.info("given logger speaking from pid %d", here["pid"])
        logging.getLogger(name).info("getLogger(%s) speaking from pid %d", name, here["pid"])
        return here


class Sleeper(AsyncTask):
    """Writes its pid to `pid_file`, then sleeps `seconds` (a task that outlives any short timeout)."""

    def get_task_id(self, pid_file: str, seconds: float = 30) -> str:
        return f"sleep-{Path(pid_file).stem}"

    def main(self, logger: logging.Logger, pid_file: str, seconds: float = 30) -> str:
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(seconds)
        return "woke up"


class Quick(AsyncTask):
    """Returns at once, saying which process it ran in."""

    def get_task_id(self, name: str) -> str:
        return name

    def main(self, logger: logging.Logger, name: str) -> dict[str, Any]:
        return whereabouts()


class Raiser(AsyncTask):
    """Raises a ValueError naming `value`."""

    def get_task_id(self, value: str) -> str:
        return f"raise-{value}"

    def main(self, logger: logging.Logger, value: str) -> None:
        raise ValueError(f"refusing value {value!r} in pid {os.getpid()}")


def _local_function() -> None:
    """Nothing; `BadResult` returns a closure over it, which pickle cannot find by name."""


class BadResult(AsyncTask):
    """Returns a value that cannot travel back from a child, or cannot be stored.

    kind: "set" pickles but is not BSON/JSON; "lock" and "closure" cannot be pickled.
    """

    def get_task_id(self, kind: str) -> str:
        return f"bad-{kind}"

    def main(self, logger: logging.Logger, kind: str) -> Any:
        if kind == "set":
            return {1, 2, 3}
        if kind == "lock":
            return threading.Lock()
        if kind == "closure":
            def closure() -> None:
                _local_function()

            return closure
        raise ValueError(f"unknown kind {kind!r}")


class OnDaskWorker(AsyncTask):
    """Returns the address of the Dask worker running `main` (raises outside a worker)."""

    def get_task_id(self, name: str) -> str:
        return name

    def main(self, logger: logging.Logger, name: str) -> dict[str, Any]:
        from distributed import get_worker

        logger.info("on dask worker")
        return {"worker": get_worker().address, **whereabouts()}


class AsyncChild(AsyncTask):
    """An `async def main` that a process pool's child runs with `asyncio.run`."""

    async def main(self, logger: logging.Logger, value: int) -> int:
        import asyncio

        await asyncio.sleep(0.01)
        return value * 2
