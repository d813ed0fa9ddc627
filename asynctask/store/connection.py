"""Which collection to use: MongoDB when `ASYNCTASK_MONGO_URI` is set, else memory.

The MongoDB client is created on first use in each process, never at import time, so that
gunicorn `--preload` forks no client and no monitor thread (pymongo is not fork-safe).

The in-memory store lives in one process: under several gunicorn workers each would keep
tasks of its own, and a request landing on another worker than the one that took the task
answers 404. A worker that uses it says so in a warning (see `serving_workers`).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from ..process import PerProcess
from .memory import MemoryCollection

ENV_URI = "ASYNCTASK_MONGO_URI"
ENV_DB = "ASYNCTASK_MONGO_DB"
ENV_COLLECTION = "ASYNCTASK_MONGO_COLLECTION"

logger = logging.getLogger(__name__)

_lock = threading.Lock()
#: Whether `default_collection()` gave this process an in-memory store.
_memory_made = False
#: How many workers the gunicorn server this process is a worker of runs; 0 outside one.
_workers = 0
_warned = False


class LazyMongoCollection:
    """A pymongo `Collection` whose `MongoClient` is made on first use in each process."""

    def __init__(self, uri: str, database: str = "asynctask", collection: str = "tasks") -> None:
        self.uri, self.database_name, self.name = uri, database, collection
        self._collection: PerProcess[Any] = PerProcess(self._connect)

    def _connect(self) -> Any:
        from pymongo import MongoClient

        client: MongoClient = MongoClient(self.uri, tz_aware=True, connect=False)
        return client[self.database_name][self.name]

    def _get(self) -> Any:
        return self._collection.get()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            # Private names are never collection attributes; this also keeps a half-built copy
            # (copy, unpickling) out of endless recursion through `_get`.
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        from pymongo.collection import Collection

        if callable(getattr(Collection, name, None)):
            # A method is looked up without connecting; the client is made when it is called.
            def method(*args: Any, **kwargs: Any) -> Any:
                return getattr(self._get(), name)(*args, **kwargs)

            method.__name__ = name
            return method
        return getattr(self._get(), name)

    def __repr__(self) -> str:
        return f"LazyMongoCollection({self.database_name}.{self.name})"


def default_collection() -> Any:
    """The collection named by the environment, or a new in-memory one when none is set."""
    global _memory_made
    uri = os.environ.get(ENV_URI)
    if not uri:
        with _lock:
            _memory_made = True
        _warn_if_not_shared()
        return MemoryCollection()
    return LazyMongoCollection(
        uri,
        os.environ.get(ENV_DB) or "asynctask",
        os.environ.get(ENV_COLLECTION) or "tasks",
    )


def serving_workers(workers: int) -> None:
    """Note, in a gunicorn worker (asynctask.serving's `post_worker_init`), how many workers
    the server runs: with more than one, an in-memory default store is not shared, and a
    warning says so (once per worker)."""
    global _workers
    with _lock:
        _workers = workers
    _warn_if_not_shared()


def _warn_if_not_shared() -> None:
    global _warned
    with _lock:
        if not _memory_made or _workers <= 1 or _warned:
            return
        _warned = True
    logger.warning(
        "worker %d keeps tasks in memory, not shared with the other %d gunicorn workers: a request "
        "reaching another worker than the one holding its task answers 404. Set %s to a MongoDB "
        "URI to share tasks, or serve with one worker.", os.getpid(), _workers - 1, ENV_URI,
    )


def is_mongodb(collection: Any) -> bool:
    """Whether `collection` is a MongoDB collection (pymongo's, or a lazy one)."""
    from pymongo.collection import Collection

    return isinstance(collection, (Collection, LazyMongoCollection))


def majority(collection: Any) -> Any:
    """`collection` with majority write concern when it is a MongoDB collection (a write
    acknowledged then survives a failover: this needs a replica set without arbiters);
    any other store as it is."""
    from pymongo.write_concern import WriteConcern

    if is_mongodb(collection):
        return collection.with_options(write_concern=WriteConcern(w="majority"))
    return collection

