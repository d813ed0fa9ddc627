"""Rate limits and per-key concurrency on the database: the documents of `<tasks>.limits`.

Every grant and every give-back is one atomic write on one document; no process holds a lock.

- **Rate** (`kind: "rate"`): one document per task type, or per (type, rate key), holding
  `tat`, the "theoretical arrival time" of GCRA (the generic cell rate algorithm) in integer
  milliseconds on the database's clock (`clock.DatabaseClock`). With `interval` = period / N
  (rounded up) and `tolerance` = burst x interval, a start is allowed once `tat - tolerance`
  is not after now, and books `tat = max(tat, now) + interval`. So in any window of the period
  at most N + burst tasks start. The check uses the earliest bound of the database's time and
  the booking its latest, so not knowing that time exactly can only delay a start.
- **Concurrency** (`kind: "concurrency"`): one document per (type, concurrency key), holding
  the attempts that hold a share of the key (`holders`: `{task_id, attempt}`) and their
  `count`. A share is taken by one conditional `$push` (count under the limit and that
  attempt not in already, so one attempt never holds two), upserting the document; it is
  given back by a `$pull` of that attempt when the attempt ends. The sweep (`reap`) gives back
  the shares of attempts that no longer run (a killed worker's), and removes the documents of
  idle keys.

A key that refuses a claim is marked `waiting` (with its type's name) until a start is taken
from it or a share given back. A claim reads only the marked keys that still refuse (plus the
type's own rate): keys that are busy while no task of theirs waits cost it nothing, however
many tenants run. The mark is a hint: a key that refuses unmarked costs one refused write.

Indexes: `waiting` (waiting; sparse) serves the claim's read of the keys that hold tasks back;
`rate_tat` (type, tat) and `concurrency_count` (type, count) the sweep's reads and removals.
Document ids are JSON (`["rate", type, key]`), so no type or key can make two ids equal.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from ..liveness import Silence
from ..status import TaskStatus
from .clock import DatabaseClock
from .registry import companion

logger = logging.getLogger(__name__)

#: How often a grant is tried again when rival writes keep changing its document.
_TRIES = 8
RATE, CONCURRENCY = "rate", "concurrency"


def _doc_id(kind: str, task_type: str, key: str | None) -> str:
    return json.dumps([kind, task_type, key], ensure_ascii=False, separators=(",", ":"))


@dataclass
class Blocked:
    """What holds tasks back now: rate keys with the time (ms) their next start is due, and the
    full concurrency keys. The key None stands for the type's own rate limit."""

    rates: dict[str | None, int] = field(default_factory=dict)
    full: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.rates or self.full)


