"""Schedules: the `Schedule` value, `api.schedules` on a fake clock, the HTTP routes.

Time is given to every call as `now=` (a fake clock), so ticks, catch-up and daylight saving
time are checked at exact instants; the stores are the in-memory one and, for the invariants,
MongoDB through the test wire server. The real-process test is in test_schedules_processes.py.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from waiting import wait_until

from asynctask import AsyncTask, MemoryCollection, Schedule
from asynctask.schedules import InvalidSchedule, ScheduleExists, ScheduleNotFound
from asynctask.schedules.book import MIN_ON_TIME

UTC = timezone.utc
T0 = datetime(2030, 1, 7, 12, 0, 30, tzinfo=UTC)  # half a minute past a whole minute
TOKEN = "schedules-token"


class Report(AsyncTask):
    """Takes a scope and the tick's time."""

    schedules = [
        Schedule("minutely", every=60),
        Schedule("nightly", cron="0 2 * * *", tz="Asia/Shanghai", params={"scope": "all"}),
    ]

    def main(self, logger: logging.Logger, scope: str = "some", scheduled_for: str | None = None) -> Any:
        return {"scope": scope, "scheduled_for": scheduled_for}


class Plain(AsyncTask):
    """Declares nothing; takes a count, not the tick's time."""

    def main(self, logger: logging.Logger, n: int = 1) -> Any:
        return n


class Moved(AsyncTask):
    """The same type as `Report` (its `name`), with one declaration changed in the code."""

    name = "Report"
    schedules = [
        Schedule("minutely", every=120),
        Schedule("nightly", cron="0 2 * * *", tz="Asia/Shanghai", params={"scope": "all"}),
    ]

    def main(self, logger: logging.Logger, scope: str = "some", scheduled_for: str | None = None) -> Any:
        return scope


@pytest.fixture
def report(make_task: Any, memory: Any) -> AsyncTask:
    return make_task(Report, memory, worker=False)


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- the value --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {}, {"cron": "0 2 * * *", "every": 60},
    {"cron": "0 2 * *"}, {"cron": "0 0 2 * * *"}, {"cron": "61 * * * *"}, {"cron": "0 0 30 2 *"}, {"cron": 5},
    {"cron": "* * * * *", "tz": "Mars/Olympus"}, {"cron": "* * * * *", "tz": "../../etc/passwd"},
    {"cron": "* * * * *", "tz": ""}, {"cron": "* * * * *", "tz": None},
    {"every": 0}, {"every": -5}, {"every": 1.5}, {"every": "60"}, {"every": True}, {"every": float("nan")},
    {"every": timedelta(milliseconds=500)},
    {"every": 60, "catch_up": "some"}, {"every": 60, "catch_up_window": -1},
    {"every": 60, "priority": 101}, {"every": 60, "priority": True}, {"every": 60, "enabled": "yes"},
    {"every": 60, "params": [1]}, {"every": 60, "params": {"x": float("inf")}}, {"every": 60, "params": {"$x": 1}},
    {"every": 60, "params": {"a.b": 1}},
])
def test_a_schedule_that_is_not_valid_is_a_value_error(kwargs):
    with pytest.raises(ValueError):
        Schedule("s", **kwargs)


@pytest.mark.parametrize("name", ["", "has space", "a/b", ".", "..", "x" * 81, "é", None, 3])
def test_a_schedule_name_uses_the_task_id_alphabet(name):
    with pytest.raises(ValueError):
        Schedule(name, every=60)


def test_a_schedule_is_a_value():
    one = Schedule("r-1.a:b_c", cron="  */15  *  * * *", params={"tags": ["a"]}, catch_up_window=60)
    assert one.cron == "*/15 * * * *"
    assert one == Schedule("r-1.a:b_c", cron="*/15 * * * *", params={"tags": ["a"]}, catch_up_window=60)
    assert one.replace(every=timedelta(minutes=5)).every == timedelta(minutes=5)
    assert one.replace(every=300).cron is None
    with pytest.raises(AttributeError):
        one.cron = "0 2 * * *"  # type: ignore[misc]
    assert Schedule("s", every=900).describe() == "Every 15 minutes"
    assert Schedule("s", every=1).describe() == "Every second"
    assert Schedule("s", cron="0 2 * * *").describe() == "At 02:00 every day"
    import pickle

    assert pickle.loads(pickle.dumps(one)) == one


