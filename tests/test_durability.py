"""Durability and scale with real processes.

Each test serves `apps:app` under gunicorn against the shared test MongoDB (the wire server of
`conftest.mongo_uri`) and judges only by what is in the database: the task documents, and the
calls collection where `main` records every call with its pid and start/end times.

1. many concurrent POSTs of the same ids across 4 workers start `main` once per id;
2. a worker killed with SIGKILL loses no task: another process runs it again, never at the
   same time as the lost attempt;
3. past `max_attempts`, an orphaned task fails with "worker lost";
4. SIGTERM releases the running tasks at once (not after `stale_after`), and another process
   takes them;
5. an attempt released by `shutdown(grace=...)` that fails afterwards cannot fail the task;
6. gunicorn's `worker_exit` hook, when the master calls it, leaves the instances that a
   `--preload` master hands to the workers it forks later open.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import apps
import pytest
import waiting
from apps import all_in, calls, tasks

#: Grace for a task's state to show up in the database, on a loaded 2-core machine.
DEADLINE = 20.0

#: A `--preload` gunicorn master in miniature: the app is imported, the master runs the
#: `worker_exit` hook for a worker that is already gone (gunicorn's `Arbiter.kill_worker` does
#: on ESRCH), then forks a worker, which serves one task. Exit code 3: the worker refused it.
PRELOADED_MASTER = """
import os, sys, types
import apps
from asynctask import serving

serving.worker_exit(None, types.SimpleNamespace(pid=os.getpid() + 100000))
pid = os.fork()
if pid == 0:
    try:
        apps.api.run(key="k")
    except Exception as exc:
        print(f"the forked worker refused the task: {type(exc).__name__}: {exc}", flush=True)
        os._exit(3)
    apps.api.shutdown(wait=True)
    os._exit(0)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """`waiting.wait_until` with this module's deadline for real processes."""
    return waiting.wait_until(condition, what, timeout, interval=0.05)


def owner_pid(doc: dict[str, Any]) -> int:
    """The pid in a task's owner field, "host:pid:suffix"."""
    return int(doc["owner"].split(":")[1])


def alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_concurrent_posts_start_main_once_per_task(db: Any, name: str, serve: Callable[..., apps.Server]) -> None:
    """200 POSTs over 50 ids, released together on 4 workers: 50 calls of `main`, 1 attempt each."""
    server = serve(mode="gunicorn", workers=4, seconds=0.02)
    keys = [f"k{i:02d}" for i in range(50)]
    posts = [key for key in keys for _ in range(4)]
    random.Random(7).shuffle(posts)
    clients = 40
    barrier = threading.Barrier(clients)

    def post_share(share: list[str]) -> list[tuple[str, int, Any]]:
        barrier.wait(timeout=30)
        return [(key, *server.submit(key)) for key in share]

    with ThreadPoolExecutor(clients) as pool:
        answers = [a for share in pool.map(post_share, [posts[i::clients] for i in range(clients)]) for a in share]

    assert len(answers) == 200
    assert [status for _, status, _ in answers] == [202] * 200, [a for a in answers if a[1] != 202][:3]
    assert all(body["data"]["task_id"] == key for key, _, body in answers)
    docs = wait_until(lambda: all_in(db, name, keys, "success"), "all 50 tasks end success")
    assert len(docs) == 50
    assert {key: doc["attempts"] for key, doc in docs.items()} == {key: 1 for key in keys}
    recorded = calls(db, name)
    assert db[f"{name}_calls"].count_documents({}) == 50
    assert {key: len(recorded.get(key, [])) for key in keys} == {key: 1 for key in keys}
    assert len({call["pid"] for runs in recorded.values() for call in runs}) > 1, "one worker took all"


@pytest.mark.parametrize(("mode", "preload"), [("hooks", False), ("gunicorn", False), ("gunicorn", True)],
                         ids=["hooks", "plain-gunicorn", "plain-gunicorn-preload"])
def test_sigkill_loses_no_task(db: Any, name: str, serve: Callable[..., apps.Server], mode: str,
                               preload: bool) -> None:
    """SIGKILL a worker mid-task, send no further request: its tasks end success in another
    process (plain gunicorn too, with and without --preload), attempt 2, no overlap."""
    server = serve(mode=mode, preload=preload, workers=2, seconds=2, heartbeat=0.2, stale_after=0.8, poll=0.1)
    keys = [f"k{i}" for i in range(4)]
    for key in keys:
        assert server.submit(key)[0] == 202
    running = wait_until(lambda: all_in(db, name, keys, "running"), "all tasks running")
    wait_until(lambda: db[f"{name}_calls"].count_documents({}) == len(keys), "main started for all tasks")
    pids = [owner_pid(doc) for doc in running.values()]
    victim = max(set(pids), key=pids.count)
    lost = [key for key, doc in running.items() if owner_pid(doc) == victim]
    kept = [key for key in keys if key not in lost]

    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    docs = wait_until(lambda: all_in(db, name, keys, "success"), "every task ends success")

    assert not alive(victim)
    recorded = calls(db, name)
    for key in lost:
        first, second = recorded[key]
        assert (first["pid"], first["attempt"], first["ended"]) == (victim, 1, None)
        assert second["pid"] != victim and second["attempt"] == 2
        assert second["started"] > killed_at, "the recovery overlapped the lost attempt"
        assert second["ended"] is not None
        assert docs[key]["attempts"] == 2
        assert docs[key]["result"]["pid"] == second["pid"]
        assert second["started"] - killed_at < 0.8 + 5, "recovery took far longer than stale_after"
    for key in kept:
        assert [(c["attempt"], c["ended"] is not None) for c in recorded[key]] == [(1, True)]
        assert docs[key]["attempts"] == 1


