"""Sample task classes, at module level so a process pool can pickle them."""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

from asynctask import AsyncTask


class Echo(AsyncTask):
    """Returns its params; counts calls to `main` in this process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.calls_lock = threading.Lock()

    def get_task_id(self, value: Any = None, **extra: Any) -> str:
        return hashlib.sha1(repr((value, sorted(extra.items()))).encode()).hexdigest()

    def main(self, logger: logging.Logger, value: Any = None, **extra: Any) -> Any:
        with self.calls_lock:
            self.calls += 1
        logger.info("echo %r", value)
        return value


class Typed(AsyncTask):
    """A task with a required and an optional param, and a deterministic id."""

    def get_task_id(self, text: str, top: int = 10) -> str:
        return hashlib.sha1(f"{top}:{text}".encode()).hexdigest()

    def main(self, logger: logging.Logger, text: str, top: int = 10) -> list:
        return text.split()[:top]


class Gate(AsyncTask):
    """Blocks in `main` until its gate is opened; tells when it has started."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = threading.Event()
        self.gate = threading.Event()
        self.calls = 0

    def get_task_id(self, name: str = "gate", result: Any = "done", fail: bool = False) -> str:
        return name

    def main(self, logger: logging.Logger, name: str = "gate", result: Any = "done", fail: bool = False) -> Any:
        self.calls += 1
        self.started.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        if fail:
            raise ValueError(f"asked to fail: {name}")
        return result
