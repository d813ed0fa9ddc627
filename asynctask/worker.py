"""A worker: the per-process loop of one task type that takes work from the shared queue.

Each interval of `poll_interval` an idle worker with a free slot claims the next due task (one
query; none more until the next interval when nothing was due). Right after work was found it
claims again as soon as a slot frees. Every `heartbeat_interval` it heartbeats the tasks it
holds (one write), refreshes its entry in the worker registry, and sweeps: running tasks whose
worker went silent go back to the queue (or fail after `max_attempts` lost workers), and
concurrency slots of dead workers are freed. A sweep logs and swallows its own errors, so one
bad task never stops the loop.

`run_worker` is the `asynctask worker` command: a process that only runs tasks.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import lifecycle
from .attempt import Attempt
from .store.registry import worker_name
from .store.tasks import utcnow

if TYPE_CHECKING:
    from .task import AsyncTask

logger = logging.getLogger(__name__)


class Worker:
    """The runtime of one task type in this process: its slots, claims, heartbeats and sweeps.

    `claiming=False` (an API-only process) runs no loop and takes no task; it still runs the
    attempts it is handed (none) and answers long-polls.
    """

    def __init__(self, task: AsyncTask, capacity: int, *, claiming: bool) -> None:
        self.task = task
        self.capacity = capacity
        self.claiming = claiming
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.name = worker_name()
        self.started_at = utcnow()
        self.stopping = False
        self._cond = threading.Condition()
        #: Attempts occupying a slot, with their deadlines; an attempt leaves when its thread ends.
        self._in_flight: dict[Attempt, datetime] = {}
        #: Attempts whose task this worker heartbeats: left once their outcome is recorded.
        self._held: set[Attempt] = set()
        self._reserved = 0
        self._poll_now = False
        self._poll_at = float("inf")
        self._backlog = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        #: Notified whenever an attempt of this process ends, for long-polls.
        self.finished = threading.Condition()

    # -- slots --------------------------------------------------------------------------------

    def free_slots(self) -> int:
        with self._cond:
            return 0 if self.stopping else self.capacity - len(self._in_flight) - self._reserved

    def reserve(self) -> bool:
        """Reserve a slot for a task this process submits and claims at once."""
        with self._cond:
            if not self.claiming or self.stopping or self.capacity - len(self._in_flight) - self._reserved <= 0:
                return False
            self._reserved += 1
            return True

    def unreserve(self) -> None:
        with self._cond:
            self._reserved -= 1

    def dispatch(self, attempt: Attempt, deadline: datetime, *, reserved: bool = False) -> None:
        """Run a claimed attempt in a slot; the slot is free again once the attempt's thread ends."""
        self._enter(attempt, deadline, reserved=reserved)
        self.task._executors.slots().submit(self._work, attempt)

    def _enter(self, attempt: Attempt, deadline: datetime, *, reserved: bool) -> None:
        with self._cond:
            if reserved:
                self._reserved -= 1
            self._in_flight[attempt] = deadline
            self._held.add(attempt)
            self._cond.notify_all()

    def _work(self, attempt: Attempt | None) -> None:
        """A slot's thread: run the attempt; while the queue has more work, claim the next here
        (keeping the slot, so no other claim counts on it) rather than hand it back to the loop."""
        while attempt is not None:
            _logged(lifecycle.run_attempt, self.task, self, attempt)
            keep = self._ended(attempt)
            attempt = None
            if keep:
                claimed = _logged(self.task._claim, self)
                if claimed is None:
                    self.unreserve()
                    with self._cond:
                        self._backlog = False
                else:
                    attempt = claimed[0]
                    self._enter(attempt, claimed[1], reserved=True)

    def _ended(self, attempt: Attempt) -> bool:
        """The attempt's thread is done; True when the slot stays reserved for the next claim."""
        with self._cond:
            self._in_flight.pop(attempt, None)
            self._held.discard(attempt)
            keep = self._backlog and self.claiming and not self.stopping
            if keep:
                self._reserved += 1
            self._cond.notify_all()
        with self.finished:
            self.finished.notify_all()
        return keep

    def let_go(self, attempt: Attempt) -> None:
        """Stop heartbeating `attempt`'s task (its outcome is recorded, or could not be)."""
        with self._cond:
            self._held.discard(attempt)

    def held(self) -> list[Attempt]:
        with self._cond:
            return list(self._held)

    def stop_attempts(self, task_id: str, reason: str, number: int | None = None) -> None:
        """Ask this worker's attempts of `task_id` (of attempt `number`, if given) to stop."""
        with self._cond:
            targets = [a for a in self._in_flight if a.task_id == task_id and number in (None, a.number)]
        for attempt in targets:
            attempt.stop(reason)

    def wake(self) -> None:
        """Claim at the next chance rather than after the poll interval (a task was just queued)."""
        with self._cond:
            self._poll_now = True
            self._cond.notify_all()

    def wake_at(self, monotonic_time: float) -> None:
        """Claim no later than `monotonic_time` (a task of this process falls due then)."""
        with self._cond:
            self._poll_at = min(self._poll_at, monotonic_time)
            self._cond.notify_all()

    # -- the loop -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread (once)."""
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._loop, name=f"asynctask-worker-{self.task.name}",
                                                daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        task = self.task
        poll = task.poll_interval.total_seconds()
        beat = task.heartbeat_interval.total_seconds()
        next_beat = next_poll = next_check = 0.0
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                claim = self.claiming and not self.stopping
                if claim and self._poll_at <= now:
                    self._poll_now, self._poll_at = True, float("inf")
                due = [now >= next_beat, claim and (self._poll_now or now >= next_poll),
                       bool(self._held) and now >= next_check]
                watched = self._watched()
                if not any(due) and not any(d <= utcnow() for d in watched.values()):
                    waits = [next_beat]
                    if self._held:
                        waits.append(next_check)
                    if claim:
                        waits += [next_poll, self._poll_at]
                    left = min(waits) - now
                    if watched:
                        left = min(left, (min(watched.values()) - utcnow()).total_seconds())
                    self._cond.wait(max(left, 0.005))
                    continue
                self._poll_now = False
            if due[0]:
                next_beat = now + beat
                self._sweep()
            for attempt in self._take_expired():
                _logged(lifecycle.time_out, task, attempt)
                self.let_go(attempt)
            if due[2]:
                next_check = now + min(poll, beat)
                _logged(self._check_cancels)
            if due[1]:
                next_poll = now + poll
                _logged(self._fill)

    def _watched(self) -> dict[Attempt, datetime]:
        """The deadlines to watch: of attempts not stopped already (a timed-out `main` may run on)."""
        with self._cond:
            return {a: deadline for a, deadline in self._in_flight.items() if a.stop_reason is None}

    def _take_expired(self) -> list[Attempt]:
        now = utcnow()
        return [a for a, deadline in self._watched().items() if deadline <= now]

    def _fill(self) -> None:
        """Claim due tasks while a slot is free; remember whether work was left behind."""
        backlog = False
        while self.free_slots() > 0:
            claimed = self.task._claim(self)
            if claimed is None:
                break
            attempt, deadline = claimed
            self.dispatch(attempt, deadline)
        else:
            backlog = not self.stopping
        with self._cond:
            self._backlog = backlog

    def _check_cancels(self) -> None:
        held = self.held()
        for task_id, number in self.task._store.cancel_requests(self.owner, [a.task_id for a in held]):
            self.stop_attempts(task_id, "cancelled", number)

    def _sweep(self) -> None:
        """Heartbeat, registry, orphans, concurrency slots, expired logs: each step on its own."""
        task, store = self.task, self.task._store
        _logged(store.heartbeat, self.owner, [a.task_id for a in self.held()])
        if self.claiming:
            with self._cond:
                running = len(self._in_flight)
            _logged(task._workers.beat, self.owner, task.name, slots=self.capacity, running=running,
                    started_at=self.started_at)
        _logged(task._sweep)

    # -- stopping -----------------------------------------------------------------------------

    def drain(self, timeout: float | None) -> set[Attempt]:
        """Wait until no attempt is in flight or `timeout` passes; return those left."""
        with self._cond:
            self._cond.wait_for(lambda: not self._in_flight, timeout)
            return set(self._in_flight)

    def stop(self, grace: float | None, *, release: bool = True) -> int:
        """Take no new work; give running attempts `grace` seconds (None: wait for them), then
        (with `release`) hand what is left back to the queue. Returns how many were left."""
        with self._cond:
            self.stopping = True
            self._cond.notify_all()
        left = self.drain(grace)
        released = 0
        if left and release:
            released = self.task._store.release(self.owner, [a.task_id for a in left])
            for attempt in left:
                attempt.stop("shutdown")
            if released:
                logger.info("released %d unfinished task(s) of %s to the queue", released, self.name)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if self.claiming:
            _logged(self.task._workers.leave, self.owner, self.task.name)
        return len(left)


