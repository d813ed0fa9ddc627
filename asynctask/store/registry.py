"""What workers share besides the task documents, in two small companion collections.

- `<tasks>.workers`: one document per worker process and task type (host, pid, slots, running,
  started, last heartbeat, and a `beat` counter each heartbeat bumps); `GET /workers` lists
  them. The sweep removes an entry whose counter stopped (`liveness`), so dead workers are
  forgotten without comparing clocks; a clean stop removes its own. The same collection holds
  the sweep lease of each task type (`kind: "lease"`, no `type`).
- `<tasks>.slots`: `max_concurrency` slot documents per capped task type. A worker takes a free
  slot (one atomic `find_one_and_update`) before it claims a task, and frees it when the
  attempt ends. A slot whose task no longer runs with that attempt (its worker was killed) is
  freed by any worker's sweep, so a dead worker never keeps a slot for good.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from ..jsonable import as_utc
from ..liveness import Silence
from ..status import TaskStatus
from .tasks import utcnow

logger = logging.getLogger(__name__)

#: The holder of a slot that was taken for a claim still under way.
_CLAIMING = "~claiming"


def companion(collection: Any, suffix: str) -> Any:
    """The collection `<name>.<suffix>` in the same database as `collection`."""
    return collection.database.get_collection(f"{collection.name}.{suffix}")


class Workers:
    """The worker registry: one document per (worker process, task type)."""

    def __init__(self, collection: Any) -> None:
        self._tasks = collection
        self._indexed = False

    @property
    def collection(self) -> Any:
        """Looked up on use: the database client is made in each process, never before a fork."""
        return companion(self._tasks, "workers")

    def beat(self, owner: str, task_type: str, *, slots: int, running: int, started_at: datetime,
             host: str | None = None, pid: int | None = None, remote: bool = False,
             now: datetime | None = None) -> None:
        """Register or refresh this worker for `task_type` (one upsert). `host` and `pid` default
        to those `owner` names; `remote` marks a worker that reaches the service over HTTP."""
        if not self._indexed:
            self.collection.create_index([("type", ASCENDING)], name="type")
            self._indexed = True
        if host is None or pid is None:
            host, pid_text = owner.split(":")[:2]
            pid = int(pid_text)
        self.collection.update_one(
            {"_id": f"{owner}/{task_type}"},
            {"$set": {
                "owner": owner, "worker": f"{host}:{pid}", "host": host, "pid": pid, "type": task_type,
                "slots": slots, "running": running, "started_at": started_at, "heartbeat_at": now or utcnow(),
                "remote": remote,
            }, "$inc": {"beat": 1}},
            upsert=True,
        )

    def leave(self, owner: str, task_type: str) -> None:
        """Remove this worker's entry for `task_type` (a clean stop)."""
        self.collection.delete_one({"_id": f"{owner}/{task_type}"})

    def beats(self, task_type: str) -> dict[str, int | None]:
        """The `beat` counter of each registered worker of `task_type`, by entry id."""
        cursor = self.collection.find({"type": task_type}, {"_id": 1, "beat": 1})
        return {doc["_id"]: doc.get("beat") for doc in cursor}

    def forget(self, entry_id: str, beat: int | None) -> bool:
        """Remove a silent worker's entry, unless it beat since `beat` was read."""
        return self.collection.delete_one({"_id": entry_id, "beat": beat}).deleted_count == 1

    def live(self, types: Iterable[str]) -> list[dict[str, Any]]:
        """Registered workers serving any of `types`, one entry per process (`host:pid`) with its
        types added up. `running` is counted from the task documents now (the `claim` index's
        (type, status) prefix serves it), not taken from the last heartbeat."""
        types = list(types)
        merged: dict[str, dict[str, Any]] = {}
        for doc in self.collection.find({"type": {"$in": types}}):
            entry = merged.setdefault(doc["worker"], {
                "worker": doc["worker"], "host": doc["host"], "pid": doc["pid"], "types": [],
                "slots": 0, "running": 0, "started_at": as_utc(doc["started_at"]), "remote": bool(doc.get("remote")),
                "heartbeat_at": as_utc(doc["heartbeat_at"]),
            })
            entry["types"].append(doc["type"])
            entry["slots"] += doc["slots"]
            entry["heartbeat_at"] = max(entry["heartbeat_at"], as_utc(doc["heartbeat_at"]))
        if merged:
            rows = self._tasks.aggregate([
                {"$match": {"type": {"$in": types}, "status": TaskStatus.RUNNING.value}},
                {"$group": {"_id": "$worker", "n": {"$sum": 1}}},
            ])
            for row in rows:
                if row["_id"] in merged:
                    merged[row["_id"]]["running"] = row["n"]
        return sorted(merged.values(), key=lambda w: (w["host"], w["pid"]))


