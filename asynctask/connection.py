"""Which collection to use: MongoDB when `ASYNCTASK_MONGO_URI` is set, else memory.

The MongoDB client is created on first use in each process, never at import time, so that
gunicorn `--preload` forks no client and no monitor thread (pymongo is not fork-safe).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .memory import MemoryCollection

ENV_URI = "ASYNCTASK_MONGO_URI"
ENV_DB = "ASYNCTASK_MONGO_DB"
ENV_COLLECTION = "ASYNCTASK_MONGO_COLLECTION"


class LazyMongoCollection:
    """A pymongo `Collection` whose `MongoClient` is made on first use in each process."""

    def __init__(self, uri: str, database: str = "asynctask", collection: str = "tasks") -> None:
        self.uri, self.database_name, self.name = uri, database, collection
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._collection: Any = None

    def _get(self) -> Any:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    from pymongo import MongoClient

                    client: MongoClient = MongoClient(self.uri, tz_aware=True, connect=False)
                    self._collection = client[self.database_name][self.name]
                    self._pid = os.getpid()
        return self._collection

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
    uri = os.environ.get(ENV_URI)
    if not uri:
        return MemoryCollection()
    return LazyMongoCollection(
        uri,
        os.environ.get(ENV_DB) or "asynctask",
        os.environ.get(ENV_COLLECTION) or "tasks",
    )