def _logged(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one step of the loop; an error is logged so that the loop goes on."""
    try:
        return function(*args, **kwargs)
    except Exception:
        logger.exception("asynctask worker: %s failed", getattr(function, "__name__", function))
        return None


# -- the `asynctask worker` command -------------------------------------------------------------


def load_tasks(targets: Iterable[str]) -> list[AsyncTask]:
    """The `AsyncTask` objects named by 'module:object' (a task, or a Flask app serving tasks)."""
    import importlib

    from .task import AsyncTask

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    tasks: list[AsyncTask] = []
    for target in targets:
        module_name, _, name = target.partition(":")
        if not module_name or not name:
            raise ValueError(f"expected MODULE:OBJECT, not {target!r}")
        obj = getattr(importlib.import_module(module_name), name)
        if isinstance(obj, AsyncTask):
            tasks.append(obj)
            continue
        served = [task for task, _ in getattr(obj, "extensions", {}).get("asynctask", [])]
        if not served:
            raise TypeError(f"{target} is neither an AsyncTask nor a Flask app serving one")
        tasks.extend(served)
    return tasks


def run_worker(targets: list[str], *, concurrency: int | None = None, grace: float = 20.0) -> int:
    """Run the task types named by `targets` until SIGTERM or SIGINT; serve no HTTP.

    On the signal it takes no new work, gives running tasks `grace` seconds, releases the
    rest to the queue and returns 0.
    """
    from .instances import autostart

    with autostart(False):
        tasks = load_tasks(targets)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    for task in tasks:
        task._start_worker(concurrency)
    names = ", ".join(task.name for task in tasks)
    slots = ", ".join(str(task._runtime().capacity) for task in tasks)
    print(f"asynctask worker {worker_name()} ready: {names} (slots: {slots})", flush=True)
    while not stop.wait(1.0):
        pass  # a timed wait, so the signal handler runs promptly in the main thread
    released = sum(task.shutdown(wait=True, grace=grace) for task in tasks)
    print(f"asynctask worker {worker_name()} stopped ({released} task(s) released)", flush=True)
    if released:
        # Their `main` threads cannot be interrupted: exit now rather than wait for them.
        logging.shutdown()
        os._exit(0)
    return 0
