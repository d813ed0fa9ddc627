"""The built-in in-memory store, `MemoryCollection`.

It must be thread-safe where mongomock alone is not (the claim is an upsert racing on a
unique index), and offer the pymongo `Collection` methods asynctask and its users call.
The thread tests shrink the interpreter's switch interval so that threads interleave
inside collection calls, where an unlocked mongomock loses updates or crashes.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError, WriteError

from asynctask import MemoryCollection


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Let threads switch every 10 microseconds instead of every 5 milliseconds."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


def _run_threads(count: int, target: Callable[[int], None], timeout: float = 20.0) -> list[BaseException]:
    """Run `target(i)` in `count` threads; return what they raised."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "threads did not finish in time"
    return errors


# -- thread safety --------------------------------------------------------------------------


@pytest.mark.usefixtures("busy_switching")
@pytest.mark.parametrize("round_", range(5))
def test_racing_upserts_on_a_unique_key_make_one_document_and_one_winner(round_: int) -> None:
    collection = MemoryCollection()
    collection.create_index([("k", ASCENDING)], unique=True)
    barrier = threading.Barrier(32)
    winners: list[int] = []
    losers: list[int] = []

    def claim(index: int) -> None:
        barrier.wait(timeout=10)
        try:
            collection.find_one_and_update({"k": "x", "n": {"$lt": 0}}, {"$inc": {"n": 1}}, upsert=True)
        except DuplicateKeyError:
            losers.append(index)
        else:
            winners.append(index)

    assert _run_threads(32, claim) == []
    assert len(winners) == 1
    assert len(losers) == 31
    assert collection.count_documents({}) == 1
    assert collection.find_one({"k": "x"}, {"_id": 0}) == {"k": "x", "n": 1}


@pytest.mark.usefixtures("busy_switching")
def test_concurrent_increments_are_never_lost() -> None:
    collection = MemoryCollection()
    collection.insert_one({"_id": "counter", "n": 0})
    threads, increments = 16, 300

    def bump(index: int) -> None:
        for _ in range(increments):
            collection.update_one({"_id": "counter"}, {"$inc": {"n": 1}})

    assert _run_threads(threads, bump) == []
    assert collection.find_one({"_id": "counter"})["n"] == threads * increments


@pytest.mark.usefixtures("busy_switching")
def test_reading_cursors_while_other_threads_write_does_not_crash() -> None:
    collection = MemoryCollection()
    collection.insert_many([{"n": n, "group": n % 3} for n in range(100)])
    stop = threading.Event()
    reads: list[int] = []

    def write(index: int) -> None:
        n = 1000 * (index + 1)
        while not stop.is_set():
            collection.insert_one({"n": n, "group": 9})
            collection.update_many({"group": 0}, {"$inc": {"touched": 1}})
            collection.delete_one({"n": n})
            n += 1

    def read(index: int) -> None:
        for _ in range(20):
            values = [doc["n"] for doc in collection.find({"n": {"$lt": 100}}).sort("n", ASCENDING)]
            assert values == list(range(100))
            reads.append(len(list(collection.find().limit(10))))

    writer_errors: list[BaseException] = []
    writers = threading.Thread(target=lambda: writer_errors.extend(_run_threads(3, write)), daemon=True)
    writers.start()
    try:
        reader_errors = _run_threads(3, read)
    finally:
        stop.set()
        writers.join(20)
    assert not writers.is_alive()
    assert reader_errors == []
    assert writer_errors == []
    assert reads == [10] * 60
    assert collection.count_documents({}) == 100


# -- cursors --------------------------------------------------------------------------------


def _numbers() -> MemoryCollection:
    collection = MemoryCollection()
    collection.insert_many([{"n": n, "odd": n % 2 == 1} for n in range(10)])
    return collection


def test_find_sort_skip_limit_chains() -> None:
    collection = _numbers()
    top = collection.find({}, {"_id": 0, "n": 1}).sort("n", DESCENDING).limit(3)
    assert list(top) == [{"n": 9}, {"n": 8}, {"n": 7}]
    page = collection.find({"odd": True}).sort([("n", ASCENDING)]).skip(1).limit(2)
    assert [doc["n"] for doc in page] == [3, 5]


def test_a_cursor_supports_next_like_a_pymongo_cursor() -> None:
    collection = _numbers()
    cursor = collection.find({"n": {"$gte": 8}}).sort("n", ASCENDING)
    assert next(cursor)["n"] == 8
    assert cursor.next()["n"] == 9
    with pytest.raises(StopIteration):
        next(cursor)


