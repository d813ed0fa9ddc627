"""The built-in in-memory store, `MemoryCollection` (CONTRACT section 6).

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
from pymongo.errors import DuplicateKeyError

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
