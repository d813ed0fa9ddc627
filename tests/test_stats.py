"""Throughput, queue wait, run time and queue depth from task documents (asynctask.store.stats).

Documents with known times go into an in-memory collection; the figures must match what an
operator would count by hand. Every query must name the task type and a bounded range, so
that MongoDB serves it from one of the store's indexes on a collection of millions of tasks.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from asynctask import MemoryCollection
from asynctask.store.stats import MAX_MINUTES, percentile, task_stats

NOW = datetime(2024, 5, 6, 12, 30, 25, tzinfo=timezone.utc)
#: The start of the minute NOW falls in: the window's last minute.
THIS_MINUTE = datetime(2024, 5, 6, 12, 30, tzinfo=timezone.utc)
#: The store's indexes, as field lists; each stats query must be served by one.
INDEXES = [
    ("type", "created_at"),
    ("type", "started_at"),
    ("type", "finished_at"),
    ("type", "status", "priority", "run_at"),
]


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def doc(task_id: str, status: str, created: float, *, queued: float | None = None, run_at: float | None = None,
        started: float | None = None, finished: float | None = None, task_type: str = "Report") -> dict[str, Any]:
    """A task document whose times are given in seconds before NOW."""
    document: dict[str, Any] = {
        "task_id": task_id, "type": task_type, "status": status, "params": {}, "priority": 0,
        "created_at": ago(created), "queued_at": ago(created if queued is None else queued),
        "run_at": ago(created if run_at is None else run_at),
    }
    if started is not None:
        document["started_at"] = ago(started)
    if finished is not None:
        document["finished_at"] = ago(finished)
    return document


@pytest.fixture
def tasks() -> MemoryCollection:
    """Tasks of type Report with known times, plus tasks the stats must ignore."""
    collection = MemoryCollection()
    collection.insert_many([
        # This minute (12:30): submitted, waited 5s, ran 10s, success.
        doc("a", "success", created=20, started=15, finished=5),
        # 12:29: submitted at 12:29:05, waited 2s, ran 30s, failed at 12:29:37.
        doc("b", "failed", created=80, started=78, finished=48),
        # 12:28: submitted, queued again later (retry) at 12:29:35, started 12:29:45: waited 10s.
        doc("c", "running", created=130, queued=50, started=40),
        # Delayed: run_at 12:30:15 is later than queued_at; started 12:30:20, waited 5s, ran 4s.
        doc("d", "success", created=100, queued=100, run_at=10, started=5, finished=1),
        # Cancelled before it started, this minute: counts as finished, no run time.
        doc("e", "cancelled", created=30, finished=25),
        # Queued and due (run_at in the past), queued and due without run_at, queued for later.
        doc("f", "queued", created=10),
        {**doc("g", "queued", created=12), "run_at": None},
        doc("h", "queued", created=15, run_at=-300),
        # Long ago (outside a 60 minute window, inside a day).
        doc("old", "success", created=7200, started=7190, finished=7100),
        # Another task type in the same collection.
        doc("x1", "success", created=20, started=15, finished=5, task_type="Other"),
        doc("x2", "queued", created=20, task_type="Other"),
        doc("x3", "running", created=20, started=10, task_type="Other"),
    ])
    return collection


def row(stats: dict[str, Any], minute: datetime) -> dict[str, Any]:
    rows = [r for r in stats["series"] if r["minute"] == minute]
    assert len(rows) == 1, f"no single row for {minute}"
    return rows[0]


def test_window_is_whole_minutes_oldest_first(tasks):
    stats = task_stats(tasks, "Report", 60, now=NOW)
    assert stats["type"] == "Report" and stats["minutes"] == 60
    assert stats["until"] == THIS_MINUTE + timedelta(minutes=1)
    assert stats["since"] == stats["until"] - timedelta(minutes=60)
    minutes = [r["minute"] for r in stats["series"]]
    assert len(minutes) == 60
    assert minutes[0] == stats["since"] and minutes[-1] == THIS_MINUTE
    assert all(b - a == timedelta(minutes=1) for a, b in zip(minutes, minutes[1:], strict=False))


def test_counts_per_minute(tasks):
    stats = task_stats(tasks, "Report", 60, now=NOW)
    now_row, prev_row, before_row = (row(stats, THIS_MINUTE - timedelta(minutes=k)) for k in (0, 1, 2))
    assert now_row["submitted"] == 4  # a, f, g, h
    assert prev_row["submitted"] == 2  # b (12:29:05), e (12:29:55)
    assert before_row["submitted"] == 2  # c (12:28:15), d (12:28:45)
    assert now_row["started"] == 2  # a, d
    assert prev_row["started"] == 2  # b (12:29:07), c (12:29:45)
    assert now_row["finished"] == {"success": 2, "failed": 0, "cancelled": 1}  # a, d, e
    assert prev_row["finished"] == {"success": 0, "failed": 1, "cancelled": 0}  # b
    quiet = [r for r in stats["series"] if r["minute"] < THIS_MINUTE - timedelta(minutes=2)]
    assert all(r["submitted"] == r["started"] == 0 and not any(r["finished"].values()) for r in quiet)
    assert stats["totals"] == {
        "submitted": 8, "started": 4, "finished": {"success": 2, "failed": 1, "cancelled": 1},
    }


def test_queue_wait_counts_from_the_later_of_queued_and_run_at(tasks):
    stats = task_stats(tasks, "Report", 60, now=NOW)
    # Waits: a 5s, b 2s, c 10s (from its second queueing), d 5s (from run_at, not queued_at).
    assert stats["queue_wait"] == {"p50": 5.0, "p95": pytest.approx(9.25)}
    assert row(stats, THIS_MINUTE)["queue_wait"] == {"p50": 5.0, "p95": 5.0}
    assert row(stats, THIS_MINUTE - timedelta(minutes=1))["queue_wait"] == {"p50": 6.0, "p95": pytest.approx(9.6)}
    assert row(stats, THIS_MINUTE - timedelta(minutes=5))["queue_wait"] == {"p50": None, "p95": None}


def test_run_time_of_tasks_finished_in_the_window(tasks):
    stats = task_stats(tasks, "Report", 60, now=NOW)
    # Run times: a 10s, b 30s, d 4s; e never started and has none.
    assert stats["run_time"] == {"p50": 10.0, "p95": 28.0}
    # Per minute of the finish: a and d this minute, b the one before.
    assert row(stats, THIS_MINUTE)["run_time"] == {"p50": 7.0, "p95": pytest.approx(9.7)}
    assert row(stats, THIS_MINUTE - timedelta(minutes=1))["run_time"] == {"p50": 30.0, "p95": 30.0}
    assert row(stats, THIS_MINUTE - timedelta(minutes=5))["run_time"] == {"p50": None, "p95": None}


def test_queue_depth_counts_due_queued_tasks_and_running_ones(tasks):
    stats = task_stats(tasks, "Report", 60, now=NOW)
    assert stats["queue_depth"] == 2  # f and g; h is due in five minutes
    assert stats["running"] == 1  # c
    later = task_stats(tasks, "Report", 60, now=NOW + timedelta(minutes=6))
    assert later["queue_depth"] == 3


def test_a_longer_window_reaches_older_tasks(tasks):
    hour = task_stats(tasks, "Report", 60, now=NOW)
    day = task_stats(tasks, "Report", MAX_MINUTES, now=NOW)
    assert len(day["series"]) == MAX_MINUTES
    assert day["totals"]["submitted"] == hour["totals"]["submitted"] + 1
    assert day["totals"]["finished"]["success"] == 3
    assert day["run_time"]["p50"] == 20.0  # a 10s, b 30s, d 4s, old 90s


def test_other_task_types_are_not_counted(tasks):
    stats = task_stats(tasks, "Other", 60, now=NOW)
    assert stats["totals"] == {"submitted": 3, "started": 2, "finished": {"success": 1, "failed": 0, "cancelled": 0}}
    assert stats["queue_depth"] == 1 and stats["running"] == 1
    assert task_stats(tasks, "Nobody", 60, now=NOW)["totals"]["submitted"] == 0


def test_empty_collection():
    stats = task_stats(MemoryCollection(), "Report", 5, now=NOW)
    assert len(stats["series"]) == 5
    assert stats["queue_wait"] == stats["run_time"] == {"p50": None, "p95": None}
    assert stats["queue_depth"] == stats["running"] == 0


def test_naive_and_aware_times_are_both_utc():
    """pymongo hands back aware times, mongomock naive ones: both mean UTC."""
    collection = MemoryCollection()
    naive = NOW.replace(tzinfo=None)
    collection.insert_one({
        "task_id": "n", "type": "Report", "status": "success", "created_at": naive - timedelta(seconds=9),
        "queued_at": naive - timedelta(seconds=9), "started_at": naive - timedelta(seconds=6),
        "finished_at": naive - timedelta(seconds=1),
    })
    for now in (NOW, naive, NOW.astimezone(timezone(timedelta(hours=-7)))):
        stats = task_stats(collection, "Report", 60, now=now)
        assert row(stats, THIS_MINUTE)["finished"]["success"] == 1
        assert stats["queue_wait"]["p50"] == 3.0 and stats["run_time"]["p50"] == 5.0
        assert stats["until"].tzinfo is not None


def test_default_now_is_the_current_time():
    collection = MemoryCollection()
    collection.insert_one({"task_id": "a", "type": "Report", "status": "queued",
                           "created_at": datetime.now(timezone.utc)})
    stats = task_stats(collection, "Report")
    assert stats["minutes"] == 60 and stats["totals"]["submitted"] == 1 and stats["queue_depth"] == 1


@pytest.mark.parametrize("minutes", [0, -1, MAX_MINUTES + 1, 1.5, "60", True, None])
def test_minutes_out_of_range_are_refused(minutes):
    with pytest.raises(ValueError, match="minutes"):
        task_stats(MemoryCollection(), "Report", minutes, now=NOW)


def test_percentile_interpolates_between_ranks():
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([4, 1, 3, 2], 0.95) == pytest.approx(3.85)


class Recording:
    """A collection that records each find and count query before running it."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self.queries: list[tuple[str, dict[str, Any]]] = []
        self.projections: dict[str, dict[str, Any]] = {}

    def find(self, query: dict[str, Any], projection: dict[str, Any] | None = None) -> Any:
        self.queries.append(("find", query))
        self.projections[next(field for field in query if field != "type")] = projection or {}
        return self.collection.find(query, projection)

    def count_documents(self, query: dict[str, Any]) -> int:
        self.queries.append(("count", query))
        return self.collection.count_documents(query)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"stats called {name}, which the recording collection does not allow")


def served_by_an_index(query: dict[str, Any]) -> bool:
    """Whether one index holds every field of the query and the query bounds its first two."""
    return any(set(query) <= set(index) and set(index[:2]) <= set(query) for index in INDEXES)


def test_every_query_names_the_type_and_a_bounded_range_an_index_serves(tasks):
    recording = Recording(tasks)
    task_stats(recording, "Report", MAX_MINUTES, now=NOW)
    assert len(recording.queries) == 5
    for kind, query in recording.queries:
        assert query["type"] == "Report", query
        assert served_by_an_index(query), query
        for condition in query.values():
            if isinstance(condition, dict) and "$gte" in condition:
                assert condition["$lt"] - condition["$gte"] <= timedelta(minutes=MAX_MINUTES), query
        if kind == "find":
            ranged = [c for c in query.values() if isinstance(c, dict)]
            assert len(ranged) == 1 and {"$gte", "$lt"} <= set(ranged[0]), query
    # The submitted count reads only the indexed field: a covered query.
    assert recording.projections["created_at"] == {"_id": 0, "created_at": 1}