def test_a_tick_id_names_the_schedule_and_the_utc_time():
    schedule = Schedule("nightly", cron="0 2 * * *", tz="Asia/Shanghai")
    tick = schedule.next_tick(T0)
    assert tick == at(2030, 1, 7, 18, 0)  # 02:00 in Shanghai (UTC+8)
    assert schedule.tick_id(tick) == "sched:nightly:20300107T180000Z"
    assert schedule.trigger_id(T0).startswith("sched:nightly:run-20300107T120030Z-")
    assert schedule.trigger_id(T0) != schedule.trigger_id(T0)


# -- declaration ------------------------------------------------------------------------------


def test_declared_params_that_main_cannot_take_fail_at_construction(make_task):
    class Wrong(AsyncTask):
        schedules = [Schedule("s", every=60, params={"nope": 1})]

        def main(self, logger, n: int = 1):
            return n

    class Typed(AsyncTask):
        schedules = [Schedule("s", every=60, params={"n": "ten"})]

        def main(self, logger, n: int = 1):
            return n

    class Given(AsyncTask):
        schedules = [Schedule("s", every=60, params={"scheduled_for": "now"})]

        def main(self, logger, scheduled_for: str):
            return scheduled_for

    class Twice(AsyncTask):
        schedules = [Schedule("s", every=60), Schedule("s", every=120)]

        def main(self, logger):
            return 1

    for cls in (Wrong, Typed, Given, Twice):
        with pytest.raises(ValueError):
            make_task(cls, worker=False)

    class NotAList(AsyncTask):
        schedules = Schedule("s", every=60)  # type: ignore[assignment]

        def main(self, logger):
            return 1

    with pytest.raises(TypeError):
        make_task(NotAList, worker=False)


def test_a_required_scheduled_for_is_given_by_the_schedule(make_task, memory):
    class Needs(AsyncTask):
        schedules = [Schedule("s", every=60)]

        def main(self, logger, scheduled_for: datetime):
            return scheduled_for.isoformat()

    task = make_task(Needs, memory, worker=False)
    task.schedules.list(now=T0)
    (made,) = task.schedules.evaluate(now=at(2030, 1, 7, 12, 1, 0))
    assert task.retrieve(made)["params"]["scheduled_for"] is not None


def test_nothing_touches_the_store_before_first_use(make_task, memory):
    task = make_task(Report, memory, worker=False)
    assert memory.database.get_collection("tasks.schedules").count_documents({}) == 0
    assert [s["name"] for s in task.schedules.list(now=T0)] == ["minutely", "nightly"]
    assert memory.database.get_collection("tasks.schedules").count_documents({}) == 2


# -- ticks become tasks ------------------------------------------------------------------------


def test_each_tick_becomes_one_task_at_its_time_never_before(report):
    book = report.schedules
    assert book.list(now=T0)[0]["next_tick"] == at(2030, 1, 7, 12, 1)
    assert book.evaluate(now=at(2030, 1, 7, 12, 0, 59)) == []
    made = book.evaluate(now=at(2030, 1, 7, 12, 1, 0))
    assert made == ["sched:minutely:20300107T120100Z"]
    view = report.retrieve(made[0])
    assert view["status"] == "queued"
    assert view["params"] == {"scheduled_for": "2030-01-07T12:01:00+00:00"}
    assert book.evaluate(now=at(2030, 1, 7, 12, 1, 30)) == []
    assert book.evaluate(now=at(2030, 1, 7, 12, 2, 0)) == ["sched:minutely:20300107T120200Z"]
    minutely = book.get("minutely", now=at(2030, 1, 7, 12, 2, 1))
    assert minutely["last_tick"] == at(2030, 1, 7, 12, 2)
    assert minutely["last_task_id"] == "sched:minutely:20300107T120200Z"
    assert minutely["last_status"] == "queued"
    assert minutely["next_tick"] == at(2030, 1, 7, 12, 3)
    assert [run["task_id"] for run in minutely["runs"]] == [
        "sched:minutely:20300107T120200Z", "sched:minutely:20300107T120100Z"]


