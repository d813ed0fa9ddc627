"""Workers and the shared queue: claims, balance, priorities, delays, types, concurrency caps.

The first part runs in this process (several `AsyncTask` instances on one in-memory collection
stand for several processes); the second starts real `asynctask worker` processes on the shared
MongoDB (the test wire server, which has no change streams: the poll loop alone must do).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import apps
import pytest
from apps import all_in, calls, tasks
from flask import Flask
from waiting import wait_until

from asynctask import AsyncTask, MemoryCollection
from asynctask.store.tasks import utcnow

DEADLINE = 30.0


class Tracked(AsyncTask):
    """Records the order and overlap of its runs; `hold` keeps each run until it is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order: list[str] = []
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()
        self.hold = threading.Event()
        self.hold.set()

    def get_task_id(self, name: str) -> str:
        return name

    def main(self, logger: Any, name: str) -> str:
        with self.lock:
            self.order.append(name)
            self.running += 1
            self.most = max(self.most, self.running)
        self.hold.wait(10)
        with self.lock:
            self.running -= 1
        return name


class Shout(AsyncTask):
    def main(self, logger: Any, text: str) -> str:
        return text.upper()


class Add(AsyncTask):
    name = "adder"  # a type named by the class attribute

    def main(self, logger: Any, a: int, b: int) -> int:
        return a + b


def test_priorities_order_the_claims_then_the_oldest_first(make_task, wait_for):
    task = make_task(Tracked, max_worker=1, poll_interval=0.05)
    task.hold.clear()
    task.submit({"name": "occupier"})
    wait_until(lambda: task.order == ["occupier"])
    for name, priority in [("low", -10), ("normal-1", 0), ("urgent", 50), ("normal-2", 0), ("high", 10)]:
        task.submit({"name": name}, priority=priority)
    assert task.retrieve("urgent")["priority"] == 50
    task.hold.set()
    for name in ("low", "normal-1", "urgent", "normal-2", "high"):
        wait_for(task, name)
    assert task.order == ["occupier", "urgent", "high", "normal-1", "normal-2", "low"]


def test_a_delayed_task_waits_until_it_is_due(make_task, wait_for):
    task = make_task(Tracked, poll_interval=0.05)
    # MongoDB keeps milliseconds: compare with what a stored time can hold.
    submitted = utcnow() - timedelta(milliseconds=1)
    task.submit({"name": "later"}, delay=0.6)
    view = task.retrieve("later")
    assert view["status"] == "queued" and view["run_at"] >= submitted + timedelta(seconds=0.6)
    task.submit({"name": "at"}, run_at=utcnow() + timedelta(seconds=0.4))
    done = wait_for(task, "later")
    assert done["started_at"] >= submitted + timedelta(seconds=0.6)
    assert wait_for(task, "at")["started_at"] >= submitted + timedelta(seconds=0.4)


@pytest.mark.parametrize("options", [{"priority": 101}, {"priority": 1.5}, {"priority": True}, {"delay": -1},
                                     {"delay": "soon"}, {"run_at": "2030-01-01T00:00:00"},
                                     {"delay": 1, "run_at": "2030-01-01T00:00:00+00:00"}])
def test_bad_queue_options_are_400_and_store_nothing(make_task, options):
    task = make_task(Tracked)
    response = task.app("/api").test_client().post("/api", json={"data": {"name": "x"}, **options})
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["status"] == "error"
    assert task.collection.count_documents({}) == 0


def test_queue_options_over_http_are_stored_and_shown(make_task):
    task = make_task(Tracked, worker=False)
    client = task.app("/api").test_client()
    response = client.post("/api", json={"data": {"name": "x"}, "priority": 7, "run_at": "2030-01-01T00:00:00Z"})
    assert response.status_code == 202
    view = client.get("/api/x").get_json()["data"]
    assert (view["status"], view["priority"], view["run_at"]) == ("queued", 7, "2030-01-01T00:00:00+00:00")


def test_a_worker_never_runs_more_tasks_than_its_slots(make_task, wait_for):
    task = make_task(Tracked, max_worker=2, poll_interval=0.05)
    task.hold.clear()
    for i in range(6):
        task.submit({"name": f"t{i}"})
    wait_until(lambda: task.running == 2)
    assert sorted(v["status"] for v in task.list()["tasks"]) == ["queued"] * 4 + ["running"] * 2
    task.hold.set()
    for i in range(6):
        wait_for(task, f"t{i}")
    assert task.most == 2


