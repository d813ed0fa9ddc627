"""A worker: the per-process loop of one task type that takes work from the shared queue.

Each interval of `poll_interval` an idle worker with a free slot claims the next due task (one
query; none more until the next interval when nothing was due). Right after work was found it
claims again as soon as a slot frees. Every `heartbeat_interval` it heartbeats the tasks it
holds (one write that bumps their counters; an attempt found taken away meanwhile is stopped),
refreshes its entry in the worker registry, and runs the type's sweep if it holds the sweep
lease (`sweep.Sweeper`). Attempt deadlines are on the monotonic clock: a clock step fails no
attempt. Every step logs and swallows its own errors, so one bad task never stops the loop.

`run_worker` is the `asynctask worker` command: a process that only runs tasks.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .attempt import Attempt
from .coroutines import event_loop
from .lifecycle import refuse, run_attempt, run_coroutine_attempt, time_out
from .store.registry import worker_name
from .store.tasks import utcnow

if TYPE_CHECKING:
    from .backend import Backend
    from .executors import Executors
    from .task import AsyncTask

logger = logging.getLogger(__name__)


class Worker:
    """The runtime of one task type in this process: its slots, claims, heartbeats and sweeps.

    `claiming=False` (an API-only process) runs no loop and takes no task; it still runs the
    attempts it is handed (none) and answers long-polls.
    """

    def __init__(self, task: AsyncTask, backend: Backend, executors: Executors, *, claiming: bool,
                 sweeping: bool = False, on_end: Callable[[str], None] = lambda task_id: None) -> None:
        self.task = task
        #: Runs the loop without claiming, to sweep for a fleet of remote workers (an API-only
        #: process of a type that takes them).
        self.sweeping = sweeping
        self.backend = backend
        self.executors = executors
        self.capacity = executors.capacity
        #: `async def main` runs on the process's event loop, unless an executor takes `main` elsewhere.
        self.coroutine = inspect.iscoroutinefunction(task.main)
        self.claiming = claiming
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.name = worker_name()
        self.started_at = utcnow()
        self.stopping = False
        self._cond = threading.Condition()
        #: Attempts occupying a slot, with their monotonic deadlines; an attempt leaves when its thread ends.
        self._in_flight: dict[Attempt, float] = {}
        #: Attempts whose task this worker heartbeats: left once their outcome is recorded.
        self._held: set[Attempt] = set()
        self._reserved = 0
        self._poll_now = False
        self._poll_at = float("inf")
        #: When the loop, asleep, wakes by itself (0 while it is awake): a change that needs it
        #: no sooner does not wake it, which spares a thread switch per task under load.
        self._wakes_at = 0.0
        self._backlog = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        #: Told the task id whenever an attempt of this process ends, for long-polls.
        self.on_end = on_end

    # -- slots --------------------------------------------------------------------------------

    def free_slots(self) -> int:
        with self._cond:
            return 0 if self.stopping else self._unused()

    def _unused(self) -> int:
        """Slots neither running an attempt nor reserved for one (call holding `_cond`)."""
        return self.capacity - len(self._in_flight) - self._reserved

    def reserve(self) -> bool:
        """Reserve a slot for a task this process submits and claims at once."""
        with self._cond:
            if not self.claiming or self.stopping or self._unused() <= 0:
                return False
            self._reserved += 1
            return True

    def unreserve(self) -> None:
        with self._cond:
            self._reserved -= 1
            if self._poll_now:
                self._cond.notify_all()  # a task was queued while this slot was reserved

    def dispatch(self, attempt: Attempt, deadline: float, *, reserved: bool = False) -> None:
        """Run a claimed attempt in a slot; the slot is free again once the attempt's thread ends.

        An executor that refuses the work (shut down, broken) fails the attempt, naming why,
        and frees the slot at once.
        """
        self._enter(attempt, deadline, reserved=reserved)
        try:
            if self.coroutine and self.executors.main_executor() is None:
                self._await(attempt)
            else:
                self.executors.slots().submit(self._work, attempt)
        except Exception as exc:
            _logged(refuse, self.task, self, attempt, exc)
            self._ended(attempt)

    def _await(self, attempt: Attempt) -> None:
        """Run a coroutine attempt on the event loop: it holds a slot, not a thread. When it
        ends, a helper thread frees the slot or claims the next task for it."""
        loop = event_loop()

        def done() -> None:
            following = self._next(attempt)
            if following is not None:
                self._await(following)

        # Progress of a coroutine is written by a helper thread, never on the loop.
        write = functools.partial(self.backend.progress, attempt.task_id, attempt.number)
        attempt.reporter = lambda percent, message: loop.helpers.submit(write, percent, message)
        loop.submit(attempt.task_id, run_coroutine_attempt(self.task, self, attempt, loop.blocking), done)

    def _enter(self, attempt: Attempt, deadline: float, *, reserved: bool) -> None:
        with self._cond:
            if reserved:
                self._reserved -= 1
            self._in_flight[attempt] = deadline
            self._held.add(attempt)
            if deadline < self._wakes_at:
                self._cond.notify_all()

    def _work(self, attempt: Attempt | None) -> None:
        """A slot's thread: run the attempt; while the queue has more work, claim the next here
        (keeping the slot, so no other claim counts on it) rather than hand it back to the loop."""
        while attempt is not None:
            _logged(run_attempt, self.task, self, attempt)
            attempt = self._next(attempt)

    def _next(self, attempt: Attempt) -> Attempt | None:
        """`attempt` is over: free its slot, or, while the queue has work, keep the slot and
        claim the next task for it (returned, already counted in flight)."""
        if not self._ended(attempt):
            return None
        claimed = _logged(self._claim)
        if claimed is None:
            self.unreserve()
            with self._cond:
                self._backlog = False
            return None
        self._enter(claimed, self.deadline(), reserved=True)
        return claimed

    def _claim(self) -> Attempt | None:
        return self.backend.claim(self.owner, self.name)

    def deadline(self) -> float:
        """The monotonic deadline of an attempt that starts now."""
        return time.monotonic() + self.task.task_timeout.total_seconds()

    def _ended(self, attempt: Attempt) -> bool:
        """The attempt's thread is done; True when the slot stays reserved for the next claim."""
        with self._cond:
            self._in_flight.pop(attempt, None)
            self._held.discard(attempt)
            keep = self._backlog and self.claiming and not self.stopping
            if keep:
                self._reserved += 1
            else:
                self._cond.notify_all()  # a slot is free (the loop may fill it; a drain may be over)
        self.on_end(attempt.task_id)
        return keep

    def let_go(self, attempt: Attempt) -> None:
        """Stop heartbeating `attempt`'s task (its outcome is recorded, or could not be)."""
        if attempt not in self._held:
            return  # let go already (an attempt is held once, from its start)
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
            if self._unused() > 0:
                self._cond.notify_all()  # with no slot free, the next one freed wakes the loop

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
                # A sweeping (API-only) process evaluates the type's schedules on the poll's beat too.
                due = [now >= next_beat, claim and (self._poll_now or now >= next_poll),
                       bool(self._held) and now >= next_check, self.sweeping and not claim and now >= next_poll]
                waits = [next_beat, *self._watched().values()]
                if not any(due) and min(waits) > now:
                    if self._held:
                        waits.append(next_check)
                    if claim:
                        waits += [next_poll, self._poll_at]
                    elif self.sweeping:
                        waits.append(next_poll)
                    pause = max(min(waits) - now, 0.005)
                    self._wakes_at = now + pause
                    self._cond.wait(pause)
                    self._wakes_at = 0.0
                    continue
                self._poll_now = False
            if due[0]:
                next_beat = now + beat
                self._beat()
            for attempt in self._take_expired():
                _logged(time_out, task, self, attempt)
                self.let_go(attempt)
            if due[2]:
                next_check = now + min(poll, beat)
                _logged(self._check_cancels)
            if due[1] or due[3]:
                next_poll = now + poll
                if due[1]:
                    _logged(self._fill)
                _logged(task.schedules.evaluate)  # type: ignore[attr-defined]  # the instance's is a ScheduleBook

    def _watched(self) -> dict[Attempt, float]:
        """The deadlines to watch: of attempts not stopped already (a timed-out `main` may run on)."""
        with self._cond:
            return {a: deadline for a, deadline in self._in_flight.items() if a.stop_reason is None}

    def _take_expired(self) -> list[Attempt]:
        now = time.monotonic()
        return [a for a, deadline in self._watched().items() if deadline <= now]

    def _fill(self) -> None:
        """Claim due tasks while a slot is free; remember whether work was left behind."""
        backlog = False
        while self.free_slots() > 0:
            attempt = self._claim()
            if attempt is None:
                break
            self.dispatch(attempt, self.deadline())
        else:
            backlog = not self.stopping
        with self._cond:
            self._backlog = backlog

    def _check_cancels(self) -> None:
        held = self.held()
        for task_id, number in self.backend.cancel_requests(self.owner, [a.task_id for a in held]):
            self.stop_attempts(task_id, "cancelled", number)

    def _beat(self) -> None:
        """Registry, heartbeat, the type's sweep and upkeep: each step on its own. The entry
        comes first: a remote worker's heartbeat carries it, so its first one shows its slots."""
        if self.claiming:
            with self._cond:
                running = len(self._in_flight)
            _logged(self.backend.register, self.owner, slots=self.capacity, running=running,
                    started_at=self.started_at)
        _logged(self._heartbeat)
        if self.claiming or self.sweeping:
            _logged(self.backend.maintain, self.owner)

    def _heartbeat(self) -> None:
        """Bump the counters of the tasks this worker holds; stop the attempts it lost meanwhile
        (a sweep judged it silent and the task runs elsewhere: its writes are fenced)."""
        held = self.held()
        lost = self.backend.heartbeat(self.owner, [a.task_id for a in held])
        for task_id in lost - {a.task_id for a in held if a.recording}:
            logger.warning("task %s was given to another worker; its attempt here stops", task_id)
            self.stop_attempts(task_id, "lost")

    # -- stopping -----------------------------------------------------------------------------

    def drain(self, timeout: float | None) -> set[Attempt]:
        """Wait until no attempt is in flight or `timeout` passes; return those left."""
        with self._cond:
            self._cond.wait_for(lambda: not self._in_flight, timeout)
            return set(self._in_flight)

    def stop_claiming(self) -> None:
        """Take no new work from now on (the first step of a graceful stop of the process)."""
        with self._cond:
            self.stopping = True
            self._cond.notify_all()

    def stop(self, grace: float | None, *, release: bool = True) -> int:
        """Take no new work; give running attempts `grace` seconds (None: wait for them), then
        (with `release`) hand what is left back to the queue. Returns how many were left.

        It always ends stopped, even when the database is down (what could not be released is
        then an orphan that the sweep of another process puts back in the queue).
        """
        self.stop_claiming()
        left = self.drain(grace)
        try:
            if left and release:
                self._release(left)
        finally:
            with self._cond:
                self._stopped = True
                self._cond.notify_all()
                thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join()
            if self.claiming or self.sweeping:
                _logged(self.backend.leave, self.owner)
        return len(left)

    def _release(self, left: set[Attempt]) -> None:
        """Hand unfinished attempts back to the queue (`cancelled` where a cancel was asked)."""
        released = 0
        for attempt in left:
            attempt.stop("shutdown")
            if _logged(self.backend.release, self.owner, attempt) is not None:
                released += 1
            self.let_go(attempt)
        if released:
            logger.info("released %d unfinished task(s) of %s", released, self.name)


def _logged(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one step of the loop; an error is logged so that the loop goes on."""
    try:
        return function(*args, **kwargs)
    except Exception:
        logger.exception("asynctask worker: %s failed", getattr(function, "__name__", function))
        return None