def test_a_late_evaluation_enqueues_every_tick_still_on_time(report):
    book = report.schedules
    book.add(Schedule("fast", every=5, catch_up="none"), now=T0)
    # A worker 12 s late: each tick is younger than the on-time limit (15 s), so none is missed.
    made = book.evaluate(now=at(2030, 1, 7, 12, 0, 47))
    assert made == ["sched:fast:20300107T120035Z", "sched:fast:20300107T120040Z", "sched:fast:20300107T120045Z"]


@pytest.mark.timeout(60)
def test_many_processes_make_one_task_per_tick(make_task, collection):
    fleet = [make_task(Report, collection, worker=False) for _ in range(4)]
    for task in fleet:
        task.schedules.list(now=T0)
    moment = T0
    for _ in range(5):
        moment += timedelta(seconds=30)
        for task in fleet:
            task.schedules.evaluate(now=moment)
    tasks = list(collection.find({"task_id": {"$regex": "^sched:minutely:"}}))
    assert sorted(doc["task_id"] for doc in tasks) == [
        "sched:minutely:20300107T120100Z", "sched:minutely:20300107T120200Z", "sched:minutely:20300107T120300Z"]
    runs = fleet[0].schedules.get("minutely", now=moment)["runs"]
    assert len(runs) == 3  # one cursor move per tick, whoever made it


def test_a_tick_whose_task_was_removed_is_never_enqueued_again(make_task, collection):
    task = make_task(Report, collection, worker=False)
    task.schedules.list(now=T0)
    (made,) = task.schedules.evaluate(now=at(2030, 1, 7, 12, 1, 1))
    collection.delete_one({"task_id": made})  # as result_ttl does
    assert task.schedules.evaluate(now=at(2030, 1, 7, 12, 1, 2)) == []
    again = make_task(Report, collection, worker=False)  # a process started afterwards
    assert again.schedules.evaluate(now=at(2030, 1, 7, 12, 1, 3)) == []
    assert task.retrieve(made) is None
    view = again.schedules.get("minutely", now=at(2030, 1, 7, 12, 1, 3))
    assert view["last_task_id"] == made and view["last_status"] is None


def test_a_process_that_died_between_insert_and_cursor_leaves_no_duplicate(report, make_task, memory):
    book = report.schedules
    book.list(now=T0)
    # The task of the 12:01 tick exists, but the cursor never moved past it.
    report.asynctask_engine.submit({"scheduled_for": "x"}, new_task_id="sched:minutely:20300107T120100Z")
    other = make_task(Report, memory, worker=False)
    assert other.schedules.evaluate(now=at(2030, 1, 7, 12, 1, 1)) == ["sched:minutely:20300107T120100Z"]
    assert report.retrieve("sched:minutely:20300107T120100Z")["params"] == {"scheduled_for": "x"}
    assert other.schedules.get("minutely", now=T0)["last_tick"] == at(2030, 1, 7, 12, 1)


# -- catch-up ---------------------------------------------------------------------------------


def catch_up_task(make_task: Any, policy: str, window: float = 600) -> AsyncTask:
    task = make_task(Plain, MemoryCollection(), worker=False)
    task.schedules.add(Schedule("s", every=60, catch_up=policy, catch_up_window=window), now=T0)
    return task


def test_catch_up_none_enqueues_no_missed_tick(make_task):
    task = catch_up_task(make_task, "none")
    # No worker ran for 30 minutes; the newest tick is 40 s old: missed.
    assert task.schedules.evaluate(now=at(2030, 1, 7, 12, 30, 40)) == []
    assert task.schedules.get("s", now=T0)["next_tick"] == at(2030, 1, 7, 12, 31)
    assert task.schedules.evaluate(now=at(2030, 1, 7, 12, 31, 0)) == ["sched:s:20300107T123100Z"]


def test_catch_up_latest_enqueues_the_newest_missed_tick_within_the_window(make_task):
    task = catch_up_task(make_task, "latest")
    assert task.schedules.evaluate(now=at(2030, 1, 7, 12, 30, 40)) == ["sched:s:20300107T123000Z"]
    task = catch_up_task(make_task, "latest", window=30)  # the newest missed tick is older than the window
    assert task.schedules.evaluate(now=at(2030, 1, 7, 12, 30, 40)) == []


