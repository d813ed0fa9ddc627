"""Tests for the mongomock-backed MongoDB wire-protocol test server (tests/mongo_wire.py).

They talk to a real subprocess server through pymongo, the same way the
multi-process asynctask tests do, so protocol or error-mapping regressions show
up here first.
"""

from __future__ import annotations

import multiprocessing
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import bson
import pytest
from pymongo import ASCENDING, MongoClient, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError

try:
    from mongo_wire import MockBackend, running_server
except ImportError:
    from tests.mongo_wire import MockBackend, running_server

DB_NAME = "mongo_wire_test"
OP_MSG = 2013
OP_QUERY = 2004
OP_REPLY = 1


@pytest.fixture(scope="module")
def uri() -> Iterator[str]:
    with running_server() as server_uri:
        yield server_uri


@pytest.fixture(scope="module")
def client(uri: str) -> Iterator[MongoClient]:
    mongo = MongoClient(uri, serverSelectionTimeoutMS=5000)
    yield mongo
    mongo.close()


@pytest.fixture
def db(client: MongoClient) -> Any:
    return client[DB_NAME]


def _claim(coll: Any) -> str:
    """The racy upsert asynctask relies on: only a missing or failed task may be (re)claimed."""
    try:
        doc = coll.find_one_and_update(
            {"task_id": "x", "status": {"$in": ["failed"]}},
            {"$inc": {"n": 1}, "$setOnInsert": {"status": "queued", "created": datetime.now(timezone.utc)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError:
        return "duplicate"
    return "won" if doc is not None else "none"


def _race_worker(uri: str, coll_name: str, barrier: Any, results: Any) -> None:
    """Module-level so the spawn start method can pickle it."""
    try:
        mongo = MongoClient(uri, serverSelectionTimeoutMS=5000)
        try:
            mongo.admin.command("ping")
            barrier.wait(timeout=20)
            results.put(_claim(mongo[DB_NAME][coll_name]))
        finally:
            mongo.close()
    except BaseException as exc:
        results.put(f"error: {exc!r}")


def test_client_connects_quickly(uri: str) -> None:
    start = time.monotonic()
    mongo = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        assert mongo.admin.command("ping")["ok"] == 1
        assert mongo.server_info()["version"] == "6.0.0"
    finally:
        mongo.close()
    assert time.monotonic() - start < 1.0


def test_insert_and_find_with_sort_skip_limit_projection(db: Any) -> None:
    coll = db.find_basic
    coll.insert_many([{"i": i, "even": i % 2 == 0, "payload": "x" * i} for i in range(10)])
    docs = list(coll.find({"even": True}, {"_id": 0, "i": 1}).sort("i", -1).skip(1).limit(2))
    assert docs == [{"i": 6}, {"i": 4}]
    assert coll.find_one({"i": 3})["payload"] == "xxx"


def test_find_across_get_more_batches(db: Any) -> None:
    coll = db.find_batches
    coll.insert_many([{"i": i} for i in range(250)])
    assert [d["i"] for d in coll.find().sort("i", ASCENDING).batch_size(50)] == list(range(250))
    assert len(list(coll.find())) == 250
    cursor = coll.find().batch_size(10)
    assert next(cursor)["i"] == 0
    cursor.close()


def test_update_one_upsert_and_update_many(db: Any) -> None:
    coll = db.updates
    result = coll.update_one({"k": "a"}, {"$set": {"v": 1}}, upsert=True)
    assert result.upserted_id is not None and result.matched_count == 0
    result = coll.update_one({"k": "a"}, {"$set": {"v": 2}}, upsert=True)
    assert result.upserted_id is None and result.matched_count == 1 and result.modified_count == 1
    coll.insert_many([{"k": "b", "v": 0}, {"k": "c", "v": 0}])
    result = coll.update_many({"v": {"$lt": 2}}, {"$inc": {"v": 10}})
    assert (result.matched_count, result.modified_count) == (2, 2)
    assert sorted(d["v"] for d in coll.find()) == [2, 10, 10]
    coll.replace_one({"k": "b"}, {"k": "b", "replaced": True})
    assert coll.find_one({"k": "b"}, {"_id": 0}) == {"k": "b", "replaced": True}


def test_find_one_and_update_upsert_return_after(db: Any) -> None:
    coll = db.fam
    doc = coll.find_one_and_update({"k": "a"}, {"$inc": {"n": 1}}, upsert=True,
                                   return_document=ReturnDocument.AFTER)
    assert doc["k"] == "a" and doc["n"] == 1
    before = coll.find_one_and_update({"k": "a"}, {"$inc": {"n": 1}}, projection={"_id": 0})
    assert before == {"k": "a", "n": 1}
    assert coll.find_one_and_update({"k": "missing"}, {"$set": {"n": 1}}) is None
    assert coll.find_one_and_delete({"k": "a"})["n"] == 2
    assert coll.count_documents({}) == 0


def test_unique_index_raises_duplicate_key_error(db: Any) -> None:
    coll = db.unique_idx
    coll.create_index("task_id", unique=True)
    coll.insert_one({"task_id": "a", "status": "queued"})
    with pytest.raises(DuplicateKeyError):
        coll.find_one_and_update({"task_id": "a", "status": "failed"}, {"$set": {"status": "queued"}},
                                 upsert=True)
    with pytest.raises(DuplicateKeyError):
        coll.update_one({"task_id": "a", "status": "failed"}, {"$set": {"x": 1}}, upsert=True)
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"task_id": "a"})
    with pytest.raises(BulkWriteError) as excinfo:
        coll.insert_many([{"task_id": "a"}, {"task_id": "b"}], ordered=False)
    assert excinfo.value.details["nInserted"] == 1
    assert [e["code"] for e in excinfo.value.details["writeErrors"]] == [11000]
    assert coll.count_documents({}) == 2


def test_other_write_errors_raise_write_error(db: Any) -> None:
    coll = db.write_errors
    coll.insert_one({"k": "a", "n": 1})
    with pytest.raises(WriteError) as excinfo:
        coll.update_one({"k": "a"}, {"$inc": {"n": "not a number"}})
    assert not isinstance(excinfo.value, DuplicateKeyError)
    assert coll.find_one({"k": "a"})["n"] == 1


def test_delete_one_and_many(db: Any) -> None:
    coll = db.deletes
    coll.insert_many([{"g": i % 2} for i in range(6)])
    assert coll.delete_one({"g": 0}).deleted_count == 1
    assert coll.delete_many({"g": 1}).deleted_count == 3
    assert coll.count_documents({}) == 2


def test_count_distinct_aggregate(db: Any) -> None:
    coll = db.aggregates
    coll.insert_many([{"kind": k, "v": v} for k, v in [("a", 1), ("a", 2), ("b", 5), ("c", 7)]])
    assert coll.count_documents({"kind": "a"}) == 2
    assert coll.count_documents({}, skip=1, limit=2) == 2
    assert coll.estimated_document_count() == 4
    assert sorted(coll.distinct("kind")) == ["a", "b", "c"]
    totals = {d["_id"]: d["total"] for d in coll.aggregate([{"$group": {"_id": "$kind", "total": {"$sum": "$v"}}}])}
    assert totals == {"a": 3, "b": 5, "c": 7}


def test_indexes_with_ttl(db: Any) -> None:
    coll = db.ttl_idx
    name = coll.create_index("expires_at", expireAfterSeconds=60)
    info = coll.index_information()
    assert info[name]["expireAfterSeconds"] == 60
    assert info[name]["key"] == [("expires_at", 1)]
    assert "ttl_idx" in db.list_collection_names()
    coll.drop_index(name)
    assert set(coll.index_information()) == {"_id_"}
    db.drop_collection("ttl_idx")
    assert "ttl_idx" not in db.list_collection_names()


def test_datetime_round_trip(uri: str, db: Any) -> None:
    coll = db.datetimes
    now = datetime.now(timezone.utc)
    coll.insert_many([{"_id": 1, "at": now}, {"_id": 2, "at": now - timedelta(hours=1)}])
    aware = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    try:
        stored = aware[DB_NAME].datetimes.find_one({"_id": 1})["at"]
    finally:
        aware.close()
    assert stored.tzinfo is not None
    assert abs(stored - now) < timedelta(milliseconds=1)
    assert [d["_id"] for d in coll.find({"at": {"$lt": now - timedelta(minutes=1)}})] == [2]
    assert [d["_id"] for d in coll.find({"at": {"$gte": now - timedelta(milliseconds=1)}})] == [1]


def test_transactions_are_refused(client: MongoClient, db: Any) -> None:
    with client.start_session() as session:
        with pytest.raises(OperationFailure) as excinfo:
            with session.start_transaction():
                db.txn.insert_one({"x": 1}, session=session)
    assert excinfo.value.code == 20
    assert db.txn.count_documents({}) == 0


def test_unknown_command(db: Any) -> None:
    with pytest.raises(OperationFailure) as excinfo:
        db.command("frobnicate")
    assert excinfo.value.code == 59
    assert "no such command: 'frobnicate'" in str(excinfo.value)


def test_find_one_and_update_race_across_processes(uri: str, client: MongoClient) -> None:
    coll_name = "race_processes"
    client[DB_NAME][coll_name].create_index("task_id", unique=True)
    ctx = multiprocessing.get_context("spawn")
    workers = 4
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(uri, coll_name, barrier, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=30) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    assert sorted(outcomes) == ["duplicate"] * (workers - 1) + ["won"]
    docs = list(client[DB_NAME][coll_name].find())
    assert len(docs) == 1 and docs[0]["n"] == 1 and docs[0]["status"] == "queued"


def test_find_one_and_update_race_across_threads(client: MongoClient) -> None:
    coll = client[DB_NAME].race_threads
    coll.create_index("task_id", unique=True)
    workers = 16
    barrier = threading.Barrier(workers)

    def attempt() -> str:
        barrier.wait(timeout=10)
        return _claim(coll)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = [f.result(timeout=30) for f in [pool.submit(attempt) for _ in range(workers)]]
    assert sorted(outcomes) == ["duplicate"] * (workers - 1) + ["won"]
    assert coll.count_documents({}) == 1


def _op_msg(body: dict, sequences: dict[str, list[dict]] | None = None, flags: int = 0,
            request_id: int = 1) -> bytes:
    payload = struct.pack("<I", flags) + b"\x00" + bson.encode(body)
    for identifier, docs in (sequences or {}).items():
        section = identifier.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(section)) + section
    if flags & 1:
        payload += b"\x00\x00\x00\x00"
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, OP_MSG) + payload