def test_separate_memory_collections_share_nothing() -> None:
    first, second = MemoryCollection(), MemoryCollection()
    first.insert_one({"task_id": "only-in-first"})
    assert second.find_one({"task_id": "only-in-first"}) is None
    assert second.count_documents({}) == 0


# -- the pymongo methods asynctask uses ---------------------------------------------------


def test_create_index_unique_rejects_duplicates() -> None:
    collection = MemoryCollection()
    name = collection.create_index([("task_id", ASCENDING)], unique=True, name="task_id_unique")
    assert name == "task_id_unique"
    assert collection.index_information()["task_id_unique"]["unique"] is True
    collection.insert_one({"task_id": "t"})
    with pytest.raises(DuplicateKeyError):
        collection.insert_one({"task_id": "t"})
    with pytest.raises(DuplicateKeyError):
        collection.update_one({"task_id": "other", "never": True}, {"$set": {"task_id": "t"}}, upsert=True)
    assert collection.count_documents({"task_id": "t"}) == 1


def test_find_one_with_projection() -> None:
    collection = MemoryCollection()
    collection.insert_one({"task_id": "t", "status": "queued", "owner": "me", "params": {"a": 1}})
    assert collection.find_one({"task_id": "t"}, {"_id": 0, "params": 1}) == {"params": {"a": 1}}
    assert collection.find_one({"task_id": "t"}, {"_id": 0, "status": 1, "missing": 1}) == {"status": "queued"}
    assert collection.find_one({"task_id": "nope"}) is None


def test_find_one_and_update_upserts_and_returns_documents() -> None:
    collection = MemoryCollection()
    update: dict[str, Any] = {
        "$set": {"status": "queued"}, "$inc": {"attempts": 1},
        "$setOnInsert": {"created": 1}, "$unset": {"result": ""},
    }
    query = {"task_id": "t", "$or": [{"status": {"$in": ["failed"]}}, {"status": {"$exists": False}}]}
    inserted = collection.find_one_and_update(query, update, upsert=True, return_document=ReturnDocument.AFTER)
    assert {k: inserted[k] for k in ("task_id", "status", "attempts", "created")} == {
        "task_id": "t", "status": "queued", "attempts": 1, "created": 1,
    }
    collection.update_one({"task_id": "t"}, {"$set": {"status": "failed", "result": "old", "created": 5}})
    again = collection.find_one_and_update(query, update, upsert=True, return_document=ReturnDocument.AFTER)
    assert again["attempts"] == 2
    assert again["created"] == 5  # $setOnInsert leaves an existing document alone
    assert "result" not in again
    before = collection.find_one_and_update({"task_id": "t"}, {"$set": {"status": "running"}})
    assert before["status"] == "queued"  # ReturnDocument.BEFORE is the default, as in pymongo
    assert collection.find_one_and_update({"task_id": "nope"}, {"$set": {"x": 1}}) is None
    assert collection.count_documents({}) == 1


