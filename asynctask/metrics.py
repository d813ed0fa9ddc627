"""Prometheus metrics of the task lifecycle and the HTTP API (`/metrics`).

Under several gunicorn workers set `PROMETHEUS_MULTIPROC_DIR` to an empty, writable folder
before the server starts: each process then writes its values there, `render()` adds them
up, and gunicorn's `child_exit` hook calls `mark_process_dead(pid)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from .signals import attempt_ended, attempt_started, claim_held, task_finished, task_submitted

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# prometheus_client wants its metrics defined once, at import time.
TASKS_SUBMITTED = Counter(
    "asynctask_tasks_submitted", "Tasks accepted to run (new or re-run) by this service.", ["task"]
)
TASKS_FINISHED = Counter(
    "asynctask_tasks_finished", "Tasks that reached a final status.", ["task", "status"]
)
TASK_DURATION = Histogram(
    "asynctask_task_duration_seconds", "How long the attempt that finished a task ran.", ["task"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, float("inf")),
)
TASKS_IN_FLIGHT = Gauge(
    "asynctask_tasks_in_flight", "Attempts running now.", ["task"], multiprocess_mode="livesum"
)
EVENT_LOOP_LAG = Gauge(
    "asynctask_event_loop_lag_seconds",
    "How long the event loop of coroutine tasks took to answer its last ping (a blocked loop shows here).",
    multiprocess_mode="livemax",
)
HTTP_REQUESTS = Counter(
    "asynctask_http_requests", "HTTP requests answered.", ["method", "route", "code"]
)
#: Labelled by type and reason only: a key would make one series per tenant.
CLAIMS_HELD = Counter(
    "asynctask_claims_held", "Claims that found due tasks but started none: a limit held them back.",
    ["task", "reason"],
)


QUEUE_DEPTH_HELP = "Tasks due and waiting in the queue, per task type (read from the database at scrape)."
OLDEST_DUE_HELP = "Seconds the oldest due task of each type has waited (0 when none waits)."
HELD_HELP = "Due tasks a rate limit or a per-key concurrency limit holds back now, per type and reason."


_children: dict[tuple[Any, ...], Any] = {}


def _labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, kept: a child never changes once made, and looking one up
    through `labels` (argument checks, a lock) costs more than the count it records."""
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def submitted(task_name: str) -> None:
    """Count a task accepted to run (a claim by `run()`, not a recovery)."""
    _labelled(TASKS_SUBMITTED, task_name).inc()


def started(task_name: str) -> None:
    """Count an attempt that started running in this process."""
    _labelled(TASKS_IN_FLIGHT, task_name).inc()


def finished(task_name: str, status: str, seconds: float | None) -> None:
    """Count a task that ended in `status`; `seconds` it ran here after `started()`, else None."""
    _labelled(TASKS_FINISHED, task_name, str(status)).inc()
    if seconds is not None:
        _labelled(TASKS_IN_FLIGHT, task_name).dec()
        _labelled(TASK_DURATION, task_name).observe(max(float(seconds), 0.0))


def stopped(task_name: str) -> None:
    """An attempt that `started()` here ended without finishing its task (retry, release, fenced out)."""
    _labelled(TASKS_IN_FLIGHT, task_name).dec()


def held(task_name: str, reason: str) -> None:
    """Count a claim that a limit held back ("rate" or "concurrency")."""
    _labelled(CLAIMS_HELD, task_name, reason).inc()


def loop_lag(seconds: float) -> None:
    """The event loop of coroutine tasks answered a ping after `seconds`."""
    EVENT_LOOP_LAG.set(seconds)


def request(method: str, route: str, code: int) -> None:
    """Count an HTTP request; `route` is the URL rule (`/api/<task_id>`), never the raw path."""
    HTTP_REQUESTS.labels(method=method, route=route, code=str(code)).inc()


def multiprocess_dir() -> str | None:
    """The folder processes share their values in, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def render(tasks: Iterable[Any] = ()) -> tuple[bytes, str]:
    """The metrics in Prometheus text format, and its content type.

    The queue depth and the age of the oldest due task of each of `tasks` are read from the
    database now, so every process answers the same figures.
    """
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    queue = CollectorRegistry()
    depth = Gauge("asynctask_queue_depth", QUEUE_DEPTH_HELP, ["task"], registry=queue)
    oldest = Gauge("asynctask_queue_oldest_due_seconds", OLDEST_DUE_HELP, ["task"], registry=queue)
    held_now = Gauge("asynctask_queue_held", HELD_HELP, ["task", "reason"], registry=queue)
    now = datetime.now(timezone.utc)
    for task in tasks:
        count, since = task.asynctask_engine.store.queue_depth(now)
        depth.labels(task=task.name).set(count)
        oldest.labels(task=task.name).set(max((now - since).total_seconds(), 0.0) if since else 0.0)
        limits = task.asynctask_engine.backend.limits
        for reason, waiting in (limits.held_back() if limits is not None else {}).items():
            held_now.labels(task=task.name, reason=reason).set(waiting)
    return generate_latest(registry) + generate_latest(queue), CONTENT_TYPE_LATEST


def _on_submitted(sender: Any, **_: Any) -> None:
    submitted(sender.name)


def _on_started(sender: Any, **_: Any) -> None:
    started(sender.name)


def _on_ended(sender: Any, *, attempt: Any, seconds: float, **_: Any) -> None:
    if attempt.final_status is not None:
        finished(sender.name, attempt.final_status, seconds)
    else:
        stopped(sender.name)


def _on_held(sender: Any, *, reason: str, **_: Any) -> None:
    held(sender.name, reason)


def _on_finished(sender: Any, *, status: str, count: int = 1, **_: Any) -> None:
    for _i in range(count):
        finished(sender.name, status, None)


task_submitted.connect(_on_submitted)
attempt_started.connect(_on_started)
attempt_ended.connect(_on_ended)
task_finished.connect(_on_finished)
claim_held.connect(_on_held)


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a worker that exited (gunicorn's `child_exit` hook)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
