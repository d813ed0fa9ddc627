"""`Schedule`: when a task type runs by itself, as a value checked once, when it is made.

A schedule has a cron expression (5 fields, read by cronsim) evaluated in an IANA time zone
(zoneinfo), or a fixed interval counted from 1970-01-01 00:00 UTC (so `every=15 min` ticks at
:00, :15, :30 and :45 in every process). Its ticks are instants; each becomes a task whose id
names the schedule and the tick's UTC time, so the unique task id makes one task per tick.

Daylight saving time follows cron (cronsim mimics Debian's cron): an expression with a fixed
minute and hour is read on the wall clock, so a tick that falls in a spring-forward gap runs
once at the first valid time after it, and one in a fall-back overlap runs once, at its first
occurrence; an expression with `*` in the minute or hour field steps through real time, so an
hourly tick runs in both hours of an overlap and none is invented in a gap.

Which ticks are due (`Schedule.due`) is pure arithmetic on (cursor, now): the last tick handled
and the current time. Ticks at most `on_time` old are on time and always due (a live worker
sees each within a poll interval or two); older ones were missed, and `catch_up` says which of
those within `catch_up_window` run: `"none"`, `"latest"` (the newest only) or `"all"` (at most
`MAX_CATCH_UP`).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import bson
from cronsim import CronSim, CronSimError

from ..errors import InvalidSchedule
from ..validation import MAX_DURATION, MAX_PRIORITY, MIN_PRIORITY, check_keys, unsafe_value

#: Where interval ticks are counted from.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: The catch-up policies.
CATCH_UP = ("none", "latest", "all")
#: The most missed ticks one evaluation enqueues (a warning says when more were cut).
MAX_CATCH_UP = 100
#: The longest schedule name: its task ids stay within the 128 characters of a task id.
MAX_NAME = 80
#: The param a `main` may take to receive the tick's time.
SCHEDULED_FOR = "scheduled_for"
#: The first part of every task id a schedule makes.
PREFIX = "sched"

_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
_UTC = ZoneInfo("UTC")


def check_name(name: Any) -> str:
    """`name` if it is a valid schedule name: 1-80 characters of A-Z a-z 0-9 _ . : -, not "." or ".."."""
    if not isinstance(name, str):
        raise InvalidSchedule(f"a schedule's name must be a string, not {type(name).__name__}")
    if not 1 <= len(name) <= MAX_NAME or name in (".", "..") or not set(name) <= _NAME_CHARS:
        raise InvalidSchedule(
            f"a schedule's name must be 1-{MAX_NAME} characters of A-Z a-z 0-9 _ . : - and not '.' or '..', "
            f"not {name[:100]!r}"
        )
    return name


def _seconds(name: str, value: Any, *, minimum: float) -> float:
    """A number of seconds or a timedelta as float seconds within [minimum, MAX_DURATION]."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidSchedule(f"{name} must be seconds (a number) or a timedelta, not {value!r}")
    if not minimum <= seconds <= MAX_DURATION:  # NaN is in no range
        raise InvalidSchedule(f"{name} must be from {minimum:g} to {MAX_DURATION:g} seconds, not {value!r}")
    return seconds


def _zone(tz: Any) -> ZoneInfo:
    if not isinstance(tz, str) or not tz or len(tz) > 100:
        raise InvalidSchedule(f"tz must be the name of an IANA time zone (e.g. 'Europe/Berlin'), not {tz!r}")
    try:
        return ZoneInfo(tz)
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError for a path, OSError
        raise InvalidSchedule(f"unknown time zone {tz!r}: give an IANA name such as 'Europe/Berlin' or 'UTC'") from None


def _cron(cron: Any) -> str:
    if not isinstance(cron, str):
        raise InvalidSchedule(f"cron must be a string of 5 fields, not {cron!r}")
    fields = cron.split()
    if len(fields) != 5:
        raise InvalidSchedule(f"cron must have 5 fields (minute hour day month weekday), not {cron[:100]!r}")
    text = " ".join(fields)
    try:
        CronSim(text, EPOCH)
    except CronSimError as exc:
        raise InvalidSchedule(f"cron {text!r} is not valid: {exc}") from None
    return text


def _params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidSchedule(f"params must be a dict, not {type(params).__name__}")
    if any(not isinstance(key, str) for key in params):
        raise InvalidSchedule("params: keys must be strings")
    problem = unsafe_value(params)
    if problem:
        raise InvalidSchedule(problem)
    try:
        check_keys(params, "params")
        bson.encode({"params": dict(params)})
    except (ValueError, TypeError, OverflowError, bson.errors.InvalidDocument) as exc:
        raise InvalidSchedule(f"params cannot be stored: {exc}") from None
    return copy.deepcopy(dict(params))


def _priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidSchedule(f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority!r}")
    return priority


def _plural(n: int, unit: str) -> str:
    return f"Every {unit}" if n == 1 else f"Every {n} {unit}s"


