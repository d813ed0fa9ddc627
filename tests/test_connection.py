"""Choosing the store from the environment.

No `ASYNCTASK_MONGO_URI`: the in-memory store. With it: a pymongo collection whose client is
made on first use in each process, so that nothing (no MongoClient, no thread) exists before
gunicorn forks its workers. MongoDB is the test wire server of tests/mongo_wire.py.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from mongo_wire import running_server
from pymongo import MongoClient
from tasks import Echo

from asynctask import MemoryCollection, default_collection
from asynctask.store import connection

ROOT = Path(__file__).resolve().parents[1]
ENV_NAMES = ("ASYNCTASK_MONGO_URI", "ASYNCTASK_MONGO_DB", "ASYNCTASK_MONGO_COLLECTION")


@pytest.fixture(scope="module")
def mongo_uri() -> Iterator[str]:
    """The URI of a wire server shared by this module's tests."""
    with running_server() as uri:
        yield uri


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No asynctask database variable set, whatever the caller's environment holds."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def direct(mongo_uri: str) -> Iterator[MongoClient]:
    """A client of our own, to look at what the lazy collection wrote."""
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000)
    yield client
    client.close()


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _named_collection(env: pytest.MonkeyPatch, mongo_uri: str) -> tuple[str, str, Any]:
    """A lazy collection configured by all three variables, with fresh database and collection names."""
    database, name = _unique("db"), _unique("coll")
    env.setenv("ASYNCTASK_MONGO_URI", mongo_uri)
    env.setenv("ASYNCTASK_MONGO_DB", database)
    env.setenv("ASYNCTASK_MONGO_COLLECTION", name)
    return database, name, default_collection()


def _close(lazy: Any) -> None:
    """Close the client the lazy collection made in this process, if any."""
    if lazy._collection.peek() is not None:
        lazy._collection.peek().database.client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- default_collection -----------------------------------------------------------------


def test_no_uri_gives_the_in_memory_store(clean_env):
    collection = default_collection()
    assert isinstance(collection, MemoryCollection)
    collection.insert_one({"task_id": "t"})
    assert default_collection().find_one({"task_id": "t"}) is None  # a new store each call