class LimitDocs:
    """The limit documents of one task type.

    Args:
        tasks: the task collection (its companion `<name>.limits` holds the documents).
        task_type: the type whose limits these are.
        interval, tolerance: the rate's spacing and allowance in ms (None: no rate limit).
        keyed_rate: whether the rate applies per rate key rather than to the whole type.
        per_key: the most attempts of one concurrency key that run at once (None: no such limit).
        clock: the database's clock.
    """

    def __init__(self, tasks: Any, task_type: str, *, interval: int | None, tolerance: int, keyed_rate: bool,
                 per_key: int | None, clock: DatabaseClock) -> None:
        self.tasks, self.type = tasks, task_type
        self.interval, self.tolerance, self.keyed_rate = interval, tolerance, keyed_rate
        self.per_key = per_key
        self.clock = clock
        self._indexed = False

    @property
    def collection(self) -> Any:
        """Looked up on use: the database client is made in each process, never before a fork."""
        return companion(self.tasks, "limits")

    def ensure_indexes(self) -> None:
        if self._indexed:
            return
        self.collection.create_index([("waiting", ASCENDING)], name="waiting", sparse=True)
        self.collection.create_index([("type", ASCENDING), ("tat", ASCENDING)], name="rate_tat")
        self.collection.create_index([("type", ASCENDING), ("count", ASCENDING)], name="concurrency_count")
        self._indexed = True

    # -- what holds tasks back ----------------------------------------------------------------

    def blocked(self) -> Blocked:
        """The rate keys not due yet and the full concurrency keys that tasks wait on (marked
        `waiting`), and the type's own rate if it is not due yet: one query."""
        self.ensure_indexes()
        clauses: list[dict[str, Any]] = []
        earliest, _ = self.clock.bounds()
        if self.interval is not None:
            due = {"tat": {"$gt": earliest + self.tolerance}}
            clauses.append({"waiting": self.type, **due} if self.keyed_rate
                           else {"_id": _doc_id(RATE, self.type, None), **due})
        if self.per_key is not None:
            clauses.append({"waiting": self.type, "count": {"$gte": self.per_key}})
        blocked = Blocked()
        if not clauses:
            return blocked
        for doc in self.collection.find({"$or": clauses}, {"kind": 1, "key": 1, "tat": 1}):
            if doc.get("kind") == RATE:
                if self.keyed_rate == (doc.get("key") is not None):
                    blocked.rates[doc.get("key")] = doc["tat"] - self.tolerance
            elif doc.get("key") is not None:
                blocked.full.add(doc["key"])
        return blocked

    def states(self, rate_keys: set[str | None], concurrency_keys: set[str]) -> Blocked:
        """Which of these keys hold tasks back now (for the public view's `held`)."""
        ids = [_doc_id(RATE, self.type, key) for key in rate_keys]
        ids += [_doc_id(CONCURRENCY, self.type, key) for key in concurrency_keys]
        blocked = Blocked()
        if not ids:
            return blocked
        earliest, _ = self.clock.bounds()
        for doc in self.collection.find({"_id": {"$in": ids}}, {"kind": 1, "key": 1, "tat": 1, "count": 1}):
            if doc.get("kind") == RATE and self.interval is not None:
                until = doc.get("tat", 0) - self.tolerance
                if until > earliest:
                    blocked.rates[doc.get("key")] = until
            elif doc.get("kind") == CONCURRENCY and self.per_key is not None and doc.get("count", 0) >= self.per_key:
                blocked.full.add(doc["key"])
        return blocked

    # -- the rate ------------------------------------------------------------------------------

    def take(self, key: str | None) -> tuple[int, int] | int:
        """Take a start of rate `key` (None: the type's own rate).

        Returns (the time the start was counted at, the `tat` it booked) when taken, or the
        time (ms on the database's clock) the next start is due when refused.
        """
        assert self.interval is not None
        doc_id = _doc_id(RATE, self.type, key)
        interval, tolerance = self.interval, self.tolerance
        for _ in range(_TRIES):
            earliest, latest = self.clock.bounds()
            # Busy: the next start is booked one interval after the last.
            doc = self.collection.find_one_and_update(
                {"_id": doc_id, "tat": {"$gte": latest, "$lte": earliest + tolerance}},
                {"$inc": {"tat": interval}, "$unset": {"waiting": ""}},
                projection={"tat": 1}, return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
                return earliest, doc["tat"]
            # Idle, or never used: booked from now.
            booked = latest + interval
            try:
                self.collection.update_one(
                    {"_id": doc_id, "tat": {"$lt": latest, "$lte": earliest + tolerance}},
                    {"$set": {"tat": booked}, "$unset": {"waiting": ""},
                     "$setOnInsert": {"kind": RATE, "type": self.type, "key": key}},
                    upsert=True,
                )
                return earliest, booked
            except DuplicateKeyError:
                pass  # it exists, and neither clause holds (or held) for it
            doc = self.collection.find_one({"_id": doc_id}, {"tat": 1})
            if doc is not None and doc["tat"] - tolerance > earliest:
                self._mark(doc_id, {"tat": {"$gt": earliest + tolerance}})
                return doc["tat"] - tolerance
        return self.clock.bounds()[0] + interval  # rivals kept winning: try again soon

    def give(self, key: str | None, booked: int) -> bool:
        """Give back a start taken for a claim that lost its race, unless another start was
        booked since (then it simply expires: giving it back could let one too many start)."""
        assert self.interval is not None
        return self.collection.update_one(
            {"_id": _doc_id(RATE, self.type, key), "tat": booked}, {"$inc": {"tat": -self.interval}},
        ).modified_count == 1

    # -- per-key concurrency ---------------------------------------------------------------

    def hold(self, key: str, task_id: str, attempt: int) -> str:
        """Take a share of concurrency `key` for this attempt of `task_id`: "held"; or "full";
        or "taken" when that attempt holds one already (a rival is claiming the same task)."""
        assert self.per_key is not None
        doc_id = _doc_id(CONCURRENCY, self.type, key)
        entry = {"task_id": task_id, "attempt": attempt}
        for _ in range(_TRIES):
            try:
                self.collection.update_one(
                    {"_id": doc_id, "count": {"$lt": self.per_key}, "holders": {"$not": {"$elemMatch": entry}}},
                    {"$push": {"holders": entry}, "$inc": {"count": 1},
                     "$setOnInsert": {"kind": CONCURRENCY, "type": self.type, "key": key}},
                    upsert=True,
                )
                return "held"
            except DuplicateKeyError:
                pass
            doc = self.collection.find_one({"_id": doc_id}, {"count": 1, "holders": 1})
            if doc is not None and entry in (doc.get("holders") or []):
                return "taken"
            if doc is not None and doc.get("count", 0) >= self.per_key:
                self._mark(doc_id, {"count": {"$gte": self.per_key}})
                return "full"
        return "full"  # rivals kept winning: held back this time

    def unhold(self, key: str, task_id: str, attempt: int) -> bool:
        """Give back the share this attempt held; True when the key was full until now."""
        assert self.per_key is not None
        entry = {"task_id": task_id, "attempt": attempt}
        before = self.collection.find_one_and_update(
            {"_id": _doc_id(CONCURRENCY, self.type, key), "holders": {"$elemMatch": entry}},
            {"$pull": {"holders": entry}, "$inc": {"count": -1}, "$unset": {"waiting": ""}}, projection={"count": 1},
        )
        return before is not None and before.get("count", 0) >= self.per_key

    def _mark(self, doc_id: str, still: dict[str, Any]) -> None:
        """Mark a key that refused a claim (while it still refuses), for the next `blocked()`."""
        self.collection.update_one({"_id": doc_id, **still}, {"$set": {"waiting": self.type}})

    # -- the sweep -----------------------------------------------------------------------------

    def reap(self, stalled: Silence[tuple[str, str, int]]) -> int:
        """Give back the shares of attempts that no longer run (their worker was killed, or they
        ended without giving it back), and of claims that stalled: a share taken for a claim whose
        task `stalled` saw still unclaimed for `stale_after`. Idle documents are removed.
        Returns how many shares were given back."""
        self.ensure_indexes()
        clock = stalled.clock
        started = clock()
        docs = list(self.collection.find({"type": self.type, "count": {"$gt": 0}}, {"count": 1, "holders": 1}))
        entries = [(doc["_id"], entry) for doc in docs for entry in doc.get("holders") or []]
        tasks: dict[str, dict[str, Any]] = {}
        ids = sorted({entry["task_id"] for _, entry in entries})
        for start in range(0, len(ids), 1000):
            for task in self.tasks.find({"task_id": {"$in": ids[start:start + 1000]}},
                                        {"_id": 0, "task_id": 1, "attempts": 1, "status": 1}):
                tasks[task["task_id"]] = task
        claiming: dict[tuple[str, str, int], int] = {}
        gone: list[tuple[str, dict[str, Any]]] = []
        for doc_id, entry in entries:
            task = tasks.get(entry["task_id"])
            attempts = None if task is None else task.get("attempts", 0)
            status = None if task is None else task.get("status")
            if status == TaskStatus.RUNNING.value and attempts == entry["attempt"]:
                continue  # it runs: the share is in use
            if status == TaskStatus.QUEUED.value and attempts == entry["attempt"] - 1:
                claiming[(doc_id, entry["task_id"], entry["attempt"])] = 0  # a claim under way
                continue
            gone.append((doc_id, entry))
        for doc_id, task_id, attempt in stalled.observe(claiming, started, clock()):
            gone.append((doc_id, {"task_id": task_id, "attempt": attempt}))
        freed = 0
        for doc_id, entry in gone:
            freed += self.collection.update_one(
                {"_id": doc_id, "holders": {"$elemMatch": entry}}, {"$pull": {"holders": entry}, "$inc": {"count": -1}},
            ).modified_count
        for doc in docs:
            holders = doc.get("holders") or []
            if doc.get("count") != len(holders):  # never written so; repaired all the same
                self.collection.update_one({"_id": doc["_id"], "count": doc.get("count"), "holders": holders},
                                           {"$set": {"count": len(holders)}})
        earliest, _ = self.clock.bounds()
        # A rate key whose `tat` has passed books like one never used; a key nobody holds is empty.
        self.collection.delete_many({"type": self.type, "tat": {"$lt": earliest}})
        self.collection.delete_many({"type": self.type, "count": 0})
        return freed
