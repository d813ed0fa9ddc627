"""The queue as a worker sees it: every call a worker and an attempt make to it, in one class.

`StoreBackend` makes them on the database (the task store, the worker registry, the
`max_concurrency` slots, the rate and per-key limits, the sweep). A remote worker uses
`remote.HttpBackend`, which makes the same calls over the service's HTTP API, where they end
in this class: there is one lifecycle, whichever side of the network the worker runs on.

Every write of an attempt is fenced by its attempt number (and, for a release, its owner).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from .attempt import Attempt
from .expiry import remove_expired_logs
from .limits import Limits
from .status import TaskStatus
from .store.registry import ConcurrencySlots, Workers
from .store.tasks import TaskStore, utcnow
from .sweep import Sweeper

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """What a worker and its attempts need of the queue (`StoreBackend`, `remote.HttpBackend`)."""

    remote: bool
    record_backoff: tuple[float, ...]

    def claim(self, owner: str, worker: str) -> Attempt | None: ...
    def heartbeat(self, owner: str, task_ids: list[str]) -> set[str]: ...
    def cancel_requests(self, owner: str, task_ids: list[str]) -> list[tuple[str, int]]: ...
    def progress(self, task_id: str, number: int, percent: float, message: str | None) -> bool: ...
    def register(self, owner: str, *, slots: int, running: int, started_at: datetime) -> None: ...
    def leave(self, owner: str) -> None: ...
    def maintain(self, owner: str) -> None: ...
    def finish(self, attempt: Attempt, status: TaskStatus, *, result: Any = None, error: str | None = None,
               progress: dict[str, Any] | None = None) -> bool: ...
    def retry_later(self, attempt: Attempt, *, error: str, wait: timedelta) -> str | None: ...
    def release(self, owner: str, attempt: Attempt) -> str | None: ...
    def free(self, attempt: Attempt) -> None: ...
    def log_shipping(self, task_log: logging.Logger, attempt: Attempt) -> contextlib.AbstractContextManager[None]: ...


class StoreBackend:
    """What one task type's workers do to the queue, on the database.

    Args:
        store, workers, limit: the task documents, the worker registry, the concurrency slots.
        limits: the rate limit and per-key concurrency limit, if the type has any.
        stale_after, heartbeat_interval, max_attempts: the liveness options (seconds).
        on_finished, on_requeued: notified when a sweep ends tasks or puts them back.
        logger_dir, result_ttl: where expired logs are removed from, when results expire.
    """

    remote = False
    #: Waits between tries of an outcome write the database did not take (a failover, a blip).
    record_backoff: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)

    def __init__(
        self, store: TaskStore, workers: Workers, limit: ConcurrencySlots | None, *, stale_after: float,
        heartbeat_interval: float, max_attempts: int, on_finished: Callable[[str, int], None],
        on_requeued: Callable[[], None], logger_dir: Any = None, result_ttl: timedelta | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.store, self.workers, self.limit, self.limits = store, workers, limit, limits
        self.type = store.type
        self.stale_after, self.heartbeat_interval, self.max_attempts = stale_after, heartbeat_interval, max_attempts
        self.on_finished, self.on_requeued = on_finished, on_requeued
        self.logger_dir, self.result_ttl = logger_dir, result_ttl
        self._sweepers: dict[str, Sweeper] = {}

    # -- taking work ------------------------------------------------------------------------

    def claim(self, owner: str, worker: str) -> Attempt | None:
        """Claim the next due task for this worker, within `max_concurrency` and the limits."""
        slot = self.limit.acquire() if self.limit is not None else None
        if self.limit is not None and slot is None:
            return None
        try:
            claim_for = self.store.claim_fields(owner, worker)
            doc = self.store.claim(claim_for) if self.limits is None else self.limits.claim(claim_for)
        except BaseException:
            if slot is not None and self.limit is not None:
                self.limit.free(slot)
            raise
        if self.limit is not None and slot is not None:
            if doc is None:
                self.limit.free(slot)
            else:
                self.limit.bind(slot, doc["task_id"], doc["attempts"])
        return None if doc is None else attempt_of(doc)

    # -- while attempts run ---------------------------------------------------------------

    def heartbeat(self, owner: str, task_ids: list[str]) -> set[str]:
        """Bump the counters of the tasks `owner` runs; the ids given to another worker meanwhile."""
        return self.store.heartbeat(owner, task_ids)

    def cancel_requests(self, owner: str, task_ids: list[str]) -> list[tuple[str, int]]:
        """(task id, attempt) of `owner`'s running tasks that someone asked to cancel."""
        return self.store.cancel_requests(owner, task_ids)

    def progress(self, task_id: str, number: int, percent: float, message: str | None) -> bool:
        """Record an attempt's progress; ignored once it is superseded."""
        return self.store.progress(task_id, number, percent, message)

    def register(self, owner: str, *, slots: int, running: int, started_at: datetime, host: str | None = None,
                 pid: int | None = None, remote: bool = False) -> None:
        """Register or refresh the worker `owner` in the registry (one upsert)."""
        self.workers.beat(owner, self.type, slots=slots, running=running, started_at=started_at, host=host,
                          pid=pid, remote=remote)

    def leave(self, owner: str) -> None:
        """The worker stopped cleanly: its registry entry goes, and the sweep lease if it held it."""
        self.workers.leave(owner, self.type)
        sweeper = self._sweepers.pop(owner, None)
        if sweeper is not None:
            sweeper.give_up()

    def maintain(self, owner: str) -> None:
        """The periodic duties of a local worker: indexes (and 0.1 adoption), the sweep if it
        holds the lease, expired logs."""
        self.store.ensure_indexes()
        sweeper = self._sweepers.get(owner)
        if sweeper is None:
            sweeper = self._sweepers[owner] = Sweeper(
                self.store, self.workers, self.limit, owner=owner, stale_after=self.stale_after,
                interval=self.heartbeat_interval, max_attempts=self.max_attempts,
                on_finished=self.on_finished, on_requeued=self.on_requeued, limits=self.limits,
            )
        sweeper.sweep()
        if self.result_ttl is not None and self.logger_dir is not None:
            remove_expired_logs(self.logger_dir, self.result_ttl, self.store.existing)

    # -- how attempts end -----------------------------------------------------------------

    def finish(self, attempt: Attempt, status: TaskStatus, *, result: Any = None, error: str | None = None,
               progress: dict[str, Any] | None = None) -> bool:
        """Record a final outcome (success, failed, cancelled) unless the attempt was superseded."""
        extra = {"progress": progress} if progress else {}
        return self.store.finish(attempt.task_id, status, attempt=attempt.number, result=result, error=error,
                                 extra=extra)

    def retry_later(self, attempt: Attempt, *, error: str, wait: timedelta) -> str | None:
        """Queue the task again after `wait` (or end it `cancelled` if a cancel was asked)."""
        return self.store.retry_later(attempt.task_id, attempt.number, retries=attempt.retries + 1, error=error,
                                      at=utcnow() + wait)

    def release(self, owner: str, attempt: Attempt) -> str | None:
        """Hand a stopping worker's attempt back to the queue (or `cancelled`, if asked)."""
        return self.store.release(owner, attempt.task_id, attempt.number)

    def log_shipping(self, task_log: logging.Logger, attempt: Attempt) -> contextlib.AbstractContextManager[None]:
        """Nothing to ship: a local worker writes the task's log file itself."""
        return contextlib.nullcontext()

    def free(self, attempt: Attempt) -> None:
        """The attempt is over: its `max_concurrency` slot and its per-key share are free again."""
        try:
            if self.limit is not None:
                self.limit.release(attempt.task_id, attempt.number)
        finally:
            if self.limits is not None:
                self.limits.free(attempt)


def attempt_of(doc: dict[str, Any]) -> Attempt:
    """The attempt a claimed document describes."""
    return Attempt(
        doc["task_id"], doc["attempts"], dict(doc.get("params") or {}),
        trace_id=doc.get("trace_id"), retries=doc.get("retries") or 0,
    )