def test_an_idle_worker_finds_a_task_another_process_accepted_by_polling(make_task, wait_for):
    shared = MemoryCollection()
    accepting = make_task(Tracked, shared, worker=False)
    idle = make_task(Tracked, shared, poll_interval=0.1)
    idle.start()
    accepted = accepting.submit({"name": "polled"})
    view = wait_for(idle, accepted)
    assert view["status"] == "success" and idle.order == ["polled"] and accepting.order == []
    assert view["started_at"] - view["queued_at"] < timedelta(seconds=5)


def test_two_types_on_one_collection_never_see_or_run_each_others_tasks(make_task, wait_for):
    shared = MemoryCollection()
    shout, add = make_task(Shout, shared, poll_interval=0.05), make_task(Add, shared, poll_interval=0.05)
    loud = shout.submit({"text": "hi"})
    summed = add.submit({"a": 1, "b": 2})
    assert wait_for(shout, loud)["result"] == "HI" and wait_for(add, summed)["result"] == 3
    assert shout.retrieve(summed) is None and add.retrieve(loud) is None
    assert [t["task_id"] for t in shout.list()["tasks"]] == [loud]
    assert shout.list()["counts"] == {"success": 1}
    assert shared.find_one({"task_id": summed})["type"] == "adder"
    client = shout.app("/api").test_client()
    assert client.get(f"/api/{summed}").status_code == 404
    assert client.post("/api", json={"data": {"task_id": summed}}).status_code == 404
    # A failed task of one type is re-run by its own workers only.
    shared.update_one({"task_id": summed}, {"$set": {"status": "failed"}})
    add.run(task_id=summed)
    assert wait_for(add, summed)["result"] == 3
    assert shout.retrieve(summed) is None


def test_an_api_only_instance_runs_nothing_and_its_tasks_wait_for_a_worker(make_task, wait_for):
    shared = MemoryCollection()
    api = make_task(Tracked, shared, worker=False)
    ids = [api.submit({"name": f"q{i}"}) for i in range(3)]
    assert {api.retrieve(i)["status"] for i in ids} == {"queued"}
    assert not [t for t in threading.enumerate() if t.name.startswith("asynctask-worker")
                and t.name.endswith("Tracked")], "an API-only process runs no worker loop"
    worker = make_task(Tracked, shared, poll_interval=0.05)
    worker.start()
    for task_id in ids:
        assert wait_for(api, task_id)["status"] == "success"
    assert api.order == [] and sorted(worker.order) == ["q0", "q1", "q2"]


def test_workers_and_queue_depth_are_reported(make_task):
    task = make_task(Tracked, max_worker=3, poll_interval=0.05)
    task.hold.clear()
    task.start()
    for i in range(5):
        task.submit({"name": f"w{i}"})
    wait_until(lambda: task.running == 3)
    client = task.app("/api").test_client()
    live = client.get("/workers").get_json()["data"]["workers"]
    assert len(live) == 1 and live[0]["pid"] == os.getpid() and live[0]["types"] == ["Tracked"]
    assert live[0]["slots"] == 3 and live[0]["running"] == 3, "running is counted now, not at the last heartbeat"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'asynctask_queue_depth{task="Tracked"} 2.0' in metrics
    assert 'asynctask_queue_oldest_due_seconds{task="Tracked"}' in metrics
    task.hold.set()


def test_a_process_serving_two_types_is_one_worker_with_both(make_task):
    shared = MemoryCollection()
    shout, add = make_task(Shout, shared, max_worker=2), make_task(Add, shared, max_worker=3)
    shout.start()
    add.start()
    app = Flask("two-types")
    shout.init_app(app, "/shout")
    add.init_app(app, "/add")
    wait_until(lambda: app.test_client().get("/workers").get_json()["data"]["workers"])
    [worker] = app.test_client().get("/workers").get_json()["data"]["workers"]
    assert sorted(worker["types"]) == ["Shout", "adder"] and worker["slots"] == 5
    assert worker["worker"] == f"{socket.gethostname()}:{os.getpid()}"


def test_max_concurrency_holds_across_instances_and_frees_slots(make_task, wait_for):
    shared = MemoryCollection()
    instances = [make_task(Tracked, shared, max_worker=3, max_concurrency=2, poll_interval=0.02) for _ in range(3)]
    for task in instances:
        task.hold.clear()
        task.start()
    for i in range(8):
        instances[0].submit({"name": f"c{i}"})
    wait_until(lambda: sum(t.running for t in instances) == 2)
    statuses = [v["status"] for v in instances[0].list()["tasks"]]
    assert statuses.count("running") == 2 and statuses.count("queued") == 6
    for task in instances:
        task.hold.set()
    for i in range(8):
        wait_for(instances[0], f"c{i}")
    assert sum(t.most for t in instances) <= 6 and max(t.most for t in instances) <= 2


