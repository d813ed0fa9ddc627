"""The store: the run rule as one atomic claim, fenced transitions, heartbeats, the public view.

Runs against every backend of the `collection` fixture (memory, and a real MongoDB when
ASYNCTASK_TEST_MONGO_URI is set).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from asynctask import TaskNotFound, TaskStatus
from asynctask.store import PUBLIC_FIELDS, TaskStore, utcnow

STALE = timedelta(seconds=30)


@pytest.fixture
def store(collection):
    return TaskStore(collection)


def claim(store, task_id="t1", params=None, owner="me", **kwargs):
    kwargs.setdefault("stale_after", STALE)
    return store.claim(task_id, params or {"x": 1}, owner=owner, **kwargs)


def set_fields(store, task_id, **fields):
    store.collection.update_one({"task_id": task_id}, {"$set": fields})


def test_new_task_is_claimed_and_queued(store):
    doc, claimed = claim(store, params={"x": 1})
    assert claimed
    assert doc["status"] == "queued" and doc["attempts"] == 1 and doc["params"] == {"x": 1}
    assert doc["owner"] == "me" and doc["created_at"] is not None
    assert store.collection.count_documents({}) == 1


def test_task_id_index_is_unique(store):
    claim(store)
    indexes = store.collection.index_information()
    assert any(info.get("unique") and info["key"] == [("task_id", 1)] for info in indexes.values())


@pytest.mark.parametrize("status", ["queued", "running", "success"])
def test_live_or_successful_task_is_not_claimed(store, status):
    first, _ = claim(store)
    set_fields(store, "t1", status=status)
    doc, claimed = claim(store, owner="other")
    assert not claimed
    assert doc["status"] == status and doc["attempts"] == 1 and doc["owner"] == "me"


@pytest.mark.parametrize("status", ["failed", "pending", "cancelled"])
def test_failed_pending_cancelled_are_claimed_again(store, status):
    claim(store)
    set_fields(store, "t1", status=status, error="boom", result="old")
    doc, claimed = claim(store, owner="other")
    assert claimed
    assert doc["status"] == "queued" and doc["attempts"] == 2 and doc["owner"] == "other"
    assert "error" not in doc and "result" not in doc


@pytest.mark.parametrize("status", ["queued", "running"])
def test_task_whose_owner_stopped_heartbeating_is_claimed(store, status):
    claim(store)
    set_fields(store, "t1", status=status, heartbeat_at=utcnow() - STALE - timedelta(seconds=1))
    doc, claimed = claim(store, owner="other")
    assert claimed and doc["attempts"] == 2 and doc["owner"] == "other"


def test_active_task_without_heartbeat_counts_as_orphaned(store):
    store.update("legacy", {"status": "running", "params": {"x": 1}})
    doc, claimed = claim(store, "legacy")
    assert claimed and doc["status"] == "queued"


def test_running_task_past_its_deadline_is_claimed(store):
    claim(store)
    set_fields(store, "t1", status="running", deadline=utcnow() - timedelta(seconds=1))
    _, claimed = claim(store, owner="other")
    assert claimed


def test_success_runs_again_only_after_rerun_limit(store):
    claim(store)
    set_fields(store, "t1", status="success", update_time=utcnow() - timedelta(minutes=5))
    assert not claim(store, rerun_after=timedelta(minutes=10))[1]
    assert not claim(store)[1]
    doc, claimed = claim(store, rerun_after=timedelta(minutes=1))
    assert claimed and doc["attempts"] == 2


def test_document_without_status_is_claimed(store):
    store.collection.insert_one({"task_id": "bare", "note": "written by hand"})
    doc, claimed = claim(store, "bare")
    assert claimed and doc["note"] == "written by hand"


def test_concurrent_claims_of_one_id_have_one_winner(memory):
    store = TaskStore(memory)
    barrier = threading.Barrier(32)
    wins = []

    def contend(i):
        barrier.wait()
        wins.append(claim(store, "same", owner=f"o{i}")[1])

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1 and len(wins) == 32
    assert memory.count_documents({}) == 1


def test_start_and_finish_apply_only_to_the_current_attempt(store):
    claim(store)
    deadline = utcnow() + timedelta(minutes=1)
    assert not store.start("t1", 2, "me", deadline), "a wrong attempt must not start"
    assert not store.start("t1", 1, "other", deadline), "another owner's attempt must not start"
    assert store.start("t1", 1, "me", deadline)
    set_fields(store, "t1", heartbeat_at=utcnow() - STALE * 2)
    doc, claimed = claim(store, owner="other")
    assert claimed and doc["attempts"] == 2
    assert not store.finish("t1", "success", attempt=1, result="zombie")
    assert store.start("t1", 2, "other", deadline)
    assert store.finish("t1", "success", attempt=2, result="fresh")
    view = store.public("t1")
    assert view["status"] == "success" and view["result"] == "fresh" and view["attempts"] == 2


def test_transition_refuses_moves_the_status_table_forbids(store):
    claim(store)
    assert not store.finish("t1", TaskStatus.SUCCESS, attempt=1, result=1), "queued cannot succeed"
    assert store.public("t1")["status"] == "queued"
    assert not store.finish("t1", TaskStatus.FAILED, attempt=1, error="x"), "an attempt ends only from running"
    assert store.finish("t1", TaskStatus.FAILED, attempt=None, error="lost")
    assert not store.finish("t1", TaskStatus.CANCELLED, attempt=None)
    assert store.public("t1")["status"] == "failed"


def test_heartbeat_touches_only_the_owners_active_tasks(store):
    old = utcnow() - timedelta(minutes=1)
    for task_id, owner, status in [("a", "me", "queued"), ("b", "me", "running"), ("c", "me", "success"), ("d", "other", "running")]:
        claim(store, task_id, owner=owner)
        set_fields(store, task_id, status=status, heartbeat_at=old)
    assert store.heartbeat("me") == 2
    fresh = {d["task_id"] for d in store.collection.find({"heartbeat_at": {"$gt": old}})}
    assert fresh == {"a", "b"}


def test_update_upserts_and_stamps_update_time(store):
    before = utcnow() - timedelta(milliseconds=5)
    store.update("new", {"status": TaskStatus.PENDING, "note": 1})
    doc = store.collection.find_one({"task_id": "new"})
    assert doc["status"] == "pending" and isinstance(doc["status"], str) and type(doc["status"]) is str
    stamped = doc["update_time"]
    stamped = stamped if stamped.tzinfo else stamped.replace(tzinfo=timezone.utc)
    assert stamped >= before
    given = datetime(2020, 1, 1, tzinfo=timezone.utc)
    store.update("new", {"update_time": given})
    assert store.public("new")["update_time"] == given


def test_public_view_has_the_contract_fields_only(store):
    claim(store)
    view = store.public("t1")
    assert set(view) == set(PUBLIC_FIELDS)
    for name in ("created_at", "update_time"):
        assert view[name].tzinfo is not None and view[name].utcoffset() == timedelta(0)
    assert store.public("missing") is None


def test_stored_params_of_unknown_task_is_not_found(store):
    with pytest.raises(TaskNotFound) as info:
        store.stored_params("nope")
    assert isinstance(info.value, LookupError)
