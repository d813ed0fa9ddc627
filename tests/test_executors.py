"""Where `main` runs: threads, a spawned process pool, an Executor instance, a Dask cluster.

`executor="threads"` (the default), `"processes"`,
`"dask://host:port"` or any `concurrent.futures.Executor`. With processes, `main` runs in a
child, logs to the task's file, and a timeout ends that child.

The task classes live in tests/executor_tasks.py so that spawned children can import them
(see that module's docstring for how they find it).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from executor_tasks import BadResult, OnDaskWorker, Quick, Raiser, Sleeper, Where
from waiting import process_exists, wait_for, wait_until

from asynctask import AsyncTask, MemoryCollection

#: Generous bound for anything that includes spawning a fresh interpreter; a passing run
#: takes about a second.
SPAWN_S = 30.0

LOG_PID = re.compile(r"^\[\s*(\d+)\]")


def poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Return once `condition()` is true; fail with `what` at the deadline."""
    wait_until(condition, what, timeout, interval=0.02)


def log_lines_with(task: AsyncTask, task_id: str, text: str) -> list[str]:
    """The lines of the task's log file that contain `text`."""
    path = Path(task.logger_dir) / f"{task_id}.log"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if text in line]


def logged_pid(line: str) -> int:
    match = LOG_PID.match(line)
    assert match, f"log line does not start with a pid: {line!r}"
    return int(match.group(1))


def last_line(error: str) -> str:
    """The final `Type: message` line of a stored error."""
    return error.strip().splitlines()[-1]


# -- threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", [None, "threads"])
def test_threads_run_main_in_a_worker_thread_of_this_process(make_task, executor):
    task = make_task(Quick, executor=executor)

    view = wait_for(task, task.run(name="here"))

    assert view["status"] == "success", view["error"]
    assert view["result"]["pid"] == os.getpid()
    assert view["result"]["thread"] != threading.main_thread().name


def test_a_thread_pool_instance_runs_main_in_its_own_threads(make_task):
    pool = ThreadPoolExecutor(2, thread_name_prefix="given-pool")
    try:
        task = make_task(Quick, executor=pool)

        view = wait_for(task, task.run(name="given"))

        assert view["status"] == "success", view["error"]
        assert view["result"]["pid"] == os.getpid()
        assert view["result"]["thread"].startswith("given-pool")
    finally:
        pool.shutdown(wait=True)


# -- processes ------------------------------------------------------------------------------


def test_processes_run_main_in_a_child_that_logs_to_the_task_file(make_task):
    task = make_task(Where, executor="processes", max_worker=1)

    view = wait_for(task, task.run(name="child-logs"), timeout=SPAWN_S)

    assert view["status"] == "success", view["error"]
    child = view["result"]["pid"]
    assert child != os.getpid()
    given = log_lines_with(task, "child-logs", f"given logger speaking from pid {child}")
    by_name = log_lines_with(task, "child-logs", f"getLogger(child-logs) speaking from pid {child}")
    assert len(given) == 1 and len(by_name) == 1
    assert logged_pid(given[0]) == child
    assert logged_pid(by_name[0]) == child
    assert "| child-logs |" in given[0]


def run_instant(task: AsyncTask, folder: Path, name: str) -> int:
    """Run instant `Sleeper` tasks until one succeeds; return the pid of the child that ran it.

    `task_timeout` counts from the start of an attempt, so with a 1 s timeout an attempt can
    time out while the pool is still spawning its child on a busy machine: that is retried.
    """
    deadline = time.monotonic() + SPAWN_S
    for n in itertools.count():
        pid_file = folder / f"{name}-{n}.pid"
        view = wait_for(task, task.run(pid_file=str(pid_file), seconds=0), timeout=SPAWN_S)
        if view["status"] == "success":
            return int(pid_file.read_text())
        assert "TaskTimeout" in view["error"], view["error"]
        assert time.monotonic() < deadline, f"no instant task succeeded within {SPAWN_S}s"


def test_processes_timeout_fails_the_task_and_ends_its_child(make_task, tmp_path):
    task = make_task(Sleeper, executor="processes", max_worker=1, task_timeout=1)
    warm = run_instant(task, tmp_path, "warm")
    pid_file = tmp_path / "stuck.pid"

    started = time.monotonic()
    task_id = task.run(pid_file=str(pid_file), seconds=30)
    poll(pid_file.exists, 5, "main did not start in the warm child")
    view = wait_for(task, task_id, timeout=10)
    took = time.monotonic() - started

    assert view["status"] == "failed"
    assert "TaskTimeout" in view["error"]
    assert took < 6, f"a 1 s timeout took {took:.1f} s to fail the task"
    stuck = int(pid_file.read_text())
    assert stuck == warm != os.getpid()
    poll(lambda: not process_exists(stuck), 10, f"the timed-out child {stuck} is still alive")

    assert run_instant(task, tmp_path, "after") not in (stuck, os.getpid())


