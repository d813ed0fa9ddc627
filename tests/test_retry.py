"""Retries: `max_retries`, `retry_delay`, `retry_backoff`, `retry_on`.

A task whose `main` raises one of `retry_on` runs again after `retry_delay * retry_backoff**n`
seconds, at most `max_retries` times. No worker is blocked while a retry waits (the task is
`queued` with a `next_retry_at`), and the retry survives the process that scheduled it.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone

import pytest
from ops_tasks import Flaky
from waiting import wait_for, wait_until

from asynctask import MemoryCollection


@pytest.fixture(autouse=True)
def no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCTASK_API_TOKEN", raising=False)


def unique(prefix: str) -> str:
    """A task name no other test uses (Flaky keeps its call times per name, process-wide)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_failing_task_is_retried_with_exponential_backoff_until_it_succeeds(make_task):
    task = make_task(Flaky, max_retries=3, retry_delay=0.2, retry_backoff=2)
    name = unique("backoff")

    view = wait_for(task, task.run(name=name, fails=3), timeout=10)

    assert view["status"] == "success", view["error"]
    assert view["result"] == 4
    assert view["attempts"] == 4
    assert view["error"] is None and view["next_retry_at"] is None
    starts = Flaky.starts[name]
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    for gap, delay in zip(gaps, [0.2, 0.4, 0.8], strict=True):
        assert 0.9 * delay <= gap <= 0.9 * delay + 0.5, (gaps, delay)
    log = (task.logger_dir / f"{name}.log").read_text()
    assert [f"retry {n} of 3" in log for n in (1, 2, 3)] == [True, True, True]


def test_an_error_outside_retry_on_fails_at_once(make_task):
    task = make_task(Flaky, max_retries=3, retry_delay=0.05, retry_on=(ValueError,))
    name = unique("keyerror")

    view = wait_for(task, task.run(name=name, fails=1, error="KeyError"))

    assert view["status"] == "failed"
    assert view["attempts"] == 1
    assert "KeyError" in view["error"] and view["next_retry_at"] is None
    assert len(Flaky.starts[name]) == 1


def test_a_single_exception_class_is_accepted_as_retry_on(make_task):
    task = make_task(Flaky, max_retries=1, retry_delay=0.05, retry_on=ValueError)
    name = unique("single")

    view = wait_for(task, task.run(name=name, fails=1, error="ValueError"))

    assert (view["status"], view["attempts"], view["result"]) == ("success", 2, 2)


def test_when_the_retries_are_used_up_the_task_fails_with_the_last_error(make_task):
    task = make_task(Flaky, max_retries=2, retry_delay=0.05, retry_backoff=1)
    name = unique("exhausted")

    view = wait_for(task, task.run(name=name, fails=10))

    assert view["status"] == "failed"
    assert view["attempts"] == 3
    assert "call 3 of" in view["error"]
    assert len(Flaky.starts[name]) == 3


def test_without_max_retries_a_failure_is_final(make_task):
    task = make_task(Flaky)
    name = unique("noretry")
    view = wait_for(task, task.run(name=name, fails=1))
    assert (view["status"], view["attempts"]) == ("failed", 1)


def test_a_waiting_retry_shows_queued_attempts_and_next_retry_at_and_blocks_no_worker(make_task):
    task = make_task(Flaky, max_retries=1, retry_delay=1.0, max_worker=1)
    client = task.app("/api").test_client()
    name = unique("waiting")
    task.run(name=name, fails=1)
    wait_until(lambda: task.retrieve(name)["next_retry_at"], "no retry was scheduled", timeout=5)

    view = client.get(f"/api/{name}").get_json()["data"]

    assert view["status"] == "queued"
    assert view["attempts"] == 1
    assert "ValueError" in view["error"]  # why it is retried
    retry_at = datetime.fromisoformat(view["next_retry_at"])
    assert datetime.now(timezone.utc) < retry_at
    assert (retry_at - datetime.now(timezone.utc)).total_seconds() <= 1.0

    # The only worker is free meanwhile: another task runs and finishes before the retry.
    other = task.run(name=unique("meanwhile"))
    assert wait_for(task, other, timeout=0.9)["status"] == "success"
    other_done = Flaky.finished[other][-1]

    view = wait_for(task, name, timeout=5)
    assert (view["status"], view["attempts"], view["next_retry_at"]) == ("success", 2, None)
    assert other_done < Flaky.starts[name][1]


def test_a_retry_survives_the_process_that_scheduled_it(make_task):
    shared = MemoryCollection()
    dying = make_task(Flaky, shared, max_retries=1, retry_delay=0.5)
    name = unique("survivor")
    dying.run(name=name, fails=1)
    wait_until(lambda: dying.retrieve(name)["next_retry_at"], "no retry was scheduled", timeout=5)
    dying.shutdown(wait=False)  # the process that scheduled the retry is gone
    failed_at = Flaky.finished[name][0]

    heir = make_task(Flaky, shared, max_retries=1, retry_delay=0.5, heartbeat_interval=0.05)
    heir.start()

    view = wait_for(heir, name, timeout=5)
    assert view["status"] == "success", view["error"]
    assert view["attempts"] == 2
    assert len(Flaky.starts[name]) == 2
    assert Flaky.starts[name][1] - failed_at >= 0.45  # taken when due, not before


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_retries": -1}, ValueError),
        ({"max_retries": 1.5}, ValueError),
        ({"retry_delay": -0.1}, ValueError),
        ({"retry_delay": "1"}, TypeError),
        ({"retry_backoff": 0.5}, ValueError),
        ({"retry_on": "ValueError"}, TypeError),
        ({"retry_on": (ValueError, int)}, TypeError),
    ],
)
def test_wrong_retry_options_are_refused_at_construction(make_task, options, error):
    with pytest.raises(error):
        make_task(Flaky, **options)


def test_retry_threads_do_not_pile_up(make_task):
    # A waiting retry is a document, not a sleeping thread.
    before = threading.active_count()
    task = make_task(Flaky, max_retries=1, retry_delay=5.0, max_worker=2)
    for _ in range(5):
        task.run(name=unique("parked"), fails=1)
    wait_until(
        lambda: task.collection.count_documents({"next_retry_at": {"$exists": True}}) == 5,
        "five retries were not scheduled", timeout=5,
    )
    assert threading.active_count() - before <= 2 + 1  # two slots and the monitor


def test_a_task_waiting_for_its_retry_can_be_cancelled_and_the_retry_never_runs(make_task):
    task = make_task(Flaky, max_retries=1, retry_delay=0.3, heartbeat_interval=0.05)
    client = task.app("/api").test_client()
    name = unique("called-off")
    task.run(name=name, fails=1)
    wait_until(lambda: task.retrieve(name)["next_retry_at"], "no retry was scheduled", timeout=5)

    response = client.delete(f"/api/{name}")

    assert response.status_code == 200
    assert response.get_json()["data"]["status"] == "cancelled"
    # Past the retry's due time, and several sweeps later, it is still cancelled and never ran again.
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        view = task.retrieve(name)
        assert (view["status"], view["next_retry_at"]) == ("cancelled", None)
        time.sleep(0.02)
    assert len(Flaky.starts[name]) == 1
