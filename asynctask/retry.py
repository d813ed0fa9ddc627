"""When a failed attempt is tried again, and after how long.

A retry is a document state, not a timer: the task goes back to `queued` with no owner and a
`next_retry_at`, and whichever process sweeps first once that time has come claims it. No
worker waits, and a retry survives the process that scheduled it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import TaskTimeout
from .validation import MAX_DURATION


@dataclass(frozen=True)
class RetryPolicy:
    """`max_retries` retries, the n-th after `delay * backoff ** n` seconds (at most `max_delay`,
    less up to 10% jitter so that tasks failing together do not retry together), for `retry_on` errors."""

    max_retries: int = 0
    delay: float = 1.0
    backoff: float = 2.0
    retry_on: tuple[type[BaseException],...] = (Exception,)
    max_delay: float = 3600.0

    @classmethod
    def from_options(cls, max_retries: Any, delay: Any, backoff: Any, retry_on: Any,
                     max_delay: Any = 3600.0) -> RetryPolicy:
        """Check the constructor's retry options; raise TypeError/ValueError naming the bad one."""
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, not {max_retries!r}")
        if isinstance(max_delay, timedelta):
            max_delay = max_delay.total_seconds()
        for name, value, low in (("retry_delay", delay, 0.0), ("retry_backoff", backoff, 1.0),
                                 ("retry_max_delay", max_delay, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number of seconds, not {value!r}")
            if not low <= value <= MAX_DURATION:
                raise ValueError(f"{name} must be from {low} to {MAX_DURATION:g}, not {value!r}")
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_on
        ):
            raise TypeError(f"retry_on must be an exception class or a tuple of them, not {retry_on!r}")
        return cls(max_retries, float(delay), float(backoff), retry_on, float(max_delay))

    def applies(self, error: BaseException, retries_so_far: int) -> bool:
        """Whether an attempt that raised `error` after `retries_so_far` retries runs again."""
        return (
            retries_so_far < self.max_retries
            and isinstance(error, self.retry_on)
            and not isinstance(error, TaskTimeout)
        )

    def wait(self, retries_so_far: int) -> timedelta:
        """How long the next retry waits: never more than the backoff asks or `max_delay`."""
        try:
            seconds = self.delay * self.backoff**retries_so_far
        except OverflowError:
            seconds = self.max_delay
        return timedelta(seconds=min(seconds, self.max_delay) * random.uniform(0.9, 1.0))
