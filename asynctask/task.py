"""`AsyncTask`: the base class users subclass, and the task lifecycle in one place.

submit: validate -> claim (one atomic upsert) -> hand the attempt to a slot
attempt: start (queued -> running, fenced) -> main -> callback (running -> success/failed, fenced)
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import traceback
import uuid
import weakref
from concurrent.futures import CancelledError, Future
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import attempt as attempts
from . import logs, metrics
from .attempt import Attempt
from .errors import AsyncTaskError, InvalidParams, ShuttingDown, TaskTimeout
from .executors import Executors, call_main
from .recovery import Monitor
from .retry import RetryPolicy
from .status import FINISHED, TaskStatus
from .store import TaskStore, utcnow
from .validation import Signature, check_keys, check_result, check_task_id, duration, positive_int

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
#: How often a long-poll looks at the database for tasks other processes run.
POLL_INTERVAL = 0.05


class _ProcessState:
    """What exists once per process: the owner id, the monitor, and the attempts in flight."""

    def __init__(self, task: AsyncTask) -> None:
        self.pid = os.getpid()
        self.owner = f"{socket.gethostname()}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.monitor = Monitor(
            task._store, self.owner, task.heartbeat_interval.total_seconds(), task._time_out, task._recover
        )
        self.capacity = task._executors.capacity
        self.stopping = False
        self.in_flight: set[Attempt] = set()
        self.changed = threading.Condition()
        #: Notified whenever an attempt of this process ends, for long-polls.
        self.finished = threading.Condition()
        self.next_log_sweep = 0.0

    def add(self, attempt: Attempt) -> None:
        with self.changed:
            self.in_flight.add(attempt)

    def discard(self, attempt: Attempt) -> None:
        with self.changed:
            self.in_flight.discard(attempt)
            self.changed.notify_all()

    def free_slots(self) -> int:
        with self.changed:
            return 0 if self.stopping else self.capacity - len(self.in_flight)

    def stop(self, task_id: str, reason: str, number: int | None = None) -> None:
        """Ask this process's attempts of `task_id` (of attempt `number`, if given) to stop."""
        with self.changed:
            targets = [a for a in self.in_flight if a.task_id == task_id and number in (None, a.number)]
        for attempt in targets:
            attempt.stop(reason)

    def drain(self, timeout: float | None) -> set[Attempt]:
        """Wait until no attempt is in flight or `timeout` passes; return those left."""
        with self.changed:
            self.changed.wait_for(lambda: not self.in_flight, timeout)
            return set(self.in_flight)


#: Every instance in this process, for gunicorn's worker hooks.
_instances: weakref.WeakSet[AsyncTask] = weakref.WeakSet()


def start_all() -> None:
    """Start the background thread of every `AsyncTask` of this process (after a fork)."""
    for task in list(_instances):
        task.start()


def shutdown_all(grace: float | None = None) -> int:
    """Gracefully stop every `AsyncTask` of this process (gunicorn's worker exit hook).

    Returns how many attempts were still running when they were released.
    """
    return sum(task.shutdown(wait=True, grace=grace) for task in list(_instances))


