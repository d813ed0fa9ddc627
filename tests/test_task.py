"""AsyncTask: construction, the run rule end to end, timeouts, fencing, hooks, shutdown."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from pymongo.errors import AutoReconnect
from tasks import Echo, Gate, Typed
from waiting import wait_until

from asynctask import AsyncTask, InvalidParams, InvalidTaskId, MemoryCollection, TaskNotFound
from asynctask.store.tasks import utcnow


class NoLogger(AsyncTask):
    def main(self, text):
        return text


class TakesTaskId(AsyncTask):
    def main(self, logger, task_id):
        return task_id


class LoggerLast(AsyncTask):
    """The upstream tool's documented style: logger as a keyword after the params."""

    def main(self, text, top=2, logger=None):
        logger.info("upstream style")
        return text.split()[:top]


class Flaky(AsyncTask):
    """Fails on its first call, succeeds afterwards."""

    calls = 0

    def get_task_id(self, name):
        return name

    def main(self, logger, name):
        type(self).calls += 1
        if type(self).calls == 1:
            raise RuntimeError("first call fails")
        return f"ok {name}"


class Returns(AsyncTask):
    def get_task_id(self, kind):
        return kind

    def main(self, logger, kind):
        return {"set": {1, 2}, "object": object(), "bytes": b"x", "nan": float("nan")}[kind]


