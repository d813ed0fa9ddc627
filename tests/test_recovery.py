"""Recovery within one process: heartbeats, orphan takeover, max_attempts, graceful release.

Orphans are made by back-dating heartbeats or naming an owner that no longer exists; the
real thing, with killed processes, is in test_durability.py.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from tasks import Echo, Gate
from waiting import wait_until

from asynctask.errors import ShuttingDown
from asynctask.store.tasks import TaskStore, utcnow

FAST = {"heartbeat_interval": 0.05, "stale_after": 0.3}


def orphan(collection, task_id, params, *, attempts=1, lost=0, age=3600.0, task_type="Echo"):
    """A running task whose worker died `age` seconds ago, having lost `lost` workers before."""
    collection.insert_one({
        "task_id": task_id, "type": task_type, "status": "running", "params": params, "attempts": attempts,
        "lost": lost, "owner": "dead-host:1:gone", "heartbeat_at": utcnow() - timedelta(seconds=age),
        "created_at": utcnow(), "update_time": utcnow(), "priority": 0,
    })


def test_live_process_takes_over_an_orphan(make_task, wait_for, memory):
    orphan(memory, "lost", {"value": 42})
    task = make_task(Echo, memory, **FAST)
    task.start()
    view = wait_for(task, "lost")
    assert view["status"] == "success" and view["result"] == 42 and view["attempts"] == 2
    assert memory.find_one({"task_id": "lost"}).get("owner") is None


def test_orphan_out_of_attempts_fails_with_worker_lost(make_task, wait_for, memory):
    orphan(memory, "doomed", {"value": 1}, attempts=3, lost=2)
    task = make_task(Echo, memory, max_attempts=3, **FAST)
    task.start()
    view = wait_for(task, "doomed")
    assert view["status"] == "failed" and "worker lost" in view["error"]
    assert task.calls == 0


def test_an_orphan_waits_in_the_queue_until_a_slot_is_free(make_task, wait_for, memory):
    task = make_task(Gate, memory, max_worker=1, heartbeat_interval=60, poll_interval=0.05)
    task.run(name="busy")
    assert task.started.wait(5)
    orphan(memory, "waiting", {"name": "waiting"}, task_type="Gate")
    task._sweep()
    doc = memory.find_one({"task_id": "waiting"})
    assert (doc["status"], doc.get("owner"), doc["attempts"]) == ("queued", None, 1)
    task.gate.set()
    wait_for(task, "busy")
    assert wait_for(task, "waiting")["status"] == "success"


def test_concurrent_sweepers_requeue_each_orphan_once(make_task, wait_for, memory):
    for i in range(10):
        orphan(memory, f"o{i}", {"value": i})
    first = make_task(Echo, memory, max_worker=10, heartbeat_interval=60, poll_interval=0.05)
    second = make_task(Echo, memory, max_worker=10, heartbeat_interval=60, poll_interval=0.05)
    barrier = threading.Barrier(2)

    def sweep(task):
        barrier.wait()
        task._sweep()

    threads = [threading.Thread(target=sweep, args=(t,)) for t in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first.start()
    second.start()
    for i in range(10):
        assert wait_for(first, f"o{i}")["attempts"] == 2
    assert first.calls + second.calls == 10


def test_heartbeats_keep_a_long_task_from_being_taken(make_task, memory):
    owner = make_task(Gate, memory, **FAST)
    rival = make_task(Gate, memory, **FAST)
    owner.run(name="long")
    assert owner.started.wait(5)
    started = memory.find_one({"task_id": "long"})["started_at"]
    wait_until(lambda: (utcnow().replace(tzinfo=None) - started.replace(tzinfo=None)).total_seconds() > 0.6)
    rival._sweep()
    doc = memory.find_one({"task_id": "long"})
    assert doc["attempts"] == 1 and doc["status"] == "running" and rival.calls == 0


def test_graceful_shutdown_releases_unfinished_tasks_at_once(tmp_path, make_task, wait_for, memory):
    leaving = Gate(memory, tmp_path / "a", max_worker=1, heartbeat_interval=60)
    leaving.run(name="first")
    assert leaving.started.wait(5)
    leaving.run(name="second")  # waits in the queue: the only slot is busy
    leaving.shutdown(grace=0.05)
    docs = {d["task_id"]: d for d in memory.find({})}
    assert {d["status"] for d in docs.values()} == {"queued"}
    assert all("owner" not in d for d in docs.values())
    with pytest.raises(ShuttingDown):
        leaving.run(name="third")

    taker = make_task(Gate, memory, heartbeat_interval=0.05, stale_after=60, poll_interval=0.05)
    taker.gate.set()
    taker.start()
    for name in ("first", "second"):
        assert wait_for(taker, name)["status"] == "success"
    leaving.gate.set()  # the released attempt returns late: fenced out
    wait_until(lambda: leaving.calls == 1)
    assert leaving.calls == 1, "a queued task must not start in the leaving process"
    assert memory.find_one({"task_id": "first"})["attempts"] == 2  # released, then run again
    assert memory.find_one({"task_id": "second"})["attempts"] == 1  # run once, by the taker


def test_shutdown_with_grace_lets_quick_tasks_finish(tmp_path, wait_for, memory):
    task = Echo(memory, tmp_path, max_worker=2)
    task_id = task.run(value="quick")
    task.shutdown(grace=5)
    assert memory.find_one({"task_id": task_id})["status"] == "success"


def test_store_sweep_operations(memory):
    store = TaskStore(memory, "Echo")
    orphan(memory, "a", {}, attempts=1)
    orphan(memory, "b", {}, attempts=3, lost=2)
    orphan(memory, "fresh", {}, attempts=1, age=0)
    orphan(memory, "other-type", {}, attempts=1, task_type="Other")
    assert store.requeue_orphans(timedelta(seconds=30), max_attempts=3) == (1, 1)
    assert memory.find_one({"task_id": "b"})["status"] == "failed"
    requeued = memory.find_one({"task_id": "a"})
    assert (requeued["status"], requeued["attempts"], requeued["lost"]) == ("queued", 1, 1)
    assert "owner" not in requeued and "heartbeat_at" not in requeued
    assert memory.find_one({"task_id": "other-type"})["status"] == "running", "a type sweeps only its own tasks"
    claimed = store.claim(store.claim_fields("me", "host:1", utcnow() + timedelta(hours=1)))
    assert claimed["task_id"] == "a" and claimed["owner"] == "me" and claimed["attempts"] == 2
    assert store.release("me", ["a", "fresh"]) == 1
    released = memory.find_one({"task_id": "a"})
    assert released["status"] == "queued" and "owner" not in released and released["attempts"] == 2