def live_workers(tasks: Iterable[Any]) -> list[dict[str, Any]]:
    """The live workers of every task type in `tasks` (`AsyncTask`s, maybe on several
    collections), one entry per process with the types it serves added up."""
    tasks = list(tasks)
    types = sorted({task.name for task in tasks})
    found: dict[str, dict[str, Any]] = {}
    for task in {id(task.collection): task for task in tasks}.values():
        for entry in task.asynctask_engine.workers.live(types):
            found.setdefault(entry["worker"], entry)
    return sorted(found.values(), key=lambda w: (w["host"], w["pid"]))


class ConcurrencySlots:
    """At most `limit` running tasks of one type across every process and host."""

    def __init__(self, collection: Any, task_type: str, limit: int) -> None:
        self.tasks = collection
        self.type, self.limit = task_type, limit
        self._made = False

    @property
    def collection(self) -> Any:
        return companion(self.tasks, "slots")

    def _make(self) -> None:
        """Create the slot documents once (any process may; the ids make it idempotent)."""
        if self._made:
            return
        for index in range(self.limit):
            try:
                self.collection.update_one(
                    {"_id": f"{self.type}#{index}"},
                    {"$setOnInsert": {"type": self.type, "index": index, "holder": None}},
                    upsert=True,
                )
            except DuplicateKeyError:
                pass  # another process made it at the same moment
        self._made = True

    def acquire(self, now: datetime | None = None) -> str | None:
        """Take a free slot for a claim about to be made; its id, or None when all are taken."""
        self._make()
        slot = self.collection.find_one_and_update(
            {"type": self.type, "index": {"$lt": self.limit}, "holder": None},
            {"$set": {"holder": _CLAIMING, "held_at": now or utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        return None if slot is None else slot["_id"]

    def all_taken(self) -> bool:
        """Whether every slot is held now (two counts; writes nothing)."""
        mine = {"type": self.type, "index": {"$lt": self.limit}}
        collection = self.collection
        return bool(collection.count_documents(mine) == self.limit
                    and collection.count_documents({**mine, "holder": None}) == 0)

    def bind(self, slot_id: str, task_id: str, attempt: int) -> None:
        """The claim succeeded: the slot is held by this attempt of `task_id`."""
        self.collection.update_one({"_id": slot_id}, {"$set": {"holder": task_id, "attempt": attempt}})

    def free(self, slot_id: str) -> None:
        """The claim found nothing: give the slot back."""
        self.collection.update_one({"_id": slot_id, "holder": _CLAIMING}, {"$set": {"holder": None}})

    def release(self, task_id: str, attempt: int) -> None:
        """The attempt ended: free the slot it held."""
        self.collection.update_one(
            {"type": self.type, "holder": task_id, "attempt": attempt},
            {"$set": {"holder": None}, "$unset": {"attempt": ""}},
        )

    def reap(self, stalled: Silence[str]) -> int:
        """Free slots whose attempt no longer runs (a killed worker's), or whose claim stalled:
        taken for a claim whose `held_at` mark `stalled` saw unchanged for `stale_after`."""
        started = stalled.clock()
        slots = list(self.collection.find({"type": self.type, "holder": {"$ne": None}}))
        claiming = {slot["_id"]: slot.get("held_at") for slot in slots if slot["holder"] == _CLAIMING}
        given_up = set(stalled.observe(claiming, started, stalled.clock()))
        freed = 0
        for slot in slots:
            holder, attempt = slot["holder"], slot.get("attempt")
            if holder == _CLAIMING:
                if slot["_id"] not in given_up:
                    continue
            elif self.tasks.find_one(
                {"task_id": holder, "attempts": attempt, "status": TaskStatus.RUNNING.value}, {"_id": 1}
            ) is not None:
                continue
            freed += self.collection.update_one(
                {"_id": slot["_id"], "holder": holder, "held_at": slot.get("held_at")},
                {"$set": {"holder": None}, "$unset": {"attempt": ""}},
            ).modified_count
        return freed


def worker_name() -> str:
    """`host:pid` of this process, as the public view and `/workers` show it."""
    return f"{socket.gethostname()}:{os.getpid()}"
