"""The schedules of each task type, in the companion collection `<tasks>.schedules`.

One document per (task type, schedule), `_id` = `<type>/<name>` (a name holds no "/"):
- the definition: `cron` or `every` (seconds), `tz`, `params`, `priority`, `catch_up`,
  `catch_up_window` (seconds); and `enabled`;
- `declared`: the definition the code declared when it last changed (None for a schedule added
  at run time). A process that declares the schedule writes its definition at start only when
  the code's declaration differs from this one, and never touches `enabled`: a pause, or a
  change made at run time, survives restarts until the code's declaration itself changes;
- `cursor`: every tick up to this time was handled (enqueued, or skipped by the catch-up
  policy). It only moves forward, so a tick is never enqueued twice, even once its task was
  removed; `next_at` is the first tick after it (None when there is none);
- `last_tick`, `last_task_id`, `error` and `runs`: the newest `RUNS_KEPT` tasks the schedule
  made (`task_id`, `tick`, `at`), newest last;
- `rev`: bumped by every write of the definition, `enabled` or the cursor, each of which is
  conditional on the `rev` it read. Nothing is locked and nobody leads: of two processes
  evaluating the same schedule, one moves the cursor and the other's write matches nothing.

Indexes, and the queries each one serves:
- `due` (type, enabled, next_at): the evaluator's read of a type's enabled schedules (and the
  list of a type's schedules, by its prefix).
- The last runs of a schedule are its `runs`, read with the schedule; their statuses come from
  the task collection's `task_id_unique` index (`task_id $in [...]`).

Cursor writes use majority write concern on MongoDB, like claims and outcomes: a failover
never rolls back a cursor move and so never enqueues a tick twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from .connection import majority
from .registry import companion

#: How many of a schedule's newest tasks its document keeps (the dashboard's strip of runs).
RUNS_KEPT = 20


def stored_time(value: datetime) -> datetime:
    """`value` cut to the millisecond, as BSON keeps it: the value read back compares equal."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


class ScheduleStore:
    """The schedule documents of one task type (`task_type`) beside the task collection."""

    def __init__(self, tasks: Any, task_type: str) -> None:
        self._tasks = tasks
        self.type = task_type
        self._indexed = False

    @property
    def collection(self) -> Any:
        """Looked up on use: the database client is made in each process, never before a fork."""
        return companion(self._tasks, "schedules")

    @property
    def _decisive(self) -> Any:
        return majority(self.collection)

    def ensure_indexes(self) -> None:
        """Create the indexes (idempotent; once per store object)."""
        if not self._indexed:
            self.collection.create_index(
                [("type", ASCENDING), ("enabled", ASCENDING), ("next_at", ASCENDING)], name="due")
            self._indexed = True

    def key(self, name: str) -> str:
        return f"{self.type}/{name}"

    # -- reading --------------------------------------------------------------------------------

    def get(self, name: str) -> dict[str, Any] | None:
        return self.collection.find_one({"_id": self.key(name)})

    def all(self) -> list[dict[str, Any]]:
        """Every schedule of the type, by name."""
        return sorted(self.collection.find({"type": self.type}), key=lambda doc: doc["name"])

    def enabled(self) -> list[dict[str, Any]]:
        """The type's enabled schedules (the evaluator's one read per round)."""
        return list(self.collection.find({"type": self.type, "enabled": True}))

    def other_type(self, name: str) -> str | None:
        """The type of another task type's schedule named `name` in the same collection, if any."""
        doc = self.collection.find_one({"name": name, "type": {"$ne": self.type}}, {"type": 1})
        return None if doc is None else doc["type"]

    def task_statuses(self, task_ids: list[str]) -> dict[str, str]:
        """The status of each of `task_ids` that still has a task document."""
        if not task_ids:
            return {}
        cursor = self._tasks.find({"task_id": {"$in": task_ids}}, {"_id": 0, "task_id": 1, "status": 1})
        return {doc["task_id"]: doc.get("status") for doc in cursor}

    # -- writing --------------------------------------------------------------------------------

    def insert(self, doc: Mapping[str, Any]) -> bool:
        """Store a new schedule; False when the type has one of that name already."""
        self.ensure_indexes()
        try:
            self._decisive.insert_one({**doc, "_id": self.key(doc["name"]), "type": self.type, "rev": 0})
        except DuplicateKeyError:
            return False
        return True

    def write(self, name: str, rev: int, fields: Mapping[str, Any], *,
              runs: list[dict[str, Any]] | None = None) -> bool:
        """Set `fields` (and add `runs`) if the schedule is still at revision `rev`; bumps it.
        False, writing nothing, when someone else wrote it since (or it was removed)."""
        update: dict[str, Any] = {"$set": dict(fields), "$inc": {"rev": 1}}
        if runs:
            update["$push"] = {"runs": {"$each": runs, "$slice": -RUNS_KEPT}}
        return self._decisive.update_one({"_id": self.key(name), "rev": rev}, update).matched_count == 1

    def add_run(self, name: str, run: dict[str, Any], fields: Mapping[str, Any]) -> None:
        """Note a task made outside the ticks (a trigger): no cursor moves, no revision either."""
        self.collection.update_one(
            {"_id": self.key(name)},
            {"$set": dict(fields), "$push": {"runs": {"$each": [run], "$slice": -RUNS_KEPT}}},
        )

    def delete(self, name: str) -> bool:
        return self._decisive.delete_one({"_id": self.key(name)}).deleted_count == 1
