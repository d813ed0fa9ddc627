"""Every database call on the task documents of one task type, on a pymongo `Collection`.

The collection is the queue. Correctness rests on MongoDB's atomic operations, never on a
process-local lock:
- a submission is one `find_one_and_update` upsert against the unique index on `task_id`
  (the run rule decides in the same operation);
- a worker claims the next due task with one `find_one_and_update` (highest priority, then
  oldest), which makes it `running` for that worker and increments `attempts`;
- every later write of an attempt names its attempt number, so a zombie attempt (timed out,
  orphaned, cancelled, released) can never overwrite what a newer attempt wrote.

Indexes, and the queries each one serves:
- `task_id_unique` (task_id): every query by id, the submission's upsert, heartbeats and cancel
  checks of the tasks a worker holds (`task_id $in [...]`).
- `claim_queued` (type, priority desc, run_at; only queued tasks): the claim's filter and sort,
  also when a limited claim passes over the tasks of held-back keys (`next_due`).
- `due_queued` (type, run_at; only queued tasks): the queue depth and the oldest due task.
- `running` (type, worker; only running tasks): the sweep's read of the heartbeat counters,
  and the running count per worker of `/workers`.
- `list_all` (type, created_at desc, task_id) and `list_status` (type, status, created_at desc,
  task_id): the list, newest first, with and without a status filter; stats by submission time.
- `started` (type, started_at) and `finished` (type, finished_at): stats over a time window.
- `expire_at_ttl` (only with `result_ttl`): MongoDB's TTL monitor removes finished tasks.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pymongo
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from ..errors import InvalidTransition, TaskIdTaken, TaskNotFound
from ..jsonable import as_utc, jsonable
from ..status import ACTIVE, ALLOWED_FROM, FINISHED, RERUNNABLE, TaskStatus
from .connection import is_mongodb, majority

logger = logging.getLogger(__name__)

#: Fields of the public view; owner, heartbeat, deadline and the rest stay out.
PUBLIC_FIELDS = (
    "task_id", "status", "params", "result", "error", "attempts",
    "created_at", "started_at", "finished_at", "update_time",
    "progress", "next_retry_at", "trace_id", "priority", "run_at", "queued_at", "worker", "held",
)
#: The keys of the rate and concurrency limits, stored at submission (`limits.Limits.keys`).
_KEY_FIELDS = ("rate_key", "concurrency_key")
_PUBLIC_PROJECTION = {"_id": 0, **{name: 1 for name in (*PUBLIC_FIELDS, *_KEY_FIELDS)}}
#: What a task carries only while an attempt of it runs (`deadline` only on tasks of 0.2).
_ATTEMPT_FIELDS = ("owner", "worker", "heartbeat_at", "beats", "deadline", "cancel_requested")
#: What a new submission starts without.
_RESET_ON_SUBMIT = (
    "result", "error", "started_at", "finished_at", "progress", "expire_at", "next_retry_at", *_ATTEMPT_FIELDS,
)
#: `attempts` counts the attempts started, and a cancel in the queue, which uses one up too.
_CANCELLED_IN_QUEUE = {"attempts": 1}
#: How much of the params the list's search looks at.
_SEARCHABLE_CHARS = 4096
#: How often a submission that lost a race on its id tries again while the task stays re-runnable.
_SUBMIT_TRIES = 8
#: How long the health check waits for the database (seconds; a probe's own timeout is short).
PING_TIMEOUT = 2.0


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class TaskStore:
    """The task documents of one task type (`task_type`) in one collection."""

    def __init__(self, collection: Any, task_type: str, result_ttl: timedelta | None = None) -> None:
        self.collection = collection
        self.type = task_type
        self.result_ttl = result_ttl
        self._indexed = False
        self._mongodb = is_mongodb(collection)
        #: Fills `held` in the views of queued tasks a limit holds back (`limits.Limits.explain`).
        self.explain: Callable[[builtins.list[dict[str, Any]], builtins.list[dict[str, Any]]], None] | None = None

    @property
    def _decisive(self) -> Any:
        """The collection for the writes a failover must not roll back (claims, status moves):
        majority write concern on MongoDB, so an acknowledged claim's attempt number is never
        reused. Looked up on use: a lazy collection connects in each process, after a fork."""
        return majority(self.collection) if self._mongodb else self.collection

    def ensure_indexes(self) -> None:
        """Create the indexes and adopt 0.1's tasks (idempotent; once per store object, at its
        first read or write, never at construction: no client is made before a fork)."""
        if self._indexed:
            return
        create = self.collection.create_index
        create([("task_id", ASCENDING)], unique=True, name="task_id_unique")
        # Partial: only queued (running) tasks are in them, so finished tasks cost the claim (the
        # sweep) nothing however many are kept.
        queued = {"status": TaskStatus.QUEUED.value}
        create([("type", ASCENDING), ("priority", DESCENDING), ("run_at", ASCENDING)], name="claim_queued",
               partialFilterExpression=queued)
        create([("type", ASCENDING), ("run_at", ASCENDING)], name="due_queued", partialFilterExpression=queued)
        create([("type", ASCENDING), ("worker", ASCENDING)], name="running",
               partialFilterExpression={"status": TaskStatus.RUNNING.value})
        create([("type", ASCENDING), ("created_at", DESCENDING), ("task_id", ASCENDING)], name="list_all")
        create([("type", ASCENDING), ("status", ASCENDING), ("created_at", DESCENDING), ("task_id", ASCENDING)],
               name="list_status")
        create([("type", ASCENDING), ("started_at", ASCENDING)], name="started")
        create([("type", ASCENDING), ("finished_at", ASCENDING)], name="finished")
        if self.result_ttl is not None:
            create([("expire_at", ASCENDING)], expireAfterSeconds=0, name="expire_at_ttl")
        self._indexed = True
        self.migrate()

    def migrate(self, now: datetime | None = None) -> int:
        """Adopt the tasks 0.1 stored (no `type`, `run_at`, `priority`): they become this type's,
        due now, and a queued one loses the owner 0.1 gave it. Returns how many were adopted.

        0.1 served one task type per collection. One indexed `find_one` when there is nothing
        to do, which is every start after the first.
        """
        if self.collection.find_one({"type": None}, {"_id": 1}) is None:
            return 0
        now = now or utcnow()
        adopt = {"type": self.type, "run_at": now, "priority": 0, "lost": 0, "retries": 0}
        queued = self.collection.update_many(
            {"type": None, "status": TaskStatus.QUEUED.value},
            {"$set": adopt, "$unset": {name: "" for name in _ATTEMPT_FIELDS}},
        ).modified_count
        others = self.collection.update_many({"type": None}, {"$set": adopt}).modified_count
        if queued + others:
            logger.info("%s: adopted %d task(s) stored by asynctask 0.1", self.type, queued + others)
        return queued + others

    # -- submission and claim -----------------------------------------------------------------

    def submit(
        self,
        task_id: str,
        params: Mapping[str, Any],
        *,
        priority: int = 0,
        run_at: datetime | None = None,
        rerun_after: timedelta | None = None,
        trace_id: str | None = None,
        claim_for: Mapping[str, Any] | None = None,
        stored: bool = False,
        only_new: bool = False,
        keys: Mapping[str, str | None] | None = None,
        now: datetime | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Submit the task if the run rule allows it, in one atomic operation.

        The task is stored `queued`, owned by nobody, due at `run_at` (default now). With
        `claim_for` (the fields `claim_fields()` gives) it is stored `running` for that worker
        at once instead, which saves the claim's round trip when the submitting process has a
        free slot. A task id not `stored` yet is first inserted (the unique index refuses a
        second one); an existing document gets the run rule's upsert, unless `only_new` (a
        schedule's tick: an id taken already is never submitted again). `keys` are the task's
        limit keys (`rate_key`, `concurrency_key`), stored with it. Returns the task's
        document and whether this call submitted it; when the task exists and may not run
        again, its document is returned unsubmitted.
        """
        self.ensure_indexes()
        now = now or utcnow()
        due = max(run_at, now) if run_at is not None else now
        fields: dict[str, Any] = {
            "type": self.type, "params": dict(params), "params_text": _searchable(params),
            "priority": priority, "run_at": due,
            "queued_at": now, "update_time": now, "trace_id": trace_id, "retries": 0, "lost": 0, **(keys or {}),
        }
        if claim_for is not None and due <= now:
            fields.update(claim_for, status=TaskStatus.RUNNING.value, started_at=now)
        else:
            fields["status"] = TaskStatus.QUEUED.value
        claimed = fields["status"] == TaskStatus.RUNNING.value
        if not stored:
            new = {**fields, "task_id": task_id, "created_at": now, "attempts": 1 if claimed else 0}
            try:
                self._decisive.insert_one(new)
                return new, True
            except DuplicateKeyError:
                if only_new:
                    existing = self.collection.find_one({"task_id": task_id})
                    if existing is not None:
                        return existing, False
                # it exists: the run rule decides
        query = {"task_id": task_id, "type": self.type, "$or": _claimable(now, rerun_after)}
        update: dict[str, Any] = {"$set": fields, "$setOnInsert": {"created_at": now}}
        if claimed:
            update["$inc"] = {"attempts": 1}
        else:
            update["$setOnInsert"]["attempts"] = 0
        update["$unset"] = {name: "" for name in _RESET_ON_SUBMIT if name not in fields}
        for _ in range(_SUBMIT_TRIES):
            try:
                doc = self._decisive.find_one_and_update(
                    query, update, upsert=True, return_document=ReturnDocument.AFTER
                )
                return doc, True
            except DuplicateKeyError:
                existing = self.collection.find_one({"task_id": task_id})
            if existing is None:
                continue  # removed meanwhile: insert it
            if existing.get("type", self.type) != self.type:
                raise TaskIdTaken(f"task id {task_id!r} belongs to a task of another type")
            if existing.get("status") not in RERUNNABLE:
                return existing, False
            # It was re-runnable a moment ago: a rival submission is under way; try again.
        raise InvalidTransition(f"task {task_id!r} kept changing while it was submitted")

    def claim(self, claim_for: Mapping[str, Any], now: datetime | None = None, *,
              match: Mapping[str, Any] | None = None, started: datetime | None = None) -> dict[str, Any] | None:
        """Take the next due task of this type for a worker: highest priority first, then oldest.

        One atomic `find_one_and_update` (served by the `claim` index) makes it `running` for
        the worker described by `claim_for`, and increments `attempts`: the new attempt's
        number, which fences out every earlier attempt. `match` narrows the tasks it may take
        (a rate-limited claim takes the one it picked); `started` is the `started_at` to write
        (the moment a rate limit counted the start; default now).
        """
        now = now or utcnow()
        query, update = self._move(
            TaskStatus.RUNNING, None, {**claim_for, "started_at": started or now},
            ("progress", "result", "next_retry_at"), {"attempts": 1}, now,
        )
        # The document as it was (cheaper than reading it back in the in-memory store), brought
        # up to date here with what the update wrote.
        doc = self._decisive.find_one_and_update(
            {**query, **(match or {}), "run_at": {"$lte": now}}, update,
            sort=[("priority", DESCENDING), ("run_at", ASCENDING)], return_document=ReturnDocument.BEFORE,
        )
        if doc is None:
            return None
        for name in update["$unset"]:
            doc.pop(name, None)
        doc.update(update["$set"], attempts=doc.get("attempts", 0) + 1)
        return doc

    @staticmethod
    def claim_fields(owner: str, worker: str, now: datetime | None = None) -> dict[str, Any]:
        """What a claim writes about the worker that runs the attempt. `beats` is the counter its
        heartbeats bump; `heartbeat_at` (the worker's own clock) is shown, never compared."""
        return {"owner": owner, "worker": worker, "heartbeat_at": now or utcnow(), "beats": 0}

    def next_due(self, conditions: Mapping[str, Any], limit: int = 1,
                 now: datetime | None = None) -> builtins.list[dict[str, Any]]:
        """The first `limit` due queued tasks a claim would take among those matching
        `conditions` (their ids, attempts and limit keys), in the claim's order, which the
        `claim_queued` index serves."""
        cursor = self.collection.find(
            {**conditions, "type": self.type, "status": TaskStatus.QUEUED.value, "run_at": {"$lte": now or utcnow()}},
            {"_id": 0, "task_id": 1, "attempts": 1, **{name: 1 for name in _KEY_FIELDS}},
        ).sort([("priority", DESCENDING), ("run_at", ASCENDING)]).limit(limit)
        return list(cursor)

    def count_due(self, conditions: Mapping[str, Any], now: datetime | None = None) -> int:
        """How many due queued tasks match `conditions`."""
        return self.collection.count_documents(
            {**conditions, "type": self.type, "status": TaskStatus.QUEUED.value, "run_at": {"$lte": now or utcnow()}}
        )

    def stored_params(self, task_id: str) -> dict[str, Any]:
        """The params a stored task was submitted with; `TaskNotFound` if there is no task."""
        self.ensure_indexes()  # (which adopts 0.1's tasks: they are re-runnable at once)
        doc = self.collection.find_one({"task_id": task_id, "type": self.type}, {"_id": 0, "params": 1})
        if doc is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        return dict(doc.get("params") or {})

    # -- status moves -------------------------------------------------------------------------

    def transition(
        self,
        task_id: str,
        to: TaskStatus | str,
        *,
        attempt: int | None = None,
        fields: Mapping[str, Any] | None = None,
        unset: tuple[str, ...] = (),
        inc: Mapping[str, int] | None = None,
        match: Mapping[str, Any] | None = None,
        only_from: tuple[str, ...] | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Move a task to status `to` if its current status allows it; fenced by `attempt`.

        `match` adds conditions the document must meet (e.g. its owner); `only_from` narrows
        the statuses it may move from. Returns False, writing nothing, when the task is in no
        status that may move to `to` or when `attempt` is no longer its current attempt.
        """
        query, update = self._move(to, only_from, fields, unset, inc, now)
        query.update(match or {}, task_id=task_id)
        if attempt is not None:
            query["attempts"] = attempt
        return self._decisive.update_one(query, update).matched_count == 1

    def transition_many(
        self,
        query: Mapping[str, Any],
        to: TaskStatus | str,
        *,
        fields: Mapping[str, Any] | None = None,
        unset: tuple[str, ...] = (),
        inc: Mapping[str, int] | None = None,
        only_from: tuple[str, ...] | None = None,
        now: datetime | None = None,
    ) -> int:
        """`transition` for every task of this type matching `query`; returns how many moved."""
        move, update = self._move(to, only_from, fields, unset, inc, now)
        return self._decisive.update_many({**query, **move}, update).modified_count

    def _move(
        self, to: TaskStatus | str, only_from: tuple[str, ...] | None, fields: Mapping[str, Any] | None,
        unset: tuple[str, ...], inc: Mapping[str, int] | None, now: datetime | None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The query and update of a move to `to`, checked against `ALLOWED_FROM`."""
        to = TaskStatus(to).value
        now = now or utcnow()
        sources = [status for status in ALLOWED_FROM[to] if only_from is None or status in only_from]
        if not sources:
            raise InvalidTransition(f"no task moves to {to!r} from {only_from}")
        update: dict[str, Any] = {"$set": {**(fields or {}), **self._expiry(to, now), "status": to, "update_time": now}}
        if unset:
            update["$unset"] = {name: "" for name in unset}
        if inc:
            update["$inc"] = dict(inc)
        return {"type": self.type, "status": sources[0] if len(sources) == 1 else {"$in": sources}}, update

    def finish(
        self,
        task_id: str,
        status: TaskStatus | str,
        *,
        attempt: int,
        result: Any = None,
        error: str | None = None,
        extra: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Record how a running attempt ended (success, failed, cancelled) unless it was superseded."""
        now = now or utcnow()
        fields = {**(extra or {}), "finished_at": now, "result": result, "error": error}
        return self.transition(
            task_id, status, attempt=attempt, now=now, fields=fields, unset=_ATTEMPT_FIELDS,
            only_from=(TaskStatus.RUNNING.value,),
        )

    def record(self, task_id: str, status: TaskStatus | str, *, result: Any = None, error: str | None = None,
               now: datetime | None = None) -> None:
        """Record an outcome for a task no attempt runs, creating the document if it is missing.

        This is what the original tool's `callback(future, task_id)` did when called by hand.
        """
        now = now or utcnow()
        self.collection.update_one(
            {"task_id": task_id, "type": self.type},
            {
                "$set": {"status": TaskStatus(status).value, "result": result, "error": error,
                         "finished_at": now, "update_time": now, **self._expiry(TaskStatus(status).value, now)},
                "$unset": {name: "" for name in _ATTEMPT_FIELDS},
                "$setOnInsert": {"created_at": now, "params": {}, "attempts": 0, "priority": 0},
            },
            upsert=True,
        )

    def retry_later(self, task_id: str, attempt: int, *, retries: int, error: str, at: datetime,
                    now: datetime | None = None) -> str | None:
        """Put a failed attempt back in the queue, due at `at`; no worker waits for it meanwhile."""
        return self.back_to_queue(
            task_id, attempt, now=now, fields={"retries": retries, "next_retry_at": at, "run_at": at, "error": error},
        )

    def release(self, owner: str, task_id: str, attempt: int, now: datetime | None = None) -> str | None:
        """Hand a stopping worker's running attempt back to the queue, due now, for any worker."""
        now = now or utcnow()
        return self.back_to_queue(task_id, attempt, now=now, match={"owner": owner}, fields={"run_at": now})

    def back_to_queue(
        self, task_id: str, attempt: int, *, fields: Mapping[str, Any], match: Mapping[str, Any] | None = None,
        inc: Mapping[str, int] | None = None, now: datetime | None = None,
    ) -> str | None:
        """The one way a running attempt's task goes back to the queue (a retry, a release, an
        orphan): `queued` without owner, or `cancelled` when a cancel was asked meanwhile, so a
        queued task never carries a cancel request. Fenced by `attempt` and `match`; returns the
        status written, or None when the attempt is no longer the task's current one.
        """
        now = now or utcnow()
        running = (TaskStatus.RUNNING.value,)
        for _ in range(_SUBMIT_TRIES):
            if self.transition(
                task_id, TaskStatus.CANCELLED, attempt=attempt, now=now, only_from=running,
                match={**(match or {}), "cancel_requested": True},
                fields={"finished_at": now, "error": "cancelled"}, unset=(*_ATTEMPT_FIELDS, "next_retry_at"),
            ):
                return TaskStatus.CANCELLED.value
            if self.transition(
                task_id, TaskStatus.QUEUED, attempt=attempt, now=now, only_from=running,
                match={**(match or {}), "cancel_requested": {"$ne": True}},
                fields=fields, unset=(*_ATTEMPT_FIELDS, "started_at"), inc=inc,
            ):
                return TaskStatus.QUEUED.value
            if not self.collection.find_one({**(match or {}), "task_id": task_id, "attempts": attempt,
                                             "status": TaskStatus.RUNNING.value}, {"_id": 1}):
                return None
            # A cancel request landed between the two writes: the first one applies now.
        return None

    def running_beats(self) -> dict[tuple[str, int], int | None]:
        """The heartbeat counter of each running task of this type, by (task id, attempt);
        served by the `running` partial index (running tasks only, by type)."""
        cursor = self.collection.find(
            {"type": self.type, "status": TaskStatus.RUNNING.value}, {"_id": 0, "task_id": 1, "attempts": 1, "beats": 1}
        )
        return {(doc["task_id"], doc.get("attempts", 0)): doc.get("beats") for doc in cursor}

    def requeue_orphan(self, task_id: str, attempt: int, beats: int | None, max_attempts: int,
                       now: datetime | None = None) -> str | None:
        """A running attempt whose heartbeat counter stayed at `beats` (its worker went silent):
        back to the queue, or `failed` once its workers were lost `max_attempts` times, or
        `cancelled` if a cancel was asked. Fenced by the counter: a beat that lands first wins.
        Returns the status written, or None."""
        now = now or utcnow()
        silent = {"beats": beats}
        if self.transition(
            task_id, TaskStatus.FAILED, attempt=attempt, now=now, only_from=(TaskStatus.RUNNING.value,),
            match={**silent, "lost": {"$gte": max_attempts - 1}, "cancel_requested": {"$ne": True}},
            fields={"finished_at": now,
                    "error": f"worker lost: the task's worker stopped in each of {max_attempts} attempt(s)"},
            unset=_ATTEMPT_FIELDS,
        ):
            return TaskStatus.FAILED.value
        return self.back_to_queue(task_id, attempt, match=silent, fields={"run_at": now}, inc={"lost": 1}, now=now)

    def request_cancel(self, task_id: str, now: datetime | None = None) -> str:
        """Cancel a queued task at once, or ask a running task's worker to stop it.

        Each try is one atomic write whose answer is the truth at that instant: "cancelled" (it
        was queued), "running" (the stop is requested; any later way back to the queue ends it
        `cancelled`). A task that moved between the two writes is tried again. Raises
        `TaskNotFound` for an unknown task, `InvalidTransition` for a finished one.
        """
        self.ensure_indexes()
        now = now or utcnow()
        for _ in range(_SUBMIT_TRIES):
            if self.transition(
                task_id, TaskStatus.CANCELLED, only_from=(TaskStatus.QUEUED.value,), now=now,
                fields={"finished_at": now, "error": "cancelled before it started"},
                unset=(*_ATTEMPT_FIELDS, "next_retry_at"), inc=_CANCELLED_IN_QUEUE,
            ):
                return TaskStatus.CANCELLED.value
            if self.collection.update_one(
                {"task_id": task_id, "type": self.type, "status": TaskStatus.RUNNING.value},
                {"$set": {"cancel_requested": True, "update_time": now}},
            ).matched_count:
                return TaskStatus.RUNNING.value
            doc = self.collection.find_one({"task_id": task_id, "type": self.type}, {"status": 1})
            if doc is None:
                raise TaskNotFound(f"task {task_id!r} not found")
            if doc.get("status") not in ACTIVE:
                raise InvalidTransition(f"task {task_id!r} is {doc.get('status')} and cannot be cancelled")
        raise InvalidTransition(f"task {task_id!r} kept changing while it was cancelled")

    def bulk(self, action: str, *, status: str | None = None, task_ids: list[str] | None = None,
             now: datetime | None = None) -> dict[str, int]:
        """Retry the finished tasks, or cancel the unfinished ones, that `status`/`task_ids` select."""
        self.ensure_indexes()
        now = now or utcnow()
        selected: dict[str, Any] = {"type": self.type}
        if status is not None:
            selected["status"] = status
        if task_ids is not None:
            selected["task_id"] = {"$in": list(task_ids)}
        if action == "retry":
            sources = tuple(s for s in FINISHED if status in (None, s))
            matched = self.collection.count_documents({**selected, "status": {"$in": list(sources)}}) if sources else 0
            changed = self.transition_many(
                selected, TaskStatus.QUEUED, now=now, only_from=sources,
                fields={"run_at": now, "queued_at": now, "retries": 0, "lost": 0},
                unset=_RESET_ON_SUBMIT,
            ) if sources else 0
            return {"matched": matched, "changed": changed}
        queued = status in (None, TaskStatus.QUEUED.value)
        running = status in (None, TaskStatus.RUNNING.value)
        matched = self.collection.count_documents(
            {**selected, "status": {"$in": [s for s in ACTIVE if status in (None, s)]}}
        )
        changed = self.transition_many(
            selected, TaskStatus.CANCELLED, now=now, only_from=(TaskStatus.QUEUED.value,),
            fields={"finished_at": now, "error": "cancelled before it started"},
            unset=(*_ATTEMPT_FIELDS, "next_retry_at"), inc=_CANCELLED_IN_QUEUE,
        ) if queued else 0
        if running:
            changed += self.collection.update_many(
                {**selected, "status": TaskStatus.RUNNING.value, "cancel_requested": {"$ne": True}},
                {"$set": {"cancel_requested": True, "update_time": now}},
            ).modified_count
        return {"matched": matched, "changed": changed}

    # -- what a worker does for the tasks it holds ------------------------------------------

    def heartbeat(self, owner: str, task_ids: list[str], now: datetime | None = None) -> set[str]:
        """Bump the heartbeat counter of the running tasks this worker holds, in one write.

        Only the tasks named: one whose outcome could not be recorded is dropped from the list
        and so becomes an orphan that runs again. Returns the ids no longer this worker's
        (a sweep judged it lost meanwhile): their attempts should stop, their writes are fenced.
        """
        if not task_ids:
            return set()
        mine = {"task_id": {"$in": task_ids}, "owner": owner, "status": TaskStatus.RUNNING.value}
        touched = self.collection.update_many(
            mine, {"$set": {"heartbeat_at": now or utcnow()}, "$inc": {"beats": 1}},
        ).matched_count
        if touched == len(set(task_ids)):
            return set()
        return set(task_ids) - {doc["task_id"] for doc in self.collection.find(mine, {"_id": 0, "task_id": 1})}

    def cancel_requests(self, owner: str, task_ids: list[str]) -> list[tuple[str, int]]:
        """(task_id, attempt) of this worker's running tasks that someone asked to cancel."""
        if not task_ids:
            return []
        cursor = self.collection.find(
            {"task_id": {"$in": task_ids}, "owner": owner, "cancel_requested": True},
            {"_id": 0, "task_id": 1, "attempts": 1},
        )
        return [(doc["task_id"], doc["attempts"]) for doc in cursor]

    def progress(self, task_id: str, attempt: int, percent: float, message: str | None) -> bool:
        """Record the progress of a running attempt; ignored once the attempt is superseded."""
        return self.collection.update_one(
            {"task_id": task_id, "attempts": attempt, "status": TaskStatus.RUNNING.value},
            {"$set": {"progress": {"percent": percent, "message": message}}},
        ).matched_count == 1

    def finished_among(self, task_ids: builtins.list[str]) -> builtins.list[str]:
        """Which of `task_ids` have finished (one query on the task-id index), for long-polls."""
        cursor = self.collection.find(
            {"task_id": {"$in": task_ids}, "type": self.type, "status": {"$in": list(FINISHED)}},
            {"_id": 0, "task_id": 1},
        )
        return [doc["task_id"] for doc in cursor]

    def is_latest(self, task_id: str, attempt: int) -> bool:
        """Whether `attempt` is the task's latest attempt (running or just ended)."""
        return self.collection.find_one({"task_id": task_id, "type": self.type, "attempts": attempt},
                                        {"_id": 1}) is not None

    def is_current(self, task_id: str, attempt: int) -> bool:
        """Whether `attempt` is still the running attempt of the task."""
        return self.collection.find_one(
            {"task_id": task_id, "attempts": attempt, "status": TaskStatus.RUNNING.value}, {"_id": 1}
        ) is not None

    # -- reading ------------------------------------------------------------------------------

    def public(self, task_id: str) -> dict[str, Any] | None:
        """The public view of a task, times as aware UTC; None if unknown."""
        self.ensure_indexes()  # (which adopts 0.1's tasks: they are visible at once)
        doc = self.collection.find_one({"task_id": task_id, "type": self.type}, _PUBLIC_PROJECTION)
        return None if doc is None else self._views([doc])[0]

    def list(self, status: str | None = None, limit: int = 50, skip: int = 0,
             search: str | None = None) -> dict[str, Any]:
        """A page of public views, newest first, with the total and the count per status.

        `search` keeps tasks whose id, params or error hold the text (a scan of the type's
        tasks, bounded by the page: MongoDB stops once `skip + limit` match).
        """
        self.ensure_indexes()
        query: dict[str, Any] = {"type": self.type}
        if status:
            query["status"] = status
        if search:
            pattern = re.escape(search)
            query["$or"] = [
                {"task_id": {"$regex": pattern, "$options": "i"}},
                {"error": {"$regex": pattern, "$options": "i"}},
                {"params_text": {"$regex": pattern, "$options": "i"}},
            ]
        docs = (
            self.collection.find(query, _PUBLIC_PROJECTION)
            .sort([("created_at", DESCENDING), ("task_id", ASCENDING)])
            .skip(skip)
            .limit(limit)
        )
        tasks = self._views(list(docs))
        counts = self.counts()
        if search:
            total = self.collection.count_documents(query)
        else:
            total = counts.get(status, 0) if status else sum(counts.values())
        return {"tasks": tasks, "total": total, "counts": counts}

    def counts(self) -> dict[str, int]:
        """How many tasks of this type are in each status."""
        rows = self.collection.aggregate([
            {"$match": {"type": self.type}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}},
        ])
        return {row["_id"]: row["n"] for row in rows if row["_id"] is not None}

    def queue_depth(self, now: datetime | None = None) -> tuple[int, datetime | None]:
        """How many tasks are due and waiting, and since when the oldest of them is due."""
        due = {"type": self.type, "status": TaskStatus.QUEUED.value, "run_at": {"$lte": now or utcnow()}}
        oldest = self.collection.find_one(due, {"_id": 0, "run_at": 1}, sort=[("run_at", ASCENDING)])
        if oldest is None:
            return 0, None
        return self.collection.count_documents(due), as_utc(oldest["run_at"])

    def existing(self, task_ids: builtins.list[str]) -> set[str]:
        """Which of `task_ids` have a document."""
        cursor = self.collection.find({"task_id": {"$in": task_ids}}, {"_id": 0, "task_id": 1})
        return {doc["task_id"] for doc in cursor}

    def ping(self, timeout: float = PING_TIMEOUT) -> None:
        """Raise unless the database answers a query within `timeout` seconds (server selection
        included: an unreachable or stalled database is a prompt error, not a 30 s wait)."""
        with pymongo.timeout(timeout):
            self.collection.find_one({"task_id": "__asynctask_healthz__"}, {"_id": 1})

    def update(self, task_id: str, data: Mapping[str, Any], now: datetime | None = None) -> None:
        """Upsert fields of a task's document, stamping `update_time` unless given.

        The one write of a status that does not go through `transition`: `update_task` is the
        application's own way to set a task's fields, e.g. to store a `pending` task.
        """
        fields = {key: value.value if isinstance(value, TaskStatus) else value for key, value in data.items()}
        fields.setdefault("update_time", now or utcnow())
        on_insert = {"type": self.type, "created_at": fields["update_time"]}
        self.collection.update_one(
            {"task_id": task_id},
            {"$set": fields, "$setOnInsert": {k: v for k, v in on_insert.items() if k not in fields}},
            upsert=True,
        )

    def _views(self, docs: builtins.list[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
        """The public views of stored documents, with `held` filled in when limits apply."""
        views = [_public(doc) for doc in docs]
        if self.explain is not None and views:
            self.explain(docs, views)
        return views

    def _expiry(self, status: str, now: datetime) -> dict[str, Any]:
        """`expire_at` for a task that finishes now, when finished tasks expire."""
        if self.result_ttl is None or status not in FINISHED:
            return {}
        return {"expire_at": now + self.result_ttl}


def _public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document as its public view, times as aware UTC."""
    view = {name: doc.get(name) for name in PUBLIC_FIELDS}
    for name, value in view.items():
        if isinstance(value, datetime):
            view[name] = as_utc(value)
    queued_at, run_at = view["queued_at"], view["run_at"]
    if run_at is not None and queued_at is not None and run_at <= queued_at:
        view["run_at"] = None  # due at once: only a later due time is shown
    if view["status"] != TaskStatus.RUNNING.value:
        view["worker"] = None
    return view


def _searchable(params: Mapping[str, Any]) -> str:
    """The params as text, for the list's search (the first few KiB suffice to find a task)."""
    return json.dumps(jsonable(dict(params)), sort_keys=True, ensure_ascii=False)[:_SEARCHABLE_CHARS]


def _claimable(now: datetime, rerun_after: timedelta | None) -> list[dict[str, Any]]:
    """The run rule as query clauses: a document matching one may be submitted again."""
    clauses: list[dict[str, Any]] = [
        {"status": {"$in": list(RERUNNABLE)}},
        {"status": {"$exists": False}},
        # Running with no worker: nothing will ever finish it. A silent worker's task is put
        # back in the queue by the sweep, which judges silence without comparing clocks.
        {"status": TaskStatus.RUNNING.value, "owner": None},
    ]
    if rerun_after is not None:
        clauses.append({"status": TaskStatus.SUCCESS.value, "update_time": {"$lt": now - rerun_after}})
    return clauses
