"""Rate limits and per-key concurrency of one task type: the options, each task's keys, and the
claim that honors them.

- `rate_limit="N/period[ burst=B]"`: at most N tasks of the type *start* in any window of the
  period, across every process and host; starts are spaced period/N apart, and `burst` lets B
  more start at once after a quiet spell. With `rate_limit_key` the limit applies per key.
- `concurrency_key` with `max_concurrency_per_key=N`: at most N tasks of one key run at once.

A task's keys are computed when it is submitted (`Limits.keys`) and stored on its document
(`rate_key`, `concurrency_key`), so a claim evaluates no params. A claim (`Limits.claim`):

1. reads which keys hold tasks back now (one query on `<tasks>.limits`: the keys earlier
   claims found refusing, and the type's own rate);
2. picks the first due task of no such key, in the queue's order (priority, then due time);
3. takes that task's share of each limit, one atomic write each (`store.limits.LimitDocs`);
   a key that refuses is marked for the next claims, and the next candidate is tried;
4. claims that very task, fenced by its `attempts`. A share taken for a claim that lost the
   race is given back.

A task held back is not touched: it stays `queued` with its attempts and retries, and a
saturated key never stands in the way of another key's tasks. Retries and re-runs are claims
like the first one, so they count as starts.
"""

from __future__ import annotations

import inspect
import json
import re
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .attempt import Attempt
from .errors import InvalidParams
from .jsonable import as_utc, jsonable
from .status import TaskStatus
from .store.clock import DatabaseClock, from_ms
from .store.limits import Blocked, LimitDocs
from .store.registry import ConcurrencySlots
from .store.tasks import TaskStore, utcnow
from .validation import MAX_DURATION, Signature, positive_int

#: Milliseconds per unit of a rate limit's period.
_UNITS = {"ms": 1, "s": 1000, "sec": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "hour": 3_600_000,
          "d": 86_400_000, "day": 86_400_000}
_RATE = re.compile(
    r"\s*(?P<count>\d+)\s*/\s*(?P<length>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)\s*(?:\s+burst\s*=\s*(?P<burst>\d+)\s*)?",
    re.IGNORECASE,
)
#: The longest key stored on a task.
MAX_KEY_CHARS = 200
#: How many claimed attempts' keys a process remembers for `free` (a service claiming for remote
#: workers is not told when their attempts end: the sweep frees those shares).
_REMEMBERED = 10_000
#: How many candidates one claim may lose to rival claims before it leaves the rest to the next.
_TRIES = 8
#: How many due tasks a claim reads at once (it tries them in turn while their keys refuse).
_BATCH = 16
#: How many candidates one claim may find held back by a key it did not know was (each key found
#: so is marked, and the next claims pass over its tasks without trying them).
_REFUSALS = 64


