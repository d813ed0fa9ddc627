"""Rate limits and per-key concurrency, in this process: several `AsyncTask` instances on one
in-memory collection stand for several processes (`test_limits_processes.py` runs real ones).

Starts are read from the task documents' `started_at`: a rate-limited claim writes there the
moment the limit counted the start, so the windows checked are the limiter's own.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from waiting import wait_until

from asynctask import AsyncTask, MemoryCollection
from asynctask.attempt import current
from asynctask.limits import parse_rate_limit
from asynctask.liveness import Silence
from asynctask.store.limits import LimitDocs

DEADLINE = 30.0


class Book:
    """What the runs of `main` did, across every instance of a test: starts, overlaps per tenant."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.starts: list[tuple[str, int, float]] = []  # (name, attempt, monotonic time)
        self.running: dict[str | None, int] = {}
        self.most: dict[str | None, int] = {}
        self.gate = threading.Event()
        self.gate.set()

    def enter(self, name: str, tenant: str | None) -> None:
        attempt = current(name)
        with self.lock:
            self.starts.append((name, attempt.number if attempt else 0, time.monotonic()))
            self.running[tenant] = self.running.get(tenant, 0) + 1
            self.most[tenant] = max(self.most.get(tenant, 0), self.running[tenant])

    def leave(self, tenant: str | None) -> None:
        with self.lock:
            self.running[tenant] -= 1

    def first_start(self, name: str) -> float:
        with self.lock:
            return min(at for started, _, at in self.starts if started == name)


class Tenants(AsyncTask):
    """Works `seconds` (until `book.gate` opens, when it is shut); `fail_first` fails attempt 1."""

    book = Book()

    def get_task_id(self, name: str, tenant: str | None = None, seconds: float = 0.0, fail_first: bool = False) -> str:
        return name

    def main(self, logger: Any, name: str, tenant: str | None = None, seconds: float = 0.0,
             fail_first: bool = False) -> str:
        book = type(self).book
        book.enter(name, tenant)
        try:
            book.gate.wait(DEADLINE)
            time.sleep(seconds)
            attempt = current(name)
            if fail_first and attempt is not None and attempt.number == 1:
                raise RuntimeError("the first attempt fails")
        finally:
            book.leave(tenant)
        return name


@pytest.fixture
def book() -> Book:
    Tenants.book = Book()
    return Tenants.book


@pytest.fixture
def fleet(make_task: Callable[..., AsyncTask], book: Book) -> Callable[..., list[AsyncTask]]:
    """`fleet(count, **options)`: `count` started instances of `Tenants` on one collection."""

    def make(count: int = 3, **options: Any) -> list[AsyncTask]:
        shared = MemoryCollection()
        options.setdefault("max_worker", 3)
        options.setdefault("poll_interval", 0.05)
        instances = [make_task(Tenants, shared, **options) for _ in range(count)]
        for task in instances:
            task.start()
        return instances

    return make


def finished(task: AsyncTask, names: list[str]) -> dict[str, dict[str, Any]] | None:
    views = {name: task.retrieve(name) for name in names}
    if all(view is not None and view["status"] in ("success", "failed") for view in views.values()):
        return views  # type: ignore[return-value]
    return None


def most_in_a_window(starts: list[datetime], seconds: float) -> int:
    """The most starts in any half-open window [t, t + seconds)."""
    moments = sorted(starts)
    return max(sum(1 for other in moments if moment <= other < moment + timedelta(seconds=seconds))
               for moment in moments)


