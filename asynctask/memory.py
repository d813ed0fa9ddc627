"""A thread-safe in-memory collection: mongomock behind one lock.

mongomock is not thread-safe: two concurrent upserts on one key can both insert, unique
index or not. Every call, and every step of a cursor, runs under one re-entrant lock, so the
atomic operations the store relies on (`find_one_and_update` against a unique index) hold.
"""

from __future__ import annotations

import threading
from typing import Any

import mongomock


class _Locked:
    """Proxy that runs every method of the wrapped object under `lock`."""

    def __init__(self, target: Any, lock: threading.RLock) -> None:
        self._target = target
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return _wrap(value(*args, **kwargs), self._lock)

        return locked

    def __iter__(self) -> Any:
        with self._lock:
            return iter(list(self._target))

    def __next__(self) -> Any:
        with self._lock:
            return next(self._target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r})"


def _wrap(value: Any, lock: threading.RLock) -> Any:
    """Keep cursors behind the lock: they read the collection lazily."""
    if isinstance(value, (mongomock.collection.Cursor, mongomock.command_cursor.CommandCursor)):
        return _Locked(value, lock)
    return value


class MemoryCollection(_Locked):
    """A pymongo-like `Collection` held in this process's memory; nothing is persisted.

    Args:
        name: the collection's name, for messages only.
    """

    def __init__(self, name: str = "tasks") -> None:
        collection = mongomock.MongoClient().get_database("asynctask").get_collection(name)
        super().__init__(collection, threading.RLock())
