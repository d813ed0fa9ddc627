"""The lifecycle holds through faults: whatever raises after a claim ends as a recorded outcome
(or a release), the slot is freed, a cancel is never lost, and `callback` hears each recorded
outcome once. In one process; the fault-injection run with real processes is test_faults.py."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from pymongo.errors import WriteError
from tasks import Echo, Gate
from waiting import wait_until

from asynctask import AsyncTask, MemoryCollection, signals
from asynctask.store.tasks import utcnow


class Flaky(AsyncTask):
    """Raises ValueError until it is cancelled or released; counts its calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.started = threading.Event()
        self.gate = threading.Event()

    def get_task_id(self, name: str) -> str:
        return name

    def main(self, logger: logging.Logger, name: str) -> str:
        self.calls += 1
        self.started.set()
        self.gate.wait(30)
        raise ValueError("flaky")


class Noted(Echo):
    """Echo whose `callback` counts the outcomes it hears."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heard: list[tuple[str, bool]] = []

    def callback(self, future: Any, task_id: str) -> Any:
        self.heard.append((task_id, future.exception() is None))
        return None


class Refusing:
    """A collection that refuses, for good, each write recording a success (a 16 MiB document)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def update_one(self, query: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        if update.get("$set", {}).get("status") == "success":
            raise WriteError("BSONObjectTooLarge: object to insert too large", code=10334)
        return self.inner.update_one(query, update, *args, **kwargs)


def test_a_queued_task_never_carries_a_cancel_request(make_task, memory):
    """A cancel of a running task, then a retry: the task ends cancelled and runs no more."""
    task = make_task(Flaky, memory, max_retries=3, retry_delay=0.05, heartbeat_interval=0.05,
                     poll_interval=0.05)
    task.run(name="c")
    assert task.started.wait(5)
    assert memory.find_one({"task_id": "c"})["status"] == "running"
    # The cancel lands in the database; this process's attempt is not told (another host asked).
    assert task._store.request_cancel("c") == "running"
    task.gate.set()  # main raises a retryable error
    wait_until(lambda: task.retrieve("c")["status"] == "cancelled", "the retry found the cancel")
    assert task.calls == 1, "a cancelled task never runs again"
    assert memory.count_documents({"status": "queued", "cancel_requested": True}) == 0


def test_a_release_and_an_orphan_requeue_keep_the_cancel(memory):
    from asynctask.store.tasks import TaskStore

    store = TaskStore(memory, "Kind")
    for task_id in ("released", "orphaned", "plain"):
        store.submit(task_id, {}, claim_for=store.claim_fields("me", "host:me"))
    store.request_cancel("released")
    store.request_cancel("orphaned")
    assert store.release("me", "released", 1) == "cancelled"
    assert store.requeue_orphan("orphaned", 1, beats=0, max_attempts=3) == "cancelled"
    assert store.requeue_orphan("plain", 1, beats=0, max_attempts=3) == "queued"
    assert store.claim(store.claim_fields("other", "host:other"))["task_id"] == "plain"
    assert store.claim(store.claim_fields("other", "host:other")) is None, "a cancelled task is never claimed"
    assert memory.count_documents({"status": "queued", "cancel_requested": True}) == 0


def test_a_cancel_racing_the_queue_is_answered_with_the_truth(memory):
    """Many tasks move running -> queued while cancels come in: every answer is cancelled or
    running (stop requested), never a refusal of a task that was active."""
    from asynctask.store.tasks import TaskStore

    store = TaskStore(memory, "Kind")
    ids = [f"t{i}" for i in range(40)]
    for task_id in ids:
        store.submit(task_id, {}, claim_for=store.claim_fields("me", "host:me"))
    barrier = threading.Barrier(2)
    answers: dict[str, str] = {}

    def requeue() -> None:
        barrier.wait()
        for task_id in ids:
            store.release("me", task_id, 1)

    def cancel() -> None:
        barrier.wait()
        for task_id in ids:
            answers[task_id] = store.request_cancel(task_id)

    threads = [threading.Thread(target=requeue), threading.Thread(target=cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert set(answers.values()) <= {"cancelled", "running"}
    assert {store.public(t)["status"] for t in ids} == {"cancelled"}, "every cancel was kept"


def test_a_raising_signal_receiver_costs_no_slot_and_no_outcome(make_task, wait_for, memory):
    def broken(sender: Any, **kwargs: Any) -> None:
        raise OSError("the metrics folder is gone")

    for signal in (signals.task_submitted, signals.attempt_started, signals.attempt_ended):
        signal.connect(broken)
    try:
        task = make_task(Echo, memory, max_worker=2, poll_interval=0.05)
        ids = [task.run(value=i) for i in range(10)]
        for i, task_id in enumerate(ids):
            view = wait_for(task, task_id)
            assert (view["status"], view["result"]) == ("success", i)
        wait_until(lambda: task._runtime().free_slots() == 2, "every slot came back")
    finally:
        for signal in (signals.task_submitted, signals.attempt_started, signals.attempt_ended):
            signal.disconnect(broken)


def test_a_write_refused_for_good_fails_the_task_naming_why_and_frees_the_slot(make_task, wait_for, memory):
    task = make_task(Noted, Refusing(memory), max_worker=1, poll_interval=0.05)
    task_id = task.run(value="big")
    view = wait_for(task, task_id)
    assert view["status"] == "failed" and "could not be stored" in view["error"]
    assert "BSONObjectTooLarge" in view["error"]
    assert task.calls == 1, "main is not run again"
    assert task.heard == [(task_id, False)], "callback heard the recorded outcome, once"
    wait_until(lambda: task._runtime().free_slots() == 1)


def test_callback_hears_each_recorded_outcome_once_and_never_a_discarded_one(make_task, wait_for, memory):
    task = make_task(Noted, memory, poll_interval=0.05)
    ids = [task.run(value=i) for i in range(5)]
    for task_id in ids:
        wait_for(task, task_id)
    wait_until(lambda: len(task.heard) == 5)
    assert sorted(task.heard) == sorted((task_id, True) for task_id in ids)


def test_a_superseded_attempt_is_not_notified(make_task, memory):
    class Slow(Noted):
        gate = threading.Event()

        def main(self, logger: logging.Logger, value: Any = None, **extra: Any) -> Any:
            self.gate.wait(10)
            return value

    task = make_task(Slow, memory, poll_interval=0.05)
    task_id = task.run(value="late")
    wait_until(lambda: memory.find_one({"task_id": task_id, "status": "running"}))
    # Another worker took it over meanwhile (as after a stall of this one): attempt 2 is current.
    memory.update_one({"task_id": task_id}, {"$set": {"attempts": 2, "owner": "elsewhere"}})
    Slow.gate.set()
    wait_until(lambda: task._runtime().free_slots() == task._runtime().capacity)
    assert task.heard == [], "the discarded outcome of attempt 1 is nobody's news"
    assert memory.find_one({"task_id": task_id})["status"] == "running"


def test_an_executor_that_refuses_work_fails_the_task_naming_why(tmp_path, wait_for, memory):
    pool = ThreadPoolExecutor(2)
    pool.shutdown()
    task = Echo(memory, tmp_path, executor=pool, poll_interval=0.05)
    try:
        view = wait_for(task, task.run(value=1))
        assert view["status"] == "failed" and "executor refused" in view["error"]
        assert task._runtime().free_slots() == task._runtime().capacity
    finally:
        task.shutdown()


def test_a_user_executor_is_never_shut_down(tmp_path, wait_for, memory):
    pool = ThreadPoolExecutor(2)
    first = Echo(memory, tmp_path, executor=pool)
    wait_for(first, first.run(value=1))
    first.shutdown()
    assert pool.submit(lambda: 42).result(5) == 42, "the user's pool still takes work"
    pool.shutdown()


@pytest.mark.parametrize("options, error", [
    ({"heartbeat_interval": 10, "stale_after": 15}, ValueError),
    ({"task_timeout": timedelta(days=365 * 1000)}, ValueError),
    ({"rerun_time_limit": 1e12}, ValueError),
    ({"retry_max_delay": -1}, ValueError),
    ({"retry_max_delay": "1h"}, TypeError),
])
def test_options_that_cannot_work_are_refused_at_construction(tmp_path, options, error):
    with pytest.raises(error):
        Echo(MemoryCollection(), tmp_path, **options)


def test_the_retry_backoff_has_a_ceiling(make_task, wait_for, memory):
    task = make_task(Flaky, memory, max_retries=50, retry_delay=1e6, retry_backoff=100, retry_max_delay=2)
    task.gate.set()
    task.run(name="capped")
    wait_until(lambda: (task.retrieve("capped") or {}).get("next_retry_at"))
    wait = task.retrieve("capped")["next_retry_at"] - utcnow()
    assert timedelta(0) < wait <= timedelta(seconds=2)


def test_a_clock_step_fails_no_running_attempt(make_task, wait_for, memory):
    """Deadlines are on the monotonic clock: the wall clock jumping a day ahead times nothing out."""
    task = make_task(Gate, memory, task_timeout=30, heartbeat_interval=0.05, poll_interval=0.05)
    task.run(name="stepped")
    assert task.started.wait(5)
    with time_machine.travel(utcnow() + timedelta(days=1), tick=True):
        time.sleep(0.3)  # let the worker's loop look at its deadlines under the stepped clock
        assert task.retrieve("stepped")["status"] == "running"
        task.gate.set()
        assert wait_for(task, "stepped")["status"] == "success"


def test_tasks_stored_by_0_1_are_adopted(make_task, wait_for, memory):
    now = utcnow()
    memory.insert_one({"task_id": "old-queued", "status": "queued", "params": {"value": 1}, "attempts": 1,
                       "owner": "oldhost:1", "heartbeat_at": now, "created_at": now, "update_time": now})
    memory.insert_one({"task_id": "old-failed", "status": "failed", "params": {"value": 2}, "attempts": 1,
                       "error": "boom", "created_at": now, "update_time": now})
    task = make_task(Echo, memory, poll_interval=0.05)
    assert task.migrate() == 2
    assert task.retrieve("old-failed")["status"] == "failed", "visible as this type's task"
    task.start()
    assert wait_for(task, "old-queued")["result"] == 1, "a queued 0.1 task is claimed"
    task.run(task_id="old-failed")
    assert wait_for(task, "old-failed")["result"] == 2, "a failed 0.1 task re-runs"
    assert task.migrate() == 0


def test_tasks_stored_by_0_1_are_visible_and_re_runnable_at_the_first_call(make_task, wait_for, memory):
    """No `migrate()`, no worker started: the first read, list or re-run adopts them."""
    now = utcnow()
    memory.insert_one({"task_id": "old-failed", "status": "failed", "params": {"value": 2}, "attempts": 1,
                       "error": "boom", "created_at": now, "update_time": now})
    memory.insert_one({"task_id": "old-done", "status": "success", "params": {"value": 3}, "result": 3,
                       "attempts": 1, "created_at": now, "update_time": now})
    api_only = make_task(Echo, memory, worker=False)
    client = api_only.app("/api").test_client()
    assert client.get("/api/old-done").get_json()["data"]["result"] == 3
    assert client.get("/api").get_json()["data"]["total"] == 2
    for first_call in ("retrieve", "run"):
        other = MemoryCollection()
        other.insert_one({"task_id": "old-failed", "status": "failed", "params": {"value": 2}, "attempts": 1,
                          "created_at": now, "update_time": now})
        task = make_task(Echo, other, poll_interval=0.05)
        if first_call == "retrieve":
            assert task.retrieve("old-failed")["status"] == "failed"
        else:
            assert task.run(task_id="old-failed") == "old-failed"
            assert wait_for(task, "old-failed")["result"] == 2


class Big(AsyncTask):
    """Returns twice the text it was given: params and result together pass 16 MiB."""

    calls = 0

    def main(self, logger: logging.Logger, text: str) -> str:
        Big.calls += 1
        return text + text


@pytest.mark.timeout(120)
def test_a_document_over_16_mib_on_mongodb_fails_the_task_naming_why(tmp_path, mongo_uri, wait_for):
    import uuid

    from pymongo import MongoClient

    client: MongoClient = MongoClient(mongo_uri, tz_aware=True)
    collection = client["asynctask_test"][f"big_{uuid.uuid4().hex[:8]}"]
    task = Big(collection, tmp_path, poll_interval=0.05)
    try:
        task_id = task.submit({"text": "x" * (7 * 1024 * 1024)})
        view = wait_for(task, task_id, timeout=60)
        assert view["status"] == "failed" and "could not be stored" in view["error"], view["error"]
        assert Big.calls == 1, "main is not run again"
        assert task.asynctask_engine.runtime().free_slots() == task.asynctask_engine.runtime().capacity
    finally:
        task.shutdown()
        collection.drop()
        client.close()


class HeldUp:
    """A collection whose success writes land, then wait until a heartbeat has run after them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.written = threading.Event()
        self.beaten = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def update_one(self, query: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        result = self.inner.update_one(query, update, *args, **kwargs)
        if update.get("$set", {}).get("status") == "success":
            self.written.set()
            self.beaten.wait(10)
        return result

    def update_many(self, query: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        result = self.inner.update_many(query, update, *args, **kwargs)
        if self.written.is_set() and "beats" in update.get("$inc", {}):
            self.beaten.set()
        return result


def test_a_heartbeat_racing_the_outcome_write_does_not_call_the_task_lost(make_task, wait_for, memory, caplog):
    held = HeldUp(memory)
    task = make_task(Echo, held, poll_interval=0.05, heartbeat_interval=0.1, stale_after=1)
    with caplog.at_level(logging.WARNING, logger="asynctask"):
        task_id = task.run(value="done")
        assert held.beaten.wait(10), "a heartbeat ran after the outcome was written, before the attempt ended"
        wait_until(lambda: task._runtime().free_slots() == task._runtime().capacity)
        view = wait_for(task, task_id)
    assert view["status"] == "success" and view["result"] == "done"
    assert not [r for r in caplog.records if "given to another worker" in r.getMessage()]
