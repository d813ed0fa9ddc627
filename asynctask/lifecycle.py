"""The lifecycle of one attempt, in the shape of CPython's `_WorkItem.run`:

    outcome = execute(task, attempt, log)                   # run main; conclude how it ended
    recorded = record(task, worker, attempt, outcome, log)  # one fenced store write, retried while the database is away
    notify(task, attempt, recorded, log)                    # the `callback` hook, once per recorded final outcome

It is total: whatever raises after the claim (the log file, a hook, a signal receiver, a write
the database refuses for good) ends the attempt with a recorded outcome naming the cause, or
hands it back to the queue, and the slot is freed. How an attempt ended is decided in one place
(`conclude`) as one `Ending`; every status it writes goes through the store's transition
table. Metrics hang off the signals it sends, which can never break it.

`run_attempt` runs it in a slot thread; `run_coroutine_attempt` runs it for an `async def main`
on the process's event loop, holding no thread while `main` awaits: the steps around `main`
(`AttemptRun`) are the same, sent off the loop because pymongo and files block.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymongo.errors import ConnectionFailure, PyMongoError

from .attempt import Attempt, running
from .errors import AsyncTaskError, TaskTimeout
from .executors import call_main
from .logs import opened, public_error
from .signals import attempt_ended, attempt_started, emit
from .status import FINISHED, Ending, TaskStatus
from .validation import check_result

if TYPE_CHECKING:
    from .task import AsyncTask
    from .worker import Worker

logger = logging.getLogger(__name__)

#: Runs a blocking call off the event loop and awaits it (`coroutines.EventLoop.blocking`).
Blocking = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, and what it leaves: a result, or an error text."""

    ending: Ending
    result: Any = None
    error: str | None = None
    exception: BaseException | None = None


def run_attempt(task: AsyncTask, worker: Worker, attempt: Attempt) -> None:
    """One attempt, in a slot thread: execute, record the outcome, notify the hook."""
    run = AttemptRun(task, worker, attempt)
    with running(attempt):
        try:
            run.finish(execute(task, attempt, run.begin(), worker.executors.main_executor()))
        except Exception as exc:  # noqa: BLE001 - after a claim, every failure ends as an outcome
            run.fail(exc)
        finally:
            run.close()


async def run_coroutine_attempt(task: AsyncTask, worker: Worker, attempt: Attempt, blocking: Blocking) -> None:
    """One attempt of an `async def main`, on this process's event loop: the same steps, with
    every database write and file operation sent off the loop through `blocking`."""
    run = AttemptRun(task, worker, attempt)
    with running(attempt):
        try:
            task_log = await blocking(run.begin)
            outcome = await execute_coroutine(task, attempt, task_log)
            await blocking(run.finish, outcome)
        except Exception as exc:  # noqa: BLE001 - after a claim, every failure ends as an outcome
            await blocking(run.fail, exc)
        finally:
            await blocking(run.close)


class AttemptRun:
    """What surrounds `main` in one attempt: `begin` (signal, progress, log file), `finish`
    (record, notify), `fail` (something outside `main` raised), `close` (log closed, slot and
    limits freed, signal). Shared by the thread and the coroutine paths."""

    def __init__(self, task: AsyncTask, worker: Worker, attempt: Attempt) -> None:
        self.task, self.worker, self.attempt = task, worker, attempt
        self.began = time.monotonic()
        self.ending = Ending.LOST
        self.log: logging.Logger = logger
        self._files = contextlib.ExitStack()
        self._freed = False

    def begin(self) -> logging.Logger:
        task, attempt = self.task, self.attempt
        emit(attempt_started, task, attempt=attempt)
        if attempt.reporter is None:
            attempt.reporter = functools.partial(self.worker.backend.progress, attempt.task_id, attempt.number)
        self.log = self._files.enter_context(opened(
            task.get_logger(attempt.task_id), task.logger_dir, attempt.task_id, attempt.trace_id
        ))
        self._files.enter_context(self.worker.backend.log_shipping(self.log, attempt))
        return self.log

    def finish(self, outcome: Outcome) -> None:
        recorded = record(self.task, self.worker, self.attempt, outcome, self.log)
        self.ending = recorded.ending if recorded else outcome.ending
        self.free()  # before the hook: a slow `callback` must not hold the task's limits
        notify(self.task, self.attempt, recorded, self.log)

    def fail(self, exc: BaseException) -> None:
        self.ending = salvage(self.task, self.worker, self.attempt, exc)

    def close(self) -> None:
        task, attempt = self.task, self.attempt
        try:
            self._files.close()
        except Exception:
            logger.exception("task %s: closing its log failed", attempt.task_id)
        self.free()
        emit(attempt_ended, task, attempt=attempt, ending=self.ending, seconds=time.monotonic() - self.began)

    def free(self) -> None:
        """Give back the attempt's slot and limits, once (right after the outcome is recorded)."""
        if not self._freed:
            self._freed = True
            free(self.worker, self.attempt)


