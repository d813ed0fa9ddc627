"""Turn stored values into what JSON can carry: ISO 8601 times, string ids."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from bson import ObjectId


def as_utc(value: datetime) -> datetime:
    """Return `value` as an aware UTC datetime (pymongo and mongomock hand back naive UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def jsonable(value: Any) -> Any:
    """Return `value` with datetimes as ISO 8601 strings and ObjectIds as hex, at any depth."""
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value
