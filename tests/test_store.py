"""The store: the run rule as one atomic submission, the claim, fenced moves, heartbeats, views.

Runs against every backend of the `collection` fixture (memory, and MongoDB through pymongo).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from asynctask import TaskNotFound, TaskStatus
from asynctask.errors import InvalidTransition, TaskIdTaken
from asynctask.store.tasks import TaskStore, utcnow


@pytest.fixture
def store(collection):
    return TaskStore(collection, "Kind")


def submit(store, task_id="t1", params=None, **kwargs):
    return store.submit(task_id, params or {"x": 1}, **kwargs)


def worker(owner="me"):
    return TaskStore.claim_fields(owner, f"host:{owner}")


def set_fields(store, task_id, **fields):
    store.collection.update_one({"task_id": task_id}, {"$set": fields})


def test_a_new_task_waits_queued_and_owned_by_nobody(store):
    doc, submitted = submit(store, params={"x": 1})
    assert submitted
    assert (doc["status"], doc["attempts"], doc["params"], doc["type"]) == ("queued", 0, {"x": 1}, "Kind")
    assert "owner" not in doc and doc["created_at"] is not None
    assert store.collection.count_documents({}) == 1


def test_a_submitting_worker_with_a_free_slot_claims_at_once(store):
    doc, submitted = submit(store, claim_for=worker("me"))
    assert submitted and (doc["status"], doc["owner"], doc["attempts"]) == ("running", "me", 1)
    assert doc["started_at"] is not None
    assert store.claim(worker("other")) is None, "nothing is left in the queue"


def test_a_delayed_task_is_never_claimed_at_once(store):
    doc, _ = submit(store, run_at=utcnow() + timedelta(minutes=1), claim_for=worker("me"))
    assert doc["status"] == "queued"
    assert store.claim(worker()) is None
    view = store.public("t1")
    assert view["run_at"] > view["queued_at"]


def test_task_id_index_is_unique(store):
    submit(store)
    indexes = store.collection.index_information()
    assert any(info.get("unique") and info["key"] == [("task_id", 1)] for info in indexes.values())


@pytest.mark.parametrize("status", ["queued", "running", "success"])
def test_live_or_successful_task_is_not_submitted_again(store, status):
    submit(store, claim_for=worker("me"))
    set_fields(store, "t1", status=status)
    doc, submitted = submit(store)
    assert not submitted
    assert doc["status"] == status and doc["attempts"] == 1


@pytest.mark.parametrize("status", ["failed", "pending", "cancelled"])
def test_failed_pending_cancelled_are_submitted_again(store, status):
    submit(store, claim_for=worker())
    set_fields(store, "t1", status=status, error="boom", result="old")
    doc, submitted = submit(store, claim_for=worker("other"))
    assert submitted
    assert (doc["status"], doc["attempts"], doc["owner"]) == ("running", 2, "other")
    assert "error" not in doc and "result" not in doc


def test_running_task_with_no_worker_is_submitted_again(store):
    store.update("t1", {"status": TaskStatus.RUNNING, "params": {"x": 1}})
    doc, submitted = submit(store, claim_for=worker("other"))
    assert submitted and doc["attempts"] == 1 and doc["owner"] == "other"


def test_no_clock_makes_a_running_task_look_stale_to_the_run_rule(store):
    submit(store, claim_for=worker("me"))
    # Its worker's clock is a day behind (or its last beat long ago by this host's clock): only
    # the sweep, which watches the heartbeat counter, may judge the worker silent.
    set_fields(store, "t1", heartbeat_at=utcnow() - timedelta(days=1))
    doc, submitted = submit(store, claim_for=worker("other"))
    assert not submitted and doc["owner"] == "me" and doc["attempts"] == 1


def test_success_runs_again_only_after_rerun_limit(store):
    submit(store, claim_for=worker())
    set_fields(store, "t1", status="success", update_time=utcnow() - timedelta(minutes=5))
    assert not submit(store, rerun_after=timedelta(minutes=10))[1]
    assert not submit(store)[1]
    doc, submitted = submit(store, rerun_after=timedelta(minutes=1), claim_for=worker())
    assert submitted and doc["attempts"] == 2


def test_document_without_status_is_submitted(store):
    store.collection.insert_one({"task_id": "bare", "type": "Kind", "note": "written by hand"})
    doc, submitted = submit(store, "bare")
    assert submitted and doc["note"] == "written by hand"


def test_an_id_of_another_type_is_refused(store):
    TaskStore(store.collection, "Other").submit("shared", {})
    with pytest.raises(TaskIdTaken):
        submit(store, "shared")
    assert store.public("shared") is None, "a type never sees another type's task"


def test_concurrent_submissions_of_one_id_have_one_winner(memory):
    store = TaskStore(memory, "Kind")
    barrier = threading.Barrier(32)
    wins = []

    def contend(i):
        barrier.wait()
        wins.append(submit(store, "same", claim_for=worker(f"o{i}"))[1])

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1 and len(wins) == 32
    assert memory.count_documents({}) == 1


def test_concurrent_reruns_of_a_failed_task_never_answer_failed(memory):
    store = TaskStore(memory, "Kind")
    submit(store)
    set_fields(store, "t1", status="failed")
    barrier = threading.Barrier(24)
    answers = []

    def rerun():
        barrier.wait()
        doc, submitted = submit(store, claim_for=worker())
        answers.append((submitted, doc["status"]))

    threads = [threading.Thread(target=rerun) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(submitted for submitted, _ in answers) == 1
    assert all(status in ("queued", "running") for _, status in answers), answers


def test_the_claim_takes_the_highest_priority_then_the_oldest_due(store):
    now = utcnow()
    for task_id, priority, ago in [("low-old", -5, 30), ("high-new", 10, 1), ("mid-old", 0, 20),
                                   ("high-old", 10, 5), ("mid-new", 0, 2)]:
        submit(store, task_id, priority=priority, now=now - timedelta(seconds=ago))
    order = [store.claim(worker())["task_id"] for _ in range(5)]
    assert order == ["high-old", "high-new", "mid-old", "mid-new", "low-old"]
    assert store.claim(worker()) is None


def test_the_claim_waits_for_run_at_and_sees_only_its_type(store):
    submit(store, "later", run_at=utcnow() + timedelta(seconds=60))
    TaskStore(store.collection, "Other").submit("theirs", {})
    assert store.claim(worker()) is None
    doc = store.claim(worker(), now=utcnow() + timedelta(seconds=61))
    assert doc["task_id"] == "later" and doc["status"] == "running" and doc["worker"] == "host:me"


def test_an_attempt_writes_only_while_it_is_the_current_one(store):
    submit(store)
    first = store.claim(worker("me"))
    assert first["attempts"] == 1
    assert store.requeue_orphan("t1", 1, beats=0, max_attempts=3) == "queued"
    second = store.claim(worker("other"))
    assert second["attempts"] == 2
    assert not store.finish("t1", "success", attempt=1, result="zombie")
    assert not store.progress("t1", 1, 50.0, "zombie")
    assert store.finish("t1", "success", attempt=2, result="fresh")
    view = store.public("t1")
    assert view["status"] == "success" and view["result"] == "fresh" and view["attempts"] == 2


def test_transition_refuses_moves_the_status_table_forbids(store):
    submit(store)
    assert not store.finish("t1", TaskStatus.SUCCESS, attempt=1, result=1), "queued cannot succeed"
    assert store.public("t1")["status"] == "queued"
    assert store.transition("t1", TaskStatus.FAILED, fields={"error": "x"})
    with pytest.raises(InvalidTransition):
        store.transition("t1", TaskStatus.SUCCESS, only_from=("failed",))
    assert store.public("t1")["status"] == "failed"


def test_heartbeat_touches_only_the_tasks_this_worker_holds(store):
    for task_id, owner in [("a", "me"), ("b", "me"), ("c", "other")]:
        submit(store, task_id, claim_for=worker(owner))
    assert store.heartbeat("me", ["a", "c"]) == {"c"}, "b is no longer held; c is another worker's"
    beats = {d["task_id"]: d["beats"] for d in store.collection.find({}, {"task_id": 1, "beats": 1})}
    assert beats == {"a": 1, "b": 0, "c": 0}
    assert store.heartbeat("me", ["a", "b"]) == set()


def test_bulk_retries_finished_and_cancels_unfinished(store):
    for task_id, status in [("f1", "failed"), ("f2", "failed"), ("ok", "success"), ("q", "queued")]:
        submit(store, task_id)
        set_fields(store, task_id, status=status)
    assert store.bulk("retry", status="failed") == {"matched": 2, "changed": 2}
    assert {store.public(t)["status"] for t in ("f1", "f2")} == {"queued"}
    assert store.bulk("cancel", task_ids=["q", "ok"]) == {"matched": 1, "changed": 1}
    assert store.public("q")["status"] == "cancelled" and store.public("ok")["status"] == "success"


def test_update_upserts_and_stamps_update_time(store):
    before = utcnow() - timedelta(milliseconds=5)
    store.update("new", {"status": TaskStatus.PENDING, "note": 1})
    doc = store.collection.find_one({"task_id": "new"})
    assert doc["status"] == "pending" and type(doc["status"]) is str and doc["type"] == "Kind"
    stamped = doc["update_time"]
    stamped = stamped if stamped.tzinfo else stamped.replace(tzinfo=timezone.utc)
    assert stamped >= before
    given = datetime(2020, 1, 1, tzinfo=timezone.utc)
    store.update("new", {"update_time": given})
    assert store.public("new")["update_time"] == given


def test_public_view_times_are_aware_utc_and_internal_fields_stay_out(store):
    submit(store, claim_for=worker("me"))
    view = store.public("t1")
    assert view["worker"] == "host:me" and view["priority"] == 0 and view["run_at"] is None
    assert not {"_id", "owner", "heartbeat_at", "deadline", "lost", "type"} & set(view)
    for name in ("created_at", "update_time", "queued_at", "started_at"):
        assert view[name].tzinfo is not None and view[name].utcoffset() == timedelta(0)
    assert store.public("missing") is None


def test_stored_params_of_unknown_task_is_not_found(store):
    with pytest.raises(TaskNotFound) as info:
        store.stored_params("nope")
    assert isinstance(info.value, LookupError)


def test_the_claim_and_sweep_indexes_hold_only_queued_and_running_tasks(store):
    submit(store)
    indexes = store.collection.index_information()
    assert indexes["claim_queued"]["partialFilterExpression"] == {"status": "queued"}
    assert indexes["due_queued"]["partialFilterExpression"] == {"status": "queued"}
    assert indexes["running"]["partialFilterExpression"] == {"status": "running"}