# -- real worker processes ------------------------------------------------------------------------


def makespan(db: Any, name: str, keys: list[str]) -> float:
    """Seconds from the first start to the last end of the recorded calls of `keys`."""
    recorded = [call for key in keys for call in calls(db, name)[key]]
    return max(c["ended"] for c in recorded) - min(c["started"] for c in recorded)


def run_batch(db: Any, name: str, submitter: AsyncTask, prefix: str, count: int) -> list[str]:
    keys = [f"{prefix}{i:02d}" for i in range(count)]
    for key in keys:
        submitter.run(key=key)
    wait_until(lambda: all_in(db, name, keys, "success"), "the batch ends", timeout=DEADLINE)
    return keys


@pytest.mark.timeout(120)
def test_idle_worker_processes_take_a_fair_share_and_shorten_the_batch(
    db: Any, name: str, local_task: Callable[..., apps.Recorded], workers: Callable[..., apps.WorkerProcess]
) -> None:
    submitter = local_task(seconds=0.4, max_worker=2, poll=0.1, heartbeat=1)
    alone = makespan(db, name, run_batch(db, name, submitter, "alone-", 8))
    helpers = [workers(concurrency=2, seconds=0.4, poll=0.1, heartbeat=1) for _ in range(2)]
    keys = run_batch(db, name, submitter, "shared-", 12)
    shared = makespan(db, name, keys)
    ran_by = [calls(db, name)[key][0]["pid"] for key in keys]
    for helper in helpers:
        assert ran_by.count(helper.pid) >= 2, f"an idle worker took too small a share: {ran_by}"
    # 8 tasks on 2 slots take 4 task lengths; 12 tasks on 6 slots take 2 (plus the polls).
    assert shared < alone, (shared, alone)


@pytest.mark.timeout(120)
def test_an_api_only_server_queues_and_a_worker_process_runs_them(
    db: Any, name: str, serve: Callable[..., apps.Server], workers: Callable[..., apps.WorkerProcess]
) -> None:
    server = serve(mode="serve", workers=1, seconds=0.05, poll=0.1, no_worker=True)
    keys = ["a", "b", "c"]
    for key in keys:
        assert server.submit(key)[0] == 202
    assert all_in(db, name, keys, "queued")
    worker = workers(concurrency=2, seconds=0.05, poll=0.1)
    wait_until(lambda: all_in(db, name, keys, "success"), "the worker runs the queued tasks", timeout=DEADLINE)
    assert {calls(db, name)[key][0]["pid"] for key in keys} == {worker.pid}
    live = apps.http("GET", f"{server.base}/workers")[1]["data"]["workers"]
    assert [w["pid"] for w in live] == [worker.pid], "the API-only server is no worker"


@pytest.mark.timeout(120)
def test_max_concurrency_holds_across_three_worker_processes(
    db: Any, name: str, local_task: Callable[..., apps.Recorded], workers: Callable[..., apps.WorkerProcess]
) -> None:
    settings = {"seconds": 0.3, "poll": 0.05, "heartbeat": 0.2, "stale_after": 1, "max_concurrency": 2}
    for _ in range(3):  # three processes of one slot each: more slots than the cap
        workers(concurrency=1, **settings)
    api = local_task(worker=False, max_concurrency=2)
    keys = [f"c{i}" for i in range(9)]
    for key in keys:
        api.run(key=key)
    wait_until(lambda: all_in(db, name, keys, "success"), "every task ends", timeout=DEADLINE)
    spans = [(c["started"], c["ended"]) for key in keys for c in calls(db, name)[key]]
    most = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert most <= 2, f"{most} tasks ran at once under max_concurrency=2"
    assert len({c["pid"] for key in keys for c in calls(db, name)[key]}) >= 2


@pytest.mark.timeout(120)
def test_a_killed_worker_does_not_keep_its_concurrency_slot(
    db: Any, name: str, local_task: Callable[..., apps.Recorded], workers: Callable[..., apps.WorkerProcess]
) -> None:
    settings = {"poll": 0.05, "heartbeat": 0.2, "stale_after": 0.8, "max_concurrency": 1}
    victim = workers(concurrency=1, seconds=30, **settings)
    api = local_task(worker=False, max_concurrency=1)
    api.run(key="held")
    wait_until(lambda: all_in(db, name, ["held"], "running"), "the victim runs the task", timeout=DEADLINE)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.proc.wait(timeout=10)
    survivor = workers(concurrency=1, seconds=0.05, **settings)
    api.run(key="next")
    docs = wait_until(lambda: all_in(db, name, ["held", "next"], "success"), "the slot is freed", timeout=DEADLINE)
    assert docs["held"]["result"]["pid"] == survivor.pid == docs["next"]["result"]["pid"]