def free(worker: Worker, attempt: Attempt) -> None:
    """The attempt is over here: no more heartbeats for it, its concurrency slot given back."""
    worker.let_go(attempt)
    try:
        worker.backend.free(attempt)
    except Exception:
        logger.warning("task %s: its concurrency slot could not be freed now (the sweep will)",
                       attempt.task_id, exc_info=True)


def salvage(task: AsyncTask, worker: Worker, attempt: Attempt, exc: BaseException) -> Ending:
    """Something raised outside `main` after the claim: fail the attempt naming the cause, or
    (if even that cannot be written) hand it back to the queue."""
    logger.error("task %s: the attempt broke outside main", attempt.task_id, exc_info=exc)
    failure = Outcome(Ending.FAILED, error=f"asynctask could not finish the attempt: {error_text(exc)}")
    try:
        recorded = record(task, worker, attempt, failure, logger)
    except Exception:
        logger.exception("task %s: not even its failure could be stored; releasing it", attempt.task_id)
        with contextlib.suppress(Exception):
            worker.backend.release(worker.owner, attempt)
        return Ending.RELEASED
    notify(task, attempt, recorded, logger)
    return recorded.ending if recorded else Ending.LOST


def refuse(task: AsyncTask, worker: Worker, attempt: Attempt, exc: BaseException) -> None:
    """The executor refused a claimed attempt: fail it naming why (the slot is freed by the caller)."""
    refused = Outcome(Ending.FAILED, error=f"the executor refused the task: {error_text(exc)}")
    try:
        record(task, worker, attempt, refused, logger)
    finally:
        free(worker, attempt)


def execute(task: AsyncTask, attempt: Attempt, task_log: logging.Logger, remote: Executor | None) -> Outcome:
    """Run `main` in this thread, or on the `remote` executor it is sent to; conclude how it ended."""
    try:
        if remote is None:
            result = task.main(logger=task_log, **attempt.params)
        else:
            result = execute_remote(task, remote, attempt)
        check_result(result)
    except BaseException as exc:  # noqa: BLE001 - any failure of main is the attempt's outcome
        return conclude(task, attempt, error=exc)
    return conclude(task, attempt, result=result)


async def execute_coroutine(task: AsyncTask, attempt: Attempt, task_log: logging.Logger) -> Outcome:
    """Await `main` on the event loop; a stop (cancel, timeout, shutdown) cancels it at its
    current `await`, and the ending follows the stop whatever `main` does with that."""
    loop = asyncio.get_running_loop()
    running = loop.create_task(task.main(logger=task_log, **attempt.params))
    attempt.on_stop = lambda: loop.call_soon_threadsafe(running.cancel)
    if attempt.stop_reason is not None:
        running.cancel()
    try:
        result = await running
        check_result(result)
    except BaseException as exc:  # noqa: BLE001 - any failure of main is the attempt's outcome
        return conclude(task, attempt, error=exc)
    finally:
        attempt.on_stop = None
    return conclude(task, attempt, result=result)


def execute_remote(task: AsyncTask, remote: Executor, attempt: Attempt) -> Any:
    """Send `main` to another executor and wait for it, a stop, or the timeout."""
    future = remote.submit(call_main, task, attempt)
    future.add_done_callback(lambda _: attempt.wake.set())
    attempt.wake.wait(task.task_timeout.total_seconds())
    if not future.done() or future.cancelled():
        future.cancel()  # ends the child on a killable pool
        if attempt.stop_reason is None:
            attempt.stop("timeout")
        raise CancelledError(f"attempt stopped: {attempt.stop_reason}")
    error = future.exception()
    if error is not None:
        attempt.pending_progress = getattr(error, "asynctask_progress", None)
        raise error
    done = future.result()
    attempt.pending_progress = done.progress
    return done.result


def conclude(task: AsyncTask, attempt: Attempt, *, result: Any = None, error: BaseException | None = None) -> Outcome:
    """How the attempt ended: the one place that decides it."""
    if attempt.stop_reason == "cancelled":
        return Outcome(Ending.CANCELLED, error="cancelled")
    if attempt.stop_reason == "timeout":
        return Outcome(Ending.TIMED_OUT, error=timeout_error(task))
    if attempt.stop_reason == "shutdown":
        return Outcome(Ending.RELEASED)
    if attempt.stop_reason == "lost":
        return Outcome(Ending.LOST)
    if error is None:
        return Outcome(Ending.SUCCEEDED, result=result)
    text = error_text(error)
    if task.retry_policy.applies(error, attempt.retries):
        return Outcome(Ending.RETRY, error=text, exception=error)
    return Outcome(Ending.FAILED, error=text, exception=error)