def held_claims(name: str, reason: str) -> float:
    return REGISTRY.get_sample_value("asynctask_claims_held_total", {"task": name, "reason": reason}) or 0.0


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "count", "period_ms", "burst"), [
    ("5/60s", 5, 60_000, 0), ("600/m", 600, 60_000, 0), ("100/h", 100, 3_600_000, 0),
    ("10/1.5s burst=5", 10, 1500, 5), (" 3 / 2 s ", 3, 2000, 0), ("1/d", 1, 86_400_000, 0),
    ("1000/s", 1000, 1000, 0), ("7/250ms", 7, 250, 0),
])
def test_rate_limit_specs(spec: str, count: int, period_ms: int, burst: int) -> None:
    rate = parse_rate_limit(spec)
    assert rate is not None and (rate.count, rate.period_ms, rate.burst) == (count, period_ms, burst)
    assert rate.interval * count >= period_ms > (rate.interval - 1) * count  # rounded up, to the ms
    assert parse_rate_limit(str(rate)) == rate


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"rate_limit": "ten/m"}, ValueError, "N/period"),
    ({"rate_limit": "0/m"}, ValueError, "at least one"),
    ({"rate_limit": "5"}, ValueError, "N/period"),
    ({"rate_limit": "5/60x"}, ValueError, "N/period"),
    ({"rate_limit": "5/m burst=-1"}, ValueError, "N/period"),
    ({"rate_limit": "5000/s"}, ValueError, "one start per millisecond"),
    ({"rate_limit": 5}, TypeError, "string"),
    ({"rate_limit_key": "tenant"}, ValueError, "needs a rate_limit"),
    ({"rate_limit": "5/s", "rate_limit_key": "nope"}, ValueError, "main does not take"),
    ({"concurrency_key": "nope", "max_concurrency_per_key": 2}, ValueError, "main does not take"),
    ({"concurrency_key": "tenant"}, ValueError, "together"),
    ({"max_concurrency_per_key": 2}, ValueError, "together"),
    ({"concurrency_key": "tenant", "max_concurrency_per_key": 0}, ValueError, "at least 1"),
    ({"concurrency_key": 42, "max_concurrency_per_key": 1}, TypeError, "param name or a function"),
    ({"concurrency_key": lambda a, b: a, "max_concurrency_per_key": 1}, TypeError, "one argument"),
])
def test_a_bad_spec_raises_at_construction(make_task: Callable[..., AsyncTask], options: dict[str, Any],
                                           error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        make_task(Tenants, **options)


def test_key_options_as_class_attributes_and_functions(make_task: Callable[..., AsyncTask]) -> None:
    class ByMethod(Tenants):
        max_concurrency_per_key = 1

        def concurrency_key(self, params: dict[str, Any]) -> str | None:
            return params.get("tenant")

    class ByFunction(Tenants):
        rate_limit = "100/s"
        rate_limit_key = staticmethod(lambda params: f"t-{params['tenant']}" if params.get("tenant") else None)

    by_method = make_task(ByMethod, worker=False)
    by_function = make_task(ByFunction, worker=False)
    assert by_method._limits.keys({"name": "x", "tenant": "A"}) == {"concurrency_key": "A"}
    assert by_function._limits.keys({"name": "x", "tenant": "A"}) == {"rate_key": "t-A"}
    assert by_function._limits.keys({"name": "x"}) == {"rate_key": None}  # None: no limit for it
    assert str(by_function.rate_limit) == "100/1s" and by_method.max_concurrency_per_key == 1
    by_method.submit({"name": "stored", "tenant": "A"})
    assert by_method.collection.find_one({"task_id": "stored"})["concurrency_key"] == "A"


# -- the rate limit ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_no_window_of_the_period_holds_more_starts_than_the_rate_and_all_finish(
    fleet: Callable[..., list[AsyncTask]],
) -> None:
    instances = fleet(3, rate_limit="3/2s")
    names = [f"r{i}" for i in range(7)]
    for name in names:
        instances[0].submit({"name": name})
    views = wait_until(lambda: finished(instances[0], names), "every task ends", timeout=DEADLINE)
    assert {view["status"] for view in views.values()} == {"success"}
    assert {(view["attempts"], instances[0].collection.find_one({"task_id": name})["retries"])
            for name, view in views.items()} == {(1, 0)}, "held tasks cost no attempt and no retry"
    starts = [view["started_at"] for view in views.values()]
    assert most_in_a_window(starts, 2.0) == 3
    spread = (max(starts) - min(starts)).total_seconds()
    assert 4.0 <= spread < 4.0 + 3.0, f"7 starts at 3 per 2 s take 6 intervals of 0.667 s, not {spread}s"