def test_update_one_and_update_many_report_counts() -> None:
    collection = MemoryCollection()
    collection.insert_many([{"task_id": f"t{n}", "owner": "a" if n < 3 else "b", "beat": 0} for n in range(5)])

    result = collection.update_one({"task_id": "t0", "beat": 0}, {"$set": {"beat": 1}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    result = collection.update_one({"task_id": "t0", "beat": 0}, {"$set": {"beat": 2}})
    assert (result.matched_count, result.modified_count) == (0, 0)
    result = collection.update_one({"task_id": "new"}, {"$set": {"owner": "c"}}, upsert=True)
    assert result.matched_count == 0
    assert result.upserted_id is not None

    result = collection.update_many({"owner": "a"}, {"$set": {"beat": 7}})
    assert (result.matched_count, result.modified_count) == (3, 3)
    assert sorted(d["task_id"] for d in collection.find({"beat": 7}, {"_id": 0, "task_id": 1})) == ["t0", "t1", "t2"]


def test_count_documents_and_find_with_projection_and_query_operators() -> None:
    collection = MemoryCollection()
    collection.insert_many([
        {"task_id": "a", "status": "success", "heartbeat_at": 5},
        {"task_id": "b", "status": "running", "heartbeat_at": 1},
        {"task_id": "c", "status": "running"},
        {"task_id": "d", "status": "queued", "heartbeat_at": 9},
    ])
    assert collection.count_documents({}) == 4
    assert collection.count_documents({"status": {"$in": ["running", "queued"]}}) == 3
    stale = {"status": {"$in": ["running", "queued"]}, "heartbeat_at": {"$not": {"$gte": 3}}}
    assert sorted(d["task_id"] for d in collection.find(stale)) == ["b", "c"]
    docs = list(collection.find({"status": "running"}, {"_id": 0, "task_id": 1}).sort("task_id", DESCENDING))
    assert docs == [{"task_id": "c"}, {"task_id": "b"}]
    assert all("_id" not in doc and "status" not in doc for doc in docs)


# -- the indexed store answers exactly as plain mongomock ----------------------------------
#
# `MemoryCollection` runs mongomock's filter and update engines only on the documents its
# indexes yield. Each test below sends the same calls to it and to a plain mongomock
# collection holding the same documents, and requires the same answers: same documents in
# the same order, same update effects, same DuplicateKeyError.

import random  # noqa: E402
import re  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402

import mongomock  # noqa: E402
from bson import ObjectId  # noqa: E402

from asynctask.store.memory import collection as memory_collection  # noqa: E402
from asynctask.store.memory import documents as memory_documents  # noqa: E402

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
STATUSES = ["queued", "running", "success", "failed", "cancelled", "pending"]


def _indexes(collection: Any) -> None:
    collection.create_index([("task_id", ASCENDING)], unique=True, name="task_id_unique")
    collection.create_index([("type", ASCENDING), ("status", ASCENDING), ("priority", DESCENDING),
                             ("run_at", ASCENDING)], name="claim")
    collection.create_index([("owner", ASCENDING), ("status", ASCENDING)], name="owner_status")
    collection.create_index([("created_at", DESCENDING), ("task_id", ASCENDING)], name="created_id")
    collection.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0, name="expire_at_ttl")


def _normal(value: Any) -> Any:
    """Results with generated ObjectIds replaced, since the two stores generate different ones."""
    if isinstance(value, ObjectId):
        return "<oid>"
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if hasattr(value, "matched_count"):
        return (value.matched_count, value.modified_count, _normal(value.upserted_id))
    if hasattr(value, "deleted_count"):
        return value.deleted_count
    if hasattr(value, "inserted_ids"):
        return _normal(value.inserted_ids)
    if hasattr(value, "inserted_id"):
        return _normal(value.inserted_id)
    return value


class Twin:
    """The same calls on the indexed store and on plain mongomock; results must agree."""

    def __init__(self, indexes: bool = True) -> None:
        self.fast = MemoryCollection()
        self.plain = mongomock.MongoClient(tz_aware=True).get_database("asynctask").get_collection("tasks")
        if indexes:
            _indexes(self.fast)
            _indexes(self.plain)
        self.calls = 0

    def call(self, method: str, *args: Any, listing: bool = False, **kwargs: Any) -> Any:
        results = []
        for collection in (self.fast, self.plain):
            try:
                result = getattr(collection, method)(*args, **kwargs)
                if listing:
                    result = list(result)
                if method == "distinct":  # in no particular order, in MongoDB as in mongomock
                    result = sorted(result, key=repr)
                results.append(("ok", _normal(result)))
            except Exception as exc:  # noqa: BLE001 - the same error must come from both
                results.append((type(exc).__name__, getattr(exc, "code", None)))
        assert results[0] == results[1], f"{method}{args} {kwargs}"
        self.calls += 1
        return results[0][1]

    def cursor(self, build: Callable[[Any], Any]) -> Any:
        fast, plain = _normal(list(build(self.fast))), _normal(list(build(self.plain)))
        assert fast == plain
        return fast

    def same_contents(self) -> None:
        assert _normal(list(self.fast.find())) == _normal(list(self.plain.find()))


def _value(rng: random.Random, pool: list[Any], missing: float = 0.1) -> Any:
    return "<missing>" if rng.random() < missing else rng.choice(pool)


def _random_doc(rng: random.Random, n: int, odd: bool = True) -> dict[str, Any]:
    """A task document; `odd` ones may hold values no index files (lists, mixed types)."""
    times = [T0 + timedelta(minutes=m) for m in range(6)] + [None, T0.replace(tzinfo=None)]
    doc = {
        "_id": f"id{n}",
        "task_id": f"t{rng.randrange(40)}",
        "type": _value(rng, ["a", "b", "b", None] + [["a", "b"], 3] * odd),
        "status": _value(rng, [*STATUSES, None] + [["queued"]] * odd),
        "owner": _value(rng, ["w1", "w2", None], 0.3),
        "priority": _value(rng, [0, 1, 1, 2] + [1.0, True, "x"] * odd),
        "run_at": _value(rng, times),
        "created_at": _value(rng, times),
        "started_at": _value(rng, times, 0.4),
        "finished_at": _value(rng, times, 0.5),
        "heartbeat_at": _value(rng, times, 0.3),
        "attempts": rng.randrange(3),
        "lost": rng.randrange(3),
        "cancel_requested": _value(rng, [True, False], 0.5),
        "error": _value(rng, ["boom", "Timeout", None], 0.5),
    }
    return {k: v for k, v in doc.items() if v != "<missing>"}


def _random_call(rng: random.Random, twin: Twin, n: int, odd: bool) -> None:
    now = T0 + timedelta(minutes=rng.randrange(7))
    task_id = f"t{rng.randrange(40)}"
    ids = [f"t{rng.randrange(40)}" for _ in range(rng.randrange(1, 5))]
    type_ = rng.choice(["a", "b", None])
    status = rng.choice([*STATUSES, None])
    statuses = rng.sample(STATUSES, rng.randrange(1, 4))
    choice = rng.randrange(24)
    if choice == 0:
        twin.call("insert_one", _random_doc(rng, n, odd))
    elif choice == 1:  # the run rule's upsert
        query = {"task_id": task_id, "type": type_, "$or": [
            {"status": {"$in": ["failed", "cancelled"]}}, {"status": {"$exists": False}},
            {"status": "running", "heartbeat_at": {"$lt": now}},
        ]}
        update = {"$set": {"status": "queued", "owner": "w1", "run_at": now, "priority": rng.randrange(3)},
                  "$inc": {"attempts": 1}, "$setOnInsert": {"created_at": now}, "$unset": {"error": ""}}
        twin.call("find_one_and_update", query, update, upsert=True, return_document=ReturnDocument.AFTER)
    elif choice == 2:  # the claim
        twin.call("find_one_and_update", {"type": type_, "status": "queued", "run_at": {"$lte": now}},
                  {"$set": {"status": "running", "owner": rng.choice(["w1", "w2"]), "heartbeat_at": now},
                   "$inc": {"attempts": 1}},
                  sort=[("priority", DESCENDING), ("run_at", ASCENDING)],
                  return_document=rng.choice([ReturnDocument.AFTER, ReturnDocument.BEFORE]))
    elif choice == 3:  # finish
        twin.call("update_one", {"task_id": task_id, "status": {"$in": ["running"]}, "attempts": rng.randrange(3)},
                  {"$set": {"status": rng.choice(["success", "failed"]), "finished_at": now},
                   "$unset": {"owner": ""}})
    elif choice == 4:  # heartbeats
        twin.call("update_many", {"task_id": {"$in": ids}, "owner": "w1", "status": "running"},
                  {"$set": {"heartbeat_at": now}})
    elif choice == 5:
        twin.call("find", {"task_id": {"$in": ids}, "cancel_requested": True}, {"_id": 0, "task_id": 1},
                  listing=True)
    elif choice == 6:  # sweep
        twin.call("update_many", {"type": type_, "status": "running", "heartbeat_at": {"$lt": now},
                                  "lost": {"$lt": 2}},
                  {"$set": {"status": "queued"}, "$inc": {"lost": 1}, "$unset": {"owner": ""}})
    elif choice == 7:
        twin.call("find", {"type": type_, "status": "running", "owner": {"$in": ["w1", None]}}, listing=True)
    elif choice == 8:  # the list
        query: dict[str, Any] = {"type": type_}
        if rng.random() < 0.5:
            query["status"] = status if rng.random() < 0.7 else {"$in": statuses}
        if rng.random() < 0.3:
            query["$or"] = [{"task_id": {"$regex": re.escape(str(rng.randrange(10)))}},
                            {"error": {"$regex": "time", "$options": "i"}}]
        skip, limit = rng.randrange(4), rng.randrange(0, 6)
        twin.cursor(lambda c: c.find(query, {"_id": 0}).sort([("created_at", -1), ("task_id", 1)])
                    .skip(skip).limit(limit))
    elif choice == 9:
        match = {"$match": {"type": type_}} if rng.random() < 0.7 else None
        pipeline = [match] if match else []
        pipeline.append({"$group": {"_id": "$status", "n": {"$sum": 1}}})
        twin.call("aggregate", pipeline, listing=True)
    elif choice == 10:
        query = {"type": type_, "status": "queued", "run_at": {"$lte": now}}
        twin.call("count_documents", query)
        twin.call("find_one", query, sort=[("run_at", 1)])
    elif choice == 11:  # stats windows
        field = rng.choice(["created_at", "started_at", "finished_at"])
        op = rng.choice(["$gte", "$gt", "$lt", "$lte"])
        twin.call("find", {"type": type_, field: {op: now}}, listing=True)
        twin.call("aggregate", [{"$match": {"type": type_, field: {op: now}}},
                                {"$group": {"_id": "$status", "n": {"$sum": 1}}}], listing=True)
        twin.call("count_documents", {"type": type_, field: {op: now}})
    elif choice == 12:
        twin.call(rng.choice(["delete_one", "delete_many"]),
                  rng.choice([{"task_id": task_id}, {"type": type_, "status": status}, {"owner": "w2"}]))
    elif choice == 13:  # updates that move documents between buckets and orders
        field, value = rng.choice([
            ("status", status), ("owner", rng.choice(["w1", "w2", None])), ("type", type_),
            ("priority", rng.randrange(3)), ("run_at", now), ("created_at", now), ("task_id", task_id),
            *[("type", ["a", "c"]), ("priority", [1, 2])] * odd,
        ])
        twin.call(rng.choice(["update_one", "update_many"]),
                  rng.choice([{"task_id": task_id}, {"status": status}, {"type": type_}]),
                  {"$set": {field: value}})
    elif choice == 14:
        twin.call("update_one", {"task_id": task_id}, {"$unset": {rng.choice(["status", "type", "owner"]): ""}})
    elif choice == 15:
        twin.call("update_one", {"task_id": task_id, "status": status},
                  {"$set": {"params": {"n": n}}, "$addToSet": {"tags": rng.choice(["x", "y"])}}, upsert=True)
    elif choice == 16:
        twin.call("find_one", {"task_id": task_id}, {"_id": 0, "status": 1, "params": 1})
    elif choice == 17:
        twin.call("find", {"status": {"$in": statuses}, "priority": {"$gte": 1}}, listing=True)
        twin.call("count_documents", {"status": {"$in": statuses}})
        twin.call("count_documents", {"type": type_, "status": status})
    elif choice == 18:
        twin.call("find", {"$or": [{"task_id": task_id}, {"owner": "w2"}]}, listing=True)
        twin.call("find", {"$and": [{"type": type_}, {"status": {"$not": {"$in": statuses}}}]}, listing=True)
    elif choice == 19:
        twin.cursor(lambda c: c.find({"type": type_, "status": {"$in": statuses}})
                    .sort([("priority", -1), ("run_at", 1)]).limit(3))
    elif choice == 20:
        twin.call("distinct", "status", {"type": type_})
        twin.call("find", {"owner": None}, listing=True)
    elif choice == 21:
        twin.call("replace_one", {"task_id": task_id}, {k: v for k, v in _random_doc(rng, n, odd).items() if k != "_id"} | {"task_id": task_id})
    elif choice == 22:
        twin.cursor(lambda c: c.find({"type": type_}).sort([("started_at", 1)]).skip(1).limit(2))
        twin.cursor(lambda c: c.find({"type": type_, "created_at": {"$gte": now}})
                    .sort([("created_at", -1), ("task_id", 1)]).limit(4))
    else:
        twin.call("find_one_and_update", {"task_id": task_id}, {"$set": {"task_id": rng.choice(ids)}})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(16))