def test_orphan_past_max_attempts_fails_worker_lost(
    db: Any, name: str, serve: Callable[..., apps.Server]
) -> None:
    """With max_attempts=1, a task whose worker is SIGKILLed fails with "worker lost", not rerun."""
    server = serve(mode="hooks", workers=1, seconds=30, heartbeat=0.2, stale_after=0.8, max_attempts=1)
    assert server.submit("k")[0] == 202
    doc = wait_until(lambda: all_in(db, name, ["k"], "running"), "the task runs")["k"]
    wait_until(lambda: db[f"{name}_calls"].count_documents({}) == 1, "main started")
    os.kill(owner_pid(doc), signal.SIGKILL)

    doc = wait_until(lambda: all_in(db, name, ["k"], "failed"), "the orphan fails")["k"]
    assert "worker lost" in doc["error"]
    assert doc["attempts"] == 1
    assert "owner" not in doc
    assert len(calls(db, name)["k"]) == 1


def test_sigterm_releases_running_tasks_at_once(
    db: Any, name: str, serve: Callable[..., apps.Server], local_task: Callable[..., apps.Recorded]
) -> None:
    """SIGTERM gunicorn: tasks are back to queued, unowned, in ~grace; gunicorn exits; another process takes them."""
    grace, stale_after = 0.5, 60
    server = serve(mode="serve", workers=1, grace=grace, seconds=30, heartbeat=0.2, stale_after=stale_after)
    keys = ["k0", "k1"]
    for key in keys:
        assert server.submit(key)[0] == 202
    wait_until(lambda: all_in(db, name, keys, "running"), "both tasks run")
    wait_until(lambda: db[f"{name}_calls"].count_documents({}) == len(keys), "main started for both tasks")
    worker = {call["pid"] for runs in calls(db, name).values() for call in runs}.pop()

    os.kill(server.pid, signal.SIGTERM)
    assert grace + 5 < stale_after
    docs = wait_until(lambda: all_in(db, name, keys, "queued"), "the tasks are released", timeout=grace + 5)
    assert all("owner" not in doc and doc["attempts"] == 1 for doc in docs.values()), docs
    wait_until(
        lambda: server.proc.poll() is not None and not alive(worker),
        "gunicorn and its worker exit after the grace (a worker that lives on keeps running the"
        " released tasks' main beside their next attempt)", timeout=grace + 5,
    )
    stopped = time.time()

    local_task(seconds=0.05, heartbeat=0.2, stale_after=stale_after).start()
    docs = wait_until(lambda: all_in(db, name, keys, "success"), "another process runs the released tasks", 10)
    recorded = calls(db, name)
    for key in keys:
        first, second = recorded[key]
        assert first["pid"] == worker and (first["ended"] is None or first["ended"] <= second["started"])
        assert (second["pid"], second["attempt"]) == (os.getpid(), 2)
        assert second["started"] >= stopped - 0.1
        assert docs[key]["attempts"] == 2


def test_released_attempt_that_fails_later_leaves_the_task_queued(
    db: Any, name: str, local_task: Callable[..., apps.Recorded]
) -> None:
    """`shutdown(grace=...)` releases a running task; its attempt failing afterwards is fenced out."""
    stale_after = 60
    first = local_task(seconds=1.0, fail_first=True, heartbeat=0.2, stale_after=stale_after)
    first.run(key="k")
    wait_until(lambda: db[f"{name}_calls"].count_documents({}) == 1, "main started")
    first.shutdown(grace=0.1)
    assert all_in(db, name, ["k"], "queued"), tasks(db, name)

    slot = next(t for t in threading.enumerate() if t.native_id == calls(db, name)["k"][0]["thread"])
    slot.join(timeout=10)
    assert not slot.is_alive(), "the released attempt did not end"
    doc = tasks(db, name)["k"]
    assert (doc["status"], doc.get("owner"), doc["attempts"]) == ("queued", None, 1), (
        f"the released attempt overwrote the task: {str(doc.get('error'))[-80:]!r}"
    )

    local_task(seconds=0, heartbeat=0.2, stale_after=stale_after).start()
    doc = wait_until(lambda: all_in(db, name, ["k"], "success"), "another instance runs the released task", 10)["k"]
    assert doc["attempts"] == 2


def test_worker_exit_in_a_preloaded_master_leaves_later_workers_working(
    db: Any, name: str, mongo_uri: str, tmp_path: Path
) -> None:
    """The master's `worker_exit` call must not shut down the app its later workers inherit."""
    env = apps.environment(mongo_uri, name, tmp_path / "logs")
    done = subprocess.run(
        [sys.executable, "-c", PRELOADED_MASTER], cwd=apps.ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    doc = tasks(db, name)["k"]
    assert (doc["status"], doc["attempts"]) == ("success", 1)
