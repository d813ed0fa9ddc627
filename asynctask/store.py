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
from .status import ACTIVE, ALLOWED_FROM, RERUNNABLE, TaskStatus

logger = logging.getLogger(__name__)

#: Fields of the public view (CONTRACT section 3); owner, heartbeat and deadline stay out.
PUBLIC_FIELDS = (
    "task_id", "status", "params", "result", "error", "attempts",
    "created_at", "started_at", "finished_at", "update_time",
)
_PUBLIC_PROJECTION = {"_id": 0, **{name: 1 for name in PUBLIC_FIELDS}}
_RESET_ON_CLAIM = {"result": "", "error": "", "started_at": "", "finished_at": "", "deadline": ""}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class TaskStore:
    """The task documents of one collection."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
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
        self.collection.create_index(
            [("status", ASCENDING), ("created_at", DESCENDING)], name="status_created"
        )
        self._indexed_pid = os.getpid()

    def claim(
        self,
        task_id: str,
        params: Mapping[str, Any],
        *,
        owner: str,
        stale_after: timedelta,
        rerun_after: timedelta | None = None,
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
        now: datetime | None = None,
    ) -> bool:
        """Move a task to status `to` if its current status allows it; fenced by `attempt`.

        `match` adds conditions the document must meet (e.g. its owner).

        Returns False, writing nothing, when the task is in no status that may move to `to`
        or when `attempt` is no longer the task's current attempt.
        """
        to = TaskStatus(to).value
        if to not in ALLOWED_FROM:
            raise InvalidTransition(f"no task moves to {to!r} through a transition")
        now = now or utcnow()
        query: dict[str, Any] = {**(match or {}), "task_id": task_id, "status": {"$in": list(ALLOWED_FROM[to])}}
        if attempt is not None:
            query["attempts"] = attempt
        update: dict[str, Any] = {"$set": {**(fields or {}), "status": to, "update_time": now}}
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
        now: datetime | None = None,
    ) -> bool:
        """Record how an attempt ended (success, failed, cancelled) unless it was superseded."""
        now = now or utcnow()
        fields = {"finished_at": now, "result": result, "error": error}
        return self.transition(
            task_id, status, attempt=attempt, now=now, fields=fields, unset=("owner",)
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
        """Fail orphaned tasks that already had `max_attempts` attempts ("worker lost")."""
        now = now or utcnow()
        result = self.collection.update_many(
            {**_orphaned(now, stale_after), "attempts": {"$gte": max_attempts}},
            {
                "$set": {
                    "status": TaskStatus.FAILED.value, "finished_at": now, "update_time": now,
                    "error": f"worker lost: the task's owner stopped after {max_attempts} attempt(s)",
                },
                "$unset": {"owner": ""},
            },
        )
        return result.modified_count

    def claim_orphan(
        self, owner: str, stale_after: timedelta, max_attempts: int, now: datetime | None = None
    ) -> dict[str, Any] | None:
        """Take over the longest-orphaned task for `owner` (attempts + 1), or None if there is none."""
        now = now or utcnow()
        return self.collection.find_one_and_update(
            {**_orphaned(now, stale_after), "attempts": {"$lt": max_attempts}},
            {
                "$set": {
                    "status": TaskStatus.QUEUED.value, "owner": owner, "heartbeat_at": now,
                    "queued_at": now, "update_time": now,
                },
                "$inc": {"attempts": 1},
                "$unset": _RESET_ON_CLAIM,
            },
            sort=[("heartbeat_at", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )

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
        if doc is None:
            return None
        view = {name: doc.get(name) for name in PUBLIC_FIELDS}
        for name, value in view.items():
            if isinstance(value, datetime):
                view[name] = as_utc(value)
        return view


def _orphaned(now: datetime, stale_after: timedelta) -> dict[str, Any]:
    """Active tasks whose owner has not heartbeated within `stale_after` (or has none)."""
    return {"status": {"$in": list(ACTIVE)}, "heartbeat_at": {"$not": {"$gte": now - stale_after}}}


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