def test_catch_up_all_enqueues_each_missed_tick_within_the_window(make_task):
    task = catch_up_task(make_task, "all", window=300)
    made = task.schedules.evaluate(now=at(2030, 1, 7, 12, 30, 40))
    assert made == [f"sched:s:20300107T12{minute}00Z" for minute in range(26, 31)]
    assert task.schedules.evaluate(now=at(2030, 1, 7, 12, 30, 50)) == []


def test_catch_up_all_takes_at_most_100_and_warns(make_task, caplog):
    task = catch_up_task(make_task, "all", window=timedelta(days=1))
    with caplog.at_level(logging.WARNING, logger="asynctask.schedules.book"):
        made = task.schedules.evaluate(now=at(2030, 1, 7, 16, 0, 40))  # 240 ticks missed
    assert len(made) == 100
    assert made[0] == "sched:s:20300107T142100Z" and made[-1] == "sched:s:20300107T160000Z"
    assert "missed ticks" in caplog.text


# -- daylight saving time ----------------------------------------------------------------------


def run_clock(task: AsyncTask, start: datetime, end: datetime, step: timedelta) -> list[str]:
    """Evaluate at each step from `start` to `end`, like a live worker; the ids made, in order."""
    made: list[str] = []
    moment = start
    while moment <= end:
        made += task.schedules.evaluate(now=moment)
        moment += step
    return made


def test_berlin_spring_forward_runs_a_tick_in_the_gap_once_at_the_first_valid_time(make_task, memory):
    task = make_task(Plain, memory, worker=False)
    task.schedules.add(Schedule("night", cron="30 2 * * *", tz="Europe/Berlin"), now=at(2024, 3, 29, 12))
    made = run_clock(task, at(2024, 3, 29, 12), at(2024, 4, 1, 12), timedelta(minutes=5))
    # 02:30 CET = 01:30 UTC; on 31 March 02:30 does not exist: 03:00 CEST = 01:00 UTC; then 00:30 UTC.
    assert made == ["sched:night:20240330T013000Z", "sched:night:20240331T010000Z", "sched:night:20240401T003000Z"]


def test_new_york_fall_back_runs_a_daily_tick_once(make_task, memory):
    task = make_task(Plain, memory, worker=False)
    task.schedules.add(Schedule("daily", cron="30 1 * * *", tz="America/New_York"), now=at(2024, 11, 2, 12))
    task.schedules.add(Schedule("hourly", cron="30 * * * *", tz="America/New_York"), now=at(2024, 11, 3, 3))
    made = run_clock(task, at(2024, 11, 2, 12), at(2024, 11, 4, 12), timedelta(minutes=5))
    daily = [task_id for task_id in made if task_id.startswith("sched:daily:")]
    # 01:30 EDT = 05:30 UTC happens once; its repeat at 01:30 EST (06:30 UTC) runs nothing.
    assert daily == ["sched:daily:20241103T053000Z", "sched:daily:20241104T063000Z"]
    hourly = [task_id for task_id in made if task_id.startswith("sched:hourly:")]
    # An hourly tick steps through real time: both 01:30s run, one hour apart.
    assert hourly[:4] == ["sched:hourly:20241103T033000Z", "sched:hourly:20241103T043000Z",
                          "sched:hourly:20241103T053000Z", "sched:hourly:20241103T063000Z"]


# -- pause, resume, changes, trigger --------------------------------------------------------------


def test_a_pause_survives_a_restart_of_a_process_that_declares_the_schedule(make_task, collection):
    first = make_task(Report, collection, worker=False)
    first.schedules.pause("minutely", now=T0)
    first.shutdown()
    restarted = make_task(Report, collection, worker=False)
    assert restarted.schedules.get("minutely", now=T0)["enabled"] is False
    assert restarted.schedules.evaluate(now=at(2030, 1, 7, 12, 5, 1)) == []
    # The code's declaration changes: the definition follows the code, the pause stays.
    moved = make_task(Moved, collection, worker=False)
    view = moved.schedules.get("minutely", now=T0)
    assert (view["every_seconds"], view["enabled"]) == (120, False)


