"""Values as the embedded store keeps them: written once, normalised as MongoDB stores them
(UTC datetimes at millisecond precision, kept naive; tuples as lists), and copied on the way
out, datetimes made aware UTC, so that no caller holds a reference into the store."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId
from bson.errors import InvalidDocument

#: Types stored as they are: immutable, so a document may share them with its caller.
_ATOM_TYPES = frozenset({str, int, float, bool, type(None), ObjectId, bytes})


class Marker:
    """A named sentinel."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


MISSING = Marker("MISSING")


def stored(value: Any) -> Any:
    """A deep copy of `value` as the database would store it; `InvalidDocument` for a key
    that is not a string."""
    kind = type(value)
    if kind in _ATOM_TYPES:
        return value
    if kind is datetime:
        return _stored_time(value)
    if kind is dict or isinstance(value, Mapping):
        copy = {}
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise InvalidDocument(f"documents must have only string keys, key was {key!r}")
            copy[key] = item if type(item) in _ATOM_TYPES else stored(item)
        return copy
    if kind is list or kind is tuple:
        return [item if type(item) in _ATOM_TYPES else stored(item) for item in value]
    if isinstance(value, datetime):
        return _stored_time(value)
    if isinstance(value, (list, tuple)):
        return [stored(item) for item in value]
    return value  # Decimal128, Regex, UUID, subclasses of the atoms...: immutable or left to the caller


def _stored_time(value: datetime) -> datetime:
    """A datetime as BSON keeps it: naive UTC, to the millisecond. One write often stores the
    same moment in several fields (`now`), so the last few conversions are remembered."""
    known = _TIMES.get(value)
    if known is not None:
        return known
    zone = value.tzinfo
    if zone is None and value.microsecond % 1000 == 0:
        return value  # stored already (read back from the store)
    if zone is not None and zone is not timezone.utc:
        converted = value - value.utcoffset()  # type: ignore[operator]
    else:
        converted = value
    converted = converted.replace(microsecond=converted.microsecond // 1000 * 1000, tzinfo=None)
    if len(_TIMES) >= _TIMES_KEPT:
        _TIMES.clear()
    _TIMES[value] = converted  # (equal datetimes are the same instant: the same stored value)
    return converted


#: Recent conversions of `_stored_time`, by the datetime given.
_TIMES: dict[datetime, datetime] = {}
_TIMES_KEPT = 64


def copied(value: Any) -> Any:
    """A copy of a stored value that shares nothing mutable with the store, its datetimes
    aware UTC (as pymongo reads them with `tz_aware=True`, as asynctask's own client does)."""
    kind = type(value)
    if kind is dict:
        return {key: item if type(item) in _ATOM_TYPES else copied(item) for key, item in value.items()}
    if kind is datetime:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    if kind is list:
        return [item if type(item) in _ATOM_TYPES else copied(item) for item in value]
    return value


def dotted(doc: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, `MISSING` when absent (array elements are not searched)."""
    current: Any = doc
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part, MISSING)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


def store_key(doc_id: Any) -> Any:
    """A hashable key for a document's `_id`."""
    if isinstance(doc_id, dict):
        return ("__doc__", tuple((k, store_key(v)) for k, v in doc_id.items()))
    if isinstance(doc_id, list):
        return ("__list__", tuple(store_key(v) for v in doc_id))
    return doc_id


@functools.total_ordering
class Bound:
    """Lower or higher than every other value, to bisect a range of tuples."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def __eq__(self, other: object) -> bool:
        return self is other

    def __lt__(self, other: object) -> bool:
        return self is not other and not self.high

    def __gt__(self, other: object) -> bool:
        return self is not other and self.high

    __hash__ = object.__hash__


LOW, HIGH = Bound(False), Bound(True)


class Desc:
    """A sort component in descending order."""

    __slots__ = ("k",)

    def __init__(self, k: Any) -> None:
        self.k = k

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Desc) and self.k == other.k

    def __lt__(self, other: object) -> bool:
        if isinstance(other, Desc):
            return bool(other.k < self.k)
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, Desc):
            return bool(self.k < other.k)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Desc({self.k!r})"


_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def descending(value: tuple[int, Any]) -> tuple[int, Any]:
    """An `encoded` value (or a range bound) that sorts in reverse: numbers and dates negated
    (compared natively, as tuples), other values wrapped in `Desc`."""
    rank, inner = value
    if inner is LOW or inner is HIGH:
        return -rank, HIGH if inner is LOW else LOW
    if isinstance(inner, (int, float)) and not isinstance(inner, bool):
        return -rank, -inner
    if isinstance(inner, datetime):
        return -rank, -((inner - _EPOCH) // _MICROSECOND)
    return -rank, Desc(inner)


_SIMPLE_TYPES = (str, int, float, datetime, ObjectId)


def is_simple(value: Any) -> bool:
    """A scalar whose Python equality and hash agree with the query engine's equality (bool,
    int and float compare equal across types in both)."""
    if value is None:
        return True
    if isinstance(value, _SIMPLE_TYPES):
        return not (isinstance(value, float) and value != value)
    return False


def encoded(value: Any) -> tuple[int, Any] | None:
    """The value as BSON's sort order compares it, `(type rank, value)`; None if the value is
    not a scalar the sorted indexes order (missing ranks like null)."""
    if value is None or value is MISSING:
        return (5, 0)
    if isinstance(value, bool):
        return (40, value)
    if isinstance(value, (int, float)):
        return None if value != value else (10, value)
    if isinstance(value, str):
        return (15, value)
    if isinstance(value, ObjectId):
        return (35, value)
    if isinstance(value, datetime):
        return None if value.tzinfo is not None else (45, value)
    return None