@dataclass(frozen=True)
class RateLimit:
    """At most `count` starts in any window of `period_ms` (plus `burst` after a quiet spell)."""

    count: int
    period_ms: int
    burst: int = 0

    @property
    def interval(self) -> int:
        """Milliseconds between two starts: the period over the count, rounded up."""
        return -(-self.period_ms // self.count)

    @property
    def tolerance(self) -> int:
        """How far ahead of the spacing starts may run: `burst` intervals."""
        return self.burst * self.interval

    def __str__(self) -> str:
        burst = f" burst={self.burst}" if self.burst else ""
        return f"{self.count}/{self.period_ms / 1000:g}s{burst}"


def parse_rate_limit(spec: Any) -> RateLimit | None:
    """`"5/60s"`, `"600/m"`, `"100/h"`, `"10/1.5s burst=5"` as a `RateLimit`; None for None.

    Raises `TypeError` for a non-string, `ValueError` for a string that is no such limit.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise TypeError(f"rate_limit must be a string like '5/60s' or None, not {spec!r}")
    match = _RATE.fullmatch(spec)
    unit = _UNITS.get((match.group("unit") or "").lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"rate_limit must read N/period[ burst=B], e.g. '5/60s', '600/m', '100/h', "
                         f"'10/s burst=5' (units ms, s, m, h, d), not {spec!r}")
    count = int(match.group("count"))
    period = float(match.group("length") or 1) * unit
    burst = int(match.group("burst") or 0)
    if count < 1:
        raise ValueError(f"rate_limit must allow at least one start per period, not {spec!r}")
    if not 1 <= period <= MAX_DURATION * 1000 or period != int(period):
        raise ValueError(f"rate_limit's period must be a whole number of milliseconds up to about 100 years, "
                         f"not {spec!r}")
    if count > period:
        raise ValueError(f"rate_limit allows at most one start per millisecond, not {spec!r}")
    return RateLimit(count, int(period), burst)


@dataclass(frozen=True)
class KeyRule:
    """How a task's key is made from its params: a param's value, or a function's answer."""

    option: str
    param: str | None = None
    function: Callable[[dict[str, Any]], Any] | None = None

    def of(self, params: Mapping[str, Any]) -> str | None:
        """The key of a task with these params (main's defaults filled in); None: no limit."""
        if self.function is None:
            value = params.get(self.param or "")
        else:
            try:
                value = self.function(dict(params))
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidParams(f"{self.option} could not be computed from the params: {exc!r}") from exc
        if value is None:
            return None
        if isinstance(value, str):
            text = value
        elif self.function is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidParams(f"{self.option} must give a string or None, not {value!r}")
        else:
            text = json.dumps(jsonable(value), sort_keys=True, ensure_ascii=False)
        if len(text) > MAX_KEY_CHARS:
            raise InvalidParams(f"{self.option}: the key is longer than {MAX_KEY_CHARS} characters")
        return text


def key_rule(option: str, value: Any, signature: Signature) -> KeyRule | None:
    """Check a key option at construction: a param `main` takes, or a function of the params."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{option} must name a param of main, not ''")
        if value not in signature.parameters and not signature.var_keyword:
            raise ValueError(f"{option} names {value!r}, which main does not take "
                             f"(its params: {', '.join(signature.parameters) or 'none'})")
        return KeyRule(option, param=value)
    if not callable(value):
        raise TypeError(f"{option} must be a param name or a function of the params, not {value!r}")
    try:
        inspect.signature(value).bind({})
    except TypeError:
        raise TypeError(f"{option} must be callable with one argument, the params (a dict)") from None
    except ValueError:
        pass  # no signature to read (a builtin): it is tried at the first submission
    return KeyRule(option, function=value)


def class_option(cls: type, instance: Any, name: str) -> Any:
    """A key option declared on the class: a plain function of the params as it is, a method
    (`def concurrency_key(self, params)`) bound to the instance, anything else as it is."""
    raw = inspect.getattr_static(cls, name, None)
    if isinstance(raw, staticmethod):
        return raw.__func__
    if isinstance(raw, types.FunctionType):
        parameters = list(inspect.signature(raw).parameters.values())
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return getattr(instance, name) if len(positional) >= 2 else raw
    return getattr(cls, name, None)


@dataclass(frozen=True)
class _Shares:
    """What a claim took for its candidate: a share of its concurrency key, a start of its rate
    key (counted at `counted` ms on the database's clock, booking `tat` = `booked`)."""

    concurrency: str | None
    rate: str | None = None
    counted: int | None = None
    booked: int | None = None


class Limits:
    """The rate limit and per-key concurrency limit of one task type (see the module's docstring).

    Args:
        store: the task documents; docs: the limit documents.
        rate, rate_key: the rate limit, and the rule of its key (None: one rate for the type).
        per_key, concurrency_key: the per-key concurrency limit and the rule of its key.
        signature: `main`'s, whose defaults fill the params a key is made of.
        on_held: told the reason ("rate" or "concurrency") of each claim held back (metrics).
        wake: wakes this process's worker (a full key has a free share now).
        wake_at: wakes it at a monotonic time (a rate key's next start is due then).
    """

    def __init__(
        self, store: TaskStore, docs: LimitDocs, *, rate: RateLimit | None, rate_key: KeyRule | None,
        per_key: int | None, concurrency_key: KeyRule | None, signature: Signature,
        on_held: Callable[[str], None], wake: Callable[[], None], wake_at: Callable[[float], None],
    ) -> None:
        self.store, self.docs = store, docs
        self.rate, self.rate_key = rate, rate_key
        self.per_key, self.concurrency_key = per_key, concurrency_key
        self.on_held, self.wake, self.wake_at = on_held, wake, wake_at
        self._defaults = {
            name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty
        }
        #: The concurrency key of each attempt this process claimed, until it is freed (oldest first).
        self._holding: OrderedDict[tuple[str, int], str] = OrderedDict()

    @classmethod
    def configure(
        cls, store: TaskStore, signature: Signature, *, rate_limit: Any, rate_limit_key: Any, concurrency_key: Any,
        max_concurrency_per_key: Any, on_held: Callable[[str], None], wake: Callable[[], None],
        wake_at: Callable[[float], None],
    ) -> Limits | None:
        """The limits the options ask for, checked; None when there are none. Raises
        `TypeError`/`ValueError` for options that cannot work."""
        rate = parse_rate_limit(rate_limit)
        rate_rule = key_rule("rate_limit_key", rate_limit_key, signature)
        if rate_rule is not None and rate is None:
            raise ValueError("rate_limit_key needs a rate_limit to apply per key")
        per_key = None if max_concurrency_per_key is None else positive_int(
            "max_concurrency_per_key", max_concurrency_per_key)
        concurrency_rule = key_rule("concurrency_key", concurrency_key, signature)
        if (per_key is None) != (concurrency_rule is None):
            raise ValueError("give concurrency_key and max_concurrency_per_key together")
        if rate is None and per_key is None:
            return None
        docs = LimitDocs(
            store.collection, store.type, interval=None if rate is None else rate.interval,
            tolerance=0 if rate is None else rate.tolerance, keyed_rate=rate_rule is not None, per_key=per_key,
            clock=DatabaseClock(store.collection),
        )
        return cls(store, docs, rate=rate, rate_key=rate_rule, per_key=per_key, concurrency_key=concurrency_rule,
                   signature=signature, on_held=on_held, wake=wake, wake_at=wake_at)

    # -- submission ----------------------------------------------------------------------------

    def keys(self, params: Mapping[str, Any]) -> dict[str, str | None]:
        """The keys stored on a task submitted with `params` (`rate_key`, `concurrency_key`)."""
        full = {**self._defaults, **params}
        fields: dict[str, str | None] = {}
        if self.rate_key is not None:
            fields["rate_key"] = self.rate_key.of(full)
        if self.concurrency_key is not None:
            fields["concurrency_key"] = self.concurrency_key.of(full)
        return fields

    # -- the claim -----------------------------------------------------------------------------

    def claim(self, claim_for: Mapping[str, Any]) -> dict[str, Any] | None:
        """Claim the first due task that every limit lets start now (see the module's docstring);
        its document as claimed, or None."""
        blocked = self.docs.blocked()
        if None in blocked.rates:  # the type's own rate: nothing may start before its time
            self._held_back(blocked, [])
            return None
        lost: list[str] = []
        refused = 0
        while len(lost) < _TRIES and refused < _REFUSALS:
            # One task is enough while nothing refuses; after a refusal, read ahead a few.
            candidates = self.store.next_due(self._passing(blocked, lost), limit=_BATCH if refused or lost else 1)
            if not candidates:
                self._held_back(blocked, lost)
                return None
            for candidate in candidates:
                if self._blocks(blocked, candidate):
                    continue  # an earlier candidate found its key holding tasks back
                task_id, attempts = candidate["task_id"], candidate.get("attempts") or 0
                shares = self._take(candidate, attempts + 1, blocked)
                if shares == "rival":
                    lost.append(task_id)
                    continue
                if not isinstance(shares, _Shares):
                    if None in blocked.rates:
                        self._held_back(blocked, lost)
                        return None
                    refused += 1
                    continue  # a key of it holds it back: `blocked` says so now
                doc = self.store.claim(
                    claim_for, match={"task_id": task_id, "attempts": attempts or {"$in": [None, 0]}},
                    started=None if shares.counted is None else from_ms(shares.counted),
                )
                if doc is None:
                    self._give_back(candidate, attempts + 1, shares)
                    lost.append(task_id)
                    continue
                if shares.concurrency is not None:
                    self._holding[(task_id, attempts + 1)] = shares.concurrency
                    if len(self._holding) > _REMEMBERED:
                        self._holding.popitem(last=False)
                return doc
        self.wake()  # many races lost, or keys found held back: claim again at the next chance
        return None

    def _blocks(self, blocked: Blocked, candidate: Mapping[str, Any]) -> bool:
        """Whether a key of the candidate is known to hold it back now."""
        limited, rate = self._rate_key_of(candidate)
        concurrency = candidate.get("concurrency_key") if self.concurrency_key is not None else None
        return (limited and rate in blocked.rates) or (concurrency is not None and concurrency in blocked.full)

    def _passing(self, blocked: Blocked, lost: list[str]) -> dict[str, Any]:
        """Conditions on the due tasks a claim may take: none of a held-back key, none lost to a rival."""
        conditions: dict[str, Any] = {}
        if blocked.rates:
            conditions["rate_key"] = {"$nin": sorted(blocked.rates, key=str)}
        if blocked.full:
            conditions["concurrency_key"] = {"$nin": sorted(blocked.full)}
        if lost:
            conditions["task_id"] = {"$nin": lost}
        return conditions

    def _take(self, candidate: Mapping[str, Any], attempt: int, blocked: Blocked) -> _Shares | str:
        """Take the candidate's share of each limit: the shares when it may start; "held" when a
        key holds it back (and `blocked` now says so); "rival" when another claim of the same
        task holds its share."""
        task_id = candidate["task_id"]
        concurrency = candidate.get("concurrency_key") if self.concurrency_key is not None else None
        if concurrency is not None:
            state = self.docs.hold(concurrency, task_id, attempt)
            if state == "taken":
                return "rival"
            if state == "full":
                blocked.full.add(concurrency)
                return "held"
        limited, rate = self._rate_key_of(candidate)
        if not limited:
            return _Shares(concurrency)  # no rate applies: the start is counted at the claim
        taken = self.docs.take(rate)
        if isinstance(taken, tuple):
            return _Shares(concurrency, rate=rate, counted=taken[0], booked=taken[1])
        if concurrency is not None:
            self.docs.unhold(concurrency, task_id, attempt)
        blocked.rates[rate] = taken
        return "held"

    def _give_back(self, candidate: Mapping[str, Any], attempt: int, shares: _Shares) -> None:
        if shares.concurrency is not None:
            self.docs.unhold(shares.concurrency, candidate["task_id"], attempt)
        if shares.booked is not None:
            self.docs.give(shares.rate, shares.booked)

    def _held_back(self, blocked: Blocked, lost: list[str]) -> None:
        """The claim took nothing: if a due task waits on a limit, count one held-back claim and
        wake this worker when the earliest rate key is due again."""
        if not blocked:
            return
        limited: list[dict[str, Any]] = []
        if None not in blocked.rates:
            if blocked.rates:
                limited.append({"rate_key": {"$in": sorted(blocked.rates, key=str)}})
            if blocked.full:
                limited.append({"concurrency_key": {"$in": sorted(blocked.full)}})
        conditions = self._passing(Blocked(), lost)
        if len(limited) == 1:
            conditions.update(limited[0])
        elif limited:
            conditions["$or"] = limited
        found = self.store.next_due(conditions)
        if not found:
            return
        waiting = found[0]
        self.on_held("concurrency" if waiting.get("concurrency_key") in blocked.full else "rate")
        if blocked.rates:
            due = self.docs.clock.monotonic_at(min(blocked.rates.values()))
            self.wake_at(max(due, time.monotonic() + 0.001))

    def free(self, attempt: Attempt) -> None:
        """The attempt is over: its share of its concurrency key is given back; if the key was
        full, this process's worker claims again at once (a task of that key may wait)."""
        key = self._holding.pop((attempt.task_id, attempt.number), None)
        if key is not None and self.docs.unhold(key, attempt.task_id, attempt.number):
            self.wake()

    # -- what the public view says ----------------------------------------------------------

    def explain(self, docs: list[dict[str, Any]], views: list[dict[str, Any]]) -> None:
        """Fill `held` in the views of due queued tasks a limit holds back: {"reason": "rate" |
        "concurrency", "key", "until"} (`until`: when the rate lets the next start, else None)."""
        now = utcnow()
        waiting = [(doc, view) for doc, view in zip(docs, views, strict=True)
                   if view.get("status") == TaskStatus.QUEUED.value and _due(doc.get("run_at"), now)]
        if not waiting:
            return
        rate_keys: set[str | None] = set()
        concurrency_keys: set[str] = set()
        for doc, _ in waiting:
            limited, rate = self._rate_key_of(doc)
            if limited:
                rate_keys.add(rate)
            if self.concurrency_key is not None and doc.get("concurrency_key") is not None:
                concurrency_keys.add(doc["concurrency_key"])
        blocked = self.docs.states(rate_keys, concurrency_keys)
        for doc, view in waiting:
            concurrency = doc.get("concurrency_key")
            limited, rate = self._rate_key_of(doc)
            if concurrency in blocked.full:
                view["held"] = {"reason": "concurrency", "key": concurrency, "until": None}
            elif limited and rate in blocked.rates:
                view["held"] = {"reason": "rate", "key": rate, "until": from_ms(blocked.rates[rate])}

    def _rate_key_of(self, doc: Mapping[str, Any]) -> tuple[bool, str | None]:
        """Whether a rate limits the task's starts, and its key (None: the type's own rate)."""
        if self.rate is None:
            return False, None
        if self.rate_key is None:
            return True, None
        key = doc.get("rate_key")
        return key is not None, key

    def held_back(self) -> dict[str, int]:
        """How many due tasks each limit holds back now, by reason (the dashboard, /metrics)."""
        blocked = self.docs.blocked()
        counts = {"rate": 0, "concurrency": 0}
        if blocked.full:
            counts["concurrency"] = self.store.count_due({"concurrency_key": {"$in": sorted(blocked.full)}})
        if None in blocked.rates:
            counts["rate"] = self.store.count_due({}) - counts["concurrency"]
        elif blocked.rates:
            rated: dict[str, Any] = {"rate_key": {"$in": sorted(blocked.rates, key=str)}}
            if blocked.full:
                rated["concurrency_key"] = {"$nin": sorted(blocked.full)}
            counts["rate"] = self.store.count_due(rated)
        return counts


Explain = Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]


def explaining(limits: Limits | None, slots: ConcurrencySlots | None) -> Explain | None:
    """What fills `held` in the public views: the rate and per-key limits' reasons, then, with
    `max_concurrency`, {"reason": "concurrency", "key": None, "until": None} for the due queued
    tasks nothing else holds back while every slot of the type is taken."""
    if slots is None:
        return None if limits is None else limits.explain

    def explain(docs: list[dict[str, Any]], views: list[dict[str, Any]]) -> None:
        if limits is not None:
            limits.explain(docs, views)
        now = utcnow()
        waiting = [view for doc, view in zip(docs, views, strict=True)
                   if view.get("status") == TaskStatus.QUEUED.value and view.get("held") is None
                   and _due(doc.get("run_at"), now)]
        if waiting and slots.all_taken():
            for view in waiting:
                view["held"] = {"reason": "concurrency", "key": None, "until": None}

    return explain


def _due(run_at: datetime | None, now: datetime) -> bool:
    return run_at is None or as_utc(run_at) <= now
