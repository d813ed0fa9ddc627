"""The database's clock, as one process can bound it: the time base of the rate limits.

A rate limit counts starts in windows of time that every host shares, so the hosts must read
one clock the same way, and their own clocks need not agree. Every host can ask the database
its time (`hello` answers `localTime`), so that clock is the one used. A process asks now and
then, and in between runs on its own monotonic clock. At any moment it therefore knows the
database's time within an interval [earliest, latest], about as wide as the round trip of the
ask (plus a drift allowance): a skewed or stepped host clock changes nothing, and a slow ask
only makes the interval wider, never wrong. `rate.py`'s grants check against the earliest bound
and book against the latest, so that uncertainty can only delay a start, never let one more in.

The in-memory store lives in this process: its clock is this process's wall clock.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .connection import is_mongodb

#: Seconds between two asks of the database's time.
REFRESH = 10.0
#: An ask slower than this (seconds) is repeated soon, for a narrower interval.
SLOW_ASK = 0.05
#: How fast two clocks may drift apart (NTP slews at most 500 ppm): widens the interval.
DRIFT = 1e-3

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_ms(moment: datetime) -> int:
    """A datetime (naive ones are UTC) as integer milliseconds since the epoch."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    """Milliseconds since the epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


@dataclass(frozen=True)
class _Sample:
    """The database's time `at` (ms), read by an ask sent and answered at these monotonic times."""

    at: int
    sent: float
    answered: float

    def bounds(self, now: float) -> tuple[int, int]:
        earliest = self.at + math.floor((now - self.answered) * (1 - DRIFT) * 1000)
        # `localTime` is truncated to the millisecond: the true time may be up to 1 ms later.
        latest = self.at + 1 + math.ceil((now - self.sent) * (1 + DRIFT) * 1000)
        return earliest, latest


class DatabaseClock:
    """The time of the database `collection` lives in, as bounds in integer milliseconds."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self._local = not is_mongodb(collection)
        self._sample: _Sample | None = None
        self._asked = -math.inf
        self._lock = threading.Lock()

    def bounds(self) -> tuple[int, int]:
        """(earliest, latest): the database's time now lies between them (ms since the epoch)."""
        if self._local:
            now = time.time_ns() // 1_000_000
            return now, now
        return self._fresh().bounds(time.monotonic())

    def monotonic_at(self, ms: int) -> float:
        """The monotonic time by which the database's time will surely have reached `ms`."""
        if self._local:
            return time.monotonic() + (ms - time.time_ns() // 1_000_000) / 1000
        sample = self._fresh()
        return sample.answered + (ms - sample.at) / 1000 / (1 - DRIFT)

    def _fresh(self) -> _Sample:
        """The sample to read the time from, after a new ask when the last one is old or was slow."""
        sample = self._sample
        since = time.monotonic() - self._asked
        if sample is not None and since < REFRESH and (since < 1.0 or sample.answered - sample.sent <= SLOW_ASK):
            return sample
        with self._lock:
            if self._sample is not sample and self._sample is not None:
                return self._sample  # another thread asked meanwhile
            asked = self._ask()
            self._asked = asked.answered
            if sample is not None:
                old, new = sample.bounds(asked.answered), asked.bounds(asked.answered)
                if old[1] - old[0] < new[1] - new[0]:
                    asked = sample  # a slow ask: the older sample still bounds the time closer
            self._sample = asked
            return asked

    def _ask(self) -> _Sample:
        database = self._collection.database
        sent = time.monotonic()
        answer = database.command("hello")
        answered = time.monotonic()
        return _Sample(to_ms(answer["localTime"]), sent, answered)
