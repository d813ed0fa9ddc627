"""A thread-safe in-memory collection: indexed mongomock behind one lock.

mongomock is not thread-safe: two concurrent upserts on one key can both insert, unique
index or not. Every call, and every step of a cursor, runs under one re-entrant lock shared
by all collections of the in-memory database, so the atomic operations the store relies on
(`find_one_and_update` against a unique index) hold.

The collections are `asynctask.memory_index.IndexedCollection`s: mongomock's query and
update engines run only on the documents an index yields, so the cost of the library's
calls does not grow with the number of stored tasks (see that module for which index serves
which query).
"""

from __future__ import annotations

import threading
from typing import Any

import mongomock

from .memory_index import IndexedMongoClient

__all__ = ["MemoryCollection", "MemoryDatabase"]


class _Locked:
    """Proxy that runs every method of the wrapped object under `lock`."""

    def __init__(self, target: Any, lock: threading.RLock) -> None:
        self._target = target
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        with self._lock:
            value = getattr(self._target, name)
        if isinstance(value, (mongomock.Collection, mongomock.Database)):
            return _wrap(value, self._lock)
        if not callable(value):
            return value

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return _wrap(value(*args, **kwargs), self._lock)

        return locked

    def __getitem__(self, name: Any) -> Any:
        with self._lock:
            return _wrap(self._target[name], self._lock)

    def __iter__(self) -> Any:
        with self._lock:
            return iter(list(self._target))

    def __next__(self) -> Any:
        with self._lock:
            return next(self._target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r})"


def _wrap(value: Any, lock: threading.RLock) -> Any:
    """Keep cursors, collections and databases behind the lock: they read the store lazily."""
    if isinstance(value, (mongomock.collection.Cursor, mongomock.command_cursor.CommandCursor)):
        return _Locked(value, lock)
    if isinstance(value, mongomock.Collection):
        return MemoryCollection._bound(value, lock)
    if isinstance(value, mongomock.Database):
        return MemoryDatabase(value, lock)
    return value


class MemoryDatabase(_Locked):
    """The in-memory database of a `MemoryCollection`: `get_collection(name)` and `db[name]`
    give thread-safe collections of the same kind, sharing its data and its lock."""


class MemoryCollection(_Locked):
    """A pymongo-like `Collection` held in this process's memory; nothing is persisted.

    `.name` is its name; `.database` is its in-memory database, where companion
    collections (`coll.database["tasks.workers"]`) live next to it.

    Args:
        name: the collection's name.
    """

    def __init__(self, name: str = "tasks") -> None:
        collection = IndexedMongoClient().get_database("asynctask").get_collection(name)
        super().__init__(collection, threading.RLock())

    @classmethod
    def _bound(cls, collection: Any, lock: threading.RLock) -> MemoryCollection:
        """A proxy on another collection of the same database, under the same lock."""
        proxy = cls.__new__(cls)
        _Locked.__init__(proxy, collection, lock)
        return proxy
