"""Recovery of one task type: orphans back to the queue, dead workers forgotten, stuck
concurrency slots and per-key shares freed. Run from a worker's loop each heartbeat interval,
and done only by the process that holds the type's sweep lease (one sweeper, not one per process);
the others only watch the running tasks' counters, to take over without starting the count again.

Silence is judged by `liveness.Silence` (counters that stopped changing, timed on this
process's monotonic clock while it was in touch with the database), so neither a skewed clock
nor a database outage makes a live task look orphaned. Each step logs and swallows its own
errors, so one bad task never stops the sweep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pymongo.errors import PyMongoError

from .limits import Limits
from .liveness import Lease, Silence
from .status import TaskStatus
from .store.registry import ConcurrencySlots, Workers
from .store.tasks import TaskStore

logger = logging.getLogger(__name__)


class Sweeper:
    """The sweep of one task type in one process (see the module's docstring)."""

    def __init__(
        self, store: TaskStore, workers: Workers, limit: ConcurrencySlots | None, *, owner: str,
        stale_after: float, interval: float, max_attempts: int,
        on_finished: Callable[[str, int], None], on_requeued: Callable[[], None],
        clock: Callable[[], float] = time.monotonic, limits: Limits | None = None,
    ) -> None:
        self.store, self.workers, self.limit, self.limits = store, workers, limit, limits
        self.max_attempts = max_attempts
        self.on_finished, self.on_requeued = on_finished, on_requeued
        self.lease = Lease(lambda: workers.collection, f"sweep/{store.type}", owner,
                           Silence(stale_after, interval, clock))
        self._tasks: Silence[tuple[str, int]] = Silence(stale_after, interval, clock)
        self._entries: Silence[str] = Silence(stale_after, interval, clock)
        self._claims: Silence[str] = Silence(stale_after, interval, clock)
        self._shares: Silence[tuple[str, str, int]] = Silence(stale_after, interval, clock)

    def sweep(self) -> None:
        """One round, if this process holds (or may take) the lease."""
        try:
            held = self.lease.hold()
        except PyMongoError:
            held = False
        if not held:
            self._watch()
            return
        for step in (self._orphans, self._dead_workers, self._stuck_slots, self._stuck_shares):
            try:
                step()
            except PyMongoError as exc:
                logger.warning("%s: sweep step %s failed: %s", self.store.type, step.__name__, exc)
                self._forget()
                return
            except Exception:
                logger.exception("%s: sweep step %s failed", self.store.type, step.__name__)

    def give_up(self) -> None:
        """A clean stop: hand the lease to the next process at once."""
        try:
            self.lease.give_up()
        except PyMongoError as exc:
            logger.warning("%s: could not hand back the sweep lease: %s", self.store.type, exc)

    def _watch(self) -> None:
        """Not the sweeper: time the running tasks' counters all the same, so that a process
        taking the lease over from a dead holder judges its orphans on what it has already
        seen, within `stale_after` of their silence rather than after one more."""
        self._entries.forget()
        self._claims.forget()
        self._shares.forget()
        clock = self._tasks.clock
        started = clock()
        try:
            beats = self.store.running_beats()
        except PyMongoError:
            self._tasks.forget()
            return
        self._tasks.observe(beats, started, clock())

    def _forget(self) -> None:
        for silence in (self._tasks, self._entries, self._claims, self._shares):
            silence.forget()

    def _orphans(self) -> None:
        """Running tasks whose heartbeat counter stopped: back to the queue (or failed, or
        cancelled if a cancel was asked), each by one write fenced by the counter read."""
        clock = self._tasks.clock
        started = clock()
        beats = self.store.running_beats()
        requeued = finished = 0
        for task_id, attempt in self._tasks.observe(beats, started, clock()):
            try:
                status = self.store.requeue_orphan(task_id, attempt, beats[(task_id, attempt)], self.max_attempts)
            except PyMongoError:
                raise
            except Exception:
                logger.exception("%s: could not requeue the orphaned task %s", self.store.type, task_id)
                continue
            if status == TaskStatus.QUEUED.value:
                requeued += 1
            elif status is not None:
                finished += 1
                self.on_finished(status, 1)
        if requeued:
            logger.warning("%s: %d task(s) of silent workers went back to the queue", self.store.type, requeued)
            self.on_requeued()
        if finished:
            logger.warning("%s: %d task(s) of silent workers ended (lost too often, or cancelled)",
                           self.store.type, finished)

    def _dead_workers(self) -> None:
        """Registry entries whose beat counter stopped are removed."""
        clock = self._entries.clock
        started = clock()
        beats = self.workers.beats(self.store.type)
        for entry_id in self._entries.observe(beats, started, clock()):
            self.workers.forget(entry_id, beats[entry_id])

    def _stuck_slots(self) -> None:
        if self.limit is not None:
            self.limit.reap(self._claims)

    def _stuck_shares(self) -> None:
        """Per-key shares of attempts that no longer run (after `_orphans`, so a killed worker's
        share is given back in the round that requeues its task); idle limit documents go."""
        if self.limits is not None:
            self.limits.docs.reap(self._shares)

