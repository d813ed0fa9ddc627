"""Long-polls: one watcher per process reads for every waiting client, and a local end wakes at once."""

from __future__ import annotations

import threading
import time
from typing import Any

from tasks import Echo, Gate
from waiting import wait_until

from asynctask import MemoryCollection


class Counting:
    """A collection that counts its reads."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.reads = inner, 0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if name in ("find", "find_one", "count_documents", "aggregate"):
            def read(*args: Any, **kwargs: Any) -> Any:
                self.reads += 1
                return value(*args, **kwargs)
            return read
        return value


def test_a_hundred_long_polls_cost_a_few_reads_per_second(make_task):
    collection = Counting(MemoryCollection())
    api = make_task(Echo, collection, worker=False)
    ids = [api.submit({"value": i}) for i in range(100)]
    answers: list[Any] = []
    barrier = threading.Barrier(101)

    def poll(task_id: str) -> None:
        barrier.wait()
        answers.append(api.wait(task_id, 2.0))

    threads = [threading.Thread(target=poll, args=(task_id,)) for task_id in ids]
    for thread in threads:
        thread.start()
    barrier.wait()
    time.sleep(0.3)  # every client has read its task once and now waits
    before, began = collection.reads, time.monotonic()
    for thread in threads:
        thread.join(30)
    per_second = (collection.reads - before - 100) / (time.monotonic() - began)  # less the final reads
    assert len(answers) == 100 and all(view["status"] == "queued" for view in answers)
    assert per_second <= 10, f"{per_second:.1f} reads/s for 100 waiting clients"


def test_a_long_poll_answers_when_another_process_finishes_the_task(make_task):
    shared = MemoryCollection()
    api = make_task(Echo, shared, worker=False)
    task_id = api.submit({"value": "elsewhere"})
    answered: list[Any] = []
    waiter = threading.Thread(target=lambda: answered.append(api.wait(task_id, 20)))
    waiter.start()
    began = time.monotonic()
    worker = make_task(Echo, shared, poll_interval=0.05)
    worker.start()
    waiter.join(30)
    assert answered[0]["status"] == "success" and time.monotonic() - began < 10


def test_a_task_that_ends_in_this_process_wakes_its_waiters_at_once(make_task):
    task = make_task(Gate)
    task_id = task.submit({"name": "local"})
    assert task.started.wait(5)
    task._long_polls.interval = 60  # the watcher reads once, then sleeps: only the local end wakes it in time
    answered: list[Any] = []
    waiter = threading.Thread(target=lambda: answered.append(task.wait(task_id, 20)))
    waiter.start()
    wait_until(lambda: task_id in task._long_polls._waiting)
    task.gate.set()
    began = time.monotonic()
    waiter.join(10)
    assert answered and answered[0]["status"] == "success" and time.monotonic() - began < 5