def test_random_calls_answer_as_plain_mongomock(seed: int) -> None:
    """Seeds 0, 2, ... hold task documents as asynctask writes them (every index serves);
    odd seeds add values indexes cannot file (lists, mixed types), so queries fall back."""
    rng = random.Random(seed)
    odd = seed % 2 == 1
    twin = Twin(indexes=seed % 8 != 7)
    for n in range(40):
        twin.call("insert_one", _random_doc(rng, n, odd))
    for n in range(40, 500):
        _random_call(rng, twin, n, odd)
    twin.same_contents()


@pytest.mark.usefixtures("busy_switching")
@pytest.mark.timeout(60)
def test_racing_run_rule_upserts_on_one_task_id_insert_once() -> None:
    collection = MemoryCollection()
    _indexes(collection)
    barrier = threading.Barrier(24)
    inserted: list[int] = []
    refused: list[int] = []
    query = {"task_id": "t", "type": "a", "$or": [{"status": {"$in": ["failed"]}}, {"status": {"$exists": False}}]}
    update = {"$set": {"status": "queued"}, "$inc": {"attempts": 1}, "$setOnInsert": {"created_at": T0}}

    def run(index: int) -> None:
        barrier.wait(timeout=10)
        try:
            collection.find_one_and_update(query, update, upsert=True, return_document=ReturnDocument.AFTER)
        except DuplicateKeyError:
            refused.append(index)
        else:
            inserted.append(index)

    assert _run_threads(24, run) == []
    assert (len(inserted), len(refused)) == (1, 23)
    assert collection.count_documents({"task_id": "t"}) == 1
    assert collection.find_one({"task_id": "t"}, {"_id": 0, "attempts": 1}) == {"attempts": 1}


