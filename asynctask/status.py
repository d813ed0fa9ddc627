"""Task statuses, the moves allowed between them, and how an attempt can end."""

from __future__ import annotations

from enum import Enum


class TaskStatus(str, Enum):
    """The status of a task, stored as its plain string value."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


#: Statuses of a task that is not finished: waiting in the queue or run by a worker.
ACTIVE = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
#: Statuses that `run()` submits again without further conditions.
RERUNNABLE = (TaskStatus.FAILED.value, TaskStatus.PENDING.value, TaskStatus.CANCELLED.value)
#: Statuses a task ends in.
FINISHED = (TaskStatus.SUCCESS.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value)

#: For each target status, the statuses a task may move to it from. The run rule's submission
#: (an upsert on the task id) is the one write that does not go through this table.
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    TaskStatus.RUNNING.value: (TaskStatus.QUEUED.value,),  # a worker claims it
    TaskStatus.SUCCESS.value: (TaskStatus.RUNNING.value,),
    TaskStatus.FAILED.value: ACTIVE,
    TaskStatus.CANCELLED.value: ACTIVE,
    # back to the queue: a retry, a release on shutdown, an orphan, a bulk retry
    TaskStatus.QUEUED.value: (TaskStatus.RUNNING.value, *FINISHED),
}


class Ending(str, Enum):
    """How one attempt ended; decided in one place (`AsyncTask._conclude`)."""

    SUCCEEDED = "succeeded"  # main returned a storable result
    FAILED = "failed"  # main raised, no retry left
    RETRY = "retry"  # main raised, the retry policy queues it again later
    TIMED_OUT = "timed_out"  # ran past task_timeout
    CANCELLED = "cancelled"  # a cancel stopped it
    RELEASED = "released"  # the process shut down first; the task goes back to the queue
    LOST = "lost"  # the task was given to another worker meanwhile; nothing is written

    @property
    def status(self) -> TaskStatus:
        """The task status this ending records."""
        return _ENDING_STATUS[self]


_ENDING_STATUS = {
    Ending.SUCCEEDED: TaskStatus.SUCCESS,
    Ending.FAILED: TaskStatus.FAILED,
    Ending.RETRY: TaskStatus.QUEUED,
    Ending.TIMED_OUT: TaskStatus.FAILED,
    Ending.CANCELLED: TaskStatus.CANCELLED,
    Ending.RELEASED: TaskStatus.QUEUED,
    Ending.LOST: TaskStatus.RUNNING,
}
