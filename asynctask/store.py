"""Every database call asynctask makes, on a pymongo `Collection` (or one that behaves like it).

Correctness rests on MongoDB's atomic operations, never on a process-local lock:
- the claim is one `find_one_and_update` upsert against the unique index on `task_id`;
- every write of an attempt names the attempt number (`attempts`) it belongs to, so a
  zombie attempt (timed out, orphaned, cancelled) can never overwrite a newer one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from .errors import InvalidTransition, TaskNotFound
from .jsonable import as_utc
from .status import ACTIVE, ALLOWED_FROM, FINISHED, RERUNNABLE, TaskStatus

logger = logging.getLogger(__name__)

#: Fields of the public view (CONTRACT section 3); owner, heartbeat and deadline stay out.
PUBLIC_FIELDS = (
    "task_id", "status", "params", "result", "error", "attempts",
    "created_at", "started_at", "finished_at", "update_time",
    "progress", "next_retry_at", "trace_id",
)
_PUBLIC_PROJECTION = {"_id": 0, **{name: 1 for name in PUBLIC_FIELDS}}
_RESET_ON_CLAIM = {
    "result": "", "error": "", "started_at": "", "finished_at": "", "deadline": "",
    "progress": "", "cancel_requested": "", "expire_at": "", "next_retry_at": "",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class TaskStore:
    """The task documents of one collection."""

    def __init__(self, collection: Any, result_ttl: timedelta | None = None) -> None:
        self.collection = collection
        self.result_ttl = result_ttl
        self._indexed_pid: int | None = None

    def ensure_indexes(self) -> None:
        """Create the indexes once per process: the unique `task_id` one carries the claim."""
        if self._indexed_pid == os.getpid():
            return
        self.collection.create_index([("task_id", ASCENDING)], unique=True, name="task_id_unique")
        self.collection.create_index([("owner", ASCENDING), ("status", ASCENDING)], name="owner_status")
        self.collection.create_index(
            [("status", ASCENDING), ("heartbeat_at", ASCENDING)], name="status_heartbeat"
        )
        # The list's sort, newest first with the task id breaking ties, served by an index
        # (with and without a status filter) rather than sorted in memory.
        self.collection.create_index(
            [("status", ASCENDING), ("created_at", DESCENDING), ("task_id", ASCENDING)], name="status_created_id"
        )
        self.collection.create_index([("created_at", DESCENDING), ("task_id", ASCENDING)], name="created_id")
        if self.result_ttl is not None:
            # Finished tasks with an `expire_at` are removed by MongoDB's TTL monitor.
            self.collection.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0, name="expire_at_ttl")
        self._indexed_pid = os.getpid()

    def claim(
        self,
        task_id: str,
        params: Mapping[str, Any],
        *,
        owner: str,
        stale_after: timedelta,
        rerun_after: timedelta | None = None,
        trace_id: str | None = None,
        now: datetime | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Queue the task for `owner` if the run rule allows it, in one atomic operation.

        Returns the task's document and whether this call claimed it. When the document
        exists but may not run again, the upsert collides with the unique index and the
        existing document is returned unclaimed.
        """
        self.ensure_indexes()
        now = now or utcnow()
        query = {"task_id": task_id, "$or": _claimable(now, stale_after, rerun_after)}
        update = {
            "$set": {
                "status": TaskStatus.QUEUED.value, "params": dict(params), "owner": owner,
                "heartbeat_at": now, "queued_at": now, "update_time": now,
                "trace_id": trace_id, "retries": 0, "lost": 0,
            },
            "$inc": {"attempts": 1},
            "$setOnInsert": {"created_at": now},
            "$unset": _RESET_ON_CLAIM,
        }
        for _ in range(3):
            try:
                doc = self.collection.find_one_and_update(
                    query, update, upsert=True, return_document=ReturnDocument.AFTER
                )
                return doc, True
            except DuplicateKeyError:
                existing = self.collection.find_one({"task_id": task_id})
                if existing is not None:
                    return existing, False
        raise RuntimeError(f"task {task_id!r} kept changing while it was claimed")

    def stored_params(self, task_id: str) -> dict[str, Any]:
        """The params a stored task was submitted with; `TaskNotFound` if there is no task."""
        doc = self.collection.find_one({"task_id": task_id}, {"_id": 0, "params": 1})
        if doc is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        return dict(doc.get("params") or {})

    def transition(
        self,
        task_id: str,
        to: TaskStatus | str,
        *,
        attempt: int | None = None,
        fields: Mapping[str, Any] | None = None,
        unset: tuple[str, ...] = (),
        match: Mapping[str, Any] | None = None,
        only_from: tuple[str, ...] | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Move a task to status `to` if its current status allows it; fenced by `attempt`.

        `match` adds conditions the document must meet (e.g. its owner); `only_from` narrows
        the statuses it may move from.

        Returns False, writing nothing, when the task is in no status that may move to `to`
        or when `attempt` is no longer the task's current attempt.
        """
        to = TaskStatus(to).value
        if to not in ALLOWED_FROM:
            raise InvalidTransition(f"no task moves to {to!r} through a transition")
        now = now or utcnow()
        sources = [status for status in ALLOWED_FROM[to] if only_from is None or status in only_from]
        query: dict[str, Any] = {**(match or {}), "task_id": task_id, "status": {"$in": sources}}
        if attempt is not None:
            query["attempts"] = attempt
        update: dict[str, Any] = {"$set": {**(fields or {}), **self._expiry(to, now), "status": to, "update_time": now}}
        if unset:
            update["$unset"] = {name: "" for name in unset}
        return self.collection.update_one(query, update).matched_count == 1

    def start(
        self, task_id: str, attempt: int, owner: str, deadline: datetime, now: datetime | None = None
    ) -> bool:
        """Mark the attempt running; False if it was cancelled, released or superseded meanwhile."""
        now = now or utcnow()
        return self.transition(
            task_id, TaskStatus.RUNNING, attempt=attempt, now=now, match={"owner": owner},
            fields={"started_at": now, "deadline": deadline, "heartbeat_at": now},
        )

    def finish(
        self,
        task_id: str,
        status: TaskStatus | str,
        *,
        attempt: int | None,
        result: Any = None,
        error: str | None = None,
        extra: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Record how an attempt ended (success, failed, cancelled) unless it was superseded.

        `extra` holds further fields to write with it (`expire_at`, a last `progress`).
        """
        now = now or utcnow()
        fields = {**(extra or {}), "finished_at": now, "result": result, "error": error}
        # An attempt ends only from running: a released or re-queued task is no longer its own.
        only_from = (TaskStatus.RUNNING.value,) if attempt is not None else None
        return self.transition(
            task_id, status, attempt=attempt, now=now, fields=fields, unset=("owner",), only_from=only_from
        )

    def heartbeat(self, owner: str, now: datetime | None = None) -> int:
        """Stamp every active task of `owner` in one write; returns how many it touched."""
        now = now or utcnow()
        result = self.collection.update_many(
            {"owner": owner, "status": {"$in": list(ACTIVE)}}, {"$set": {"heartbeat_at": now}}
        )
        return result.modified_count

    def release(self, owner: str, now: datetime | None = None) -> int:
        """Hand `owner`'s unfinished tasks back (queued, no owner) so any process takes them now."""
        now = now or utcnow()
        result = self.collection.update_many(
            {"owner": owner, "status": {"$in": list(ALLOWED_FROM[TaskStatus.QUEUED.value])}},
            {
                "$set": {"status": TaskStatus.QUEUED.value, "update_time": now},
                "$unset": {"owner": "", "heartbeat_at": "", "deadline": ""},
            },
        )
        return result.modified_count

    def fail_lost(self, stale_after: timedelta, max_attempts: int, now: datetime | None = None) -> int:
        """Fail orphaned tasks whose owners were lost `max_attempts` times ("worker lost")."""
        now = now or utcnow()
        result = self.collection.update_many(
            {**_orphaned(now, stale_after), "owner": {"$exists": True}, "lost": {"$gte": max_attempts - 1}},
            {
                "$set": {
                    "status": TaskStatus.FAILED.value, "finished_at": now, "update_time": now,
                    "error": f"worker lost: the task's owner stopped in each of {max_attempts} attempt(s)",
                    **self._expiry(TaskStatus.FAILED.value, now),
                },
                "$unset": {"owner": ""},
            },
        )
        return result.modified_count

    def claim_orphan(
        self, owner: str, stale_after: timedelta, max_attempts: int, now: datetime | None = None
    ) -> dict[str, Any] | None:
        """Take over one task nobody works on, for `owner` (attempts + 1), or None if there is none.

        First a task without owner (released, or a retry that is due), then one whose owner
        stopped heartbeating (which counts as a lost attempt).
        """
        now = now or utcnow()
        claim = {
            "status": TaskStatus.QUEUED.value, "owner": owner, "heartbeat_at": now,
            "queued_at": now, "update_time": now,
        }
        reset = {**_RESET_ON_CLAIM, "next_retry_at": ""}
        candidates = [
            ({**_orphaned(now, stale_after), "owner": {"$exists": False}}, {}),
            (
                {**_orphaned(now, stale_after), "owner": {"$exists": True},
                 "lost": {"$not": {"$gte": max_attempts - 1}}},
                {"lost": 1},
            ),
        ]
        for query, counted in candidates:
            doc = self.collection.find_one_and_update(
                query,
                {"$set": claim, "$inc": {"attempts": 1, **counted}, "$unset": reset},
                sort=[("heartbeat_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
                return doc
        return None

    def schedule_retry(
        self, task_id: str, attempt: int, *, retries: int, error: str, at: datetime, now: datetime | None = None
    ) -> bool:
        """Put a failed attempt back as an unowned queued task that any process takes at `at`."""
        return self.transition(
            task_id, TaskStatus.QUEUED, attempt=attempt, now=now, only_from=(TaskStatus.RUNNING.value,),
            fields={"retries": retries, "next_retry_at": at, "error": error},
            unset=("owner", "heartbeat_at", "deadline", "started_at"),
        )

    def request_cancel(self, task_id: str, now: datetime | None = None) -> str:
        """Cancel a queued task at once, or ask a running task's owner to stop it.

        Returns the status the task is left in: "cancelled" or "running" (stop requested).
        Raises `TaskNotFound` for an unknown task, `InvalidTransition` for a finished one.
        """
        now = now or utcnow()
        if self.transition(
            task_id, TaskStatus.CANCELLED, only_from=(TaskStatus.QUEUED.value,), now=now,
            fields={"finished_at": now, "error": "cancelled before it started"},
            unset=("owner", "heartbeat_at", "next_retry_at"),
        ):
            return TaskStatus.CANCELLED.value
        if self.collection.update_one(
            {"task_id": task_id, "status": TaskStatus.RUNNING.value},
            {"$set": {"cancel_requested": True, "update_time": now}},
        ).matched_count:
            return TaskStatus.RUNNING.value
        doc = self.collection.find_one({"task_id": task_id}, {"status": 1})
        if doc is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        raise InvalidTransition(f"task {task_id!r} is {doc.get('status')} and cannot be cancelled")

    def cancel_requests(self, owner: str) -> list[tuple[str, int]]:
        """(task_id, attempt) of `owner`'s running tasks someone asked to cancel."""
        cursor = self.collection.find(
            {"owner": owner, "status": TaskStatus.RUNNING.value, "cancel_requested": True},
            {"_id": 0, "task_id": 1, "attempts": 1},
        )
        return [(doc["task_id"], doc["attempts"]) for doc in cursor]

    def progress(self, task_id: str, attempt: int, percent: float, message: str | None) -> bool:
        """Record the progress of a running attempt; ignored once the attempt is superseded."""
        return self.collection.update_one(
            {"task_id": task_id, "attempts": attempt, "status": TaskStatus.RUNNING.value},
            {"$set": {"progress": {"percent": percent, "message": message}}},
        ).matched_count == 1

    def list(self, status: str | None = None, limit: int = 50, skip: int = 0) -> dict[str, Any]:
        """A page of public views, newest first, with the total and the count per status."""
        query = {"status": status} if status else {}
        docs = (
            self.collection.find(query, _PUBLIC_PROJECTION)
            .sort([("created_at", DESCENDING), ("task_id", ASCENDING)])
            .skip(skip)
            .limit(limit)
        )
        counts = {
            row["_id"]: row["n"]
            for row in self.collection.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
            if row["_id"] is not None
        }
        total = counts.get(status, 0) if status else sum(counts.values())
        return {"tasks": [_public(doc) for doc in docs], "total": total, "counts": counts}

    def existing(self, task_ids: list[str]) -> set[str]:
        """Which of `task_ids` have a document."""
        cursor = self.collection.find({"task_id": {"$in": task_ids}}, {"_id": 0, "task_id": 1})
        return {doc["task_id"] for doc in cursor}

    def _expiry(self, status: str, now: datetime) -> dict[str, Any]:
        """`expire_at` for a task that finishes now, when finished tasks expire."""
        if self.result_ttl is None or status not in FINISHED:
            return {}
        return {"expire_at": now + self.result_ttl}

    def ping(self) -> None:
        """Raise unless the database answers a query."""
        self.collection.find_one({"task_id": "__asynctask_healthz__"}, {"_id": 1})

    def update(self, task_id: str, data: Mapping[str, Any], now: datetime | None = None) -> None:
        """Upsert fields of a task's document, stamping `update_time` unless given."""
        fields = {
            key: value.value if isinstance(value, TaskStatus) else value for key, value in data.items()
        }
        fields.setdefault("update_time", now or utcnow())
        self.collection.update_one({"task_id": task_id}, {"$set": fields}, upsert=True)

    def public(self, task_id: str) -> dict[str, Any] | None:
        """The public view of a task (CONTRACT section 3), times as aware UTC; None if unknown."""
        doc = self.collection.find_one({"task_id": task_id}, _PUBLIC_PROJECTION)
        return None if doc is None else _public(doc)


def _public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document as its public view, times as aware UTC."""
    view = {name: doc.get(name) for name in PUBLIC_FIELDS}
    for name, value in view.items():
        if isinstance(value, datetime):
            view[name] = as_utc(value)
    return view


def _orphaned(now: datetime, stale_after: timedelta) -> dict[str, Any]:
    """Active tasks nobody works on: no heartbeat within `stale_after` (or no owner), and no
    retry waiting for a later time."""
    return {
        "status": {"$in": list(ACTIVE)},
        "heartbeat_at": {"$not": {"$gte": now - stale_after}},
        "next_retry_at": {"$not": {"$gt": now}},
    }


def _claimable(now: datetime, stale_after: timedelta, rerun_after: timedelta | None) -> list[dict]:
    """The run rule (CONTRACT section 1) as query clauses: a document matching one may run."""
    clauses: list[dict[str, Any]] = [
        {"status": {"$in": list(RERUNNABLE)}},
        {"status": {"$exists": False}},
        _orphaned(now, stale_after),
        {"status": TaskStatus.RUNNING.value, "deadline": {"$lt": now}},
    ]
    if rerun_after is not None:
        clauses.append({"status": TaskStatus.SUCCESS.value, "update_time": {"$lt": now - rerun_after}})
    return clauses