def test_duplicate_key_errors_match_mongomock_on_inserts_updates_and_upserts() -> None:
    twin = Twin()
    twin.call("insert_many", [{"_id": 1, "task_id": "a", "type": "x"}, {"_id": 2, "task_id": "b", "type": "x"}])
    twin.call("insert_one", {"_id": 3, "task_id": "a"})
    twin.call("update_one", {"task_id": "b"}, {"$set": {"task_id": "a", "status": "queued"}})
    twin.call("update_many", {"type": "x"}, {"$set": {"task_id": "same"}})
    twin.call("update_one", {"task_id": "a", "status": "never"}, {"$set": {"type": "y"}}, upsert=True)
    twin.call("find_one_and_update", {"task_id": "b", "type": "other"}, {"$inc": {"n": 1}}, upsert=True)
    twin.call("insert_one", {"_id": 4})
    twin.call("insert_one", {"_id": 5, "task_id": None})  # null and missing collide, as in mongomock
    twin.same_contents()
    assert twin.fast.find_one({"_id": 2})["task_id"] == "b"  # the refused update left it alone


def test_companion_collections_share_the_database_and_the_lock() -> None:
    tasks = MemoryCollection("jobs")
    assert tasks.name == "jobs"
    workers = tasks.database.get_collection("jobs.workers")
    slots = tasks.database["jobs.slots"]
    assert isinstance(workers, MemoryCollection) and isinstance(slots, MemoryCollection)
    assert workers._lock is tasks._lock is slots._lock
    workers.insert_one({"_id": "w1", "beat": 1})
    assert tasks.database["jobs.workers"].find_one({"_id": "w1"}) == {"_id": "w1", "beat": 1}
    assert tasks.count_documents({}) == 0
    assert workers.name == "jobs.workers"
    assert sorted(tasks.database.list_collection_names()) == ["jobs.workers"]


