"""Throughput, queue wait and run time of one task type, computed from its task documents.

The figures come from the documents themselves (not from process memory), so they survive
restarts and cover every process that shares the collection. A task that is run again keeps
only its latest attempt's times, so the figures describe latest attempts.

Every query names the task type and a bounded range (or an equality on status), so on a
collection of millions of tasks MongoDB serves each one from an index:

=====================================================  ==========================================
query                                                  index
=====================================================  ==========================================
submitted per minute: ``type`` = T, ``created_at`` in  ``(type, created_at)``; the projection
the window; projection ``created_at``                  holds only indexed fields, so the query is
                                                       covered (no document is fetched)
started per minute and queue wait: ``type`` = T,       ``(type, started_at)``
``started_at`` in the window; projection
``started_at``, ``queued_at``, ``run_at``
finished per minute and status, run time: ``type`` =   ``(type, finished_at)``
T, ``finished_at`` in the window; projection
``finished_at``, ``started_at``, ``status``
queue depth: ``type`` = T, ``status`` = "queued",      ``(type, status, priority, run_at)``:
``run_at`` not after now (a task without ``run_at``    equality on the first two fields, every
is due)                                                priority, a range on ``run_at``
running: ``type`` = T, ``status`` = "running"          ``(type, status, priority, run_at)``, by
                                                       its ``(type, status)`` prefix
=====================================================  ==========================================

Only `find` with a projection and `count_documents` are used, which pymongo, mongomock and
`asynctask.MemoryCollection` all support. Times stored naive (mongomock) are read as UTC.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

#: The longest window `task_stats` covers: one day.
MAX_MINUTES = 1440
#: The statuses a task ends in, as the per-minute `finished` counts name them.
FINISHED_STATUSES = ("success", "failed", "cancelled")

_MINUTE = timedelta(minutes=1)


def task_stats(collection: Any, task_type: str, minutes: int = 60, now: datetime | None = None) -> dict[str, Any]:
    """Figures of the task type `task_type` over the last `minutes` minutes (1 to 1440).

    Returns::

        {"type": T, "minutes": M, "since": datetime, "until": datetime,
         "series": [{"minute": datetime, "submitted": n, "started": n,
                     "finished": {"success": n, "failed": n, "cancelled": n},
                     "queue_wait": {"p50": s, "p95": s},
                     "run_time": {"p50": s, "p95": s}}, ...],     # one per minute, oldest first
         "totals": {"submitted": n, "started": n, "finished": {"success": n, ...}},
         "queue_wait": {"p50": s, "p95": s}, "run_time": {"p50": s, "p95": s},
         "queue_depth": n, "running": n}

    The window is whole minutes, the last one being the minute `now` falls in: `until` is the
    end of that minute and `since` is `minutes` minutes before it. Queue wait is `started_at`
    minus the later of `queued_at` and `run_at`, for the tasks started in the window; run time
    is `finished_at` minus `started_at`, for the tasks finished in the window. Percentiles are
    in seconds (linear interpolation between the closest ranks), None when there is no sample.
    `queue_depth` counts queued tasks that are due now, `running` the running ones.
    """
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MAX_MINUTES:
        raise ValueError(f"minutes must be an integer from 1 to {MAX_MINUTES}, not {minutes!r}")
    if not isinstance(task_type, str) or not task_type:
        raise ValueError("task_type must be a non-empty string")
    now = _utc(now) if now is not None else datetime.now(timezone.utc)
    until = now.replace(second=0, microsecond=0) + _MINUTE
    since = until - minutes * _MINUTE
    window = {"$gte": since, "$lt": until}

    series: list[dict[str, Any]] = [
        {
            "minute": since + i * _MINUTE, "submitted": 0, "started": 0,
            "finished": dict.fromkeys(FINISHED_STATUSES, 0), "queue_wait": {"p50": None, "p95": None},
            "run_time": {"p50": None, "p95": None},
        }
        for i in range(minutes)
    ]

    def bucket(when: Any) -> dict[str, Any] | None:
        if not isinstance(when, datetime):
            return None
        index = (_utc(when) - since) // _MINUTE
        return series[index] if 0 <= index < minutes else None

    for doc in _find(collection, {"type": task_type, "created_at": window}, ("created_at",)):
        row = bucket(doc.get("created_at"))
        if row is not None:
            row["submitted"] += 1

    waits, run_times = _Samples(), _Samples()
    for doc in _find(collection, {"type": task_type, "started_at": window}, ("started_at", "queued_at", "run_at")):
        row = bucket(doc.get("started_at"))
        if row is None:
            continue
        row["started"] += 1
        wait = _queue_wait(doc)
        if wait is not None:
            waits.add(row, wait)

    for doc in _find(
        collection, {"type": task_type, "finished_at": window}, ("finished_at", "started_at", "status")
    ):
        row = bucket(doc.get("finished_at"))
        status = doc.get("status")
        if row is None or status not in FINISHED_STATUSES:
            continue
        row["finished"][status] += 1
        started = doc.get("started_at")
        if isinstance(started, datetime):
            run_times.add(row, max((_utc(doc["finished_at"]) - _utc(started)).total_seconds(), 0.0))
    waits.fill(series, "queue_wait")
    run_times.fill(series, "run_time")

    queue_depth = collection.count_documents(
        {"type": task_type, "status": "queued", "run_at": {"$not": {"$gt": now}}}
    )
    running = collection.count_documents({"type": task_type, "status": "running"})

    totals = {
        "submitted": sum(row["submitted"] for row in series),
        "started": sum(row["started"] for row in series),
        "finished": {status: sum(row["finished"][status] for row in series) for status in FINISHED_STATUSES},
    }
    return {
        "type": task_type,
        "minutes": minutes,
        "since": since,
        "until": until,
        "series": series,
        "totals": totals,
        "queue_wait": _percentiles(waits.values),
        "run_time": _percentiles(run_times.values),
        "queue_depth": queue_depth,
        "running": running,
    }


class _Samples:
    """Seconds sampled over the window, also kept per minute's row."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._by_row: dict[int, list[float]] = {}

    def add(self, row: dict[str, Any], value: float) -> None:
        self.values.append(value)
        self._by_row.setdefault(id(row), []).append(value)

    def fill(self, series: list[dict[str, Any]], name: str) -> None:
        """Set each row's `name` to the percentiles of its samples (rows without any keep None)."""
        for row in series:
            samples = self._by_row.get(id(row))
            if samples:
                row[name] = _percentiles(samples)


def _find(collection: Any, query: dict[str, Any], fields: Iterable[str]) -> Iterable[dict[str, Any]]:
    """The documents matching `query`, each holding only `fields` (no `_id`)."""
    return collection.find(query, {"_id": 0, **dict.fromkeys(fields, 1)})


def _utc(value: datetime) -> datetime:
    """`value` as aware UTC; a naive time (mongomock) is UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _queue_wait(doc: dict[str, Any]) -> float | None:
    """Seconds from when the task could start (queued and due) to when it started."""
    ready = [_utc(value) for value in (doc.get("queued_at"), doc.get("run_at")) if isinstance(value, datetime)]
    if not ready:
        return None
    return max((_utc(doc["started_at"]) - max(ready)).total_seconds(), 0.0)


def percentile(values: list[float], fraction: float) -> float | None:
    """The `fraction` (0 to 1) percentile of `values`, interpolated linearly; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * fraction
    low, high = math.floor(rank), math.ceil(rank)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 3)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}