def test_a_change_made_at_run_time_survives_a_restart_until_the_code_changes(make_task, memory):
    first = make_task(Report, memory, worker=False)
    first.schedules.update("minutely", every=300, now=T0)
    again = make_task(Report, memory, worker=False)
    assert again.schedules.get("minutely", now=T0)["every_seconds"] == 300
    moved = make_task(Moved, memory, worker=False)
    assert moved.schedules.get("minutely", now=T0)["every_seconds"] == 120


def test_resume_does_not_catch_up_the_ticks_of_the_pause(report):
    book = report.schedules
    book.pause("minutely", now=T0)
    assert book.get("minutely", now=T0)["next_tick"] is None
    assert book.evaluate(now=at(2030, 1, 7, 12, 3, 1)) == []
    view = book.resume("minutely", now=at(2030, 1, 7, 12, 3, 2))
    assert view["enabled"] is True and view["next_tick"] == at(2030, 1, 7, 12, 4)
    assert book.evaluate(now=at(2030, 1, 7, 12, 3, 3)) == []
    assert book.evaluate(now=at(2030, 1, 7, 12, 4, 0)) == ["sched:minutely:20300107T120400Z"]


def test_a_change_applies_to_the_ticks_after_it(report):
    book = report.schedules
    book.list(now=T0)
    view = book.update("minutely", cron="*/5 * * * *", now=at(2030, 1, 7, 12, 0, 40))
    assert (view["cron"], view["every_seconds"]) == ("*/5 * * * *", None)
    assert view["next_tick"] == at(2030, 1, 7, 12, 5)
    assert book.evaluate(now=at(2030, 1, 7, 12, 1, 1)) == []
    assert book.evaluate(now=at(2030, 1, 7, 12, 5, 1)) == ["sched:minutely:20300107T120500Z"]
    with pytest.raises(ValueError):
        book.update("minutely", tz="Nowhere/Else", now=T0)
    with pytest.raises(ValueError):
        book.update("minutely", params={"unknown": 1}, now=T0)
    assert book.get("minutely", now=T0)["tz"] == "UTC"


def test_trigger_runs_once_now_and_moves_no_tick(report):
    book = report.schedules
    before = book.get("nightly", now=T0)
    task_id = book.trigger("nightly", now=T0)
    assert task_id.startswith("sched:nightly:run-20300107T120030Z-")
    assert report.retrieve(task_id)["params"] == {"scope": "all", "scheduled_for": "2030-01-07T12:00:30+00:00"}
    after = book.get("nightly", now=T0)
    assert after["next_tick"] == before["next_tick"] and after["last_tick"] is None
    assert after["last_task_id"] == task_id and after["runs"][0]["tick"] is None
    book.pause("nightly", now=T0)
    assert book.trigger("nightly", now=T0) != task_id  # a paused schedule runs when asked


def test_add_list_and_remove_at_run_time(report):
    book = report.schedules
    view = book.add(Schedule("adhoc", every=3600, params={"scope": "x"}, priority=5), now=T0)
    assert view["declared"] is False and view["next_tick"] == at(2030, 1, 7, 13, 0)
    with pytest.raises(ScheduleExists):
        book.add(Schedule("adhoc", every=60), now=T0)
    with pytest.raises(InvalidSchedule):
        book.add(Schedule("bad", every=60, params={"nope": 1}), now=T0)
    assert [s["name"] for s in book.list(now=T0)] == ["adhoc", "minutely", "nightly"]
    (made,) = [t for t in book.evaluate(now=at(2030, 1, 7, 13, 0, 1)) if "adhoc" in t]
    assert report.retrieve(made)["priority"] == 5
    book.remove("adhoc")
    with pytest.raises(ScheduleNotFound):
        book.get("adhoc", now=T0)
    with pytest.raises(LookupError):
        book.remove("adhoc")
    assert report.retrieve(made) is not None  # its tasks stay