def test_ttl_expiry_matches_mongomock(monkeypatch: pytest.MonkeyPatch) -> None:
    twin = Twin()
    base = datetime(2024, 1, 1)
    monkeypatch.setattr(mongomock, "utcnow", lambda: base + timedelta(seconds=2))
    monkeypatch.setattr(memory_documents, "utcnow", lambda: base + timedelta(seconds=2))
    twin.call("insert_many", [
        {"_id": n, "task_id": f"t{n}", "expire_at": base + timedelta(seconds=n)} for n in range(5)
    ] + [{"_id": 9, "task_id": "keep"}, {"_id": 10, "task_id": "odd", "expire_at": "soon"}])
    twin.call("count_documents", {})
    twin.call("find", {"task_id": {"$in": ["t1", "t3"]}}, listing=True)
    twin.call("update_one", {"task_id": "t4"}, {"$set": {"expire_at": base}})
    twin.call("find", {}, listing=True)
    twin.same_contents()


@pytest.mark.timeout(60)
def test_indexed_calls_read_few_documents_however_many_are_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim, a page of the list, a task by id and the due count stay flat: the filter is
    tried on a handful of documents out of 10,000."""
    collection = MemoryCollection()
    _indexes(collection)
    collection.insert_many([
        {"task_id": f"t{n}", "type": "a" if n % 4 else "b", "status": "queued" if n % 3 else "success",
         "priority": n % 5, "run_at": T0 + timedelta(seconds=n), "created_at": T0 + timedelta(seconds=n)}
        for n in range(10_000)
    ])
    seen = [0]
    real = memory_collection.matches

    def counting(spec: Any, doc: Any) -> bool:
        seen[0] += 1
        return real(spec, doc)

    monkeypatch.setattr(memory_collection, "matches", counting)
    now = T0 + timedelta(days=1)
    claimed = collection.find_one_and_update(
        {"type": "a", "status": "queued", "run_at": {"$lte": now}}, {"$set": {"status": "running"}},
        sort=[("priority", DESCENDING), ("run_at", ASCENDING)], return_document=ReturnDocument.AFTER,
    )
    assert (claimed["task_id"], claimed["status"]) == ("t14", "running")
    typed = [n for n in range(10_000) if n % 4]
    page = list(collection.find({"type": "a"}, {"_id": 0, "task_id": 1})
                .sort([("created_at", -1), ("task_id", 1)]).skip(2_500).limit(3))
    assert page == [{"task_id": f"t{n}"} for n in sorted(typed, reverse=True)[2_500:2_503]]
    assert collection.find_one({"task_id": "t77"}, {"_id": 0, "status": 1}) == {"status": "queued"}
    queued = sum(1 for n in typed if n % 3)
    assert collection.count_documents({"type": "a", "status": "queued", "run_at": {"$lte": now}}) == queued - 1
    counts = list(collection.aggregate([{"$match": {"type": "a"}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]))
    assert counts == [
        {"n": queued - 1, "_id": "queued"}, {"n": 1, "_id": "running"}, {"n": len(typed) - queued, "_id": "success"},
    ]
    assert seen[0] < 50


def test_array_nested_and_numeric_operators_answer_as_plain_mongomock() -> None:
    """The operators the limits and schedules stores write, and the rest this store implements."""
    twin = Twin()
    twin.call("insert_one", {"_id": "k", "count": 0, "holders": [], "runs": [1, 2]})
    entry = {"worker": "w1", "task_id": "t1", "attempt": 1}
    twin.call("find_one_and_update", {"_id": "k", "count": {"$lt": 2}, "holders": {"$not": {"$elemMatch": entry}}},
              {"$push": {"holders": entry}, "$inc": {"count": 1}}, return_document=ReturnDocument.AFTER)
    twin.call("find_one_and_update", {"_id": "k", "count": {"$lt": 2}, "holders": {"$not": {"$elemMatch": entry}}},
              {"$push": {"holders": entry}, "$inc": {"count": 1}}, return_document=ReturnDocument.AFTER)
    twin.call("update_one", {"_id": "k"}, {"$push": {"runs": {"$each": [3, 4, 5], "$slice": -3}}})
    twin.call("update_one", {"_id": "k", "holders": {"$elemMatch": entry}},
              {"$pull": {"holders": entry}, "$inc": {"count": -1}, "$unset": {"waiting": ""}})
    twin.call("update_one", {"_id": "k"}, {"$pull": {"runs": {"$gte": 5}}, "$min": {"low": 3}, "$max": {"high": 3}})
    twin.call("update_one", {"_id": "k"}, {"$min": {"low": 1}, "$max": {"high": 9}})
    twin.call("update_one", {"_id": "k"}, {"$pop": {"runs": 1}, "$set": {"progress.percent": 50, "progress.msg": "x"}})
    twin.call("update_one", {"_id": "k"}, {"$unset": {"progress.msg": ""}, "$addToSet": {"tags": {"$each": ["a", "b"]}}})
    twin.call("update_one", {"_id": "k"}, {"$addToSet": {"tags": {"$each": ["b", "c"]}}})
    twin.call("find_one", {"_id": "k"}, {"progress.percent": 1, "runs": 1})
    twin.call("find_one", {"progress.percent": 50}, {"progress": 0, "_id": 0})
    twin.call("update_one", {"$and": [{"_id": "new"}, {"kind": "limit"}], "n": {"$gt": 1}},
              {"$set": {"x.y": 1}, "$setOnInsert": {"made": True}}, upsert=True)
    twin.call("replace_one", {"_id": "other"}, {"whole": 1}, upsert=True)
    twin.call("find_one_and_delete", {"whole": 1}, {"_id": 1})
    for refused in ({"$inc": {"holders": 1}}, {"$set": {"a": 1}, "$inc": {"a": 1}}, {"$set": {"_id": "moved"}}):
        before = twin.fast.find_one({"_id": "k"})
        with pytest.raises(WriteError):  # as MongoDB answers (mongomock lets some through)
            twin.fast.update_one({"_id": "k"}, refused)
        assert twin.fast.find_one({"_id": "k"}) == before
    twin.same_contents()
    twin.fast.update_one({"_id": "k"}, {"$set": {"count": 2}})
    twin.fast.update_one({"_id": "k"}, {"$mul": {"count": 3, "absent": 2}})  # mongomock has no $mul
    assert twin.fast.find_one({"_id": "k"}, {"_id": 0, "count": 1, "absent": 1}) == {"count": 6, "absent": 0}


def test_the_quick_filter_path_answers_as_the_general_engine() -> None:
    """The filters the task store writes (string and integer equalities, time ranges) are decided
    without mongomock's engine; on every kind of value a document may hold, the answers agree."""
    from bson import ObjectId
    from mongomock.filtering import filter_applies

    from asynctask.store.memory.filters import matches

    at = datetime(2024, 1, 1)
    values: list[Any] = [
        "a", "b", "", 0, 1, 2, 1.0, 1.5, True, False, None, at, at + timedelta(seconds=1), at - timedelta(days=1),
        ObjectId(), ["a", 1], [at], {"a": 1}, b"a", float("nan"),
    ]
    conditions: list[Any] = [
        "a", "b", 1, 0, 2, {"$lte": at}, {"$lt": at}, {"$gt": at}, {"$gte": at, "$lt": at + timedelta(seconds=2)},
        {"$lte": 1}, None, {"$in": ["a"]},
    ]
    rng = random.Random(7)
    for _ in range(3000):
        doc = {field: rng.choice(values) for field in ("x", "y") if rng.random() < 0.8}
        query = {field: rng.choice(conditions) for field in rng.sample(["x", "y"], rng.randint(1, 2))}
        assert matches(query, doc) == bool(filter_applies(query, doc)), (query, doc)