class AsyncTask:
    """Turns `main` into a durable task: run on an executor, recorded in a collection.

    Subclass it and write `main(self, logger, **params)`; see CONTRACT section 1.

    Args:
        collection: a pymongo `Collection`, or one that behaves like it (`MemoryCollection`).
        logger_dir: folder for the per-task log files; created if missing.
        max_worker: how many tasks this process runs at once.
        executor: "threads", "processes", "dask://host:port", or any `concurrent.futures.Executor`.
        task_timeout: seconds or timedelta; a task running longer is failed.
        rerun_time_limit: seconds or timedelta after which a successful task runs again.
        outdate_time: the upstream name of `rerun_time_limit`.
        heartbeat_interval: seconds between heartbeats (and recovery sweeps) of this process.
        stale_after: seconds without heartbeat after which a task is orphaned (3 x interval).
        max_attempts: attempts an orphaned task gets before it fails with "worker lost".
        max_retries, retry_delay, retry_backoff, retry_on: retries of a task whose `main` raised.
        result_ttl: seconds or timedelta after which finished tasks and their logs are removed.
        api_token: bearer token the HTTP API requires (default `ASYNCTASK_API_TOKEN`).
        max_content_length: largest HTTP request body accepted, in bytes.
    """

    def __init__(
        self,
        collection: Any,
        logger_dir: str | os.PathLike[str],
        max_worker: int | None = None,
        executor: Any = None,
        task_timeout: int | float | timedelta = timedelta(hours=4),
        rerun_time_limit: int | float | timedelta | None = None,
        *,
        outdate_time: int | float | timedelta | None = None,
        heartbeat_interval: int | float | timedelta = 10,
        stale_after: int | float | timedelta | None = None,
        max_attempts: int = 3,
        max_retries: int = 0,
        retry_delay: float = 1.0,
        retry_backoff: float = 2.0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        result_ttl: int | float | timedelta | None = None,
        api_token: str | None = None,
        max_content_length: int = MiB,
    ) -> None:
        missing = [m for m in ("find_one", "find_one_and_update", "update_one") if not hasattr(collection, m)]
        if missing:
            raise TypeError(f"collection must behave like a pymongo Collection; it lacks {missing}")
        if not isinstance(logger_dir, (str, os.PathLike)):
            raise TypeError(f"logger_dir must be a path, not {type(logger_dir).__name__}")
        if rerun_time_limit is not None and outdate_time is not None:
            raise TypeError("give rerun_time_limit or its alias outdate_time, not both")
        self.task_timeout = duration("task_timeout", task_timeout)
        self.rerun_time_limit = duration(
            "rerun_time_limit", outdate_time if rerun_time_limit is None else rerun_time_limit, optional=True
        )
        self.heartbeat_interval = duration("heartbeat_interval", heartbeat_interval)
        self.stale_after = duration("stale_after", stale_after, optional=True) or 3 * self.heartbeat_interval
        self.max_attempts = positive_int("max_attempts", max_attempts)
        self.max_content_length = positive_int("max_content_length", max_content_length)
        self.retry = RetryPolicy.from_options(max_retries, retry_delay, retry_backoff, retry_on)
        self.result_ttl = duration("result_ttl", result_ttl, optional=True)
        api_token = os.environ.get("ASYNCTASK_API_TOKEN") or None if api_token is None else api_token
        if api_token is not None and (not isinstance(api_token, str) or not api_token):
            raise TypeError("api_token must be a non-empty string or None")
        self.api_token = api_token
        self._signature = Signature(self.main)
        self._executors = Executors(executor, max_worker, self._progress_from_child)
        self.collection = collection
        self._store = TaskStore(collection, self.result_ttl)
        self._state: _ProcessState | None = None
        self._state_lock = threading.Lock()
        self._closed = False
        self.logger_dir = Path(logger_dir)
        self.logger_dir.mkdir(parents=True, exist_ok=True)
        _instances.add(self)

    @property
    def outdate_time(self) -> timedelta | None:
        """The upstream name of `rerun_time_limit`."""
        return self.rerun_time_limit

    @property
    def name(self) -> str:
        """The task type's name, as metrics and the OpenAPI document show it."""
        return type(self).__name__

    # -- hooks a subclass may override ------------------------------------------------------

    def main(self, logger: logging.Logger, **params: Any) -> Any:
        """The work of the task; its return value is the result. Subclasses must override it."""
        raise NotImplementedError(f"{type(self).__name__} must define main(self, logger, ...)")

    def get_task_id(self, **params: Any) -> str:
        """The id of the task for `params`; equal ids for equal params avoid duplicates."""
        return uuid.uuid4().hex

    def retrieve(self, task_id: str) -> dict[str, Any] | None:
        """The public view of the task (CONTRACT section 3), or None if it is unknown."""
        return self._store.public(task_id)

    def get_logger(self, task_id: str) -> logging.Logger:
        """The task's logger, named `task_id`; its file is open while an attempt runs."""
        return logs.task_logger(task_id)

    def callback(self, future: Future, task_id: str) -> Any:
        """Record how `main` ended: success + result, or failed + error text; returns the result.

        A failure the retry policy covers is scheduled again instead, and an attempt stopped
        by a cancel ends `cancelled`.
        """
        current = attempts.current(task_id)
        number = current.number if current else None
        extra = {"progress": current.pending_progress} if current and current.pending_progress else {}
        task_log = self.get_logger(task_id)
        if current is not None and current.stop_reason == "cancelled":
            if self._store.finish(task_id, TaskStatus.CANCELLED, attempt=number, error="cancelled", extra=extra):
                _ended(current, TaskStatus.CANCELLED)
                task_log.info("task cancelled")
            return None
        try:
            result = future.result()
            check_result(result)
        except BaseException as exc:  # noqa: BLE001 - any failure of main fails the task
            error = _error_text(exc)
            if current is not None and current.stop_reason is None and self.retry.applies(exc, current.retries):
                self._schedule_retry(current, error)
                return None
            task_log.error("task failed: %s", error)
            if self._store.finish(task_id, TaskStatus.FAILED, attempt=number, error=error, extra=extra):
                _ended(current, TaskStatus.FAILED)
            return None
        if self._store.finish(task_id, TaskStatus.SUCCESS, attempt=number, result=result, extra=extra):
            _ended(current, TaskStatus.SUCCESS)
            task_log.info("task succeeded")
        else:
            task_log.warning("result discarded: this attempt is no longer the task's current one")
        return result

    # -- public API -------------------------------------------------------------------------

    def run(self, task_id: str = "", **params: Any) -> str:
        """Submit a task by the run rule (CONTRACT section 1) and return its id."""
        return self._submit(task_id, params)["task_id"]

    def cancel(self, task_id: str) -> str:
        """Cancel a task: a queued one at once, a running one as soon as its attempt stops.

        Returns "cancelled", or "running" while the stop is under way. Raises `TaskNotFound`,
        or `InvalidTransition` for a task that has finished.
        """
        status = self._store.request_cancel(check_task_id(task_id))
        if status == TaskStatus.CANCELLED.value:
            metrics.finished(self.name, status, None)
        elif self._state is not None:
            self._state.stop(task_id, "cancelled")
        return status

    def wait(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """The task's view as soon as it has finished, or after `timeout` seconds as it is then."""
        deadline = time.monotonic() + max(timeout, 0.0)
        finished = self._process().finished
        while True:
            view = self.retrieve(task_id)
            left = deadline - time.monotonic()
            if view is None or view.get("status") in FINISHED or left <= 0:
                return view
            with finished:
                # Woken at once by a task of this process; other processes' tasks are polled.
                finished.wait(min(left, POLL_INTERVAL))

    def list(self, status: str | None = None, limit: int = 50, skip: int = 0) -> dict[str, Any]:
        """Public views newest first: {"tasks": [...], "total": n, "counts": {status: n}}."""
        if status is not None:
            status = TaskStatus(status).value
        return self._store.list(status, limit, skip)

    def update_task(self, task_id: str, data: dict[str, Any]) -> None:
        """Upsert fields of the task's document and stamp `update_time`."""
        check_task_id(task_id)
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, not {type(data).__name__}")
        check_keys(data, "data")
        self._store.update(task_id, data)

    def app(self, endpoint: str = "/api") -> Any:
        """A Flask app serving this task at `endpoint` (CONTRACT section 4)."""
        from .web import create_app

        return create_app(self, endpoint)

    def blueprint(self, endpoint: str = "/api") -> Any:
        """A Flask blueprint of this task's routes, for an app that serves several task types."""
        from .web import create_blueprint

        return create_blueprint(self, endpoint)

    def init_app(self, app: Any, endpoint: str = "/api") -> None:
        """Add this task's routes at `endpoint` (and /ping, /healthz, ...) to a Flask app."""
        from .web import init_app

        init_app(app, self, endpoint)

    def start(self) -> None:
        """Start this process's heartbeat and recovery thread now rather than on first use."""
        if not self._closed:
            self._process().monitor.start()

    def shutdown(self, wait: bool = True, grace: float | None = None) -> int:
        """Stop the executor and the background thread of this process.

        With `grace` (seconds), take no new work, give running attempts that long, then hand
        what is left back to the database (queued, no owner) so another process takes it at
        once. Without it, `wait` says whether to wait for every attempt to finish. Returns how
        many attempts were still running when released (their `main` may still be running in
        a thread: a process that exits should then not wait for it).
        """
        with self._state_lock:
            state, self._state, self._closed = self._state, None, True
        if state is None:
            self._executors.shutdown(wait=wait)
            return 0
        left: set[Attempt] = set()
        with state.changed:
            state.stopping = True
        if grace is None:
            self._executors.shutdown(wait=wait)
        else:
            self._executors.slots().shutdown(wait=False, cancel_futures=True)
            left = state.drain(timeout=max(grace, 0))
            state.monitor.stop()
            released = self._store.release(state.owner)
            for attempt in left:
                attempt.stop("shutdown")
            if released:
                logger.info("shutdown: released %d unfinished task(s) of %s", released, state.owner)
            self._executors.shutdown(wait=False)
        state.monitor.stop()
        return len(left)

    # -- the lifecycle ----------------------------------------------------------------------

    def _submit(self, task_id: str, params: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        """Validate, then claim by the run rule; returns the task's document as the claim left it."""
        if task_id:
            check_task_id(task_id)
            if params:
                raise InvalidParams("task_id re-runs a stored task with its stored params; give no other params")
            params = self._store.stored_params(task_id)
        else:
            if not isinstance(task_id, str):
                check_task_id(task_id)
            self._signature.check(params)
            try:
                task_id = self.get_task_id(**params)
            except (TypeError, ValueError) as exc:
                if isinstance(exc, AsyncTaskError):
                    raise
                raise InvalidParams(f"get_task_id refused the params: {exc}") from exc
            check_task_id(task_id)
        if self._closed:
            raise ShuttingDown("this task service is shut down and takes no new task")
        state = self._process()
        doc, claimed = self._store.claim(
            task_id, params, owner=state.owner, stale_after=self.stale_after,
            rerun_after=self.rerun_time_limit, trace_id=trace_id or uuid.uuid4().hex,
        )
        if claimed:
            metrics.submitted(self.name)
            self._dispatch(state, _attempt_of(doc))
        return doc

    def _process(self) -> _ProcessState:
        state = self._state
        if state is None or state.pid != os.getpid():
            with self._state_lock:
                if self._state is None or self._state.pid != os.getpid():
                    self._state = _ProcessState(self)
                state = self._state
        return state

    def _dispatch(self, state: _ProcessState, attempt: Attempt) -> None:
        """Hand a claimed attempt to a slot; the slot is free again once it ends or is dropped."""
        state.monitor.start()
        state.add(attempt)
        future = self._executors.slots().submit(self._run_attempt, state, attempt)
        future.add_done_callback(lambda _: state.discard(attempt))

    def _run_attempt(self, state: _ProcessState, attempt: Attempt) -> None:
        """One attempt, start to end, in a slot thread."""
        deadline = utcnow() + self.task_timeout
        if not self._store.start(attempt.task_id, attempt.number, state.owner, deadline):
            return
        metrics.started(self.name)
        began = time.monotonic()
        state.monitor.track(attempt, deadline)
        attempt.reporter = functools.partial(self._store.progress, attempt.task_id, attempt.number)
        try:
            with attempts.running(attempt), logs.opened(
                self.get_logger(attempt.task_id), self.logger_dir, attempt.task_id, attempt.trace_id
            ) as task_log:
                self._callback_safely(self._call(attempt, task_log), attempt)
        finally:
            state.monitor.untrack(attempt)
            if attempt.outcome is not None:
                metrics.finished(self.name, attempt.outcome, time.monotonic() - began)
            else:
                metrics.stopped(self.name)
            with state.finished:
                state.finished.notify_all()

    def _call(self, attempt: Attempt, task_log: logging.Logger) -> Future:
        """Run `main` in this thread or on the remote executor; a done future either way."""
        remote = self._executors.remote()
        if remote is None:
            try:
                return _done(result=self.main(logger=task_log, **attempt.params))
            except BaseException as exc:  # noqa: BLE001 - recorded as the task's error
                return _done(exception=exc)
        future = remote.submit(call_main, self, attempt)
        future.add_done_callback(lambda _: attempt.wake.set())
        attempt.wake.wait(self.task_timeout.total_seconds())
        if future.done() and not future.cancelled():
            return _outcome(future, attempt)
        future.cancel()  # ends the child on a killable pool
        if attempt.stop_reason in (None, "timeout"):
            return _done(exception=TaskTimeout(f"task ran longer than task_timeout ({self.task_timeout})"))
        return _done(exception=CancelledError(f"attempt stopped: {attempt.stop_reason}"))

    def _callback_safely(self, future: Future, attempt: Attempt) -> None:
        """Call the `callback` hook; if it raises, log it and fail the attempt instead."""
        try:
            self.callback(future, attempt.task_id)
        except Exception as exc:
            logger.exception("callback of task %s failed", attempt.task_id)
            self._store.finish(
                attempt.task_id, TaskStatus.FAILED, attempt=attempt.number,
                error=f"recording the task's outcome failed: {type(exc).__name__}: {exc}",
            )

    def _schedule_retry(self, attempt: Attempt, error: str) -> None:
        """Queue a failed attempt again for later; any process's sweep takes it when due."""
        wait = self.retry.wait(attempt.retries)
        if self._store.schedule_retry(
            attempt.task_id, attempt.number, retries=attempt.retries + 1, error=error, at=utcnow() + wait
        ):
            self.get_logger(attempt.task_id).warning(
                "attempt failed; retry %d of %d in %.3gs: %s",
                attempt.retries + 1, self.retry.max_retries, wait.total_seconds(), error.splitlines()[-1],
            )
            self._process().monitor.sweep_at(time.monotonic() + wait.total_seconds())

    def _time_out(self, attempt: Attempt) -> None:
        """Fail an attempt past its deadline; its late result is then fenced out."""
        error = f"TaskTimeout: task ran longer than task_timeout ({self.task_timeout})"
        if self._store.finish(attempt.task_id, TaskStatus.FAILED, attempt=attempt.number, error=error):
            _ended(attempt, TaskStatus.FAILED)
            self.get_logger(attempt.task_id).error("task timed out after %s", self.task_timeout)
        attempt.stop("timeout")

    def _progress_from_child(self, task_id: str, number: int, percent: float, message: str | None) -> None:
        """Progress a child process reported (already throttled there)."""
        self._store.progress(task_id, number, percent, message)

    def _recover(self) -> None:
        """The sweep: stop attempts cancelled elsewhere, fail lost orphans, take over the rest."""
        state = self._process()
        for task_id, number in self._store.cancel_requests(state.owner):
            state.stop(task_id, "cancelled", number)
        lost = self._store.fail_lost(self.stale_after, self.max_attempts)
        if lost:
            logger.warning("failed %d orphaned task(s) after %d attempts", lost, self.max_attempts)
            for _ in range(lost):
                metrics.finished(self.name, TaskStatus.FAILED.value, None)
        while state.free_slots() > 0:
            doc = self._store.claim_orphan(state.owner, self.stale_after, self.max_attempts)
            if doc is None:
                break
            logger.info("took over task %s (attempt %d)", doc["task_id"], doc["attempts"])
            self._dispatch(state, _attempt_of(doc))
        if self.result_ttl is not None:
            self._expire_logs(state)

    def _expire_logs(self, state: _ProcessState) -> None:
        """Remove log files of tasks the TTL index has removed (checked at most once a minute)."""
        now = time.monotonic()
        if now < state.next_log_sweep:
            return
        assert self.result_ttl is not None
        state.next_log_sweep = now + min(60.0, self.result_ttl.total_seconds())
        cutoff = time.time() - self.result_ttl.total_seconds()
        old = {
            task_id: paths for task_id, paths in logs.log_files(self.logger_dir).items()
            if all(_modified(path) < cutoff for path in paths)
        }
        ids = list(old)
        for start in range(0, len(ids), 500):
            batch = ids[start:start + 500]
            for task_id in set(batch) - self._store.existing(batch):
                for path in old[task_id]:
                    path.unlink(missing_ok=True)

    def __getstate__(self) -> dict[str, Any]:
        """What a child process needs to run `main`: no collection, pool or thread."""
        state = self.__dict__.copy()
        for name in ("collection", "_store", "_executors", "_state", "_state_lock"):
            state.pop(name, None)
        return state


def _modified(path: Path) -> float:
    """When a file was last written; a file another process just removed counts as new."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _ended(attempt: Attempt | None, status: TaskStatus) -> None:
    """Note the final status an attempt wrote (for metrics)."""
    if attempt is not None and attempt.outcome is None:
        attempt.outcome = status.value


def _attempt_of(doc: dict[str, Any]) -> Attempt:
    """The attempt a claimed document describes."""
    return Attempt(
        doc["task_id"], doc["attempts"], dict(doc.get("params") or {}),
        trace_id=doc.get("trace_id"), retries=doc.get("retries") or 0,
    )


def _outcome(future: Future, attempt: Attempt) -> Future:
    """`main`'s result from `call_main`; its last progress is kept to be written with the outcome."""
    error = future.exception()
    if error is not None:
        attempt.pending_progress = getattr(error, "asynctask_progress", None)
        return future
    outcome = future.result()
    attempt.pending_progress = outcome.progress
    return _done(result=outcome.result)


def _done(*, result: Any = None, exception: BaseException | None = None) -> Future:
    future: Future = Future()
    future.set_running_or_notify_cancel()
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
    return future


def _error_text(exc: BaseException) -> str:
    """The error stored for a failed task: a traceback, or one line for our own errors."""
    if isinstance(exc, AsyncTaskError):
        return "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return logs.format_exception(exc).strip()
