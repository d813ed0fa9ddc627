"""Shared fixtures: a collection per backend, task factories, waiting with a deadline."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from waiting import wait_for

from asynctask import AsyncTask, MemoryCollection

MONGO_URI = os.environ.get("ASYNCTASK_TEST_MONGO_URI")

os.environ.setdefault("DISABLE_STREAM_HANDLER", "1")


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A MongoDB that several processes share: ASYNCTASK_TEST_MONGO_URI, else the test wire server."""
    if MONGO_URI:
        yield MONGO_URI
        return
    from mongo_wire import running_server

    with running_server() as uri:
        yield uri


@pytest.fixture(params=["memory", "mongo"])
def collection(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh, empty task collection: in memory, and through pymongo on `mongo_uri`."""
    if request.param == "memory":
        yield MemoryCollection()
        return
    from pymongo import MongoClient

    uri = request.getfixturevalue("mongo_uri")
    client: MongoClient = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)
    coll = client.get_database("asynctask_test").get_collection(f"t_{uuid.uuid4().hex[:12]}")
    yield coll
    coll.drop()
    client.close()


@pytest.fixture
def memory() -> MemoryCollection:
    """A fresh in-memory collection, for tests that need no other backend."""
    return MemoryCollection()


@pytest.fixture
def make_task(tmp_path: Any) -> Iterator[Callable[..., AsyncTask]]:
    """Build task instances (logs in a temp folder) and shut them all down afterwards."""
    made: list[AsyncTask] = []

    def make(cls: type[AsyncTask], collection: Any = None, **kwargs: Any) -> AsyncTask:
        kwargs.setdefault("max_worker", 4)
        task = cls(collection if collection is not None else MemoryCollection(), tmp_path / "logs", **kwargs)
        made.append(task)
        return task

    yield make
    for task in made:
        for gate in (getattr(task, "gate", None),):
            if gate is not None:
                gate.set()
        task.shutdown(wait=True)


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., dict[str, Any]]:
    """`wait_for(task, task_id, statuses=FINISHED, timeout=10)`."""
    return wait_for
