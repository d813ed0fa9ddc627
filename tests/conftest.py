"""Shared fixtures: a collection per backend, task factories, waiting with a deadline."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apps
import pytest
from pymongo import MongoClient
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


# -- real processes on the shared MongoDB -------------------------------------------------------


@pytest.fixture
def db(mongo_uri: str) -> Iterator[Any]:
    """The database the apps use, through a client of the test process."""
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000)
    yield client[apps.DEFAULT_DB]
    client.close()


@pytest.fixture
def name(db: Any) -> Iterator[str]:
    """A fresh collection name for this test; it and its calls collection are dropped after."""
    collection = f"d_{uuid.uuid4().hex[:12]}"
    yield collection
    for suffix in ("", "_calls", ".workers", ".slots", ".limits"):
        db.drop_collection(f"{collection}{suffix}")


def _processes(kind: Callable[..., Any], mongo_uri: str, name: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start `kind` processes (`apps.Server`, `apps.WorkerProcess`) on this test's collection,
    each ready when returned; every one is killed at teardown."""
    started: list[Any] = []

    def start(**options: Any) -> Any:
        process = kind(mongo_uri, name, tmp_path / "logs", **options)
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def serve(mongo_uri: str, name: str, tmp_path: Path) -> Iterator[Callable[..., apps.Server]]:
    """Start gunicorn servers of `apps` (`apps.Server`), ready to serve; all killed at teardown."""
    yield from _processes(apps.Server, mongo_uri, name, tmp_path)


@pytest.fixture
def workers(mongo_uri: str, name: str, tmp_path: Path) -> Iterator[Callable[..., apps.WorkerProcess]]:
    """Start `asynctask worker apps:api` processes, ready to take work; all killed at teardown."""
    yield from _processes(apps.WorkerProcess, mongo_uri, name, tmp_path)


@pytest.fixture
def local_task(mongo_uri: str, name: str, tmp_path: Path) -> Iterator[Callable[..., apps.Recorded]]:
    """Build `apps.Recorded` tasks in the test process on this test's collection; shut down after."""
    made: list[apps.Recorded] = []

    def build(**settings: Any) -> apps.Recorded:
        task = apps.build(mongo_uri, name, log_dir=str(tmp_path / "local-logs"), **settings)
        made.append(task)
        return task

    yield build
    for task in made:
        task.shutdown(wait=True)


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