def test_stored_params_main_no_longer_takes_skip_the_tick_and_say_why(make_task, memory):
    task = make_task(Report, memory, worker=False)
    task.schedules.add(Schedule("old", every=60, params={"scope": "x"}), now=T0)

    class Report2(AsyncTask):  # the same type, after `scope` was dropped from main
        name = "Report"
        schedules = [Schedule("minutely", every=60)]

        def main(self, logger, scheduled_for: str | None = None):
            return scheduled_for

    later = make_task(Report2, memory, worker=False)
    assert [t for t in later.schedules.evaluate(now=at(2030, 1, 7, 12, 1, 0)) if "old" in t] == []
    view = later.schedules.get("old", now=at(2030, 1, 7, 12, 1, 1))
    assert "scope" in view["error"] and view["next_tick"] == at(2030, 1, 7, 12, 2)


def test_types_sharing_a_collection_never_share_a_tick_task(make_task, memory):
    report = make_task(Report, memory, worker=False)

    class Rival(AsyncTask):  # another type in the same collection, declaring the same name
        schedules = [Schedule("minutely", every=60)]

        def main(self, logger):
            return 1

    rival = make_task(Rival, memory, worker=False)
    report.schedules.list(now=T0)
    rival.schedules.list(now=T0)
    moment = at(2030, 1, 7, 12, 1, 0)
    assert report.schedules.evaluate(now=moment) == ["sched:minutely:20300107T120100Z"]
    assert rival.schedules.evaluate(now=moment) == []  # the id is the other type's: said, not absorbed
    assert "belongs to a task of type 'Report'" in rival.schedules.get("minutely", now=moment)["error"]
    with pytest.raises(ScheduleExists):
        rival.schedules.add(Schedule("nightly", every=60), now=T0)


def test_a_task_pickled_for_a_child_process_carries_its_declared_schedules(report):
    import pickle

    child = pickle.loads(pickle.dumps(report))
    assert tuple(child.schedules) == tuple(Report.schedules)