@pytest.mark.timeout(120)
def test_sigterm_releases_what_cannot_finish_within_the_grace_and_exits_0(
    db: Any, name: str, local_task: Callable[..., apps.Recorded], workers: Callable[..., apps.WorkerProcess]
) -> None:
    worker = workers(concurrency=2, grace=0.5, seconds=30, poll=0.05, heartbeat=0.2, stale_after=60)
    api = local_task(worker=False)
    api.run(key="long")
    wait_until(lambda: all_in(db, name, ["long"], "running"), "the worker runs the task", timeout=DEADLINE)
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0
    doc = tasks(db, name)["long"]
    assert doc["status"] == "queued" and "owner" not in doc, doc
    assert db[f"{name}.workers"].count_documents({"pid": worker.pid}) == 0, "a stopped worker leaves the registry"


# -- one graceful stop per process, a registry that forgets the dead ------------------------------


class Held(AsyncTask):
    """Runs until `gate` opens; `starts` counts the attempts begun in this process."""

    gate = threading.Event()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.starts = 0

    def main(self, logger: Any, n: int = 0) -> int:
        self.starts += 1
        self.gate.wait(30)
        return n


class HeldToo(Held):
    pass


def test_a_graceful_stop_stops_every_type_at_once_within_one_grace(tmp_path):
    from asynctask import instances

    memory = MemoryCollection()
    first = Held(memory, tmp_path / "a", max_worker=1, poll_interval=0.05)
    second = HeldToo(memory, tmp_path / "b", max_worker=1, poll_interval=0.05)
    try:
        for task in (first, second):
            task.submit({"n": 1})
            task.submit({"n": 2})  # waits: the one slot is busy
        wait_until(lambda: first.starts == 1 and second.starts == 1)
        grace = 1.0
        began = time.monotonic()
        released = instances.shutdown_all(grace=grace)
        took = time.monotonic() - began
        assert released == 2
        assert took < grace * 2, f"one grace for the process, not one per type ({took:.2f}s)"
        assert first.starts == 1 and second.starts == 1, "nothing was claimed while stopping"
        docs = list(memory.find({}))
        assert {d["status"] for d in docs} == {"queued"} and not any("owner" in d for d in docs)
    finally:
        Held.gate.set()


def test_a_graceful_stop_with_the_database_down_still_stops(tmp_path):
    from pymongo.errors import ServerSelectionTimeoutError

    class Down:
        """The task collection, until `down` is set; then every write fails."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.down = inner, False

        def __getattr__(self, name: str) -> Any:
            value = getattr(self.inner, name)
            if callable(value) and name.startswith(("update", "find_one_and")):
                def call(*args: Any, **kwargs: Any) -> Any:
                    if self.down:
                        raise ServerSelectionTimeoutError("no server")
                    return value(*args, **kwargs)
                return call
            return value

    collection = Down(MemoryCollection())
    task = Held(collection, tmp_path, max_worker=1, poll_interval=0.05)
    Held.gate.clear()
    try:
        task.submit({"n": 1})
        wait_until(lambda: task.starts == 1)
        worker = task._runtime()
        collection.down = True
        assert task.shutdown(grace=0.1) == 1
        assert worker._thread is not None and not worker._thread.is_alive(), "the loop stopped"
    finally:
        collection.down = False
        Held.gate.set()


def test_the_sweep_forgets_workers_whose_beat_stopped(make_task):
    from asynctask.store.registry import Workers
    from asynctask.sweep import Sweeper

    memory = MemoryCollection()
    task = make_task(Tracked, memory, heartbeat_interval=1, stale_after=3)
    registry = Workers(memory)
    registry.beat("dead-host:1:x", task.name, slots=2, running=0, started_at=utcnow())
    registry.beat("live-host:2:y", task.name, slots=2, running=0, started_at=utcnow())
    now = [100.0]
    sweeper = Sweeper(task._store, registry, None, owner="judge", stale_after=3, interval=1, max_attempts=3,
                      on_finished=lambda *_: None, on_requeued=lambda: None, clock=lambda: now[0])
    for _ in range(8):
        sweeper.sweep()
        registry.beat("live-host:2:y", task.name, slots=2, running=0, started_at=utcnow())
        now[0] += 1
    assert {w["worker"] for w in task.workers()} == {"live-host:2"}
