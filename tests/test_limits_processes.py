"""Rate limits and per-key concurrency across real `asynctask worker` processes on the shared
MongoDB (the test wire server): the limits hold for the whole fleet, not per process.

`apps.Recorded` tasks record every call of `main` in the database; their tenant is the `key` up
to its first "-" (`APPS_PER_KEY` keys `concurrency_key` on it). Starts are read from the task
documents' `started_at`, which a rate-limited claim sets to the moment the limit counted the
start (on the database's clock), so the windows checked are exactly the limiter's.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import apps
import pytest
from apps import all_in, calls, tasks
from waiting import wait_until

DEADLINE = 60.0


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most calls that ran at the same moment."""
    return max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)


@pytest.mark.timeout(120)
def test_a_rate_limit_holds_across_worker_processes(
    db: Any, name: str, local_task: Callable[..., apps.Recorded], workers: Callable[..., apps.WorkerProcess],
) -> None:
    settings = {"seconds": 0.2, "poll": 0.1, "heartbeat": 0.5, "rate_limit": "3/2s"}
    for _ in range(2):
        workers(concurrency=2, **settings)
    api = local_task(worker=False, rate_limit="3/2s")
    keys = [f"r{i}" for i in range(8)]
    for key in keys:
        api.run(key=key)
    docs = wait_until(lambda: all_in(db, name, keys, "success"), "every task ends", timeout=DEADLINE)
    starts = sorted(docs[key]["started_at"] for key in keys)
    for first, fourth in zip(starts, starts[3:], strict=False):
        assert fourth - first >= timedelta(seconds=2), f"4 starts within 2 s: {first} .. {fourth}"
    assert starts[-1] - starts[0] < timedelta(seconds=7 * 0.667 + 3), "held tasks start when the rate allows"
    assert {(docs[key]["attempts"], docs[key]["retries"]) for key in keys} == {(1, 0)}
    assert sum(len(calls(db, name)[key]) for key in keys) == len(keys)


@pytest.mark.timeout(120)
def test_one_tenants_burst_never_starves_another_across_processes(
    db: Any, name: str, local_task: Callable[..., apps.Recorded], workers: Callable[..., apps.WorkerProcess],
) -> None:
    poll = 0.1
    settings = {"seconds": 0.5, "poll": poll, "heartbeat": 0.5, "per_key": 2}
    for _ in range(2):
        workers(concurrency=3, **settings)
    api = local_task(worker=False, per_key=2)
    a_keys = [f"A-{i:02d}" for i in range(20)]
    for key in a_keys:
        api.run(key=key)
    wait_until(lambda: sum(1 for doc in tasks(db, name).values() if doc["status"] == "running") == 2,
               "two A's run", timeout=DEADLINE)
    held = api.retrieve("A-19")
    assert held is not None and held["held"] == {"reason": "concurrency", "key": "A", "until": None}
    b_keys = [f"B-{i}" for i in range(5)]
    waited = {}
    for pair in (b_keys[0:2], b_keys[2:4], b_keys[4:]):  # B's own limit is 2 as well
        submitted = time.time()
        for key in pair:
            api.run(key=key)
        wait_until(lambda pair=pair: all(calls(db, name).get(key) for key in pair), "the B's start", timeout=DEADLINE)
        for key in pair:
            waited[key] = calls(db, name)[key][0]["started"] - submitted
        wait_until(lambda pair=pair: all_in(db, name, pair, "success"), "the B's end", timeout=DEADLINE)
    assert max(waited.values()) < poll + 1.0, f"B's waited behind tenant A: {waited}"
    docs = wait_until(lambda: all_in(db, name, a_keys, "success"), "every A ends", timeout=DEADLINE)
    recorded = calls(db, name)
    assert most_at_once([(c["started"], c["ended"]) for key in a_keys for c in recorded[key]]) <= 2
    assert {(docs[key]["attempts"], docs[key]["retries"]) for key in a_keys + b_keys} == {(1, 0)}
    assert min(recorded[key][0]["started"] for key in b_keys) < max(recorded[key][0]["started"] for key in a_keys)


@pytest.mark.timeout(120)
def test_a_killed_workers_key_share_comes_back(
    db: Any, name: str, local_task: Callable[..., apps.Recorded], workers: Callable[..., apps.WorkerProcess],
) -> None:
    stale_after = 0.8
    settings = {"poll": 0.05, "heartbeat": 0.2, "stale_after": stale_after, "per_key": 1}
    victim = workers(concurrency=1, seconds=30, **settings)
    api = local_task(worker=False, per_key=1)
    api.run(key="A-0")
    wait_until(lambda: all_in(db, name, ["A-0"], "running"), "the victim runs A-0", timeout=DEADLINE)
    survivor = workers(concurrency=2, seconds=0.05, **settings)
    api.run(key="A-1")
    assert api.retrieve("A-1")["held"] == {"reason": "concurrency", "key": "A", "until": None}
    os.killpg(victim.pid, signal.SIGKILL)
    victim.proc.wait(timeout=10)
    killed = time.time()
    docs = wait_until(lambda: all_in(db, name, ["A-0", "A-1"], "success"), "A's share comes back", timeout=DEADLINE)
    recorded = calls(db, name)
    first = min(c["started"] for key in ("A-0", "A-1") for c in recorded[key] if c["pid"] == survivor.pid)
    # The survivor first takes over the sweep from the dead worker (stale_after), then finds its
    # task orphaned (stale_after): the share is given back in that same sweep round (about 2 s
    # here; a loaded machine's slow round trips make the sweep count silence again, hence the margin).
    assert first - killed < 2 * stale_after + 6.0, f"the share came back {first - killed:.2f}s after the kill"
    assert docs["A-0"]["attempts"] == 2 and docs["A-1"]["attempts"] == 1
    finished = [(c["started"], c["ended"]) for key in ("A-0", "A-1") for c in recorded[key] if c["ended"]]
    assert most_at_once(finished) == 1, "never two tasks of key A at once"
    # The share is given back just after the outcome is recorded: wait for it, do not race it.
    wait_until(lambda: (lambda s: s is None or s["holders"] == [])(db[f"{name}.limits"].find_one({"key": "A"})),
               "the last share is given back", timeout=DEADLINE)