def test_processes_an_exception_in_main_fails_the_task_with_its_message(make_task):
    task = make_task(Raiser, executor="processes", max_worker=1)

    view = wait_for(task, task.run(value="boom"), timeout=SPAWN_S)

    assert view["status"] == "failed"
    assert "ValueError: refusing value 'boom' in pid" in view["error"]
    assert f"in pid {os.getpid()}" not in view["error"]


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("set", id="set-pickles-but-is-not-bson"),
        pytest.param("lock", id="lock-cannot-be-pickled"),
        pytest.param("closure", id="closure-cannot-be-pickled-by-name"),
    ],
)
def test_processes_a_result_that_cannot_come_back_or_be_stored_fails_clearly(make_task, kind):
    task = make_task(BadResult, executor="processes", max_worker=1)

    view = wait_for(task, task.run(kind=kind), timeout=SPAWN_S)

    assert view["status"] == "failed"
    assert view["result"] is None
    reason = last_line(view["error"])
    assert "ResultNotStorable" in reason or "pickle" in reason, view["error"]


def test_a_process_pool_instance_runs_main_in_a_child(make_task):
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        task = make_task(Where, executor=pool)

        view = wait_for(task, task.run(name="given-processes"), timeout=SPAWN_S)

        assert view["status"] == "success", view["error"]
        child = view["result"]["pid"]
        assert child != os.getpid()
        line, = log_lines_with(task, "given-processes", f"given logger speaking from pid {child}")
        assert logged_pid(line) == child
    finally:
        pool.shutdown(wait=True)


# -- dask -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """A one-worker Dask cluster in this process, listening on TCP loopback.

    `processes=False` runs the scheduler and worker as threads of the test process, which
    starts in a fraction of a second; tasks still travel to them serialized, over TCP.
    Without `protocol="tcp://"` such a cluster would use the `inproc://` transport, whose
    addresses have no host:port a user could write after `dask://`.
    """
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, processes=False, threads_per_worker=2, dashboard_address=None,
        protocol="tcp://", host="127.0.0.1",
    )
    try:
        yield cluster
    finally:
        cluster.close()


def dask_spec(cluster: Any, form: str) -> str:
    """`dask://127.0.0.1:PORT` (what a user writes) or `dask://tcp://127.0.0.1:PORT`."""
    address = cluster.scheduler_address
    assert address.startswith("tcp://"), address
    return f"dask://{address}" if form == "with-scheme" else f"dask://{address[len('tcp://'):]}"


def scheduler_clients(cluster: Any) -> set[str]:
    return set(cluster.scheduler.clients)


@pytest.mark.parametrize("form", ["host-port", "with-scheme"])
def test_dask_runs_main_on_a_worker_of_the_cluster(make_task, dask_cluster, form):
    task = make_task(OnDaskWorker, executor=dask_spec(dask_cluster, form), max_worker=2)

    view = wait_for(task, task.run(name=f"dask-{form}"), timeout=SPAWN_S)

    assert view["status"] == "success", view["error"]
    workers = [worker.address for worker in dask_cluster.workers.values()]
    assert view["result"]["worker"] in workers
    assert log_lines_with(task, f"dask-{form}", "on dask worker")


def test_dask_shutdown_closes_the_client(make_task, dask_cluster):
    before = scheduler_clients(dask_cluster)
    task = make_task(OnDaskWorker, executor=dask_spec(dask_cluster, "host-port"), max_worker=2)
    view = wait_for(task, task.run(name="dask-shutdown"), timeout=SPAWN_S)
    assert view["status"] == "success", view["error"]
    assert len(scheduler_clients(dask_cluster) - before) == 1

    task.shutdown(wait=True)

    poll(
        lambda: scheduler_clients(dask_cluster) <= before, 10,
        f"shutdown() left the client connected: {sorted(scheduler_clients(dask_cluster) - before)}",
    )


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["dask://", 42, "process", ThreadPoolExecutor])
def test_an_unusable_executor_is_refused_at_construction(tmp_path, executor):
    with pytest.raises(ValueError, match="executor must be"):
        Quick(MemoryCollection(), tmp_path / "logs", executor=executor)
