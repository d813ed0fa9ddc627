"""Who is alive, judged without comparing clocks and without mistaking an outage for a death.

A worker proves it lives by changing a counter in the database (`beats` on the tasks it holds,
`beat` on its registry entry) once per `heartbeat_interval`. A judge reads those counters and
times how long each stayed unchanged with its own monotonic clock, and only while it was itself
in touch with the database: a round trip of the judge's that was slow or late (a stalled or
unreachable database, a frozen judge) restarts every count. So a skewed or stepped clock on any
host cannot make a task look orphaned, and after an outage of any length every worker gets a
full `stale_after` to be heard again.

One judge per task type is enough: the sweep runs where the `Lease` is held, and a lease whose
holder went silent is taken over by the same rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pymongo.errors import DuplicateKeyError

K = TypeVar("K", bound=Hashable)


@dataclass
class _Seen:
    value: Any
    since: float


class Silence(Generic[K]):
    """Which watched counters stayed unchanged for `stale_after` seconds of contact.

    Call `observe(values, started, ended)` with the counters one read returned and the
    monotonic times the read was sent and answered; it returns the keys found silent.
    """

    def __init__(self, stale_after: float, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        #: A read slower than this, or later than twice this after the previous one, breaks contact.
        self.interval = interval
        self.clock = clock
        self._seen: dict[K, _Seen] = {}
        self._contact_since: float | None = None
        self._last_answer: float | None = None

    def contact(self, started: float, ended: float) -> None:
        """Note one round trip of the judge's; a slow or late one restarts the contact."""
        late = self._last_answer is not None and started - self._last_answer > 2 * self.interval
        if self._contact_since is None or late or ended - started > self.interval:
            self._contact_since = ended
        self._last_answer = ended

    def lost_contact(self) -> None:
        """A round trip failed: nothing is judged until contact has lasted again."""
        self._contact_since = None
        self._last_answer = None

    def observe(self, values: Mapping[K, Any], started: float, ended: float) -> list[K]:
        """Record what one read saw; the keys whose value stayed unchanged for `stale_after`."""
        self.contact(started, ended)
        assert self._contact_since is not None
        silent = []
        for key, value in values.items():
            seen = self._seen.get(key)
            if seen is None or seen.value != value:
                self._seen[key] = _Seen(value, ended)
            elif started - max(seen.since, self._contact_since) >= self.stale_after:
                silent.append(key)
        for key in self._seen.keys() - values.keys():
            del self._seen[key]
        return silent

    def forget(self) -> None:
        """Start over (the judge lost its lease)."""
        self._seen.clear()
        self._contact_since = None
        self._last_answer = None


class Lease:
    """One holder at a time of a named duty (the sweep of one task type), in one document.

    The holder renews it each interval by bumping its counter; another process takes it over
    once that counter has stayed unchanged for `stale_after` of its own contact. Taking over is
    conditional on the holder and counter read, so two rivals never both win.
    """

    def __init__(self, collection: Callable[[], Any], lease_id: str, owner: str, silence: Silence[str]) -> None:
        self._collection = collection
        self.lease_id = lease_id
        self.owner = owner
        self._silence = silence
        self.held = False

    def hold(self) -> bool:
        """Renew the lease, or take it if it is free or its holder went silent; True if held."""
        clock = self._silence.clock
        collection = self._collection()
        started = clock()
        if self.held:
            renewed = collection.update_one({"_id": self.lease_id, "holder": self.owner}, {"$inc": {"n": 1}})
            self._silence.contact(started, clock())
            if renewed.matched_count:
                return True
            self.held = False
            self._silence.forget()
        doc = collection.find_one({"_id": self.lease_id})
        ended = clock()
        if doc is None:
            try:
                collection.insert_one({"_id": self.lease_id, "kind": "lease", "holder": self.owner, "n": 0})
            except DuplicateKeyError:
                return False
            self.held = True
            return True
        if not self._silence.observe({"lease": (doc.get("holder"), doc.get("n"))}, started, ended):
            return False
        taken = collection.update_one(
            {"_id": self.lease_id, "holder": doc.get("holder"), "n": doc.get("n")},
            {"$set": {"holder": self.owner}, "$inc": {"n": 1}},
        )
        self.held = taken.matched_count == 1
        if self.held:
            self._silence.forget()
        return self.held

    def give_up(self) -> None:
        """Hand the lease back at a clean stop, so another process takes it at once."""
        if self.held:
            self._collection().delete_one({"_id": self.lease_id, "holder": self.owner})
            self.held = False