def test_an_update_refused_for_its_form_leaves_the_same_paths_working() -> None:
    """A refused update whose operator holds a list, not a document, is not mistaken later for
    a valid update of the same paths."""
    collection = MemoryCollection()
    collection.insert_one({"_id": 1, "a": 0})
    with pytest.raises(WriteError):
        collection.update_one({"_id": 1}, {"$set": ["a"]})
    assert collection.update_one({"_id": 1}, {"$set": {"a": 5}}).modified_count == 1
    assert collection.find_one({"_id": 1}) == {"_id": 1, "a": 5}


def test_a_moment_is_stored_as_utc_to_the_millisecond_and_read_back_aware() -> None:
    """The same instant given in two zones, naive and aware times with the same wall clock, and
    a time read back already: each is stored as MongoDB keeps it (UTC, to the millisecond) and
    reads back as an aware UTC datetime, as a `tz_aware=True` client reads it (recent
    conversions are remembered, which must never hand one time another's value)."""
    collection = MemoryCollection()
    aware = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    elsewhere = aware.astimezone(timezone(timedelta(hours=5, minutes=30)))
    naive = aware.replace(tzinfo=None)
    expected = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc)
    collection.insert_one({"_id": 1, "a": aware, "b": elsewhere, "c": naive, "d": expected})
    collection.insert_one({"_id": 2, "a": naive, "b": aware - timedelta(hours=5, minutes=30)})
    first = collection.find_one({"_id": 1})
    assert (first["a"], first["b"], first["c"], first["d"]) == (expected, expected, expected, expected)
    assert all(value.tzinfo is timezone.utc for value in first.values() if isinstance(value, datetime))
    second = collection.find_one({"_id": 2})
    assert second["a"] == expected
    assert second["b"] == datetime(2024, 5, 6, 1, 38, 9, 123000, tzinfo=timezone.utc)
    collection.update_one({"_id": 2}, {"$set": {"c": first["a"]}})
    assert collection.find_one({"_id": 2, "c": expected}) is not None
    assert collection.find_one({"_id": 2, "c": expected.replace(tzinfo=None)}) is not None  # naive means UTC
    nested = collection.find_one_and_update({"_id": 2}, {"$set": {"n": {"at": [naive]}}}, return_document=True)
    assert nested["n"]["at"][0] == expected and nested["n"]["at"][0].tzinfo is timezone.utc


