"""This process's event loop for coroutine attempts (`async def main`).

One loop thread runs every coroutine attempt of the process, so N attempts awaiting I/O hold
no N threads. What blocks (pymongo writes, log files, hooks) goes to a small pool of helper
threads (`blocking`), never onto the loop. The loop is made on first use in each process:
after a fork (gunicorn, `--preload`) a child makes its own.

A watchdog thread checks that the loop answers: a loop blocked for more than `BLOCKED_AFTER`
seconds (a coroutine that called `time.sleep`) is named in a WARNING with the task ids that
were running, and the lag is the `asynctask_event_loop_lag_seconds` gauge.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .process import PerProcess

logger = logging.getLogger(__name__)

#: A loop that has not answered for this long is reported blocked.
BLOCKED_AFTER = 1.0
#: How often the watchdog pings the loop.
PING_EVERY = 0.25
#: Threads that do the blocking steps of coroutine attempts (database writes, log files).
HELPERS = 4


class EventLoop:
    """An asyncio loop in a daemon thread, with helper threads for blocking calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.helpers = ThreadPoolExecutor(HELPERS, thread_name_prefix="asynctask-aio")
        #: The task ids of the coroutine attempts on the loop now, for the blocked-loop warning.
        self.running: dict[int, str] = {}
        self.lag = 0.0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_forever, name="asynctask-loop", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, name="asynctask-loop-watchdog", daemon=True)
        self._watchdog.start()

    def submit(self, task_id: str, coroutine: Coroutine[Any, Any, Any],
               done: Callable[[], None]) -> Future:
        """Run `coroutine` on the loop; `done` runs on a helper thread when it is over."""
        key = id(coroutine)

        async def tracked() -> Any:
            self.running[key] = task_id
            try:
                return await coroutine
            finally:
                self.running.pop(key, None)

        future = asyncio.run_coroutine_threadsafe(tracked(), self.loop)
        future.add_done_callback(lambda _: self.helpers.submit(done))
        return future

    async def blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        """Await `function(*args)` run on a helper thread, in the caller's context (so that it
        sees the attempt `asynctask.attempt` says is current)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.helpers, context.run, function, *args)

    def _watch(self) -> None:
        """Ping the loop; report it blocked, with the task ids it was running, once per block."""
        from .metrics import loop_lag

        reported = False
        while not self._closed.wait(PING_EVERY):
            answered = threading.Event()
            sent = time.monotonic()
            try:
                self.loop.call_soon_threadsafe(answered.set)
            except RuntimeError:
                return  # the loop is closed
            while not answered.wait(BLOCKED_AFTER):
                if self._closed.is_set():
                    return
                self.lag = time.monotonic() - sent
                loop_lag(self.lag)
                if not reported:
                    reported = True
                    ids = sorted(set(self.running.copy().values()))
                    logger.warning("the event loop has been blocked for %.1fs; coroutine task(s) running: %s "
                                   "(a coroutine must not call blocking code such as time.sleep)",
                                   self.lag, ", ".join(ids) or "none")
            self.lag = time.monotonic() - sent
            loop_lag(self.lag)
            reported = False

    def close(self) -> None:
        """Stop the loop and the helpers (a process shutting down)."""
        self._closed.set()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.helpers.shutdown(wait=False)


_loop: PerProcess[EventLoop] = PerProcess(EventLoop)


def event_loop() -> EventLoop:
    """This process's event loop for coroutine attempts, started on first use."""
    return _loop.get()