@dataclass(frozen=True)
class Due:
    """What one evaluation of a schedule does: the ticks to enqueue (oldest first), where its
    cursor moves (the newest tick up to now, enqueued or not), and whether ticks were cut."""

    ticks: tuple[datetime, ...]
    newest: datetime | None
    cut: bool


class Schedule:
    """A task type's schedule: `cron` (5 fields, in time zone `tz`) or `every` (an interval).

    Args:
        name: unique within the task type; 1-80 characters of A-Z a-z 0-9 _ . : -.
        cron: a cron expression such as "0 2 * * *" (exactly one of `cron` and `every`).
        every: seconds or a timedelta, a whole number of seconds, at least 1.
        tz: the IANA time zone cron ticks are computed in (default "UTC").
        params: the params of each tick's task (checked against `main` when the schedule is added).
        priority: the priority of each tick's task, -100 to 100.
        catch_up: which ticks missed while no worker ran are enqueued: "none", "latest"
            (the newest within `catch_up_window`) or "all" (each within it, at most 100).
        catch_up_window: seconds or a timedelta: how old a missed tick may be and still run.
        enabled: False declares it paused.

    Raises `InvalidSchedule` (a `ValueError`) for anything that is not valid.
    """

    __slots__ = ("name", "cron", "every", "tz", "params", "priority", "catch_up", "catch_up_window", "enabled",
                 "_zone")

    name: str
    cron: str | None
    every: timedelta | None
    tz: str
    params: dict[str, Any]
    priority: int
    catch_up: str
    catch_up_window: timedelta
    enabled: bool
    _zone: ZoneInfo

    def __init__(
        self,
        name: str,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        tz: str = "UTC",
        params: Mapping[str, Any] | None = None,
        priority: int = 0,
        catch_up: str = "latest",
        catch_up_window: float | timedelta = timedelta(minutes=10),
        enabled: bool = True,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "name", check_name(name))
        if (cron is None) == (every is None):
            raise InvalidSchedule(f"schedule {name!r}: give exactly one of cron and every")
        set_(self, "cron", None if cron is None else _cron(cron))
        interval = None
        if every is not None:
            seconds = _seconds("every", every, minimum=1)
            if seconds != int(seconds):
                raise InvalidSchedule(f"every must be a whole number of seconds, not {every!r}")
            interval = timedelta(seconds=int(seconds))
        set_(self, "every", interval)
        set_(self, "_zone", _zone(tz))
        set_(self, "tz", tz)
        set_(self, "params", _params(params))
        set_(self, "priority", _priority(priority))
        if catch_up not in CATCH_UP:
            raise InvalidSchedule(f"catch_up must be one of {', '.join(CATCH_UP)}, not {catch_up!r}")
        set_(self, "catch_up", catch_up)
        set_(self, "catch_up_window", timedelta(seconds=_seconds("catch_up_window", catch_up_window, minimum=0)))
        if not isinstance(enabled, bool):
            raise InvalidSchedule(f"enabled must be True or False, not {enabled!r}")
        set_(self, "enabled", enabled)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Schedule cannot be changed; make another with replace()")

    # -- as stored ------------------------------------------------------------------------------

    def definition(self) -> dict[str, Any]:
        """What decides the schedule's ticks and tasks, as stored (enabled and the name apart)."""
        return {
            "cron": self.cron, "every": None if self.every is None else int(self.every.total_seconds()),
            "tz": self.tz, "params": copy.deepcopy(self.params), "priority": self.priority,
            "catch_up": self.catch_up, "catch_up_window": self.catch_up_window.total_seconds(),
        }

    @classmethod
    def from_definition(cls, name: str, definition: Mapping[str, Any], enabled: bool = True) -> Schedule:
        """The schedule a stored definition describes; `InvalidSchedule` if it is not valid."""
        return cls(
            name, cron=definition.get("cron"), every=definition.get("every"), tz=definition.get("tz", "UTC"),
            params=definition.get("params"), priority=definition.get("priority", 0),
            catch_up=definition.get("catch_up", "latest"),
            catch_up_window=definition.get("catch_up_window", 600.0), enabled=enabled,
        )

    def replace(self, **changes: Any) -> Schedule:
        """A copy with `changes` applied (checked like a new schedule); `every` replaces `cron` and
        the other way round."""
        fields: dict[str, Any] = {
            "cron": self.cron, "every": self.every, "tz": self.tz, "params": self.params,
            "priority": self.priority, "catch_up": self.catch_up, "catch_up_window": self.catch_up_window,
            "enabled": self.enabled,
        }
        unknown = sorted(set(changes) - set(fields) - {"name"})
        if unknown:
            raise InvalidSchedule(f"a schedule has no field(s) {', '.join(unknown)}")
        if changes.get("cron") is not None:
            fields["every"] = None
        if changes.get("every") is not None:
            fields["cron"] = None
        fields.update(changes)
        name = fields.pop("name", self.name)
        return Schedule(name, **fields)

    def __reduce__(self) -> tuple[Any, ...]:
        return Schedule.from_definition, (self.name, self.definition(), self.enabled)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (self.name, self.enabled, self.definition()) == (other.name, other.enabled, other.definition())

    def __hash__(self) -> int:
        return hash((self.name, self.cron, self.every, self.tz))

    def __repr__(self) -> str:
        when = f"cron={self.cron!r}" if self.cron is not None else f"every={self.every!r}"
        extra = "" if self.enabled else ", enabled=False"
        return f"Schedule({self.name!r}, {when}, tz={self.tz!r}, catch_up={self.catch_up!r}{extra})"

    # -- in words ---------------------------------------------------------------------------------

    def describe(self) -> str:
        """The expression in words: "At 02:00 every day", "Every 15 minutes"."""
        if self.cron is not None:
            try:
                return CronSim(self.cron, EPOCH).explain()
            except Exception:  # noqa: BLE001 - words are a nicety; the expression itself is shown then
                return self.cron
        seconds = int(self.every.total_seconds()) if self.every is not None else 0
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds % size == 0:
                return _plural(seconds // size, unit)
        return _plural(seconds, "second")

    # -- task ids -----------------------------------------------------------------------------------

    def tick_id(self, tick: datetime) -> str:
        """The id of the task of `tick`: `sched:<name>:<UTC time, e.g. 20300101T020000Z>`."""
        return f"{PREFIX}:{self.name}:{tick.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"

    def trigger_id(self, now: datetime) -> str:
        """A new id for a run asked by hand (`trigger`), never one of a tick's."""
        return f"{PREFIX}:{self.name}:run-{now.astimezone(timezone.utc):%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:6]}"

    # -- ticks --------------------------------------------------------------------------------------

    def next_tick(self, after: datetime) -> datetime | None:
        """The first tick strictly after `after` (UTC), or None if there is none."""
        after = after.astimezone(timezone.utc)
        if self.every is not None:
            return EPOCH + ((after - EPOCH) // self.every + 1) * self.every
        ticks = self._cron_ticks(after, reverse=False)
        # On the wall clock of a fall-back overlap, the next match may lie before `after` in
        # real time (it is read at its first occurrence): such a tick has passed; skip it.
        for _ in range(10):
            tick = next(ticks, None)
            if tick is None or tick > after:
                return tick
        return None

    def recent_ticks(self, until: datetime, after: datetime | None = None, limit: int = 1) -> list[datetime]:
        """The ticks in (`after`, `until`], newest first, at most `limit` of them (UTC)."""
        until = until.astimezone(timezone.utc)
        found: list[datetime] = []
        if self.every is not None:
            tick = EPOCH + ((until - EPOCH) // self.every) * self.every
            while len(found) < limit and (after is None or tick > after):
                found.append(tick)
                tick -= self.every
            return found
        # cronsim's reverse walk starts at the whole second at or before its start when that
        # start has a fraction of a second; so a tick exactly at `until` is found too.
        start = until + timedelta(microseconds=1) if until.microsecond == 0 else until
        for tick in self._cron_ticks(start, reverse=True):
            if after is not None and tick <= after:
                break
            if tick <= until:
                found.append(tick)
                if len(found) >= limit:
                    break
        return found

    def due(self, cursor: datetime, now: datetime, on_time: timedelta) -> Due:
        """The ticks to enqueue now, when every tick up to `cursor` was handled already.

        A tick at most `on_time` old is on time and always due. Older (missed) ticks follow
        `catch_up`, within `catch_up_window`; "all" takes the newest `MAX_CATCH_UP`.
        """
        if now <= cursor:
            return Due((), None, False)
        span = on_time if self.catch_up == "none" else max(self.catch_up_window, on_time)
        recent = self.recent_ticks(now, max(cursor, now - span), MAX_CATCH_UP + 1)
        newest_ticks = recent[:1] or self.recent_ticks(now, cursor, 1)
        fresh = [tick for tick in recent if now - tick <= on_time]
        if self.catch_up == "all":
            chosen = recent
        elif self.catch_up == "latest":
            chosen = fresh or recent[:1]
        else:
            chosen = fresh
        return Due(tuple(reversed(chosen[:MAX_CATCH_UP])), newest_ticks[0] if newest_ticks else None,
                   len(chosen) > MAX_CATCH_UP)

    def _cron_ticks(self, start: datetime, *, reverse: bool) -> Any:
        """cronsim's ticks from `start` on the wall clock of the schedule's zone, as UTC."""
        zone: Any = timezone.utc if self._zone == _UTC else self._zone
        assert self.cron is not None
        try:
            walk = CronSim(self.cron, start.astimezone(zone), reverse=reverse)
        except CronSimError:
            return
        for tick in walk:  # cronsim stops after 50 years without a match
            yield tick.astimezone(timezone.utc)
