"""Where attempts run.

Each attempt occupies a slot thread of this process for its whole lifecycle (start, `main`,
record). With threads, `main` runs in the slot itself. With processes, Dask or any other
executor, `main` is sent there and the slot waits for it, so a timeout or a cancel can end it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .attempt import Attempt, running
from .logs import opened
from .process import PerProcess
from .validation import check_result, positive_int

logger = logging.getLogger(__name__)


class KillablePool(Executor):
    """A process pool (pebble) whose `Future.cancel()` ends the child running that task.

    Children are spawned, not forked, so a pool made in a threaded server is safe; the
    task's class must therefore be importable.
    """

    def __init__(self, max_workers: int, progress: Callable[[str, int, float, str | None], None]) -> None:
        import pebble

        context = multiprocessing.get_context("spawn")
        self._queue = context.Queue()
        self._pool = pebble.ProcessPool(
            max_workers=max_workers, context=context, initializer=_child_init, initargs=(self._queue,)
        )
        self._listener = threading.Thread(
            target=_relay, args=(self._queue, progress), name="asynctask-progress", daemon=True
        )
        self._listener.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self._pool.schedule(fn, args=args, kwargs=kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if wait and not cancel_futures:
            self._pool.close()
        else:
            self._pool.stop()
        self._pool.join()
        self._queue.put(None)
        self._listener.join(timeout=5)


#: In a pool's child: the queue progress goes back to the parent through.
_to_parent: Any = None


def _child_init(queue: Any) -> None:
    global _to_parent
    _to_parent = queue


def _relay(queue: Any, progress: Callable[[str, int, float, str | None], None]) -> None:
    """In the parent: hand progress from the children to `progress` until told to stop."""
    while (item := queue.get()) is not None:
        try:
            progress(*item)
        except Exception:
            logger.exception("recording progress of task %s failed", item[0])


class DaskExecutor(Executor):
    """A `concurrent.futures` executor on the Dask cluster at `address` (extra `asynctask[dask]`).

    It owns its `distributed.Client`: `shutdown()` closes it, which Dask's own executor does not.
    """

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise RuntimeError("executor='dask://...' needs the dask extra: pip install 'asynctask[dask]'") from exc
        self._client = Client(address, set_as_default=False)
        self._executor = self._client.get_executor()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        try:
            self._executor.shutdown(wait=wait and not cancel_futures)
        finally:
            self._client.close()


class Executors:
    """The slot pool of this process and, when `main` runs elsewhere, the executor it runs on.

    `spec` is None or "threads", "processes", "dask://host:port", or an `Executor`. Nothing is
    started until first use in a process, so an `AsyncTask` built before a fork starts nothing.
    """

    def __init__(
        self, spec: Any, max_worker: int | None,
        progress: Callable[[str, int, float, str | None], None] = lambda *args: None,
    ) -> None:
        self.max_worker = None if max_worker is None else positive_int("max_worker", max_worker)
        self._progress = progress
        if spec is None or spec == "threads":
            self.kind = "threads"
        elif spec == "processes":
            self.kind = "processes"
        elif isinstance(spec, str) and spec.startswith("dask://") and len(spec) > len("dask://"):
            self.kind = "dask"
        elif isinstance(spec, Executor):
            self.kind = "threads" if isinstance(spec, ThreadPoolExecutor) else "executor"
        else:
            raise ValueError(
                f"executor must be 'threads', 'processes', 'dask://host:port' or a "
                f"concurrent.futures.Executor, not {spec!r}"
            )
        self._spec = spec
        self._pools: PerProcess[tuple[Executor, Executor | None]] = PerProcess(self._make)

    @property
    def capacity(self) -> int:
        """How many attempts this process runs at once."""
        if self.max_worker:
            return self.max_worker
        given = getattr(self._spec, "_max_workers", None)
        if given:
            return int(given)
        cpus = os.cpu_count() or 1
        return cpus if self.kind == "processes" else min(32, cpus + 4)

    def _make(self) -> tuple[Executor, Executor | None]:
        """This process's slot pool and the executor `main` is sent to (None: the slot itself)."""
        if self.kind == "threads" and isinstance(self._spec, Executor):
            return self._spec, None
        slots = ThreadPoolExecutor(self.capacity, thread_name_prefix="asynctask")
        if self.kind == "processes":
            return slots, KillablePool(self.capacity, self._progress)
        if self.kind == "dask":
            return slots, DaskExecutor(self._spec[len("dask://"):])
        return slots, self._spec if self.kind == "executor" else None

    def slots(self) -> Executor:
        """The executor attempts run on, made on first use in this process."""
        return self._pools.get()[0]

    def main_executor(self) -> Executor | None:
        """The executor `main` is sent to (a process pool, Dask, the user's), or None when it
        runs in the slot thread itself."""
        return self._pools.get()[1]

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work; with `wait`, return once running attempts are done. An executor
        the user passed in is theirs: it is never shut down here."""
        pools = self._pools.take()
        for executor in pools or ():
            if executor is not None and executor is not self._spec:
                try:
                    executor.shutdown(wait=wait, cancel_futures=not wait)
                except TypeError:  # executors older than Python 3.9's signature (Dask's)
                    executor.shutdown(wait=wait)


@dataclass
class MainReturn:
    """What `call_main` returns: `main`'s result and the last progress it reported."""

    result: Any
    progress: dict[str, Any] | None = None


def call_main(task: Any, attempt: Attempt) -> MainReturn:
    """Run `task.main` where an executor put it, logging to the task's file.

    In a pool's child, progress goes back to the parent, which writes it. The result is
    checked here, where it was made: one that cannot be stored fails with `ResultNotStorable`
    instead of failing to pickle on its way back (which can kill a pool's worker).
    """
    if _to_parent is not None:
        def report(percent: float, message: str | None) -> None:
            _to_parent.put((attempt.task_id, attempt.number, percent, message))

        attempt.reporter = report
    task_logger = task.get_logger(attempt.task_id)
    with running(attempt), opened(task_logger, Path(task.logger_dir), attempt.task_id, attempt.trace_id) as log:
        # The last progress goes back with the outcome and is written with it: sent through the
        # progress queue, it could arrive after the outcome, when it is no longer written.
        try:
            result = task.main(logger=log, **attempt.params)
            if inspect.iscoroutine(result):  # an `async def main` runs to its end in this child
                result = asyncio.run(result)
            check_result(result)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                exc.asynctask_progress = attempt.latest_progress  # type: ignore[attr-defined]
            raise
        return MainReturn(result, attempt.latest_progress)