@pytest.fixture
def fresh_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as a fresh one: no in-memory default store made, not a gunicorn worker."""
    monkeypatch.setattr(connection, "_memory_made", False)
    monkeypatch.setattr(connection, "_workers", 0)
    monkeypatch.setattr(connection, "_warned", False)


def _sharing_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "ASYNCTASK_MONGO_URI" in r.getMessage()]


@pytest.mark.parametrize("store_first", [True, False], ids=["store-then-hook", "hook-then-store"])
def test_the_memory_store_in_one_of_several_gunicorn_workers_warns_once(clean_env, fresh_worker, caplog, store_first):
    with caplog.at_level(logging.WARNING, logger="asynctask"):
        if store_first:  # the app is loaded before the worker hook runs (also with --preload)
            default_collection()
            connection.serving_workers(2)
        else:
            connection.serving_workers(2)
            default_collection()
        default_collection()

    warnings_seen = _sharing_warnings(caplog)
    assert len(warnings_seen) == 1, warnings_seen
    assert "not shared" in warnings_seen[0]


def test_no_warning_with_one_worker_or_with_mongodb(clean_env, fresh_worker, caplog, monkeypatch):
    with caplog.at_level(logging.WARNING, logger="asynctask"):
        default_collection()
        connection.serving_workers(1)
    assert _sharing_warnings(caplog) == []

    monkeypatch.setattr(connection, "_memory_made", False)
    clean_env.setenv("ASYNCTASK_MONGO_URI", f"mongodb://127.0.0.1:{_free_port()}/")
    with caplog.at_level(logging.WARNING, logger="asynctask"):
        default_collection()
        connection.serving_workers(4)
    assert _sharing_warnings(caplog) == []


def test_uri_gives_a_lazy_collection_that_starts_nothing(clean_env):
    clean_env.setenv("ASYNCTASK_MONGO_URI", f"mongodb://127.0.0.1:{_free_port()}/")
    threads_before = set(threading.enumerate())
    collection = default_collection()
    assert not isinstance(collection, MemoryCollection)
    assert collection._collection.peek() is None
    assert set(threading.enumerate()) - threads_before == set()


def test_building_a_task_on_the_lazy_collection_makes_no_client(clean_env, tmp_path):
    clean_env.setenv("ASYNCTASK_MONGO_URI", f"mongodb://127.0.0.1:{_free_port()}/")
    threads_before = set(threading.enumerate())
    collection = default_collection()
    task = Echo(collection, tmp_path / "logs", max_worker=2)
    task.app("/api")
    try:
        assert collection._collection.peek() is None, "a MongoClient was made before the first task ran"
        assert set(threading.enumerate()) - threads_before == set()
    finally:
        task.shutdown()
        _close(collection)


def test_first_use_works_and_honours_db_and_collection_names(clean_env, mongo_uri, direct):
    database, name, collection = _named_collection(clean_env, mongo_uri)
    try:
        stamp = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
        collection.insert_one({"task_id": "lazy", "at": stamp})
        found = collection.find_one({"task_id": "lazy"}, {"_id": 0})
        assert found == {"task_id": "lazy", "at": stamp}
        assert found["at"].tzinfo is not None  # times come back timezone-aware
        assert direct[database][name].find_one({"task_id": "lazy"}, {"_id": 0, "task_id": 1}) == {"task_id": "lazy"}
        assert collection._collection.peek() is not None
    finally:
        _close(collection)


def test_the_lazy_collection_answers_like_a_pymongo_collection(clean_env, mongo_uri):
    database, name, collection = _named_collection(clean_env, mongo_uri)
    try:
        assert collection.name == name
        assert collection.full_name == f"{database}.{name}"
        assert collection.database.name == database  # a pymongo Database, as on a Collection
        assert collection.database.client is collection._collection.peek().database.client
    finally:
        _close(collection)


def test_default_db_and_collection_names(clean_env, mongo_uri, direct):
    clean_env.setenv("ASYNCTASK_MONGO_URI", mongo_uri)
    marker = _unique("default")
    collection = default_collection()
    try:
        collection.insert_one({"task_id": marker})
        assert direct["asynctask"]["tasks"].count_documents({"task_id": marker}) == 1
    finally:
        _close(collection)


def test_a_task_runs_on_the_lazy_collection(clean_env, mongo_uri, direct, make_task, wait_for):
    name = _unique("coll")
    clean_env.setenv("ASYNCTASK_MONGO_URI", mongo_uri)
    clean_env.setenv("ASYNCTASK_MONGO_COLLECTION", name)
    collection = default_collection()
    try:
        task = make_task(Echo, collection)
        view = wait_for(task, task.run(value="over the wire"))
        assert view["status"] == "success", view["error"]
        assert view["result"] == "over the wire"
        assert direct["asynctask"][name].count_documents({"status": "success"}) == 1
    finally:
        _close(collection)


def test_a_lazy_collection_can_be_copied_like_a_pymongo_collection(clean_env, mongo_uri, direct):
    name = _unique("coll")
    clean_env.setenv("ASYNCTASK_MONGO_URI", mongo_uri)
    clean_env.setenv("ASYNCTASK_MONGO_COLLECTION", name)
    original = default_collection()
    duplicate = copy.copy(original)
    try:
        assert duplicate._collection.peek() is None
        duplicate.insert_one({"task_id": "copied"})
        assert direct["asynctask"][name].count_documents({"task_id": "copied"}) == 1
    finally:
        _close(duplicate)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="os.fork semantics checked on Linux")
def test_a_forked_child_makes_its_own_client(clean_env, mongo_uri, direct):
    name = _unique("coll")
    clean_env.setenv("ASYNCTASK_MONGO_URI", mongo_uri)
    clean_env.setenv("ASYNCTASK_MONGO_COLLECTION", name)
    collection = default_collection()
    collection.insert_one({"who": "parent"})
    parents = collection._collection.peek()  # kept alive, so a new object cannot reuse its id
    parent_client_id = id(parents.database.client)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a multi-threaded process
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 10
        try:
            collection.insert_one({"who": "child", "pid": os.getpid()})
            childs = collection._collection.peek()
            if childs is parents or id(childs.database.client) == parent_client_id:
                code = 11
            elif collection.find_one({"who": "parent"}) is None:
                code = 12
            else:
                code = 0
            childs.database.client.close()
        finally:
            os._exit(code)

    try:
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish within 15s")
        assert os.WIFEXITED(status)
        assert os.WEXITSTATUS(status) == 0, {11: "the child reused the parent's client",
                                            12: "the child could not read the parent's document",
                                            10: "the child raised"}.get(os.WEXITSTATUS(status))
        assert direct["asynctask"][name].find_one({"who": "child"}, {"_id": 0})["pid"] == pid
        assert collection._collection.peek() is parents  # the parent keeps its own client
        assert collection.count_documents({}) == 2
    finally:
        _close(collection)


# -- nothing is started at import or construction -------------------------------------------


_PROBE = textwrap.dedent(
    """
    import json, threading, time
    import pymongo

    made = []
    _init = pymongo.MongoClient.__init__

    def counting_init(self, *args, **kwargs):
        made.append(1)
        _init(self, *args, **kwargs)

    pymongo.MongoClient.__init__ = counting_init

    import asynctask
    import examples.quickstart as quickstart

    app = quickstart.app
    report = {
        "threads_at_import": threading.active_count(),
        "clients_at_import": len(made),
        "ping": app.test_client().get("/ping").status_code,
    }
    if RUN:
        api = quickstart.api
        task_id = api.run(text="b a b", top=1)
        deadline = time.monotonic() + 15
        view = api.retrieve(task_id)
        while view["status"] not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(0.01)
            view = api.retrieve(task_id)
        report["status"] = view["status"]
        report["result"] = view["result"]
        report["threads_after_run"] = sorted(t.name for t in threading.enumerate())
        api.shutdown()
    print(json.dumps(report))
    """
)


def _probe(tmp_path: Path, run: bool, **env: str) -> dict[str, Any]:
    """Run `_PROBE` in a fresh interpreter at the repository root; return its report."""
    child_env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    child_env.update(env, ASYNCTASK_LOG_DIR=str(tmp_path / "logs"), PYTHONPATH=str(ROOT))
    script = f"RUN = {run!r}\n{_PROBE}"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=child_env,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_and_building_the_app_starts_nothing(tmp_path):
    """With a URI to a closed port: no thread, no MongoClient, no error until a task runs."""
    report = _probe(tmp_path, run=False, ASYNCTASK_MONGO_URI=f"mongodb://127.0.0.1:{_free_port()}/")
    assert report["ping"] == 200
    assert report["threads_at_import"] == 1
    assert report["clients_at_import"] == 0, "a MongoClient was made at import or construction"


def test_the_first_run_starts_the_executor_threads(tmp_path):
    report = _probe(tmp_path, run=True)
    assert report["threads_at_import"] == 1
    assert report["clients_at_import"] == 0
    assert report["status"] == "success"
    assert report["result"] == [["b", 2]]
    threads = report["threads_after_run"]
    assert len(threads) > 1
    assert any(name.startswith("asynctask") for name in threads), threads