@pytest.mark.timeout(60)
def test_a_held_task_says_why_and_until_when_and_starts_then(
    fleet: Callable[..., list[AsyncTask]], book: Book,
) -> None:
    first, _second = fleet(2, rate_limit="1/1.5s", poll_interval=5)
    name = Tenants.name
    before = held_claims(name, "rate")
    first.submit({"name": "one"})
    wait_until(lambda: first.retrieve("one")["status"] != "queued", "the first task starts", timeout=DEADLINE)
    first.submit({"name": "two"})
    view = wait_until(lambda: (v := first.retrieve("two"))["held"] and v, "the second task is held", timeout=5)
    assert view["status"] == "queued" and view["held"]["reason"] == "rate" and view["held"]["key"] is None
    started = first.retrieve("one")["started_at"]
    assert view["held"]["until"] == started + timedelta(milliseconds=1500)
    client = Flask(__name__)
    first.init_app(client, "/api")
    answer = client.test_client().get("/api/two").get_json()["data"]
    assert answer["held"]["reason"] == "rate" and answer["held"]["until"]
    assert held_claims(name, "rate") > before, "a held-back claim is counted"
    # The claim is woken when the rate allows it, not at the next poll (5 s).
    done = wait_until(lambda: finished(first, ["two"]), "the held task runs", timeout=DEADLINE)
    gap = (done["two"]["started_at"] - started).total_seconds()
    assert 1.5 <= gap < 1.5 + 1.0, gap
    assert done["two"]["held"] is None and done["two"]["attempts"] == 1


@pytest.mark.timeout(60)
def test_a_rate_key_limits_each_key_apart(fleet: Callable[..., list[AsyncTask]], book: Book) -> None:
    instances = fleet(2, rate_limit="1/2s", rate_limit_key="tenant")
    submitted = time.monotonic()
    for name, tenant in (("a1", "A"), ("a2", "A"), ("b1", "B"), ("free", None)):
        instances[0].submit({"name": name, "tenant": tenant})
    views = wait_until(lambda: finished(instances[0], ["a1", "b1", "free"]), "a1, b1, free end", timeout=DEADLINE)
    assert max(book.first_start(name) for name in ("a1", "b1", "free")) - submitted < 1.0
    held = instances[0].retrieve("a2")
    assert held["status"] == "queued" and held["held"]["reason"] == "rate" and held["held"]["key"] == "A"
    done = wait_until(lambda: finished(instances[0], ["a2"]), "a2 ends", timeout=DEADLINE)
    assert (done["a2"]["started_at"] - views["a1"]["started_at"]).total_seconds() >= 2.0


@pytest.mark.timeout(60)
def test_retries_count_as_starts(fleet: Callable[..., list[AsyncTask]], book: Book) -> None:
    [task] = fleet(1, rate_limit="1/1s", max_retries=1, retry_delay=0.01)
    task.submit({"name": "flaky", "fail_first": True})
    view = wait_until(lambda: finished(task, ["flaky"]), "the retry ends", timeout=DEADLINE)["flaky"]
    assert (view["status"], view["attempts"]) == ("success", 2)
    with book.lock:
        times = sorted(at for _, _, at in book.starts)
    assert len(times) == 2 and times[1] - times[0] >= 0.8, "the retry waited for the rate"