def test_the_example_runs_its_demo_and_exits_0(tmp_path):
    """`python -m examples.schedules`, as its docstring says: heartbeats tick, a run now."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("ASYNCTASK_MONGO_URI", "ASYNCTASK_API_TOKEN")}
    env.update(ASYNCTASK_LOG_DIR=str(tmp_path / "logs"), DISABLE_STREAM_HANDLER="1")
    done = subprocess.run([sys.executable, "-m", "examples.schedules"], cwd=Path(__file__).resolve().parents[1],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("sched:heartbeat:") and " success: " in line for line in lines) == 3
    assert any(line.startswith("sched:nightly:run-") and " success: " in line for line in lines)
    assert "nightly: At 02:00 every day (Asia/Shanghai), next " in done.stdout


# -- inside the worker loop -------------------------------------------------------------------------


class Beat(AsyncTask):
    schedules = [Schedule("beat", every=1)]

    def main(self, logger: logging.Logger, scheduled_for: str) -> str:
        return scheduled_for


def test_the_worker_loop_enqueues_and_runs_each_tick(make_task, memory):
    task = make_task(Beat, memory, poll_interval=0.1)
    task.start()

    def succeeded() -> list[dict[str, Any]]:
        done = [v for v in task.list("success")["tasks"] if v["task_id"].startswith("sched:beat:")]
        return done if len(done) >= 2 else []

    done = wait_until(succeeded, "two ticks run", timeout=15)
    assert all(view["result"] == view["params"]["scheduled_for"] for view in done)
    assert len({view["result"] for view in done}) == len(done)  # one task per tick


def test_evaluation_without_a_clock_is_paced_by_the_poll_interval(make_task, memory):
    task = make_task(Beat, memory, worker=False, poll_interval=60)
    book = task.schedules
    calls = []
    store_enabled = book._store.enabled
    book._store.enabled = lambda: calls.append(1) or store_enabled()  # type: ignore[method-assign]
    book.evaluate()
    book.evaluate()
    assert calls == [1]
    assert book.on_time == timedelta(seconds=180) and MIN_ON_TIME == timedelta(seconds=15)


# -- HTTP -------------------------------------------------------------------------------------------


@pytest.fixture
def client(report: AsyncTask) -> Any:
    return report.app("/api").test_client()


def call(client: Any, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
    return client.open(path, method=method, json=body if body is not None else {}, **kwargs)


def test_http_lists_the_schedules_in_the_envelope(client):
    answer = client.get("/api/schedules")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["status"] == "ok" and body["error_msg"] == ""
    nightly = {s["name"]: s for s in body["data"]["schedules"]}["nightly"]
    assert nightly["cron"] == "0 2 * * *" and nightly["every_seconds"] is None and nightly["tz"] == "Asia/Shanghai"
    assert nightly["params"] == {"scope": "all"} and nightly["enabled"] is True
    assert nightly["last_tick"] is None and nightly["last_task_id"] is None and nightly["last_status"] is None
    assert datetime.fromisoformat(nightly["next_tick"]).tzinfo is not None


def test_http_adds_changes_pauses_resumes_triggers_and_removes(client, report):
    added = call(client, "POST", "/api/schedules", {"name": "hourly", "every_seconds": 3600, "params": {"scope": "x"}})
    assert added.status_code == 201, added.get_json()
    assert added.headers["Location"].endswith("/api/schedules/hourly")
    assert added.get_json()["data"]["every_seconds"] == 3600
    assert call(client, "POST", "/api/schedules", {"name": "hourly", "every_seconds": 60}).status_code == 409
    patched = call(client, "PATCH", "/api/schedules/hourly", {"cron": "15 * * * *", "tz": "Europe/Berlin"})
    assert patched.status_code == 200 and patched.get_json()["data"]["cron"] == "15 * * * *"
    assert patched.get_json()["data"]["every_seconds"] is None
    paused = call(client, "POST", "/api/schedules/hourly/pause")
    assert paused.status_code == 200 and paused.get_json()["data"]["enabled"] is False
    resumed = call(client, "POST", "/api/schedules/hourly/resume")
    assert resumed.get_json()["data"]["enabled"] is True
    triggered = call(client, "POST", "/api/schedules/hourly/trigger")
    assert triggered.status_code == 202
    task_id = triggered.get_json()["data"]["task_id"]
    assert triggered.headers["Location"].endswith(f"/api/{task_id}")
    assert client.get(f"/api/{task_id}").get_json()["data"]["params"]["scope"] == "x"
    assert client.get("/api/schedules/hourly").get_json()["data"]["last_task_id"] == task_id
    assert client.delete("/api/schedules/hourly").get_json()["data"] == {"name": "hourly", "removed": True}
    assert client.get("/api/schedules/hourly").status_code == 404
    assert client.delete("/api/schedules/hourly").status_code == 404
    assert call(client, "POST", "/api/schedules/hourly/trigger").status_code == 404


@pytest.mark.parametrize("body", [
    {"name": "x", "cron": "not a cron"}, {"name": "x", "cron": "0 2 * * *", "tz": "Nowhere/Else"},
    {"name": "x", "every_seconds": 0}, {"name": "x", "every_seconds": 60, "params": {"unknown": 1}},
    {"name": "x", "every_seconds": 60, "params": {"scope": {"not": "a string"}}},
    {"name": "x", "every_seconds": 60, "params": "scope=all"}, {"name": "x"}, {"every_seconds": 60},
    {"name": "has space", "every_seconds": 60}, {"name": "x", "every_seconds": 60, "colour": "red"},
    {"name": "x", "every_seconds": 60, "catch_up": "sometimes"},
])
def test_http_refuses_a_bad_schedule_with_400_and_stores_nothing(client, body):
    answer = call(client, "POST", "/api/schedules", body)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["status"] == "error" and answer.get_json()["error_msg"]
    names = [s["name"] for s in client.get("/api/schedules").get_json()["data"]["schedules"]]
    assert names == ["minutely", "nightly"]


def test_http_refuses_bad_changes_and_bodies(client):
    assert call(client, "PATCH", "/api/schedules/nightly", {"cron": "0 25 * * *"}).status_code == 400
    assert call(client, "PATCH", "/api/schedules/nightly", {"name": "other"}).status_code == 400
    assert call(client, "PATCH", "/api/schedules/nightly", {}).status_code == 400
    assert call(client, "PATCH", "/api/schedules/missing", {"priority": 1}).status_code == 404
    assert client.get("/api/schedules/nightly").get_json()["data"]["cron"] == "0 2 * * *"
    form = client.post("/api/schedules/nightly/pause", data="x=1", content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415
    no_type = client.post("/api/schedules", data='{"name": "x", "every_seconds": 60}')
    assert no_type.status_code == 415
    assert client.post("/api/schedules", data="[1]", content_type="application/json").status_code == 400
    assert client.get("/api/schedules/has%20space").status_code == 400


def test_http_actions_take_a_post_with_no_body(client):
    """pause, resume and trigger need no body: a bare POST is taken; an empty form post is not."""
    empty_form = client.post("/api/schedules/nightly/pause", content_type="application/x-www-form-urlencoded")
    assert empty_form.status_code == 415
    assert client.get("/api/schedules/nightly").get_json()["data"]["enabled"] is True
    assert client.post("/api/schedules/nightly/pause").status_code == 200
    assert client.get("/api/schedules/nightly").get_json()["data"]["enabled"] is False
    assert client.post("/api/schedules/nightly/resume").status_code == 200
    assert client.get("/api/schedules/nightly").get_json()["data"]["enabled"] is True
    triggered = client.post("/api/schedules/nightly/trigger")
    assert triggered.status_code == 202 and triggered.get_json()["data"]["task_id"]


def test_http_schedules_need_the_api_token(make_task, memory):
    task = make_task(Report, memory, worker=False, api_token=TOKEN)
    client = task.app("/api").test_client()
    assert client.get("/api/schedules").status_code == 401
    assert call(client, "POST", "/api/schedules/nightly/pause").status_code == 401
    assert task.schedules.get("nightly")["enabled"] is True
    ok = client.get("/api/schedules", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200


def test_http_trigger_runs_the_task(make_task, memory, wait_for):
    task = make_task(Report, memory)
    client = task.app("/api").test_client()
    answer = call(client, "POST", "/api/schedules/nightly/trigger")
    view = wait_for(task, answer.get_json()["data"]["task_id"])
    assert view["status"] == "success" and view["result"]["scope"] == "all"


# -- the command line --------------------------------------------------------------------------------


def test_the_cli_lists_pauses_resumes_and_triggers(make_task, memory, capsys, monkeypatch):
    import json
    import threading

    from werkzeug.serving import make_server

    from asynctask.cli import main

    monkeypatch.delenv("ASYNCTASK_API_TOKEN", raising=False)
    task = make_task(Report, memory, worker=False)
    server = make_server("127.0.0.1", 0, task.app("/api"), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        capsys.readouterr()
        assert main(["schedules", "list", url]) == 0
        assert [s["name"] for s in json.loads(capsys.readouterr().out)] == ["minutely", "nightly"]
        assert main(["schedules", "pause", url, "nightly"]) == 0
        assert json.loads(capsys.readouterr().out)["enabled"] is False
        assert main(["schedules", "resume", f"{url}/api", "nightly"]) == 0
        assert json.loads(capsys.readouterr().out)["enabled"] is True
        assert main(["schedules", "trigger", url, "nightly"]) == 0
        task_id = capsys.readouterr().out.strip()
        assert task.retrieve(task_id)["params"]["scope"] == "all"
        assert main(["schedules", "pause", url, "missing"]) == 3
        assert "no schedule named 'missing'" in capsys.readouterr().err
        assert main(["schedules", "pause", url, "../x"]) == 3
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


class Ticking(AsyncTask):
    schedules = [Schedule("every-second", every=timedelta(seconds=1))]

    def main(self, logger: logging.Logger) -> str:
        return "tick"


def test_an_api_only_process_of_a_remote_fleet_still_enqueues_ticks(make_task, memory):
    """No local worker claims (its workers reach it over HTTP): the process that sweeps for the
    remote fleet evaluates the schedules too, so ticks are enqueued for the remote workers."""
    api = make_task(Ticking, memory, worker=False, worker_token="for-remote-workers", poll_interval=0.1)
    api.start()
    wait_until(lambda: memory.count_documents({"task_id": {"$regex": "^sched:every-second:"}}) >= 2, timeout=15)
    assert {doc["status"] for doc in memory.find({})} == {"queued"}, "nothing claims them here"