def record(task: AsyncTask, worker: Worker, attempt: Attempt, outcome: Outcome,
           task_log: logging.Logger) -> Outcome | None:
    """Write the outcome, fenced by the attempt number; the outcome as written, or None.

    A database that is away is tried again with backoff; if it stays away, the task is no
    longer heartbeated and becomes an orphan that runs again, never `running` for ever. A
    write the database refuses for good (a document over 16 MiB) records `failed` instead,
    naming the cause. A retry or release that finds a cancel request ends `cancelled`.
    """
    attempt.recording = True
    substituted = False
    pauses = iter((*worker.backend.record_backoff, None))
    while True:
        try:
            status = write(task, worker, attempt, outcome)
            break
        except Exception as exc:
            if not _transient(exc):
                if substituted:
                    raise  # even a plain failure cannot be written: the caller releases the task
                logger.error("task %s: the database refused its outcome: %s", attempt.task_id, exc)
                outcome = Outcome(Ending.FAILED, error=f"the outcome could not be stored: {error_text(exc)}")
                substituted = True
                continue
            pause = next(pauses)
            if pause is None:
                logger.error("could not record the outcome of task %s (%s); it will run again",
                             attempt.task_id, exc)
                worker.let_go(attempt)
                return None
            logger.warning("recording task %s failed (%s); trying again in %gs", attempt.task_id, exc, pause)
            time.sleep(pause)
    worker.let_go(attempt)
    if status is None:
        if outcome.ending is not Ending.LOST:
            task_log.warning("result discarded: this attempt is no longer the task's current one")
        if outcome.ending is Ending.TIMED_OUT and attempt.final_status is not None:
            return outcome  # the worker's loop recorded the timeout on the attempt's behalf
        return None
    if status == TaskStatus.CANCELLED.value and outcome.ending is not Ending.CANCELLED:
        outcome = Outcome(Ending.CANCELLED, error="cancelled")
    if status in FINISHED:
        attempt.final_status = status
    if outcome.ending is Ending.RETRY:
        assert outcome.error is not None
        task_log.warning("attempt failed; retry %d of %d in %.3gs: %s", attempt.retries + 1,
                         task.retry_policy.max_retries, task.retry_policy.wait(attempt.retries).total_seconds(),
                         outcome.error.splitlines()[-1])
    elif outcome.ending is Ending.SUCCEEDED:
        task_log.info("task succeeded")
    elif outcome.ending is not Ending.RELEASED:
        task_log.error("task %s: %s", status, outcome.error)
    return outcome


def write(task: AsyncTask, worker: Worker, attempt: Attempt, outcome: Outcome) -> str | None:
    """The write that records `outcome`: the status written, None when superseded."""
    backend, ending = worker.backend, outcome.ending
    if ending is Ending.LOST:
        return None
    if ending is Ending.RETRY:
        wait = task.retry_policy.wait(attempt.retries)
        assert outcome.error is not None
        status = backend.retry_later(attempt, error=outcome.error, wait=wait)
        if status == TaskStatus.QUEUED.value:
            worker.wake_at(time.monotonic() + wait.total_seconds())
        return status
    if ending is Ending.RELEASED:
        return backend.release(worker.owner, attempt)
    written = backend.finish(attempt, ending.status, result=outcome.result, error=outcome.error,
                             progress=attempt.pending_progress)
    return ending.status.value if written else None


def _transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed when tried again (the database away, a failover)."""
    if isinstance(exc, ConnectionFailure) or getattr(exc, "transient", False):
        return True
    return isinstance(exc, PyMongoError) and exc.has_error_label("RetryableWriteError")


def notify(task: AsyncTask, attempt: Attempt, recorded: Outcome | None, task_log: logging.Logger) -> None:
    """Call the `callback` hook once for a recorded final outcome; an error it raises is logged."""
    if recorded is None or recorded.ending.status.value not in FINISHED:
        return
    future: Future = Future()
    future.set_running_or_notify_cancel()
    if recorded.ending is Ending.SUCCEEDED:
        future.set_result(recorded.result)
    else:
        future.set_exception(recorded.exception or _stopped(recorded))
    try:
        task.callback(future, attempt.task_id)
    except Exception:
        logger.exception("the callback hook of task %s raised", attempt.task_id)
        task_log.exception("the callback hook raised")


def time_out(task: AsyncTask, worker: Worker, attempt: Attempt) -> None:
    """Fail an attempt past its deadline (from the worker's loop); its late result is fenced out."""
    if worker.backend.finish(attempt, TaskStatus.FAILED, error=timeout_error(task)):
        attempt.final_status = TaskStatus.FAILED.value
        task.get_logger(attempt.task_id).error("task timed out after %s", task.task_timeout)
    attempt.stop("timeout")


def timeout_error(task: AsyncTask) -> str:
    return f"TaskTimeout: task ran longer than task_timeout ({task.task_timeout})"


def _stopped(outcome: Outcome) -> BaseException:
    """The exception a stopped attempt's future carries for the callback hook."""
    if outcome.ending is Ending.TIMED_OUT:
        return TaskTimeout(outcome.error or "task timed out")
    return CancelledError(outcome.error or "cancelled")


def error_text(exc: BaseException) -> str:
    """The error stored for a failed task: the user's frames, or one line for our own errors."""
    if isinstance(exc, AsyncTaskError):
        return "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return public_error(exc).strip()