# -- per-key concurrency ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_busy_key_never_runs_more_than_its_limit_nor_delays_other_keys(
    fleet: Callable[..., list[AsyncTask]], book: Book,
) -> None:
    poll = 0.1
    instances = fleet(3, concurrency_key="tenant", max_concurrency_per_key=2, poll_interval=poll)
    a_names = [f"A-{i:02d}" for i in range(20)]
    for name in a_names:
        instances[0].submit({"name": name, "tenant": "A", "seconds": 0.15})
    wait_until(lambda: book.running.get("A") == 2, "two A's run", timeout=DEADLINE)
    view = instances[1].retrieve("A-19")
    assert view["held"] == {"reason": "concurrency", "key": "A", "until": None}
    for pair in range(3):  # B has a limit of 2 as well: two at a time
        names = [f"B-{pair}{i}" for i in range(2 if pair < 2 else 1)]
        submitted = time.monotonic()
        for name in names:
            instances[2].submit({"name": name, "tenant": "B", "seconds": 0.05})
        wait_until(lambda names=names: finished(instances[0], names), "the B's end", timeout=DEADLINE)
        for name in names:
            assert book.first_start(name) - submitted < poll + 0.5, f"{name} waited behind tenant A"
    views = wait_until(lambda: finished(instances[0], a_names), "every A ends", timeout=DEADLINE)
    assert book.most["A"] == 2 and book.most["B"] <= 2
    assert {(v["status"], v["attempts"], v["held"]) for v in views.values()} == {("success", 1, None)}
    slots = instances[0]._limits.docs.collection
    # A slot is given back just after the outcome is written, so the last ones may still be on their way.
    wait_until(lambda: all(doc["count"] == 0 and doc["holders"] == [] for doc in slots.find({"kind": "concurrency"})),
               "every key's slots are given back", timeout=DEADLINE)


@pytest.mark.timeout(60)
def test_tasks_without_a_key_are_not_limited_and_max_concurrency_still_caps_the_type(
    fleet: Callable[..., list[AsyncTask]], book: Book,
) -> None:
    instances = fleet(2, concurrency_key=lambda params: params.get("tenant"), max_concurrency_per_key=1,
                      max_concurrency=3)
    book.gate.clear()
    for i in range(5):
        instances[0].submit({"name": f"n{i}"})
    wait_until(lambda: book.running.get(None) == 3, "three keyless tasks run", timeout=DEADLINE)
    instances[0].submit({"name": "k1", "tenant": "K"})
    time.sleep(0.3)  # give a wrong claim the chance to exceed the type's cap
    assert sum(book.running.values()) == 3
    assert instances[0].retrieve("k1")["held"] == {"reason": "concurrency", "key": None, "until": None}, \
        "k1 waits on the type's cap, not on its key"
    book.gate.set()
    views = wait_until(lambda: finished(instances[0], [f"n{i}" for i in range(5)] + ["k1"]), "all end",
                       timeout=DEADLINE)
    assert {v["status"] for v in views.values()} == {"success"} and book.most[None] == 3


