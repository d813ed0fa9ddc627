"""Task statuses and the moves allowed between them (CONTRACT section 2)."""

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


#: Statuses of a task that an owner is working on; these are heartbeated.
ACTIVE = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
#: Statuses that `run()` submits again without further conditions.
RERUNNABLE = (TaskStatus.FAILED.value, TaskStatus.PENDING.value, TaskStatus.CANCELLED.value)
#: Statuses a task ends in.
FINISHED = (TaskStatus.SUCCESS.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value)

#: For each target status, the statuses a task may move to it from (besides the claim).
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    TaskStatus.RUNNING.value: (TaskStatus.QUEUED.value,),
    TaskStatus.SUCCESS.value: (TaskStatus.RUNNING.value,),
    TaskStatus.FAILED.value: ACTIVE,
    TaskStatus.CANCELLED.value: ACTIVE,
    TaskStatus.QUEUED.value: ACTIVE,  # release: handed back so another owner takes it
}
