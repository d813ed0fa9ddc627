"""Task classes for the operating tests: cancel, progress, retries, logs.

Module level, so a spawned process pool can import them: multiprocessing's spawn start
method gives the child the parent's `sys.path`, on which pytest's `pythonpath = [".", "tests"]`
(pyproject.toml) has put this folder, before anything is unpickled (see
tests/executor_tasks.py). The classes meant for `executor="processes"` (`PidSleeper`,
`ChildProgress`) hold nothing that cannot be pickled; the others keep events and counters on
the instance and run in threads of the test process only.

`main` uses `report_progress` and `cancelled` from `asynctask.attempt`, where they are
defined; that they are also `asynctask.report_progress`/`asynctask.cancelled` is checked on
its own (tests/test_progress.py), so the behaviour tests do not depend on the re-export.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from asynctask import AsyncTask
from asynctask.attempt import cancelled, current, report_progress

#: Upper bound on any wait inside `main`: a test that forgets to release a task still ends.
HANG_S = 20.0


class Events:
    """Named events made on first use, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def __getitem__(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def set_all(self) -> None:
        with self._lock:
            for event in self._events.values():
                event.set()


class Controlled(AsyncTask):
    """A thread task the test steers by name: `started[name]` is set when `main` begins, and
    `main` returns once `release[name]` is set. `calls` counts the calls to `main` per name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = Events()
        self.release = Events()
        self.calls: dict[str, int] = defaultdict(int)
        self.returned_at: dict[str, float] = {}

    def shutdown(self, wait: bool = True, grace: float | None = None) -> None:
        self.release.set_all()
        super().shutdown(wait=wait, grace=grace)

    def get_task_id(self, name: str, lines: int = 0) -> str:
        return name

    def main(self, logger: logging.Logger, name: str, lines: int = 0) -> str:
        self.calls[name] += 1
        for number in range(lines):
            logger.info("before the gate, line %d", number)
        self.started[name].set()
        if not self.release[name].wait(HANG_S):
            raise RuntimeError("the test never released the task")
        for number in range(lines):
            logger.info("after the gate, line %d", number)
        self.returned_at[name] = time.monotonic()
        return f"{name} done"


class Loop(AsyncTask):
    """Works in small steps; checks `cancelled()` between steps once `listening` is set.

    `stopped_early[name]` says at which step `main` returned because it was cancelled.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = Events()
        self.listening = threading.Event()
        self.listening.set()
        self.stopped_early: dict[str, int] = {}

    def shutdown(self, wait: bool = True, grace: float | None = None) -> None:
        self.listening.set()
        super().shutdown(wait=wait, grace=grace)

    def get_task_id(self, name: str) -> str:
        return name

    def main(self, logger: logging.Logger, name: str) -> str:
        self.started[name].set()
        deadline = time.monotonic() + HANG_S
        step = 0
        while time.monotonic() < deadline:
            if self.listening.is_set() and cancelled():
                logger.info("cancelled at step %d", step)
                self.stopped_early[name] = step
                return f"stopped at step {step}"
            step += 1
            time.sleep(0.005)
        return "ran to the end"


class PidSleeper(AsyncTask):
    """For executor="processes": writes its pid to `pid_file`, then sleeps `seconds`."""

    def get_task_id(self, pid_file: str, seconds: float = 30) -> str:
        return f"sleeper-{Path(pid_file).stem}"

    def main(self, logger: logging.Logger, pid_file: str, seconds: float = 30) -> str:
        logger.info("sleeping in pid %d", os.getpid())
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(seconds)
        return "woke up"


class ChildProgress(AsyncTask):
    """For executor="processes": reports 30% and waits until `go_file` exists, then reports
    `count` times as fast as it can (percent i * 100 / count for i = 1..count-1, so the last
    value is below 100 and throttled) and returns."""

    def get_task_id(self, go_file: str, count: int = 1) -> str:
        return f"child-{Path(go_file).stem}"

    def main(self, logger: logging.Logger, go_file: str, count: int = 1) -> int:
        report_progress(30, f"waiting in pid {os.getpid()}")
        deadline = time.monotonic() + HANG_S
        while not Path(go_file).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the test never created the go file")
            time.sleep(0.01)
        for step in range(1, count):
            report_progress(step * 100 / count, f"step {step} of {count}")
        return os.getpid()


class Progress(AsyncTask):
    """Reports `percent`/`message`, signals `reported[name]`, and returns once `release[name]`
    is set (at once unless `block`). With `count`, first reports `count` times as fast as it
    can: percent `step * top / count`, message "step {step} of {count}", step = 1..count."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reported = Events()
        self.release = Events()

    def shutdown(self, wait: bool = True, grace: float | None = None) -> None:
        self.release.set_all()
        super().shutdown(wait=wait, grace=grace)

    def get_task_id(self, name: str, **_: Any) -> str:
        return name

    def main(
        self, logger: logging.Logger, name: str, percent: float = 0.0, message: str | None = None,
        count: int = 0, top: float = 100.0, block: bool = True,
    ) -> str:
        for step in range(1, count + 1):
            report_progress(step * top / count, f"step {step} of {count}")
        if percent or message:
            report_progress(percent, message)
        self.reported[name].set()
        if block and not self.release[name].wait(HANG_S):
            raise RuntimeError("the test never released the task")
        return "done"


class Zombie(AsyncTask):
    """Attempt 1 blocks until `release_zombie`, then reports 99% ("zombie"); a later attempt
    reports 10% ("fresh") and blocks until `release_fresh`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.zombie_started = threading.Event()
        self.release_zombie = threading.Event()
        self.zombie_reported = threading.Event()
        self.fresh_reported = threading.Event()
        self.release_fresh = threading.Event()

    def shutdown(self, wait: bool = True, grace: float | None = None) -> None:
        self.release_zombie.set()
        self.release_fresh.set()
        super().shutdown(wait=wait, grace=grace)

    def get_task_id(self, name: str) -> str:
        return name

    def main(self, logger: logging.Logger, name: str) -> str:
        attempt = current(name)
        assert attempt is not None
        if attempt.number == 1:
            self.zombie_started.set()
            self.release_zombie.wait(HANG_S)
            report_progress(99, "zombie")
            self.zombie_reported.set()
            return "zombie result"
        report_progress(10, "fresh")
        self.fresh_reported.set()
        self.release_fresh.wait(HANG_S)
        return "fresh result"


ERRORS: dict[str, type[Exception]] = {"ValueError": ValueError, "KeyError": KeyError}


class Flaky(AsyncTask):
    """Raises `error` (a name in ERRORS) on its first `fails` calls per name, then
    returns the call count. Start times (time.monotonic) are kept per name in `starts`, shared
    by every instance in this process, so two instances can take turns at one task."""

    starts: dict[str, list[float]] = defaultdict(list)
    finished: dict[str, list[float]] = defaultdict(list)

    def get_task_id(self, name: str, fails: int = 0, error: str = "ValueError") -> str:
        return name

    def main(self, logger: logging.Logger, name: str, fails: int = 0, error: str = "ValueError") -> int:
        starts = Flaky.starts[name]
        starts.append(time.monotonic())
        try:
            if len(starts) <= fails:
                raise ERRORS[error](f"call {len(starts)} of {name} fails on purpose")
            return len(starts)
        finally:
            Flaky.finished[name].append(time.monotonic())


class Quick(AsyncTask):
    """Logs `lines` lines and returns at once; records when it finished."""

    finished: dict[str, float] = {}

    def get_task_id(self, name: str, lines: int = 1) -> str:
        return name

    def main(self, logger: logging.Logger, name: str, lines: int = 1) -> str:
        for number in range(lines):
            logger.info("quick %s line %d", name, number)
        Quick.finished[name] = time.monotonic()
        return name


class Upper(AsyncTask):
    """One of two task types served by one app."""

    def main(self, logger: logging.Logger, text: str) -> str:
        return text.upper()


class Length(AsyncTask):
    """The other of two task types served by one app."""

    def main(self, logger: logging.Logger, items: list) -> int:
        return len(items)
