"""`AsyncTask`: the base class users subclass, its options, and the way into the queue.

submit (`_submit`): validate -> one atomic write by the run rule: `queued`, or `running` at
        once when this process has a free slot -> wake the workers
worker (`worker.Worker`): claim the next due task (`backend.StoreBackend.claim`, one atomic `find_one_and_update`)
        -> `lifecycle.run_attempt`: outcome = execute -> record(outcome) -> notify(callback hook)
recovery (`_sweep`, from each worker's loop): orphans back to the queue, stuck slots freed
"""
from __future__ import annotations

import builtins
import inspect
import logging
import os
import random
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from .attempt import current as current_attempt
from .backend import Backend, StoreBackend, attempt_of
from .engine import Engine
from .errors import AsyncTaskError, InvalidParams, ShuttingDown
from .executors import Executors
from .instances import forget as forget_instance
from .instances import register as register_instance
from .lifecycle import error_text
from .limits import Limits, class_option, explaining
from .logs import task_logger
from .longpoll import LongPolls
from .process import PerProcess
from .retry import RetryPolicy
from .schedules import Schedule, ScheduleBook
from .signals import claim_held, emit, task_finished, task_submitted
from .status import FINISHED, TaskStatus
from .store.registry import ConcurrencySlots, Workers
from .store.tasks import TaskStore
from .validation import (
    Signature,
    check_keys,
    check_result,
    check_task_id,
    duration,
    positive_int,
    queue_options,
)
from .worker import Worker

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
_UNSET: Any = object()

