"""`ScheduleBook` (`api.schedules`): a task type's schedules, and the evaluation that turns
their ticks into tasks.

Evaluation runs inside every worker's loop, at most once per `poll_interval`, with no leader
and no lock:
1. read the type's enabled schedules (one indexed query); a schedule whose `next_at` has come
   is due;
2. insert each due tick as an ordinary task under its own id (`sched:<name>:<UTC time>`): the
   unique task id makes one task per tick, however many processes try (`only_new`: an id that
   exists is never submitted again);
3. move the schedule's cursor past the tick with a write conditional on the revision read, so
   of the processes that raced, one writes and the others match nothing.

A process that dies between 2 and 3 leaves the cursor behind; the next evaluation finds the
task's id taken and moves the cursor. A tick the cursor passed is never enqueued again, even
after its task was removed (`result_ttl`). The schedules declared on the class are written to
the store on first use in each process, never at construction (no database call before a fork).
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import bson
from bson.codec_options import CodecOptions

from ..errors import (
    InvalidParams,
    InvalidSchedule,
    InvalidTransition,
    ScheduleExists,
    ScheduleNotFound,
    ShuttingDown,
    TaskIdTaken,
)
from ..jsonable import as_utc
from ..store.schedules import ScheduleStore, stored_time
from ..store.tasks import utcnow
from ..validation import Signature
from .schedule import EPOCH, SCHEDULED_FOR, Schedule, check_name

if TYPE_CHECKING:
    from ..task import AsyncTask

logger = logging.getLogger(__name__)

#: A tick at most this many poll intervals old (and at least `MIN_ON_TIME`) is on time: due
#: whatever the catch-up policy. Older ticks were missed (no worker evaluated them in time).
ON_TIME_POLLS = 3
MIN_ON_TIME = timedelta(seconds=15)
#: How often a worker reads its type's schedules when none of them is due: often enough that a
#: schedule added, changed or resumed in another process is seen well within `MIN_ON_TIME`.
MIN_REFRESH = 5.0
#: A read older than this (seconds) is read again before a tick is inserted from it, so a
#: process that stalled meanwhile does not insert a tick that others handled long ago.
FRESH_READ = 1.0
#: How often a write that lost a race on the revision is tried again.
_TRIES = 8
_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)


def _normal(definition: Any) -> Any:
    """A definition as the store hands it back (tuples as lists, times in UTC), to compare."""
    return bson.decode(bson.encode({"d": definition}), codec_options=_CODEC)["d"]


class ScheduleBook:
    """The schedules of one task type: `api.schedules`.

    `declared` are the schedules of the class's `schedules` attribute: checked against `main`
    now (a `ValueError` at construction), stored on first use. Every method that depends on
    the time takes `now` (an aware datetime), so that tests can run a clock of their own.
    """

    def __init__(self, task: AsyncTask, declared: Sequence[Schedule] = ()) -> None:
        if isinstance(declared, (Schedule, str, bytes, Mapping)) or not isinstance(declared, Sequence):
            raise TypeError(f"{type(task).__name__}.schedules must be a list of Schedule, not {type(declared).__name__}")
        names: set[str] = set()
        for schedule in declared:
            if not isinstance(schedule, Schedule):
                raise TypeError(f"{type(task).__name__}.schedules holds {schedule!r}, not a Schedule")
            if schedule.name in names:
                raise InvalidSchedule(f"{type(task).__name__}.schedules names {schedule.name!r} twice")
            names.add(schedule.name)
        self._task = task
        self._engine = task.asynctask_engine
        self._signature: Signature = getattr(task, "_signature", None) or Signature(task.main)
        self._declared = tuple(declared)
        for schedule in self._declared:
            self._check_params(schedule)
        self._store = ScheduleStore(self._engine.store.collection, task.name)
        #: The wall clock (tests may replace it); the monotonic clock paces the rounds.
        self.clock: Callable[[], datetime] = utcnow
        poll = _seconds(getattr(task, "poll_interval", 1.0))
        self._poll = poll
        self._refresh = max(poll, MIN_REFRESH)
        #: How old a tick may be and still be on time.
        self.on_time = max(timedelta(seconds=ON_TIME_POLLS * poll), MIN_ON_TIME)
        self._lock = threading.Lock()
        self._synced = False
        self._next_round = 0.0
        self._refresh_at = 0.0
        self._wake_at: datetime | None = None
        #: The stored schedules found not valid (name, revision), each logged once.
        self._told: set[tuple[Any, Any]] = set()

    def __reduce__(self) -> tuple[Any, ...]:
        # What a child process running `main` gets: the declared schedules, no store.
        return tuple, (self._declared,)

    @property
    def declared(self) -> tuple[Schedule, ...]:
        """The schedules declared on the class."""
        return self._declared

    # -- managing schedules ---------------------------------------------------------------------

    def add(self, schedule: Schedule, *, now: datetime | None = None) -> dict[str, Any]:
        """Store a new schedule; its first tick is the first after now. Returns its view.

        Raises `ScheduleExists` (HTTP 409) for a name the type has, `InvalidSchedule` when its
        params do not fit `main`.
        """
        if not isinstance(schedule, Schedule):
            raise TypeError(f"add() takes a Schedule, not {type(schedule).__name__}")
        self._check_params(schedule)
        now = self._ready(now)
        other = self._store.other_type(schedule.name)
        if other is not None:
            raise ScheduleExists(f"type {other!r} of the same collection has a schedule named {schedule.name!r} "
                                 "(their tasks' ids would be the same)")
        if not self._store.insert(self._new_document(schedule, now, declared=False)):
            raise ScheduleExists(f"{self._task.name} has a schedule named {schedule.name!r} already")
        self._changed()
        return self.get(schedule.name, now=now)

    def get(self, name: str, *, now: datetime | None = None) -> dict[str, Any]:
        """The view of one schedule (see `list`); `ScheduleNotFound` if there is none."""
        now = self._ready(now)
        doc = self._document(name)
        return self._views([doc], now)[0]

    def update(self, name: str, /, *, now: datetime | None = None, **changes: Any) -> dict[str, Any]:
        """Change a schedule's fields (`cron`, `every`, `tz`, `params`, `priority`, `catch_up`,
        `catch_up_window`, `enabled`); they apply to the ticks after now. Returns its view.

        A schedule declared on the class keeps the change until the class's declaration of it
        changes.
        """
        if "name" in changes and changes["name"] != name:
            raise InvalidSchedule("a schedule cannot be renamed: add a new one and remove this one")
        changes.pop("name", None)
        now = self._ready(now)

        def change(current: Schedule) -> Schedule:
            new = current.replace(**changes)
            self._check_params(new)
            return new

        return self._rewrite(name, change, now)

    def pause(self, name: str, *, now: datetime | None = None) -> dict[str, Any]:
        """Enqueue no more ticks of the schedule until it is resumed. Returns its view."""
        return self._rewrite(name, lambda current: current.replace(enabled=False), self._ready(now))

    def resume(self, name: str, *, now: datetime | None = None) -> dict[str, Any]:
        """Enqueue the schedule's ticks again, from the first after now (the ticks of the pause
        are not caught up). Returns its view."""
        return self._rewrite(name, lambda current: current.replace(enabled=True), self._ready(now))

    def trigger(self, name: str, *, now: datetime | None = None) -> str:
        """Run the schedule's task once now (paused or not); moves no tick. Returns the task's id."""
        return self.run_now(name, now=now)["task_id"]

    def run_now(self, name: str, *, now: datetime | None = None) -> dict[str, Any]:
        """`trigger`, returning the new task's document as it was left (its id and status)."""
        now = self._ready(now)
        schedule = self._schedule(self._document(name))
        doc = self._enqueue(schedule, schedule.trigger_id(now), now)
        self._store.add_run(name, {"task_id": doc["task_id"], "tick": None, "at": stored_time(now)},
                            {"last_task_id": doc["task_id"], "updated_at": now})
        return doc

    def remove(self, name: str) -> None:
        """Remove a schedule; its tasks stay. One declared on the class comes back when a process
        that declares it starts: take it off the class (or pause it) to stop it for good."""
        check_name(name)
        self._ready(None)
        if not self._store.delete(name):
            raise ScheduleNotFound(f"{self._task.name} has no schedule named {name!r}")

    # -- evaluation -------------------------------------------------------------------------------

    def evaluate(self, now: datetime | None = None) -> builtins.list[str]:
        """Enqueue the due ticks of the type's schedules; returns the ids of their tasks.

        Without `now` (the worker loop) it runs at most once per `poll_interval`, and reads the
        store only when a schedule it knows of falls due or every few seconds to see changes
        made elsewhere. With `now` it always evaluates, at that time.
        """
        if getattr(self._task, "_remote", None) is not None:
            return []  # a remote worker reaches the service over HTTP only; the service's workers evaluate
        if now is None:
            pace = time.monotonic()
            if pace < self._next_round:
                return []
            self._next_round = pace + self._poll
            if pace < self._refresh_at and (self._wake_at is None or self.clock() < self._wake_at):
                return []
        self._ready(now)
        made: builtins.list[str] = []
        wake: datetime | None = None
        try:
            for doc in self._store.enabled():
                try:
                    ids, next_at = self._evaluate_one(doc, now)
                except ShuttingDown:
                    raise
                except InvalidSchedule as exc:  # stored by another version, or a time zone gone
                    if (doc.get("name"), doc.get("rev")) not in self._told:
                        self._told.add((doc.get("name"), doc.get("rev")))
                        logger.error("schedule %s of %s is not valid and does not run: %s",
                                     doc.get("name"), self._task.name, exc)
                    ids, next_at = [], None
                except Exception:  # one bad schedule never stops the others
                    logger.exception("schedule %s of %s: evaluation failed", doc.get("name"), self._task.name)
                    ids, next_at = [], None
                made += ids
                if next_at is not None and (wake is None or next_at < wake):
                    wake = next_at
        except ShuttingDown:
            return made
        self._wake_at, self._refresh_at = wake, time.monotonic() + self._refresh
        return made

    def _evaluate_one(self, doc: Mapping[str, Any], now: datetime | None) -> tuple[builtins.list[str], datetime | None]:
        """Enqueue one schedule's due ticks and move its cursor; (task ids, its next tick)."""
        schedule = self._schedule(doc)
        moment = now or self.clock()
        next_at = _time(doc.get("next_at"))
        if next_at is None or next_at > moment:
            return [], next_at
        cursor = as_utc(doc["cursor"])
        due = schedule.due(cursor, moment, self.on_time)
        if due.cut:
            logger.warning("schedule %s of %s: over %d missed ticks are due; the older ones are skipped",
                           schedule.name, self._task.name, len(due.ticks))
        made, runs, error = [], [], None
        read_at = time.monotonic()
        for tick in due.ticks:
            if now is None and not self._still_due(schedule, tick, read_at):
                break
            try:
                task = self._enqueue(schedule, schedule.tick_id(tick), tick)
            except (InvalidParams, TaskIdTaken) as exc:
                # The stored params no longer fit `main` (the code changed), or another type
                # took the id: this tick cannot run; the next ones are tried.
                error = f"the tick of {tick.isoformat()} was not enqueued: {exc}"
                logger.warning("schedule %s of %s: %s", schedule.name, self._task.name, error)
                continue
            made.append(task["task_id"])
            runs.append({"task_id": task["task_id"], "tick": tick, "at": stored_time(moment)})
        newest = max(cursor, due.newest or cursor)
        following = schedule.next_tick(newest)
        fields: dict[str, Any] = {"cursor": newest, "next_at": following}
        if runs:
            fields.update(last_tick=runs[-1]["tick"], last_task_id=runs[-1]["task_id"], error=None)
        if error is not None:
            fields["error"] = error
        self._store.write(schedule.name, doc["rev"], fields, runs=runs)
        return made, following

    def _still_due(self, schedule: Schedule, tick: datetime, read_at: float) -> bool:
        """Whether `tick` may still be inserted from a read made at `read_at` (monotonic): a read
        that has grown old is made again, so a stalled process inserts no tick that another
        handled meanwhile (and whose task may be gone by now)."""
        if time.monotonic() - read_at <= FRESH_READ:
            return True
        doc = self._store.get(schedule.name)
        return doc is not None and bool(doc.get("enabled")) and as_utc(doc["cursor"]) < tick

    # -- plumbing -----------------------------------------------------------------------------------

    def _ready(self, now: datetime | None) -> datetime:
        """Store the declared schedules, once per process; returns `now` (or the clock's time)."""
        moment = now or self.clock()
        if not self._synced:
            with self._lock:
                if not self._synced:
                    self._store.ensure_indexes()
                    for schedule in self._declared:
                        self._declare(schedule, moment)
                    self._synced = True
        return moment

    def _declare(self, schedule: Schedule, now: datetime) -> None:
        """Upsert a schedule the class declares: a new one is stored as declared (enabled or
        not); an existing one gets the code's definition only if the code's declaration
        changed, and keeps its `enabled` whatever the code says."""
        definition = schedule.definition()
        for _ in range(_TRIES):
            doc = self._store.get(schedule.name)
            if doc is None:
                if self._store.insert(self._new_document(schedule, now, declared=True)):
                    return
                continue  # another process stored it at the same moment
            if _normal(doc.get("declared")) == _normal(definition):
                return
            fields = {**definition, "declared": definition, **self._restart(schedule, doc, now)}
            if self._store.write(schedule.name, doc["rev"], fields):
                return
        logger.warning("schedule %s of %s: its declaration could not be stored (it kept changing)",
                       schedule.name, self._task.name)

    def _rewrite(self, name: str, change: Callable[[Schedule], Schedule], now: datetime) -> dict[str, Any]:
        """Apply `change` to a stored schedule, conditional on its revision (tried again when
        another process wrote meanwhile); the new definition and pause apply after now."""
        for _ in range(_TRIES):
            doc = self._document(name)
            current = self._schedule(doc)
            new = change(current)
            if new == current:
                return self._views([doc], now)[0]
            fields: dict[str, Any] = {**new.definition(), "enabled": new.enabled, "updated_at": now}
            if new.definition() != current.definition() or (new.enabled and not current.enabled):
                fields.update(self._restart(new, doc, now))
            if self._store.write(name, doc["rev"], fields):
                self._changed()
                return self.get(name, now=now)
        raise InvalidTransition(f"schedule {name!r} kept changing while it was written; try again")

    def _restart(self, schedule: Schedule, doc: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        """Cursor fields that make a new definition (or a resume) apply to the ticks after now."""
        cursor = max(as_utc(doc["cursor"]), stored_time(now))
        return {"cursor": cursor, "next_at": schedule.next_tick(cursor), "updated_at": now}

    def _new_document(self, schedule: Schedule, now: datetime, *, declared: bool) -> dict[str, Any]:
        now = stored_time(now)
        definition = schedule.definition()
        return {
            "name": schedule.name, **definition, "enabled": schedule.enabled,
            "declared": definition if declared else None, "cursor": now, "next_at": schedule.next_tick(now),
            "last_tick": None, "last_task_id": None, "runs": [], "error": None, "created_at": now, "updated_at": now,
        }

    def _document(self, name: str) -> dict[str, Any]:
        doc = self._store.get(check_name(name))
        if doc is None:
            raise ScheduleNotFound(f"{self._task.name} has no schedule named {name!r}")
        return doc

    def _schedule(self, doc: Mapping[str, Any]) -> Schedule:
        return Schedule.from_definition(doc["name"], doc, bool(doc.get("enabled")))

    def _check_params(self, schedule: Schedule) -> None:
        """`InvalidSchedule` unless `main` takes the schedule's params (and `scheduled_for`)."""
        params = dict(schedule.params)
        if self._takes_scheduled_for():
            if SCHEDULED_FOR in params:
                raise InvalidSchedule(f"schedule {schedule.name!r}: {SCHEDULED_FOR} is given by the schedule, not in params")
            params[SCHEDULED_FOR] = EPOCH.isoformat()
        try:
            self._signature.check(params)
        except InvalidParams as exc:
            raise InvalidSchedule(f"schedule {schedule.name!r}: its params do not fit main: {exc}") from None

    def _takes_scheduled_for(self) -> bool:
        return SCHEDULED_FOR in self._signature.parameters

    def _enqueue(self, schedule: Schedule, task_id: str, when: datetime) -> dict[str, Any]:
        """Submit the schedule's task under `task_id` unless that id exists; its document."""
        params = dict(schedule.params)
        if self._takes_scheduled_for():
            params[SCHEDULED_FOR] = as_utc(when).isoformat()
        doc = self._engine.submit(params, new_task_id=task_id, priority=schedule.priority)
        if doc.get("type", self._task.name) != self._task.name:
            # A type sharing the collection has a schedule of the same name: its tick took the id.
            raise TaskIdTaken(f"task id {task_id!r} belongs to a task of type {doc.get('type')!r}: "
                              "give schedules of types that share a collection different names")
        return doc

    def _changed(self) -> None:
        """A schedule changed here: this process's worker reads them again at its next round."""
        self._refresh_at = 0.0

    def _views(self, docs: Sequence[Mapping[str, Any]], now: datetime) -> builtins.list[dict[str, Any]]:
        """The public views of schedule documents, with the statuses of their tasks (one query)."""
        ids = {run["task_id"] for doc in docs for run in doc.get("runs") or []}
        ids.update(doc["last_task_id"] for doc in docs if doc.get("last_task_id"))
        statuses = self._store.task_statuses(sorted(ids))
        return [self._view(doc, statuses, now) for doc in docs]

    def _view(self, doc: Mapping[str, Any], statuses: Mapping[str, str], now: datetime) -> dict[str, Any]:
        try:
            schedule: Schedule | None = self._schedule(doc)
        except InvalidSchedule as exc:
            schedule, error = None, f"the stored schedule is not valid: {exc}"
        else:
            error = doc.get("error") or ""
        enabled = bool(doc.get("enabled"))
        cursor = _time(doc.get("cursor")) or now
        runs = [
            {"task_id": run["task_id"], "tick": _time(run.get("tick")), "at": _time(run.get("at")),
             "status": statuses.get(run["task_id"])}
            for run in reversed(doc.get("runs") or [])
        ]
        last = doc.get("last_task_id")
        return {
            "name": doc["name"], "cron": doc.get("cron"), "every_seconds": doc.get("every"), "tz": doc.get("tz"),
            "params": doc.get("params") or {}, "priority": doc.get("priority", 0),
            "catch_up": doc.get("catch_up"), "catch_up_window_seconds": doc.get("catch_up_window"),
            "enabled": enabled, "declared": doc.get("declared") is not None,
            "description": schedule.describe() if schedule else None,
            "last_tick": _time(doc.get("last_tick")), "last_task_id": last,
            "last_status": statuses.get(last) if last else None,
            "next_tick": schedule.next_tick(max(cursor, now)) if schedule and enabled else None,
            "runs": runs, "error": error or None,
            "created_at": _time(doc.get("created_at")), "updated_at": _time(doc.get("updated_at")),
        }

    # Last in the class: from here on, `list` in the class body names this method, not the builtin.
    def list(self, *, now: datetime | None = None) -> builtins.list[dict[str, Any]]:
        """Every schedule of the type, by name: its definition, `enabled`, `description` (the
        expression in words), `last_tick`, `last_task_id` and `last_status`, `next_tick`, and
        `runs` (its newest tasks, newest first, each with its status; None once removed)."""
        now = self._ready(now)
        return self._views(self._store.all(), now)


def book_of(task: AsyncTask) -> ScheduleBook:
    """`task.schedules`, typed: on the class it declares schedules, on an instance it is the book."""
    return cast(ScheduleBook, task.schedules)


def _time(value: Any) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)