def _read_reply(sock: socket.socket) -> tuple[int, int, bytes]:
    header = sock.recv(16, socket.MSG_WAITALL)
    length, _, response_to, opcode = struct.unpack("<iiii", header)
    payload = sock.recv(length - 16, socket.MSG_WAITALL)
    return opcode, response_to, payload


def test_raw_wire_protocol(uri: str) -> None:
    port = int(uri.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        query = bson.encode({"isMaster": 1})
        op_query = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
        sock.sendall(struct.pack("<iiii", 16 + len(op_query), 7, 0, OP_QUERY) + op_query)
        opcode, response_to, payload = _read_reply(sock)
        assert (opcode, response_to) == (OP_REPLY, 7)
        hello = bson.decode(payload[20:])
        assert hello["ismaster"] is True and hello["maxWireVersion"] >= 9 and "topologyVersion" not in hello

        docs = [{"_id": i} for i in range(3)]
        sock.sendall(_op_msg({"insert": "raw", "$db": DB_NAME}, {"documents": docs}, flags=2, request_id=8))
        sock.sendall(_op_msg({"find": "raw", "$db": DB_NAME, "sort": {"_id": 1}}, flags=1, request_id=9))
        opcode, response_to, payload = _read_reply(sock)
        assert (opcode, response_to) == (OP_MSG, 9)
        reply = bson.decode(payload[5:])
        assert reply["cursor"]["firstBatch"] == docs and reply["cursor"]["id"] == 0

        sock.sendall(_op_msg({"startTransaction": True, "insert": "raw", "$db": DB_NAME}, request_id=10))
        opcode, _, payload = _read_reply(sock)
        assert bson.decode(payload[5:])["code"] == 20


def test_hello_is_answered_while_the_data_lock_is_held() -> None:
    backend = MockBackend()
    replies: dict[str, dict] = {}
    with backend.lock:
        hello = threading.Thread(target=lambda: replies.update(hello=backend.run({"hello": 1})))
        find = threading.Thread(target=lambda: replies.update(find=backend.run({"find": "c", "$db": "d"})))
        hello.start()
        find.start()
        hello.join(timeout=2)
        assert replies["hello"]["isWritablePrimary"] is True
        assert "find" not in replies
    find.join(timeout=2)
    assert replies["find"]["ok"] == 1


def test_a_write_whose_document_would_pass_16_mib_fails_and_changes_nothing(client: MongoClient) -> None:
    coll = client[DB_NAME]["too_large"]
    coll.drop()
    coll.insert_one({"_id": 1, "a": "x" * (9 * 1024 * 1024)})
    with pytest.raises(WriteError) as caught:
        coll.update_one({"_id": 1}, {"$set": {"b": "y" * (9 * 1024 * 1024)}})
    assert caught.value.code == 17419
    with pytest.raises(OperationFailure):
        coll.find_one_and_update({"_id": 1}, {"$set": {"b": "y" * (9 * 1024 * 1024)}})
    doc = coll.find_one({"_id": 1})
    assert set(doc) == {"_id", "a"} and len(doc["a"]) == 9 * 1024 * 1024
    coll.drop()