class AsyncTask:
    """Turns `main` into a durable task: stored in a collection (the queue), run by workers.

    Subclass it and write `main(self, logger, **params)`. Options may be given to the
    constructor or declared as class attributes (`class Resize(AsyncTask): task_timeout = 60`).

    Args:
        collection: a pymongo `Collection`, or one that behaves like it (`MemoryCollection`).
        logger_dir: folder for the per-task log files; created if missing.
        max_worker: how many tasks this process runs at once (its slots).
        executor: "threads", "processes", "dask://host:port", or any `concurrent.futures.Executor`.
        task_timeout: seconds or timedelta; a task running longer is failed.
        rerun_time_limit: seconds or timedelta after which a successful task runs again.
        outdate_time: the original tool's name of `rerun_time_limit`.
        worker: whether this process runs tasks (default True; `ASYNCTASK_NO_WORKER=1` turns it
            off). False makes a process that only accepts and serves tasks.
        poll_interval: seconds between claims of an idle worker.
        max_concurrency: at most this many tasks of this type run at once across every process.
        rate_limit: "N/period[ burst=B]" ("5/60s", "600/m", "100/h"): at most N tasks of this type
            start in any window of the period across every process (B more after a quiet spell).
        rate_limit_key: the param whose value (or a function of the params whose answer; None:
            no limit) the rate limit applies to separately.
        concurrency_key, max_concurrency_per_key: at most that many tasks with the same key (a
            param's value, or a function of the params) run at once across every process.
        heartbeat_interval: seconds between heartbeats (and recovery sweeps) of this process.
        stale_after: seconds a worker may stay silent before its tasks are orphaned (default
            3 x interval, at least 2 x interval); timed by the sweeping process's own clock.
        max_attempts: attempts an orphaned task gets before it fails with "worker lost".
        max_retries, retry_delay, retry_backoff, retry_on: retries of a task whose `main` raised.
        retry_max_delay: the longest wait before a retry (default 1 h); waits get up to 10% jitter.
        result_ttl: seconds or timedelta after which finished tasks and their logs are removed.
        api_token: bearer token the HTTP API requires (default `ASYNCTASK_API_TOKEN`).
        worker_token: bearer token of remote workers (default `ASYNCTASK_WORKER_TOKEN`); without
            it the routes remote workers use answer 404.
        max_content_length: largest HTTP request body accepted, in bytes.
    """

    #: The task type's name: stored on every document; a type sees only its own tasks.
    name: ClassVar[str] = "AsyncTask"
    max_worker: int | None = None
    executor: Any = None
    task_timeout: Any = timedelta(hours=4)
    rerun_time_limit: Any = None
    poll_interval: Any = 1.0
    max_concurrency: int | None = None
    rate_limit: Any = None
    rate_limit_key: Any = None
    concurrency_key: Any = None
    max_concurrency_per_key: int | None = None
    heartbeat_interval: Any = 10
    stale_after: Any = None
    max_attempts: int = 3
    max_retries: int = 0
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    retry_on: Any = (Exception,)
    retry_max_delay: Any = 3600.0
    result_ttl: Any = None
    api_token: str | None = None
    worker_token: str | None = None
    max_content_length: int = MiB
    #: The type's schedules (cron or interval): stored on first use, managed as `api.schedules`.
    schedules: ClassVar[Sequence[Schedule]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        if not isinstance(cls.name, str) or not cls.name:
            raise TypeError(f"{cls.__qualname__}.name must be a non-empty string")

    def __init__(
        self,
        collection: Any,
        logger_dir: str | os.PathLike[str],
        max_worker: int | None = _UNSET,
        executor: Any = _UNSET,
        task_timeout: int | float | timedelta = _UNSET,
        rerun_time_limit: int | float | timedelta | None = _UNSET,
        *,
        outdate_time: int | float | timedelta | None = None,
        worker: bool | None = None,
        poll_interval: int | float | timedelta = _UNSET,
        max_concurrency: int | None = _UNSET,
        rate_limit: str | None = _UNSET,
        rate_limit_key: str | Callable[[dict[str, Any]], str | None] | None = _UNSET,
        concurrency_key: str | Callable[[dict[str, Any]], str | None] | None = _UNSET,
        max_concurrency_per_key: int | None = _UNSET,
        heartbeat_interval: int | float | timedelta = _UNSET,
        stale_after: int | float | timedelta | None = _UNSET,
        max_attempts: int = _UNSET,
        max_retries: int = _UNSET,
        retry_delay: float = _UNSET,
        retry_backoff: float = _UNSET,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = _UNSET,
        retry_max_delay: float | timedelta = _UNSET,
        result_ttl: int | float | timedelta | None = _UNSET,
        api_token: str | None = _UNSET,
        worker_token: str | None = _UNSET,
        max_content_length: int = _UNSET,
    ) -> None:
        def option(name: str, given: Any) -> Any:
            return getattr(type(self), name) if given is _UNSET else given

        missing = [m for m in ("find_one", "find_one_and_update", "update_one") if not hasattr(collection, m)]
        if missing:
            raise TypeError(f"collection must behave like a pymongo Collection; it lacks {missing}")
        if not isinstance(logger_dir, (str, os.PathLike)):
            raise TypeError(f"logger_dir must be a path, not {type(logger_dir).__name__}")
        rerun_time_limit = option("rerun_time_limit", rerun_time_limit)
        if rerun_time_limit is not None and outdate_time is not None:
            raise TypeError("give rerun_time_limit or its alias outdate_time, not both")
        self.task_timeout: timedelta = duration("task_timeout", option("task_timeout", task_timeout))
        self.rerun_time_limit: timedelta | None = duration(
            "rerun_time_limit", outdate_time if rerun_time_limit is None else rerun_time_limit, optional=True
        )
        self.poll_interval: timedelta = duration("poll_interval", option("poll_interval", poll_interval))
        self.heartbeat_interval: timedelta = duration("heartbeat_interval",
                                                      option("heartbeat_interval", heartbeat_interval))
        self.stale_after: timedelta = (
            duration("stale_after", option("stale_after", stale_after), optional=True) or 3 * self.heartbeat_interval
        )
        if self.stale_after < 2 * self.heartbeat_interval:
            raise ValueError(
                f"stale_after ({self.stale_after.total_seconds():g}s) must be at least twice heartbeat_interval "
                f"({self.heartbeat_interval.total_seconds():g}s): a live worker would look silent between two beats"
            )
        self.max_attempts = positive_int("max_attempts", option("max_attempts", max_attempts))
        limit = option("max_concurrency", max_concurrency)
        self.max_concurrency = None if limit is None else positive_int("max_concurrency", limit)
        self.max_content_length = positive_int("max_content_length", option("max_content_length", max_content_length))
        self.retry_policy = RetryPolicy.from_options(
            option("max_retries", max_retries), option("retry_delay", retry_delay),
            option("retry_backoff", retry_backoff), option("retry_on", retry_on),
            option("retry_max_delay", retry_max_delay),
        )
        self.result_ttl: timedelta | None = duration("result_ttl", option("result_ttl", result_ttl), optional=True)
        token = option("api_token", api_token)
        token = (os.environ.get("ASYNCTASK_API_TOKEN") or None) if token is None else token
        if token is not None and (not isinstance(token, str) or not token):
            raise TypeError("api_token must be a non-empty string or None")
        self.api_token = token
        token = option("worker_token", worker_token)
        token = (os.environ.get("ASYNCTASK_WORKER_TOKEN") or None) if token is None else token
        if token is not None and (not isinstance(token, str) or not token):
            raise TypeError("worker_token must be a non-empty string or None")
        if token is not None and token == self.api_token:
            raise ValueError("worker_token must differ from api_token: neither may open the other's routes")
        self.worker_token = token
        if worker is None:
            worker = os.environ.get("ASYNCTASK_NO_WORKER", "") in ("", "0")
        if not isinstance(worker, bool):
            raise TypeError(f"worker must be True or False, not {worker!r}")
        self.worker = worker
        self._signature = Signature(self.main)
        for hook in ("get_task_id", "retrieve", "callback"):
            if inspect.iscoroutinefunction(getattr(self, hook)):
                raise TypeError(f"{hook} must be a plain function, not async def (only main may be a coroutine)")
        self._executors = Executors(option("executor", executor), option("max_worker", max_worker),
                                    self._progress_from_child)
        self.collection = collection
        self.logger_dir = Path(logger_dir)
        self._store = TaskStore(collection, self.name, self.result_ttl)
        self._workers = Workers(collection)
        self._limit = None if self.max_concurrency is None else ConcurrencySlots(
            collection, self.name, self.max_concurrency
        )
        self._limits = Limits.configure(
            self._store, self._signature, rate_limit=option("rate_limit", rate_limit),
            rate_limit_key=class_option(type(self), self, "rate_limit_key") if rate_limit_key is _UNSET
            else rate_limit_key,
            concurrency_key=class_option(type(self), self, "concurrency_key") if concurrency_key is _UNSET
            else concurrency_key,
            max_concurrency_per_key=option("max_concurrency_per_key", max_concurrency_per_key),
            on_held=lambda reason: emit(claim_held, self, reason=reason), wake=self._wake, wake_at=self._wake_at,
        )
        self.rate_limit = None if self._limits is None else self._limits.rate
        self.max_concurrency_per_key = None if self._limits is None else self._limits.per_key
        self._store.explain = explaining(self._limits, self._limit)
        self._backend = StoreBackend(
            self._store, self._workers, self._limit, stale_after=self.stale_after.total_seconds(),
            heartbeat_interval=self.heartbeat_interval.total_seconds(), max_attempts=self.max_attempts,
            on_finished=lambda status, count: emit(task_finished, self, status=status, count=count),
            on_requeued=self._wake, logger_dir=self.logger_dir, result_ttl=self.result_ttl, limits=self._limits,
        )
        self._long_polls = LongPolls(self._store.finished_among)
        #: What runs this type, for the web layer, the worker command and metrics.
        self.asynctask_engine = Engine(store=self._store, backend=self._backend, workers=self._workers,
                                       submit=self._submit, runtime=self._runtime, start_worker=self._start_worker)
        #: The backend of a remote worker (`asynctask worker --url`), instead of the database.
        self._remote: Backend | None = None
        self._worker: PerProcess[Worker] = PerProcess(
            lambda: Worker(self, self._remote or self._backend, self._executors, claiming=self.worker,
                           sweeping=self.worker_token is not None, on_end=self._long_polls.ended)
        )
        self._closed = False
        self.schedules = ScheduleBook(self, type(self).schedules)  # type: ignore[misc,assignment]
        self.logger_dir.mkdir(parents=True, exist_ok=True)
        register_instance(self)

    @property
    def outdate_time(self) -> timedelta | None:
        """The original tool's name of `rerun_time_limit`."""
        return self.rerun_time_limit

    # -- hooks a subclass may override ------------------------------------------------------

    def main(self, logger: logging.Logger, **params: Any) -> Any:
        """The work of the task; its return value is the result. Subclasses must override it."""
        raise NotImplementedError(f"{type(self).__name__} must define main(self, logger, ...)")

    def get_task_id(self, **params: Any) -> str:
        """The id of the task for `params`; equal ids for equal params avoid duplicates."""
        return uuid.uuid4().hex

    def retrieve(self, task_id: str) -> dict[str, Any] | None:
        """The public view of the task, or None if no task of this type has that id; an invalid
        id is an `InvalidTaskId` (a `ValueError`), refused before it reaches the database."""
        return self._store.public(check_task_id(task_id))

    def get_logger(self, task_id: str) -> logging.Logger:
        """The task's logger, named `task_id`; its file is open while an attempt runs."""
        return task_logger(task_id)

    def callback(self, future: Future, task_id: str) -> Any:
        """Notified when `main` is done, with a done future; returns the result (None on failure).

        The lifecycle records each attempt's outcome before it calls this hook, so an override
        need not call `super()`. Called by hand for a task no attempt of this process runs (as
        the original tool's users did), it records that outcome, creating the document if needed.
        """
        error = future.exception() if not future.cancelled() else CancelledError()
        if current_attempt(task_id) is not None:
            return None if error is not None else future.result()
        check_task_id(task_id)  # called by hand: nothing is written under an invalid id
        if error is None:
            result = future.result()
            try:
                check_result(result)
            except AsyncTaskError as exc:
                error = exc
            else:
                self._store.record(task_id, TaskStatus.SUCCESS, result=result)
                return result
        self._store.record(task_id, TaskStatus.FAILED, error=error_text(error))
        return None

    # -- public API -------------------------------------------------------------------------

    def run(self, task_id: str = "", **params: Any) -> str:
        """Submit a task by the run rule and return its id: with `task_id`, re-run that stored
        task with its stored params; else `task_id = get_task_id(**params)`."""
        if task_id == "":
            task_id = None  # type: ignore[assignment]
        elif not isinstance(task_id, str):
            check_task_id(task_id)
        return self._submit(params, task_id=task_id)["task_id"]

    def submit(
        self,
        params: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
    ) -> str:
        """`run` with queue options: `priority` (-100..100, higher first), and a `delay` (seconds
        or timedelta) or `run_at` (an aware datetime) before which the task does not start."""
        if params is not None and not isinstance(params, dict):
            raise InvalidParams(f"params must be a dict, not {type(params).__name__}")
        return self._submit(dict(params or {}), task_id=task_id, priority=priority, delay=delay,
                            run_at=run_at)["task_id"]

    def cancel(self, task_id: str) -> str:
        """Cancel a task: a queued one at once, a running one as soon as its attempt stops.

        Returns "cancelled", or "running" while the stop is under way. Raises `TaskNotFound`,
        or `InvalidTransition` for a task that has finished.
        """
        status = self._store.request_cancel(check_task_id(task_id))
        if status == TaskStatus.CANCELLED.value:
            emit(task_finished, self, status=status)
        elif (worker := self._worker.peek()) is not None:
            worker.stop_attempts(task_id, "cancelled")
        return status

    def bulk(self, action: str, status: str | None = None,
             task_ids: builtins.list[str] | None = None) -> dict[str, int]:
        """Retry the finished tasks, or cancel the unfinished ones, that `status` or `task_ids`
        select; returns {"matched": n, "changed": n}."""
        if action not in ("retry", "cancel"):
            raise InvalidParams(f"action must be 'retry' or 'cancel', not {action!r}")
        if status is None and task_ids is None:
            raise InvalidParams("give a status or task_ids to select tasks")
        if status is not None:
            status = TaskStatus(status).value
        if task_ids is not None:
            if not isinstance(task_ids, list) or len(task_ids) > 1000:
                raise InvalidParams("task_ids must be a list of at most 1000 task ids")
            for task_id in task_ids:
                check_task_id(task_id)
        counts = self._store.bulk(action, status=status, task_ids=task_ids)
        if action == "retry" and counts["changed"]:
            self._wake()
        if (worker := self._worker.peek()) is not None and action == "cancel":
            for task_id in task_ids or []:
                worker.stop_attempts(task_id, "cancelled")
        return counts

    def wait(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """The task's view as soon as it has finished, or after `timeout` seconds as it is then."""
        view = self.retrieve(check_task_id(task_id))
        if view is None or view.get("status") in FINISHED or timeout <= 0:
            return view
        # Woken at once by a task of this process; one read per interval watches the others.
        self._long_polls.wait(task_id, timeout)
        return self.retrieve(task_id)

    def list(self, status: str | None = None, limit: int = 50, skip: int = 0,
             search: str | None = None) -> dict[str, Any]:
        """Public views newest first: {"tasks": [...], "total": n, "counts": {status: n}}.

        `search` keeps the tasks whose id, params or error hold that text.
        """
        if status is not None:
            status = TaskStatus(status).value
        return self._store.list(status, limit, skip, search or None)

    def stats(self, minutes: int = 60) -> dict[str, Any]:
        """Per-minute figures of the last `minutes` (at most 1440), from the task documents."""
        from .store.stats import task_stats

        return task_stats(self.collection, self.name, minutes)

    def workers(self) -> builtins.list[dict[str, Any]]:
        """The live workers of this task type (host, pid, types, slots, running, heartbeats)."""
        return self._workers.live([self.name])

    def ping(self) -> None:
        """Raise unless the database answers (the health check)."""
        self._store.ping()

    def update_task(self, task_id: str, data: dict[str, Any]) -> None:
        """Upsert fields of the task's document and stamp `update_time`."""
        check_task_id(task_id)
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, not {type(data).__name__}")
        check_keys(data, "data")
        self._store.update(task_id, data)

    def app(self, endpoint: str = "/api") -> Any:
        """A Flask app serving this task at `endpoint`, with /ping, /healthz, /dashboard, ..."""
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

    def migrate(self) -> int:
        """Adopt the tasks asynctask 0.1 stored in this collection (they had no type and no due
        time) as tasks of this type; returns how many. Workers also do it when they start."""
        return self._store.migrate()

    def stop_claiming(self) -> None:
        """Take no new work in this process (the first step of a graceful stop)."""
        if (worker := self._worker.peek()) is not None:
            worker.stop_claiming()

    def start(self) -> None:
        """Start this process's worker (claims, heartbeats, recovery) now, if it runs one."""
        if not self._closed and (self.worker or self.worker_token):
            self._runtime().start()

    def shutdown(self, wait: bool = True, grace: float | None = None) -> int:
        """Stop this process's worker and executor.

        With `grace` (seconds): take no new work, give running attempts that long, then hand
        what is left back to the queue so another worker takes it at once. Without it, `wait`
        says whether to wait for running attempts to finish. Returns how many attempts were
        still running when released (their `main` may still run in a thread: a process that
        exits should then not wait for it).
        """
        self._closed = True
        worker = self._worker.take()
        forget_instance(self)
        left = 0
        if worker is not None:
            left = worker.stop(grace if grace is not None else (None if wait else 0.0), release=grace is not None)
        self._executors.shutdown(wait=wait and grace is None)
        return left

    # -- the lifecycle ----------------------------------------------------------------------

    def _submit(
        self, params: dict[str, Any], *, task_id: str | None = None, priority: Any = 0, delay: Any = None,
        run_at: Any = None, trace_id: str | None = None, new_task_id: str | None = None,
    ) -> dict[str, Any]:
        """Validate, then submit by the run rule; returns the task's document as it was left.

        `new_task_id` submits a new task under that id, and nothing when the id exists already
        (a schedule's tick).
        """
        priority, due = queue_options(priority, delay, run_at)
        rerun = task_id is not None
        if new_task_id is not None:
            params = self._signature.check(params)
            task_id = check_task_id(new_task_id)
        elif task_id is not None:
            check_task_id(task_id)
            if params:
                raise InvalidParams("task_id re-runs a stored task with its stored params; give no other params")
            params = self._store.stored_params(task_id)
        else:
            params = self._signature.check(params)
            task_id = self._task_id_for(params)
        keys = None if self._limits is None else self._limits.keys(params)
        if self._closed:
            raise ShuttingDown("this task service is shut down and takes no new task")
        worker = self._runtime()
        if self.worker:
            worker.start()
        # A capped or limited type claims through its worker, which checks the caps first.
        reserved = due is None and self._limit is None and self._limits is None and worker.reserve()
        claim_for = self._store.claim_fields(worker.owner, worker.name) if reserved else None
        try:
            doc, submitted = self._store.submit(
                task_id, params, priority=priority, run_at=due, rerun_after=self.rerun_time_limit,
                trace_id=trace_id or f"{random.getrandbits(128):032x}", claim_for=claim_for,
                stored=rerun, only_new=new_task_id is not None, keys=keys,
            )
        except BaseException:
            if reserved:
                worker.unreserve()
            raise
        if submitted:
            emit(task_submitted, self, task_id=task_id)
        if submitted and reserved and doc["status"] == TaskStatus.RUNNING.value:
            worker.dispatch(attempt_of(doc), worker.deadline(), reserved=True)
        else:
            if reserved:
                worker.unreserve()
            if submitted:
                self._wake()
        return doc

    def _task_id_for(self, params: dict[str, Any]) -> str:
        try:
            task_id = self.get_task_id(**params)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, AsyncTaskError):
                raise
            raise InvalidParams(f"get_task_id refused the params: {exc}") from exc
        return check_task_id(task_id)

    def _progress_from_child(self, task_id: str, number: int, percent: float, message: str | None) -> None:
        """Progress a child process reported (already throttled there)."""
        self._store.progress(task_id, number, percent, message)

    def _runtime(self) -> Worker:
        """This process's worker for this task type, made on first use."""
        return self._worker.get()

    def _wake(self) -> None:
        """A task became due: let this process's worker claim without waiting for its poll."""
        if (worker := self._worker.peek()) is not None:
            worker.wake()

    def _wake_at(self, monotonic_time: float) -> None:
        """A held-back task may start at `monotonic_time`: let this process's worker claim then."""
        if (worker := self._worker.peek()) is not None:
            worker.wake_at(monotonic_time)

    def _start_worker(self, concurrency: int | None, backend: Backend | None = None) -> None:
        """Run as a dedicated worker with `concurrency` slots (the `asynctask worker` command);
        with `backend`, a remote worker that reaches the queue through it instead of the database."""
        if concurrency is not None:
            self._executors.max_worker = positive_int("concurrency", concurrency)
        if backend is not None:
            self._remote = backend
            self.worker_token = None
        self.worker = True
        self.start()

    def __getstate__(self) -> dict[str, Any]:
        """What a child process needs to run `main`: no collection, pool, thread or lock."""
        state = self.__dict__.copy()
        for name in ("collection", "_store", "_executors", "_worker", "_workers", "_limit", "_limits", "_signature",
                     "_backend", "_remote", "_long_polls", "asynctask_engine"):
            state.pop(name, None)
        return state