class Staged(AsyncTask):
    """Each call to main blocks on its own gate, so two attempts can be held apart."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gates = [threading.Event(), threading.Event()]
        self.started = [threading.Event(), threading.Event()]
        self.calls = 0

    def get_task_id(self):
        return "staged"

    def main(self, logger):
        n = self.calls
        self.calls += 1
        self.started[n].set()
        assert self.gates[n].wait(10)
        return f"attempt {n + 1}"


# -- construction -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"task_timeout": -1}, ValueError),
        ({"task_timeout": 0}, ValueError),
        ({"task_timeout": "1h"}, TypeError),
        ({"rerun_time_limit": "x"}, TypeError),
        ({"rerun_time_limit": timedelta(seconds=-5)}, ValueError),
        ({"outdate_time": "x"}, TypeError),
        ({"rerun_time_limit": 5, "outdate_time": 5}, TypeError),
        ({"max_worker": 0}, ValueError),
        ({"max_worker": "4"}, TypeError),
        ({"executor": "bogus"}, ValueError),
        ({"heartbeat_interval": 0}, ValueError),
        ({"max_content_length": -1}, ValueError),
        ({"no_such_option": 1}, TypeError),
    ],
)
def test_wrong_arguments_fail_at_construction(tmp_path, kwargs, error):
    with pytest.raises(error):
        Echo(MemoryCollection(), tmp_path / "logs", **kwargs)
    assert not (tmp_path / "logs").exists(), "a refused construction creates nothing"


@pytest.mark.parametrize("cls, word", [(NoLogger, "logger"), (TakesTaskId, "task_id")])
def test_main_signature_is_checked_at_construction(tmp_path, cls, word):
    with pytest.raises(TypeError, match=word):
        cls(MemoryCollection(), tmp_path)


def test_collection_and_logger_dir_are_checked(tmp_path):
    with pytest.raises(TypeError, match="collection"):
        Echo({"not": "a collection"}, tmp_path)
    with pytest.raises(TypeError, match="logger_dir"):
        Echo(MemoryCollection(), 42)


def test_durations_accept_seconds_and_timedeltas(make_task):
    task = make_task(Echo, task_timeout=30, outdate_time=60)
    assert task.task_timeout == timedelta(seconds=30)
    assert task.rerun_time_limit == task.outdate_time == timedelta(minutes=1)
    assert make_task(Echo).task_timeout == timedelta(hours=4)


def test_construction_starts_no_thread_and_makes_the_log_dir(tmp_path):
    before = set(threading.enumerate())
    Echo(MemoryCollection(), tmp_path / "new" / "logs")
    assert set(threading.enumerate()) - before == set()
    assert (tmp_path / "new" / "logs").is_dir()


# -- running ------------------------------------------------------------------------------

def test_run_returns_the_id_and_the_task_succeeds(make_task, wait_for):
    task = make_task(Typed)
    task_id = task.run(text="a b c", top=2)
    view = wait_for(task, task_id)
    assert view["status"] == "success" and view["result"] == ["a", "b"]
    assert view["params"] == {"text": "a b c", "top": 2} and view["attempts"] == 1
    assert view["started_at"] <= view["finished_at"]


def test_upstream_main_with_logger_last_still_works(make_task, wait_for):
    task = make_task(LoggerLast)
    assert wait_for(task, task.run(text="x y z"))["result"] == ["x", "y"]


def test_thirty_two_threads_same_params_start_main_once(make_task, wait_for):
    task = make_task(Gate)
    barrier = threading.Barrier(32)
    ids = []

    def submit():
        barrier.wait()
        ids.append(task.run(name="shared"))

    threads = [threading.Thread(target=submit) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ids == ["shared"] * 32
    assert task.started.wait(5)
    task.gate.set()
    assert wait_for(task, "shared")["status"] == "success"
    assert task.calls == 1
    assert task.collection.count_documents({}) == 1


def test_invalid_params_store_nothing(make_task, tmp_path):
    task = make_task(Typed)
    with pytest.raises(InvalidParams, match="text"):
        task.run(top=3)
    with pytest.raises(InvalidParams, match="colour"):
        task.run(text="a", colour="red")
    with pytest.raises(InvalidParams, match=r"\$"):
        task.run(text="a", top={"$gt": 1})
    assert task.collection.count_documents({}) == 0
    assert list((tmp_path / "logs").iterdir()) == []


def test_invalid_id_from_get_task_id_is_a_value_error(make_task, tmp_path):
    class BadId(Typed):
        def get_task_id(self, text, top=10):
            return text

    task = make_task(BadId)
    for bad in ["../../x", "a/b", "..", "", "x" * 129]:
        with pytest.raises(InvalidTaskId):
            task.run(text=bad)
    assert task.collection.count_documents({}) == 0
    assert list((tmp_path / "logs").iterdir()) == []


def test_failed_task_runs_again_and_keeps_its_params(make_task, wait_for):
    Flaky.calls = 0
    task = make_task(Flaky)
    first = wait_for(task, task.run(name="f"))
    assert first["status"] == "failed" and "first call fails" in first["error"]
    assert "Traceback" in first["error"]
    assert task.run(task_id="f") == "f"
    second = wait_for(task, "f")
    assert second["status"] == "success" and second["result"] == "ok f"
    assert second["attempts"] == 2 and second["error"] is None


def test_success_is_not_run_again_until_the_rerun_limit(make_task, wait_for):
    task = make_task(Echo, rerun_time_limit=60)
    task_id = task.run(value=1)
    wait_for(task, task_id)
    task.run(value=1)
    assert task.calls == 1 and task.retrieve(task_id)["attempts"] == 1
    task.update_task(task_id, {"update_time": utcnow() - timedelta(seconds=61)})
    task.run(value=1)
    assert wait_for(task, task_id)["attempts"] == 2
    assert task.calls == 2


@pytest.mark.parametrize("status", ["pending", "cancelled", "failed"])
def test_pending_cancelled_failed_are_submitted_by_run(make_task, wait_for, status):
    task = make_task(Typed)
    task_id = Typed.get_task_id(task, text="p q")
    task.update_task(task_id, {"status": status, "params": {"text": "p q"}})
    assert task.run(task_id=task_id) == task_id
    assert wait_for(task, task_id)["result"] == ["p", "q"]


def test_run_with_unknown_task_id_is_not_found(make_task):
    task = make_task(Echo)
    with pytest.raises(TaskNotFound):
        task.run(task_id="nope")
    with pytest.raises(InvalidTaskId):
        task.run(task_id="../x")


def test_an_invalid_id_is_refused_before_the_database_by_every_method(make_task, tmp_path):
    task = make_task(Echo)
    done: Future = Future()
    done.set_result(1)
    for bad in ["../x", "a/b", "..", "x" * 129]:
        with pytest.raises(InvalidTaskId):
            task.retrieve(bad)
        with pytest.raises(InvalidTaskId):
            task.wait(bad, 0.1)
        with pytest.raises(InvalidTaskId):
            task.callback(done, bad)
        with pytest.raises(InvalidTaskId):
            task.cancel(bad)
    assert task.collection.count_documents({}) == 0
    assert list((tmp_path / "logs").iterdir()) == []


def test_the_stored_document_holds_aware_utc_times(make_task, wait_for):
    task = make_task(Echo)
    task_id = task.run(value=1)
    assert wait_for(task, task_id)["status"] == "success"
    doc = task.collection.find_one({"task_id": task_id})
    times = {name: doc[name] for name in ("created_at", "update_time", "started_at", "finished_at")}
    assert all(value.tzinfo is not None and value.utcoffset() == timedelta(0) for value in times.values()), times
    assert times["created_at"] <= times["started_at"] <= times["finished_at"]


def test_run_with_task_id_refuses_other_params(make_task, wait_for):
    task = make_task(Echo)
    task_id = task.run(value=1)
    wait_for(task, task_id)
    with pytest.raises(InvalidParams):
        task.run(task_id=task_id, value=2)


@pytest.mark.parametrize("kind", ["set", "object", "bytes", "nan"])
def test_unstorable_result_fails_the_task_clearly(make_task, wait_for, kind):
    task = make_task(Returns)
    view = wait_for(task, task.run(kind=kind))
    assert view["status"] == "failed" and view["result"] is None
    assert "cannot be stored" in view["error"]


def test_timed_out_task_fails_and_its_late_result_is_discarded(make_task, wait_for, tmp_path):
    task = make_task(Gate, task_timeout=0.2)
    task_id = task.run(name="slow")
    view = wait_for(task, task_id, statuses=("failed",), timeout=5)
    assert "TaskTimeout" in view["error"]
    task.gate.set()
    log = tmp_path / "logs" / "slow.log"
    wait_until(lambda: log.exists() and "result discarded" in log.read_text())
    final = task.retrieve(task_id)
    assert final["status"] == "failed" and final["result"] is None and "TaskTimeout" in final["error"]


def test_zombie_attempt_cannot_overwrite_the_current_one(make_task, wait_for, tmp_path):
    task = make_task(Staged, task_timeout=0.3)
    task.run()
    assert task.started[0].wait(5)
    wait_for(task, "staged", statuses=("failed",), timeout=5)
    task.task_timeout = timedelta(seconds=30)
    task.run()
    assert task.started[1].wait(5)
    task.gates[0].set()  # the zombie returns while attempt 2 runs
    log = tmp_path / "logs" / "staged.log"
    wait_until(lambda: log.exists() and "result discarded" in log.read_text())
    assert task.retrieve("staged")["status"] == "running"
    task.gates[1].set()
    view = wait_for(task, "staged")
    assert view["status"] == "success" and view["result"] == "attempt 2" and view["attempts"] == 2


def test_callback_hook_gets_the_future_and_task_id(make_task, wait_for):
    seen = []

    class Hooked(Echo):
        def callback(self, future, task_id):
            seen.append((future.result(), task_id))
            return super().callback(future, task_id)

    task = make_task(Hooked)
    task_id = task.run(value=7)
    assert wait_for(task, task_id)["result"] == 7
    wait_until(lambda: seen == [(7, task_id)])


def test_callback_that_raises_is_logged_and_the_outcome_stays_recorded(make_task, wait_for, tmp_path):
    class Broken(Echo):
        def callback(self, future, task_id):
            raise KeyError("callback bug")

    task = make_task(Broken)
    task_id = task.run(value=1)
    view = wait_for(task, task_id)
    assert (view["status"], view["result"]) == ("success", 1)
    log = tmp_path / "logs" / f"{task_id}.log"
    wait_until(lambda: "callback bug" in log.read_text())


def test_callback_override_without_super_still_records_the_outcome(make_task, wait_for):
    notified = []

    class Notifier(Echo):
        def callback(self, future, task_id):
            notified.append(task_id)  # a notification only: never calls super()

    task = make_task(Notifier)
    ok = task.run(value=5)
    assert wait_for(task, ok)["status"] == "success" and wait_for(task, ok)["result"] == 5
    wait_until(lambda: notified == [ok])


def test_callback_called_by_hand_records_the_outcome_and_creates_the_document(make_task):
    from concurrent.futures import Future

    task = make_task(Echo)
    done: Future = Future()
    done.set_result({"answer": 42})
    assert task.callback(done, "by-hand") == {"answer": 42}
    view = task.retrieve("by-hand")
    assert (view["status"], view["result"]) == ("success", {"answer": 42})
    failed: Future = Future()
    failed.set_exception(ValueError("bad input"))
    assert task.callback(failed, "by-hand-2") is None
    view = task.retrieve("by-hand-2")
    assert view["status"] == "failed" and "bad input" in view["error"]


def test_retrieve_hook_is_used_and_get_logger_names_the_task(make_task):
    class Custom(Echo):
        def retrieve(self, task_id):
            return {"task_id": task_id, "custom": True}

    task = make_task(Custom)
    assert task.retrieve("x") == {"task_id": "x", "custom": True}
    assert task.get_logger("abc").name == "abc"


def test_update_task_upserts_and_checks_its_input(make_task):
    task = make_task(Echo)
    task.update_task("manual", {"status": "pending", "params": {"value": 3}})
    view = task.retrieve("manual")
    assert view["status"] == "pending" and view["update_time"] is not None
    with pytest.raises(InvalidTaskId):
        task.update_task("../x", {})
    with pytest.raises(TypeError):
        task.update_task("manual", ["status"])


def test_heartbeats_advance_while_a_task_runs(make_task):
    task = make_task(Gate, heartbeat_interval=0.05)
    task.run(name="beat")
    assert task.started.wait(5)
    first = task.collection.find_one({"task_id": "beat"})["heartbeat_at"]
    wait_until(lambda: task.collection.find_one({"task_id": "beat"})["heartbeat_at"] > first)


def test_custom_thread_pool_is_used(make_task, wait_for):
    pool = ThreadPoolExecutor(2, thread_name_prefix="mine")
    names = []

    class Where(Echo):
        def main(self, logger, value=None):
            names.append(threading.current_thread().name)
            return value

    task = make_task(Where, executor=pool)
    wait_for(task, task.run(value=1))
    assert names[0].startswith("mine")


def test_process_pool_runs_main_in_a_child(make_task, wait_for):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    task = make_task(Typed, executor=pool)
    assert wait_for(task, task.run(text="in a child"), timeout=30)["result"] == ["in", "a", "child"]


def test_shutdown_stops_every_thread_it_started(tmp_path, wait_for):
    before = set(threading.enumerate())
    task = Echo(MemoryCollection(), tmp_path, max_worker=2)
    wait_for(task, task.run(value=1))
    assert set(threading.enumerate()) - before
    task.shutdown(wait=True)
    wait_until(lambda: set(threading.enumerate()) <= before)


def test_future_passed_to_callback_holds_mains_exception(make_task, wait_for):
    futures: list[Future] = []

    class Spy(Flaky):
        def callback(self, future, task_id):
            futures.append(future)
            return super().callback(future, task_id)

    Flaky.calls = 0
    task = make_task(Spy)
    wait_for(task, task.run(name="spy"))
    wait_until(lambda: futures)  # the hook is notified once the outcome is recorded
    assert isinstance(futures[0].exception(), RuntimeError)


class Blipping:
    """A collection whose outcome writes fail with `AutoReconnect` the first `failures` times."""

    def __init__(self, target: MemoryCollection, failures: int) -> None:
        self._target = target
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def update_one(self, query: dict, update: dict, **kwargs: Any) -> Any:
        if update.get("$set", {}).get("status") in ("success", "failed") and "finished_at" in update["$set"]:
            if self.failures > 0:
                self.failures -= 1
                raise AutoReconnect("connection reset during a failover")
        return self._target.update_one(query, update, **kwargs)


def test_an_outcome_write_that_meets_a_database_blip_is_retried(make_task, wait_for):
    shared = MemoryCollection()
    task = make_task(Echo, Blipping(shared, failures=2))
    view = wait_for(task, task.run(value="kept"))
    assert (view["status"], view["result"], view["attempts"]) == ("success", "kept", 1)


def test_an_outcome_that_cannot_be_written_makes_an_orphan_that_runs_again(make_task, wait_for, monkeypatch):
    from asynctask.backend import StoreBackend

    monkeypatch.setattr(StoreBackend, "record_backoff", (0.01,))
    shared = MemoryCollection()
    lost = make_task(Echo, Blipping(shared, failures=10**6), heartbeat_interval=0.05, stale_after=0.3,
                     poll_interval=60)
    task_id = lost.run(value="again")
    # The process that could not record stops heartbeating the task (and here goes away);
    # another worker finds it silent and runs it again.
    wait_until(lambda: lost.calls == 1 and not lost._worker.get().held())
    lost.shutdown(wait=False)
    rescuer = make_task(Echo, shared, heartbeat_interval=0.05, stale_after=0.3, poll_interval=0.05)
    rescuer.start()
    view = wait_for(rescuer, task_id, timeout=15)
    assert (view["status"], view["result"], view["attempts"]) == ("success", "again", 2)
    assert rescuer.calls == 1


def test_options_may_be_class_attributes_and_constructor_arguments_win(tmp_path):
    class Resize(AsyncTask):
        name = "resize-images"
        task_timeout = 60
        max_retries = 2
        poll_interval = 0.5

        def main(self, logger: Any, path: str) -> str:
            return path

    declared = Resize(MemoryCollection(), tmp_path)
    given = Resize(MemoryCollection(), tmp_path, task_timeout=5)
    try:
        assert declared.task_timeout == timedelta(seconds=60) and given.task_timeout == timedelta(seconds=5)
        assert declared.retry_policy.max_retries == 2 and declared.poll_interval == timedelta(seconds=0.5)
        assert declared.name == "resize-images" and Echo.name == "Echo"
        declared.submit({"path": "a.png"})
        assert declared.collection.find_one({})["type"] == "resize-images"
    finally:
        declared.shutdown()
        given.shutdown()
    with pytest.raises(ValueError):
        type("Broken", (Resize,), {"task_timeout": -1})(MemoryCollection(), tmp_path)