@pytest.mark.timeout(60)
def test_a_slow_callback_does_not_hold_its_tasks_key(fleet: Callable[..., list[AsyncTask]], book: Book,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    in_callback, release = threading.Event(), threading.Event()

    def callback(self: AsyncTask, future: Any, task_id: str) -> None:
        if task_id == "first":
            in_callback.set()
            release.wait(DEADLINE)

    monkeypatch.setattr(Tenants, "callback", callback)
    # The sweep (each heartbeat interval) also gives back the shares of ended tasks: it must not be what frees this one.
    [task] = fleet(1, concurrency_key="tenant", max_concurrency_per_key=1, heartbeat_interval=60, stale_after=180)
    try:
        task.submit({"name": "first", "tenant": "A"})
        assert in_callback.wait(DEADLINE), "the first task's callback runs"
        task.submit({"name": "second", "tenant": "A"})
        views = wait_until(lambda: finished(task, ["second"]), "the second A runs during the callback",
                           timeout=20)
        assert views["second"]["status"] == "success" and not release.is_set()
    finally:
        release.set()


# -- the documents: lost races, dead workers, unsure clocks -----------------------------------


def test_shares_taken_for_a_claim_that_lost_its_race_are_given_back(
    make_task: Callable[..., AsyncTask], monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = make_task(Tenants, worker=False, rate_limit="1/h", rate_limit_key="tenant",
                     concurrency_key="tenant", max_concurrency_per_key=1)
    task.submit({"name": "raced", "tenant": "A"})
    limits = task._limits
    assert limits is not None
    claim_for = task._store.claim_fields("me", "host:1")
    monkeypatch.setattr(task._store, "claim", lambda *args, **kwargs: None)  # a rival claimed it first
    assert limits.claim(claim_for) is None
    docs = {doc["kind"]: doc for doc in limits.docs.collection.find()}
    assert docs["concurrency"]["count"] == 0 and docs["concurrency"]["holders"] == []
    assert not limits.docs.blocked(), "the hour's one start was given back"
    monkeypatch.undo()
    claimed = limits.claim(claim_for)
    assert claimed is not None and (claimed["task_id"], claimed["attempts"]) == ("raced", 1)
    now_held = limits.docs.states({"A"}, {"A"})
    assert now_held.rates.keys() == {"A"} and now_held.full == {"A"}


def test_one_attempt_holds_one_share_and_rivals_see_it_taken(memory: MemoryCollection) -> None:
    docs = LimitDocs(memory, "T", interval=None, tolerance=0, keyed_rate=False, per_key=2, clock=_Clock())
    assert docs.hold("A", "t1", 1) == "held"
    assert docs.hold("A", "t1", 1) == "taken"
    assert docs.hold("A", "t2", 1) == "held"
    assert docs.hold("A", "t3", 1) == "full"
    assert docs.blocked().full == {"A"}
    assert docs.unhold("A", "t1", 1) is True and docs.unhold("A", "t1", 1) is False
    assert not docs.blocked(), "a key with room again is no longer marked"
    assert docs.hold("A", "t3", 1) == "held" and docs.hold("B", "t4", 1) == "held"


def test_the_sweep_gives_back_the_shares_of_attempts_that_no_longer_run(memory: MemoryCollection) -> None:
    docs = LimitDocs(memory, "T", interval=None, tolerance=0, keyed_rate=False, per_key=3, clock=_Clock())
    memory.insert_many([
        {"task_id": "runs", "type": "T", "status": "running", "attempts": 1},
        {"task_id": "orphaned", "type": "T", "status": "queued", "attempts": 1},  # its worker died
        {"task_id": "claiming", "type": "T", "status": "queued", "attempts": 0},  # a claim under way
    ])
    for task_id in ("runs", "orphaned", "claiming"):
        assert docs.hold("A", task_id, 1) == "held"
    moments = iter(range(0, 1000))
    silence: Silence[tuple[str, str, int]] = Silence(stale_after=3, interval=1, clock=lambda: float(next(moments)))
    assert docs.reap(silence) == 1
    holders = memory.database.get_collection("tasks.limits").find_one({"key": "A"})["holders"]
    assert sorted(h["task_id"] for h in holders) == ["claiming", "runs"]
    for _ in range(4):  # the claim never lands: after stale_after of watching, its share goes too
        docs.reap(silence)
    holders = memory.database.get_collection("tasks.limits").find_one({"key": "A"})["holders"]
    assert [h["task_id"] for h in holders] == ["runs"]


class _Clock:
    """A database clock for the documents alone: this process's time, or a chosen uncertainty."""

    def __init__(self) -> None:
        self.now_ms = time.time_ns() / 1e6
        self.widths: tuple[float, float] = (0.0, 0.0)
        self.fixed = False

    def bounds(self) -> tuple[int, int]:
        now = self.now_ms if self.fixed else time.time_ns() / 1e6
        earliest, latest = random.uniform(0, self.widths[0]), random.uniform(0, self.widths[1])
        return math.floor(now - earliest), math.ceil(now + latest)

    def monotonic_at(self, ms: int) -> float:
        return time.monotonic() + (ms - self.now_ms) / 1000


@pytest.mark.parametrize(("spec", "widths"), [("3/2s", (0, 0)), ("3/2s", (40, 40)), ("5/1s burst=3", (25, 60)),
                                              ("10/100ms burst=2", (3, 9)), ("20/100ms burst=1", (6, 6))])
def test_gcra_never_lets_more_than_n_plus_burst_start_however_unsure_the_clock(
    memory: MemoryCollection, spec: str, widths: tuple[float, float],
) -> None:
    """Many claimers, each knowing the database's time only within its own bounds, ask for
    starts at random moments; some give theirs back. In true time no window of the period
    holds more than N + burst of the starts kept."""
    rate = parse_rate_limit(spec)
    assert rate is not None
    clock = _Clock()
    clock.fixed, clock.widths = True, widths
    docs = LimitDocs(memory, "T", interval=rate.interval, tolerance=rate.tolerance, keyed_rate=False,
                     per_key=None, clock=clock)  # type: ignore[arg-type]
    random.seed(spec)
    kept: list[float] = []
    losing: list[tuple[int, int]] = []  # (step to give back at, booked tat) of claims that lost their race
    for step in range(3000):
        clock.now_ms += random.expovariate(1 / (rate.interval / 4))
        for due, booked in [lost for lost in losing if lost[0] <= step]:
            docs.give(None, booked)
            losing.remove((due, booked))
        taken = docs.take(None)
        if isinstance(taken, tuple):
            if random.random() < 0.1:
                losing.append((step + random.randint(0, 3), taken[1]))  # the start did not happen
            else:
                kept.append(clock.now_ms)
    kept.sort()
    most = max(sum(1 for other in kept[i:i + rate.count + rate.burst + 2] if other < start + rate.period_ms)
               for i, start in enumerate(kept))
    assert most <= rate.count + rate.burst
    span = kept[-1] - kept[0]
    assert len(kept) >= 0.3 * span / rate.interval, "the limit still lets starts through"


def test_the_held_view_is_read_from_the_limits_not_stored(make_task: Callable[..., AsyncTask]) -> None:
    task = make_task(Tenants, worker=False, concurrency_key="tenant", max_concurrency_per_key=1)
    task.submit({"name": "waits", "tenant": "A"})
    assert task.retrieve("waits")["held"] is None  # nothing runs: nothing holds it
    assert task._limits.docs.hold("A", "elsewhere", 1) == "held"
    assert task.retrieve("waits")["held"] == {"reason": "concurrency", "key": "A", "until": None}
    listed = task.list(status="queued")["tasks"]
    assert listed[0]["held"]["key"] == "A"
    task.submit({"name": "later", "tenant": "A"}, delay=60)
    assert task.retrieve("later")["held"] is None, "a task not due yet waits for its time, not a limit"
    assert "concurrency_key" not in task.retrieve("waits")


def test_the_dashboard_and_metrics_show_what_the_limits_hold_back(make_task: Callable[..., AsyncTask]) -> None:
    task = make_task(Tenants, worker=False, concurrency_key="tenant", max_concurrency_per_key=1)
    task.submit({"name": "waits", "tenant": "A"})
    limits = task._limits
    assert limits is not None and limits.docs.hold("A", "elsewhere", 1) == "held"
    before = held_claims(Tenants.name, "concurrency")
    assert limits.claim(task._store.claim_fields("me", "host:1")) is None  # refused: key A is full
    assert held_claims(Tenants.name, "concurrency") == before + 1
    assert limits.held_back() == {"rate": 0, "concurrency": 1}
    client = task.app("/api").test_client()
    assert "1 held by key limit" in client.get("/dashboard").get_data(as_text=True)
    page = client.get(f"/dashboard/tasks/{Tenants.name}/waits").get_data(as_text=True)
    assert "held by the concurrency limit of key A" in page
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'asynctask_queue_held{{reason="concurrency",task="{Tenants.name}"}} 1.0' in metrics \
        or f'asynctask_queue_held{{task="{Tenants.name}",reason="concurrency"}} 1.0' in metrics


def test_a_task_waiting_on_the_types_max_concurrency_says_so(make_task, wait_for):
    from tasks import Gate

    gate = make_task(Gate, max_concurrency=1, max_worker=4, poll_interval=0.05)
    gate.run(name="first")
    assert gate.started.wait(10)
    gate.run(name="second")
    wait_until(lambda: gate.retrieve("second")["held"], "the second task says why it waits", timeout=5)
    assert gate.retrieve("second")["held"] == {"reason": "concurrency", "key": None, "until": None}
    assert gate.retrieve("first")["held"] is None, "a running task is not held"
    gate.gate.set()
    assert wait_for(gate, "second")["status"] == "success"
    assert gate.retrieve("second")["held"] is None