def test_the_list_orders_and_counts_answer_after_many_writes_between_reads() -> None:
    """The list's orders, the time windows and the status counts are brought up to date only
    when a read needs them: after a run of inserts, moves, deletes and an index created in
    between, every such read answers as plain mongomock does."""
    twin = Twin()
    for n in range(120):
        twin.call("insert_one", {"_id": n, "task_id": f"t{n}", "type": "a" if n % 3 else "b", "status": "queued",
                                 "created_at": T0 + timedelta(seconds=n), "priority": n % 2, "run_at": T0})
    for n in range(0, 120, 2):
        twin.call("update_one", {"task_id": f"t{n}"},
                  {"$set": {"status": "running", "started_at": T0 + timedelta(seconds=n)}})
    for n in range(0, 120, 4):
        twin.call("update_one", {"task_id": f"t{n}"},
                  {"$set": {"status": "success", "finished_at": T0 + timedelta(seconds=2 * n)}})
    twin.call("delete_many", {"task_id": {"$in": [f"t{n}" for n in range(0, 120, 5)]}})
    twin.call("create_index", [("type", 1), ("finished_at", -1)], name="late")
    twin.call("update_one", {"task_id": "t8"}, {"$set": {"status": "failed"}})
    for type_ in ("a", "b"):
        for status in ("queued", "running", "success", "failed"):
            twin.cursor(lambda c, t=type_, s=status: c.find({"type": t, "status": s}, {"_id": 0, "task_id": 1})
                        .sort([("created_at", -1), ("task_id", 1)]).skip(1).limit(7))
        twin.call("aggregate", [{"$match": {"type": type_}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}],
                  listing=True)
        twin.call("count_documents", {"type": type_, "started_at": {"$gte": T0 + timedelta(seconds=30)}})
        twin.call("find", {"type": type_, "finished_at": {"$lt": T0 + timedelta(seconds=100)}}, listing=True)
    twin.call("aggregate", [{"$group": {"_id": "$status", "n": {"$sum": 1}}}], listing=True)
    twin.same_contents()
