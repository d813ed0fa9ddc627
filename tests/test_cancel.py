"""Cancelling tasks: `DELETE {endpoint}/{ID}` and `AsyncTask.cancel`.

- queued -> `cancelled` at once (200), and `main` never starts;
- running in a child process -> the child is ended at once;
- running in a thread -> `asynctask.cancelled()` turns True and the task ends `cancelled`
  at `main`'s next check; until then the status stays `running` (202);
- finished -> 409; unknown -> 404; a cancel sent to another process reaches the owner
  through the database within its heartbeat interval.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest
from ops_tasks import Controlled, Loop, PidSleeper, Quick
from waiting import process_exists, wait_for, wait_until

from asynctask import MemoryCollection

#: Generous bound for anything that includes spawning a fresh interpreter (about 1-2 s).
SPAWN_S = 30.0


@pytest.fixture(autouse=True)
def no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCTASK_API_TOKEN", raising=False)


def delete(client: Any, task_id: str) -> tuple[int, dict]:
    response = client.delete(f"/api/{task_id}")
    body = response.get_json()
    assert set(body) == {"status", "data", "error_data", "error_msg"}, body
    return response.status_code, body


# -- queued ---------------------------------------------------------------------------------

def test_a_queued_task_is_cancelled_at_once_and_never_starts(make_task):
    task = make_task(Controlled, max_worker=1)
    client = task.app("/api").test_client()
    task.run(name="occupier")
    assert task.started["occupier"].wait(5)
    task.run(name="queued")
    assert task.retrieve("queued")["status"] == "queued"

    code, body = delete(client, "queued")

    assert code == 200
    assert body["status"] == "ok"
    assert body["data"]["task_id"] == "queued"
    assert body["data"]["status"] == "cancelled"
    view = client.get("/api/queued").get_json()["data"]
    assert view["status"] == "cancelled"
    assert view["finished_at"] is not None and view["started_at"] is None

    task.release["occupier"].set()
    task.release["queued"].set()  # had main started, it would not block
    assert wait_for(task, "occupier")["status"] == "success"
    task.shutdown(wait=True)  # returns once the slot has also had its turn at "queued"

    assert task.calls["queued"] == 0
    assert task.retrieve("queued")["status"] == "cancelled"


def test_a_cancelled_task_runs_again_when_submitted_again(make_task):
    task = make_task(Controlled, max_worker=1)
    client = task.app("/api").test_client()
    task.run(name="occupier")
    assert task.started["occupier"].wait(5)
    task.run(name="again")
    assert task.cancel("again") == "cancelled"
    task.release["occupier"].set()
    task.release["again"].set()

    response = client.post("/api", json={"data": {"task_id": "again"}})

    assert response.status_code == 202
    view = wait_for(task, "again")
    assert view["status"] == "success" and view["result"] == "again done"
    assert view["attempts"] == 2
    assert task.calls["again"] == 1


# -- running ----------------------------------------------------------------------------------

def test_a_running_task_in_a_child_process_is_ended_at_once(make_task, tmp_path):
    task = make_task(PidSleeper, executor="processes", max_worker=1)
    client = task.app("/api").test_client()
    pid_file = tmp_path / "child.pid"
    task_id = task.run(pid_file=str(pid_file), seconds=60)
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), "the child never wrote its pid", timeout=SPAWN_S)
    child = int(pid_file.read_text())
    assert child != os.getpid() and process_exists(child)
    assert task.retrieve(task_id)["status"] == "running"

    asked = time.monotonic()
    code, body = delete(client, task_id)

    assert code in (200, 202), body
    view = wait_for(task, task_id, ("cancelled",), timeout=2)
    wait_until(lambda: not process_exists(child), f"the child {child} is still alive", timeout=2)
    assert time.monotonic() - asked < 10  # ended by the cancel, not by the 30 s task
    assert view["result"] is None
    assert task.retrieve(task_id)["status"] == "cancelled"


def test_a_running_task_in_a_thread_ends_at_its_next_cancelled_check(make_task):
    task = make_task(Loop, max_worker=1)
    client = task.app("/api").test_client()
    task.run(name="looping")
    assert task.started["looping"].wait(5)

    code, body = delete(client, "looping")

    assert code == 202
    assert body["data"]["status"] == "running"
    view = wait_for(task, "looping", ("cancelled", "success", "failed"), timeout=2)
    assert view["status"] == "cancelled"
    assert "looping" in task.stopped_early  # main saw cancelled() and returned early
    log = task.logger_dir / "looping.log"
    # The outcome is written to the log just after the status.
    wait_until(lambda: "task cancelled" in log.read_text(), "the log never said the task was cancelled", timeout=2)
    assert "cancelled at step" in log.read_text()


def test_the_status_says_cancelled_only_once_main_has_stopped(make_task):
    task = make_task(Loop, max_worker=1)
    client = task.app("/api").test_client()
    task.listening.clear()  # main ignores cancelled() for now
    task.run(name="stubborn")
    assert task.started["stubborn"].wait(5)

    code, body = delete(client, "stubborn")

    assert (code, body["data"]["status"]) == (202, "running")
    # While main keeps working, every view says running (sampled for 0.3 s).
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert client.get("/api/stubborn").get_json()["data"]["status"] == "running"
        time.sleep(0.02)
    code, body = delete(client, "stubborn")  # asking again is harmless
    assert (code, body["data"]["status"]) == (202, "running")

    task.listening.set()

    assert wait_for(task, "stubborn", timeout=2)["status"] == "cancelled"
    assert "stubborn" in task.stopped_early


# -- finished, unknown, invalid ---------------------------------------------------------------

def test_cancelling_a_finished_task_is_a_409(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()
    assert wait_for(task, task.run(name="done"))["status"] == "success"

    code, body = delete(client, "done")

    assert code == 409
    assert body["status"] == "error" and "success" in body["error_msg"]
    assert task.retrieve("done")["status"] == "success"


def test_cancelling_a_cancelled_task_again_is_a_409(make_task):
    task = make_task(Controlled, max_worker=1)
    client = task.app("/api").test_client()
    task.run(name="occupier")
    assert task.started["occupier"].wait(5)
    task.run(name="twice")
    assert delete(client, "twice")[0] == 200

    code, body = delete(client, "twice")

    assert code == 409 and body["status"] == "error"


def test_cancelling_an_unknown_task_is_a_404_and_an_invalid_id_a_400(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()

    code, body = delete(client, "no-such-task")
    assert code == 404 and body["status"] == "error" and "no-such-task" in body["error_msg"]

    code, body = delete(client, "bad!id")
    assert code == 400 and body["status"] == "error"
    assert task.collection.count_documents({}) == 0


# -- across processes ---------------------------------------------------------------------------

def test_a_cancel_sent_to_another_process_reaches_the_owner_through_the_database(make_task):
    shared = MemoryCollection()
    owner = make_task(Loop, shared, heartbeat_interval=0.05)  # runs the task
    other = make_task(Loop, shared, heartbeat_interval=0.05)  # another process's instance
    name = f"shared-{uuid.uuid4().hex[:8]}"
    owner.run(name=name)
    assert owner.started[name].wait(5)

    asked = time.monotonic()
    response = other.app("/api").test_client().delete(f"/api/{name}")

    assert response.status_code == 202
    assert response.get_json()["data"]["status"] == "running"
    view = wait_for(owner, name, ("cancelled", "success", "failed"), timeout=2)
    assert view["status"] == "cancelled"
    assert name in owner.stopped_early
    # Picked up by the owner's next check: heartbeat intervals, not the task's 30 s.
    assert time.monotonic() - asked < 10
