"""Progress: `asynctask.report_progress(percent, message=None)` inside `main`; the public
view shows `"progress": {"percent": float, "message": str or null}`.

From a thread and from a child process; throttled (a thousand calls cost a handful of
writes; a report held back is written about a second later at most while the task runs, and
the newest value is what the view shows once the task has ended); and fenced by attempt (a
superseded attempt's late reports change nothing).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from typing import Any

import pytest
from ops_tasks import ChildProgress, Progress, Zombie
from waiting import wait_for, wait_until

import asynctask
from asynctask import MemoryCollection
from asynctask import attempt as attempt_module

SPAWN_S = 30.0


@pytest.fixture(autouse=True)
def no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCTASK_API_TOKEN", raising=False)


class CountingCollection:
    """A collection that records every progress write (an update that $sets `progress`).

    With `progress_lag`, a write of progress alone (not an outcome) is held back that many
    seconds first, as a busy database would.
    """

    def __init__(self, progress_lag: float = 0.0) -> None:
        self.inner = MemoryCollection()
        self.progress_writes: list[dict[str, Any]] = []
        self.progress_lag = progress_lag

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def update_one(self, query: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        fields = update.get("$set", {}) if isinstance(update, dict) else {}
        if "progress" in fields:
            self.progress_writes.append(fields["progress"])
            if self.progress_lag and set(fields) == {"progress"}:
                time.sleep(self.progress_lag)
        return self.inner.update_one(query, update, *args, **kwargs)


def http_view(task: asynctask.AsyncTask, task_id: str) -> dict[str, Any]:
    response = task.app("/api").test_client().get(f"/api/{task_id}")
    assert response.status_code == 200
    return response.get_json()["data"]


# -- the public names ---------------------------------------------------------------------------

def test_report_progress_and_cancelled_are_public_names_of_the_package():
    # The documented spelling is asynctask.report_progress(...) and asynctask.cancelled().
    assert asynctask.report_progress is attempt_module.report_progress
    assert asynctask.cancelled is attempt_module.cancelled
    assert {"report_progress", "cancelled"} <= set(asynctask.__all__)


def test_outside_a_task_report_progress_does_nothing_and_cancelled_is_false():
    assert attempt_module.report_progress(50, "nobody listens") is None
    assert attempt_module.cancelled() is False


@pytest.mark.parametrize("percent", ["50", None, True, math.nan, math.inf])
def test_report_progress_refuses_a_percent_that_is_not_a_finite_number(percent):
    with pytest.raises(TypeError):
        attempt_module.report_progress(percent)


def test_report_progress_refuses_a_message_that_is_not_text():
    with pytest.raises(TypeError):
        attempt_module.report_progress(10, message=42)


# -- from a thread ------------------------------------------------------------------------------

def test_progress_from_a_thread_shows_in_the_view_while_the_task_runs(make_task):
    task = make_task(Progress)
    task_id = task.run(name="halfway", percent=42.5, message="read 425 of 1000 rows")
    assert task.reported[task_id].wait(5)

    view = http_view(task, task_id)

    assert view["status"] == "running"
    assert view["progress"] == {"percent": 42.5, "message": "read 425 of 1000 rows"}

    task.release[task_id].set()
    view = wait_for(task, task_id)
    assert view["status"] == "success"
    assert http_view(task, task_id)["progress"] == {"percent": 42.5, "message": "read 425 of 1000 rows"}


@pytest.mark.parametrize(("given", "shown"), [(7, 7.0), (150, 100.0), (-5, 0.0)])
def test_progress_is_a_float_between_0_and_100_and_the_message_may_be_null(make_task, given, shown):
    task = make_task(Progress)
    task_id = task.run(name=f"clamp{given}", percent=given, block=False)

    view = wait_for(task, task_id)

    assert view["status"] == "success"
    progress = http_view(task, task_id)["progress"]
    assert progress == {"percent": shown, "message": None}
    assert isinstance(progress["percent"], float)


def test_a_task_that_reports_nothing_shows_no_progress(make_task):
    task = make_task(Progress)
    task_id = task.run(name="silent", block=False)
    assert wait_for(task, task_id)["status"] == "success"
    assert http_view(task, task_id)["progress"] is None


# -- throttling ---------------------------------------------------------------------------------

@pytest.mark.parametrize("top", [100.0, 99.9], ids=["ends-at-100", "ends-below-100"])
def test_a_thousand_reports_cost_a_handful_of_writes_and_the_last_one_is_shown(make_task, top):
    collection = CountingCollection()
    task = make_task(Progress, collection)

    task_id = task.run(name=f"spam-{top}", count=1000, top=top, block=False)
    view = wait_for(task, task_id)

    assert view["status"] == "success", view["error"]
    assert 1 <= len(collection.progress_writes) <= 10, collection.progress_writes
    # The last of the thousand calls: percent 1000 * top / 1000, "step 1000 of 1000".
    assert http_view(task, task_id)["progress"] == {"percent": top, "message": "step 1000 of 1000"}


def test_a_report_held_back_by_the_throttle_is_written_while_the_task_runs(make_task):
    # 10% is written at once; 42.5% comes right after it, inside the throttle's interval, and
    # main then blocks for a long step: the view must not show 10% until the task ends.
    collection = CountingCollection()
    task = make_task(Progress, collection)
    task_id = task.run(name="trailing", count=1, top=10.0, percent=42.5, message="halfway")
    assert task.reported[task_id].wait(5)
    halfway = {"percent": 42.5, "message": "halfway"}

    wait_until(lambda: task.retrieve(task_id)["progress"] == halfway,
               "the held-back report was not written while main was blocked", timeout=10)

    view = task.retrieve(task_id)
    assert view["status"] == "running"  # main is still blocked on its release event
    assert collection.progress_writes == [{"percent": 10.0, "message": "step 1 of 1"}, halfway]
    task.release[task_id].set()
    assert wait_for(task, task_id)["progress"] == halfway


# -- from a child process -----------------------------------------------------------------------

def test_progress_from_a_child_process_reaches_the_database(make_task, tmp_path):
    task = make_task(ChildProgress, executor="processes", max_worker=1)
    go_file = tmp_path / "go"
    task_id = task.run(go_file=str(go_file))

    view = wait_until(lambda: (v := http_view(task, task_id))["progress"] and v, "no progress from the child", timeout=SPAWN_S)

    assert view["status"] == "running"
    assert view["progress"]["percent"] == 30.0
    child_pid = int(view["progress"]["message"].rsplit(" ", 1)[1])
    assert child_pid != os.getpid()

    go_file.write_text("go")
    assert wait_for(task, task_id, timeout=SPAWN_S)["status"] == "success"


def test_the_last_progress_of_a_child_process_is_shown_once_the_task_has_ended(make_task, tmp_path):
    # The child reports 999 times as fast as it can and returns; its last report (99.9%) is
    # throttled, so it still has to be written. Progress writes lag a little, as with a busy
    # database: the view of the finished task must show the last report all the same.
    collection = CountingCollection(progress_lag=0.3)
    task = make_task(ChildProgress, collection, executor="processes", max_worker=1)
    go_file = tmp_path / "go-fast"
    go_file.write_text("go")

    task_id = task.run(go_file=str(go_file), count=1000)
    assert wait_for(task, task_id, timeout=SPAWN_S)["status"] == "success"
    # Once shut down, the relay of the children's progress is joined: every lagging write has
    # landed, and the view must show the last report all the same.
    task.shutdown(wait=True)

    assert http_view(task, task_id)["progress"] == {"percent": 99.9, "message": "step 999 of 1000"}


# -- fenced by attempt --------------------------------------------------------------------------

def test_late_reports_of_a_superseded_attempt_change_nothing(make_task):
    shared = MemoryCollection()
    first = make_task(Zombie, shared, task_timeout=0.3)  # attempt 1 times out, keeps running
    second = make_task(Zombie, shared)  # re-runs the task as attempt 2
    name = f"zombie-{uuid.uuid4().hex[:8]}"
    first.run(name=name)
    assert first.zombie_started.wait(5)
    view = wait_for(first, name, ("failed",), timeout=5)
    assert "TaskTimeout" in view["error"]

    second.run(task_id=name)
    assert second.fresh_reported.wait(5)
    fresh = {"percent": 10.0, "message": "fresh"}
    assert http_view(second, name)["progress"] == fresh

    first.release_zombie.set()  # the zombie reports 99% "zombie", then returns
    assert first.zombie_reported.wait(5)

    view = http_view(second, name)
    assert (view["status"], view["attempts"], view["progress"]) == ("running", 2, fresh)
    # The store refuses the old attempt's write outright, and accepts the current one's.
    store = second._store
    before = shared.find_one({"task_id": name}, {"_id": 0})
    assert store.progress(name, 1, 50.0, "late") is False
    assert shared.find_one({"task_id": name}, {"_id": 0}) == before
    assert store.progress(name, 2, 20.0, "current") is True

    second.release_fresh.set()
    view = wait_for(second, name)
    assert (view["status"], view["result"]) == ("success", "fresh result")
    assert view["progress"] == {"percent": 20.0, "message": "current"}
