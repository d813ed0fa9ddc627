"""Recovery within one process: heartbeats, orphan takeover, max_attempts, graceful release.

Orphans are made by naming an owner that no longer exists, whose heartbeat counter then never
moves; a sweeper on a fake monotonic clock judges them. The real thing, with killed processes,
is in test_durability.py.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from tasks import Echo, Gate
from waiting import wait_until

from asynctask.errors import ShuttingDown
from asynctask.store.tasks import TaskStore, utcnow
from asynctask.sweep import Sweeper

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


def judge(task, clock, owner="judge"):
    """A sweeper of `task`'s type on a fake monotonic clock, as another process would run it."""
    return Sweeper(task._store, task._workers, task._limit, owner=owner, stale_after=task.stale_after.total_seconds(),
                   interval=task.heartbeat_interval.total_seconds(), max_attempts=task.max_attempts,
                   on_finished=lambda *_: None, on_requeued=lambda: None, clock=clock)


class FakeClock:
    """A monotonic clock the test moves; each read advances it a little, like a quick round trip."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        self.now += 0.001
        return self.now


def sweep_for(sweeper, clock, seconds, step):
    """Sweep every `step` seconds of fake time for `seconds`."""
    for _ in range(int(seconds / step) + 1):
        sweeper.sweep()
        clock.now += step


def test_an_orphan_waits_in_the_queue_until_a_slot_is_free(make_task, wait_for, memory):
    task = make_task(Gate, memory, max_worker=1, heartbeat_interval=60, poll_interval=0.05)
    task.run(name="busy")
    assert task.started.wait(5)
    orphan(memory, "waiting", {"name": "waiting"}, task_type="Gate")
    clock = FakeClock()
    # The task's own worker holds the sweep lease: the judge takes it over once it stayed
    # silent for stale_after, then watches the orphan for stale_after.
    sweep_for(judge(task, clock), clock, 2 * task.stale_after.total_seconds() + 90, 30)
    doc = memory.find_one({"task_id": "waiting"})
    assert (doc["status"], doc.get("owner"), doc["attempts"]) == ("queued", None, 1)
    task.gate.set()
    wait_for(task, "busy")
    assert wait_for(task, "waiting")["status"] == "success"


def test_taking_over_the_sweep_from_a_dead_holder_costs_its_orphans_no_second_stale_after(make_task, memory):
    """The process that held the sweep lease dies with its task: the next one takes the lease
    over after stale_after, and requeues the task at once, having timed its counter all along."""
    task = make_task(Echo, memory, heartbeat_interval=60, poll_interval=60, worker=False)
    clock = FakeClock()
    stale, interval = 3.0, 1.0

    def sweeper(owner):
        return Sweeper(task._store, task._workers, None, owner=owner, stale_after=stale, interval=interval,
                       max_attempts=3, on_finished=lambda *_: None, on_requeued=lambda: None, clock=clock)

    dead, survivor = sweeper("dead"), sweeper("survivor")
    dead.sweep()
    assert dead.lease.held
    orphan(memory, "orphan", {"value": 1})  # its worker (the dead process) beats no more
    requeued_after = None
    for step in range(int(4 * stale / interval)):
        survivor.sweep()
        if memory.find_one({"task_id": "orphan"})["status"] == "queued":
            requeued_after = step * interval
            break
        clock.now += interval
    assert survivor.lease.held
    assert requeued_after is not None and stale <= requeued_after < stale + 2 * interval, requeued_after


def test_concurrent_sweepers_requeue_each_orphan_once(make_task, wait_for, memory):
    for i in range(10):
        orphan(memory, f"o{i}", {"value": i})
    first = make_task(Echo, memory, max_worker=10, heartbeat_interval=60, poll_interval=0.05)
    second = make_task(Echo, memory, max_worker=10, heartbeat_interval=60, poll_interval=0.05)
    clock = FakeClock()
    judges = [judge(first, clock, "j1"), judge(second, clock, "j2")]
    for sweeper in judges:  # both watch at once, as if each believed it held the lease
        sweeper.lease.hold = lambda: True
    stale = first.stale_after.total_seconds()
    for _ in range(int(stale / 30)):
        for sweeper in judges:
            sweeper.sweep()
        clock.now += 30
    assert {d["lost"] for d in memory.find({})} == {0}, "not silent for stale_after yet"
    barrier = threading.Barrier(2)

    def sweep(sweeper):
        barrier.wait()
        sweeper.sweep()

    threads = [threading.Thread(target=sweep, args=(j,)) for j in judges]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {d["lost"] for d in memory.find({})} == {1}, "each orphan went back to the queue once"
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
    sweeper = judge(rival, time.monotonic)
    deadline = time.monotonic() + 4 * rival.stale_after.total_seconds()
    while time.monotonic() < deadline:
        sweeper.sweep()
        time.sleep(rival.heartbeat_interval.total_seconds())
    doc = memory.find_one({"task_id": "long"})
    assert doc["attempts"] == 1 and doc["status"] == "running" and rival.calls == 0
    assert doc["beats"] > 3, "the owner's heartbeats moved the counter the judge watches"


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


def test_store_orphan_moves_are_fenced_by_the_counter(memory):
    store = TaskStore(memory, "Echo")
    orphan(memory, "a", {}, attempts=1)
    orphan(memory, "b", {}, attempts=3, lost=2)
    memory.update_many({}, {"$set": {"beats": 7}})
    assert store.requeue_orphan("a", 1, beats=6, max_attempts=3) is None, "a beat landed since it was read"
    assert store.requeue_orphan("a", 1, beats=7, max_attempts=3) == "queued"
    assert store.requeue_orphan("b", 3, beats=7, max_attempts=3) == "failed"
    assert memory.find_one({"task_id": "b"})["error"].startswith("worker lost")
    requeued = memory.find_one({"task_id": "a"})
    assert (requeued["status"], requeued["attempts"], requeued["lost"]) == ("queued", 1, 1)
    assert not {"owner", "heartbeat_at", "beats"} & set(requeued)
    claimed = store.claim(store.claim_fields("me", "host:1"))
    assert claimed["task_id"] == "a" and claimed["owner"] == "me" and claimed["attempts"] == 2
    assert store.release("me", "a", 1) is None, "an old attempt releases nothing"
    assert store.release("other", "a", 2) is None, "another worker releases nothing"
    assert store.release("me", "a", 2) == "queued"
    released = memory.find_one({"task_id": "a"})
    assert released["status"] == "queued" and "owner" not in released and released["attempts"] == 2
