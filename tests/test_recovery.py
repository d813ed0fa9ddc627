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
from asynctask.store import TaskStore, utcnow

FAST = {"heartbeat_interval": 0.05, "stale_after": 0.3}


def orphan(collection, task_id, params, *, attempts=1, lost=0, status="running", age=3600.0):
    """A task whose owner died `age` seconds ago, having lost `lost` owners before."""
    collection.insert_one({
        "task_id": task_id, "status": status, "params": params, "attempts": attempts, "lost": lost,
        "owner": "dead-host:1:gone", "heartbeat_at": utcnow() - timedelta(seconds=age),
        "created_at": utcnow(), "update_time": utcnow(),
    })


def test_live_process_takes_over_an_orphan(make_task, wait_for, memory):
    orphan(memory, "lost", {"value": 42})
    task = make_task(Echo, memory, **FAST)
    task.start()
    view = wait_for(task, "lost")
    assert view["status"] == "success" and view["result"] == 42 and view["attempts"] == 2
    assert memory.find_one({"task_id": "lost"}).get("owner") is None


@pytest.mark.parametrize("status", ["queued", "running"])
def test_orphan_out_of_attempts_fails_with_worker_lost(make_task, wait_for, memory, status):
    orphan(memory, "doomed", {"value": 1}, attempts=3, lost=2, status=status)
    task = make_task(Echo, memory, max_attempts=3, **FAST)
    task.start()
    view = wait_for(task, "doomed")
    assert view["status"] == "failed" and "worker lost" in view["error"]
    assert task.calls == 0


def test_orphans_are_taken_only_into_free_slots(make_task, wait_for, memory):
    task = make_task(Gate, memory, max_worker=1, heartbeat_interval=60)
    task.run(name="busy")
    assert task.started.wait(5)
    orphan(memory, "waiting", {"name": "waiting"})
    task._recover()
    assert memory.find_one({"task_id": "waiting"})["owner"] == "dead-host:1:gone"
    task.gate.set()
    wait_for(task, "busy")
    wait_until(lambda: task._process().free_slots() == 1)
    task._recover()
    assert wait_for(task, "waiting")["attempts"] == 2


def test_concurrent_sweepers_take_each_orphan_once(make_task, wait_for, memory):
    for i in range(10):
        orphan(memory, f"o{i}", {"value": i})
    first = make_task(Echo, memory, max_worker=10, heartbeat_interval=60)
    second = make_task(Echo, memory, max_worker=10, heartbeat_interval=60)
    barrier = threading.Barrier(2)

    def sweep(task):
        barrier.wait()
        task._recover()

    threads = [threading.Thread(target=sweep, args=(t,)) for t in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
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
    rival._recover()
    doc = memory.find_one({"task_id": "long"})
    assert doc["attempts"] == 1 and doc["status"] == "running" and rival.calls == 0


def test_graceful_shutdown_releases_unfinished_tasks_at_once(tmp_path, make_task, wait_for, memory):
    leaving = Gate(memory, tmp_path / "a", max_worker=1, heartbeat_interval=60)
    leaving.run(name="first")
    assert leaving.started.wait(5)
    leaving.run(name="second")  # queued behind the first in this process
    leaving.shutdown(grace=0.05)
    docs = {d["task_id"]: d for d in memory.find({})}
    assert {d["status"] for d in docs.values()} == {"queued"}
    assert all("owner" not in d for d in docs.values())
    with pytest.raises(ShuttingDown):
        leaving.run(name="third")

    taker = make_task(Gate, memory, heartbeat_interval=0.05, stale_after=60)
    taker.gate.set()
    taker.start()
    for name in ("first", "second"):
        assert wait_for(taker, name)["status"] == "success"
    leaving.gate.set()  # the released attempt returns late: fenced out
    wait_until(lambda: leaving.calls == 1)
    assert leaving.calls == 1, "a released queued task must not start in the leaving process"
    assert all(memory.find_one({"task_id": n})["attempts"] == 2 for n in ("first", "second"))


def test_shutdown_with_grace_lets_quick_tasks_finish(tmp_path, wait_for, memory):
    task = Echo(memory, tmp_path, max_worker=2)
    task_id = task.run(value="quick")
    task.shutdown(grace=5)
    assert memory.find_one({"task_id": task_id})["status"] == "success"


def test_store_sweep_operations(memory):
    store = TaskStore(memory)
    orphan(memory, "a", {}, attempts=1)
    orphan(memory, "b", {}, attempts=3, lost=2)
    orphan(memory, "retried", {}, attempts=5, lost=0, age=7200)
    orphan(memory, "fresh", {}, attempts=1, age=0)
    assert store.fail_lost(timedelta(seconds=30), max_attempts=3) == 1
    assert memory.find_one({"task_id": "b"})["status"] == "failed"
    doc = store.claim_orphan("me", timedelta(seconds=30), max_attempts=3)
    assert doc["task_id"] == "retried" and doc["attempts"] == 6 and doc["lost"] == 1, "retries are not lost workers"
    doc = store.claim_orphan("me", timedelta(seconds=30), max_attempts=3)
    assert doc["task_id"] == "a" and doc["owner"] == "me" and doc["attempts"] == 2 and doc["lost"] == 1
    assert store.claim_orphan("me", timedelta(seconds=30), max_attempts=3) is None
    assert store.release("me") == 2
    released = memory.find_one({"task_id": "a"})
    assert released["status"] == "queued" and "owner" not in released and "heartbeat_at" not in released

