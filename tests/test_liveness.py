"""Liveness without clocks: counters that stop changing, timed by the judge while in contact."""

from __future__ import annotations

import threading

from asynctask import MemoryCollection
from asynctask.liveness import Lease, Silence

STALE, INTERVAL = 3.0, 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def read(silence: Silence, clock: Clock, values: dict, took: float = 0.01) -> list:
    """One read of the judge's: it took `took` seconds of its clock, then one interval passes."""
    started = clock.now
    clock.now += took
    silent = silence.observe(values, started, clock.now)
    clock.now += max(INTERVAL - took, 0.0)
    return silent


def test_a_counter_that_stops_is_silent_after_stale_after_and_a_moving_one_never():
    clock = Clock()
    silence = Silence(STALE, INTERVAL, clock)
    found = [read(silence, clock, {"dead": 5, "alive": beat}) for beat in range(8)]
    assert all("alive" not in keys for keys in found)
    first = next(i for i, keys in enumerate(found) if keys == ["dead"])
    assert first * INTERVAL >= STALE and first * INTERVAL < STALE + 2 * INTERVAL


def test_a_slow_read_of_the_judge_restarts_the_count():
    """A database stall: the judge's own read blocks, and no one could beat meanwhile."""
    clock = Clock()
    silence = Silence(STALE, INTERVAL, clock)
    read(silence, clock, {"w": 1})
    read(silence, clock, {"w": 1}, took=30.0)  # stalled for 30 s: far past stale_after
    assert read(silence, clock, {"w": 1}) == [], "the outage is not the worker's silence"
    assert read(silence, clock, {"w": 2}) == []
    silent = [read(silence, clock, {"w": 2}) for _ in range(6)]
    assert silent[0] == [] and silent[-1] == ["w"], "silent for stale_after of contact after the outage: judged"


def test_a_late_read_restarts_the_count_and_a_failed_one_too():
    clock = Clock()
    silence = Silence(STALE, INTERVAL, clock)
    read(silence, clock, {"w": 1})
    clock.now += 10 * INTERVAL  # the judge itself was frozen
    assert read(silence, clock, {"w": 1}) == []
    silence.lost_contact()
    assert read(silence, clock, {"w": 1}) == []
    assert read(silence, clock, {"w": 1}) == []


def test_no_wall_clock_is_read():
    """Whatever the hosts' clocks say, only the judge's monotonic readings count: the same
    sequence of readings gives the same verdicts (the API takes no datetime at all)."""
    verdicts = []
    for _ in range(2):
        clock = Clock()
        silence = Silence(STALE, INTERVAL, clock)
        verdicts.append([read(silence, clock, {"w": 1}) for _ in range(6)])
    assert verdicts[0] == verdicts[1]


def test_a_lease_has_one_holder_and_is_taken_over_only_after_its_holder_went_silent():
    collection = MemoryCollection()
    clock = Clock()
    first = Lease(lambda: collection, "sweep/T", "a", Silence(STALE, INTERVAL, clock))
    second = Lease(lambda: collection, "sweep/T", "b", Silence(STALE, INTERVAL, clock))
    assert first.hold() and not second.hold()
    for _ in range(10):  # the holder renews: never taken
        clock.now += INTERVAL
        assert first.hold() and not second.hold()
    taken = []
    for _ in range(10):  # the holder stops renewing
        clock.now += INTERVAL
        taken.append(second.hold())
    assert taken.index(True) * INTERVAL >= STALE - INTERVAL
    assert not first.hold(), "the old holder learns it lost the lease"
    second.give_up()
    assert first.hold(), "a lease handed back is free at once"


def test_rivals_taking_over_a_silent_lease_have_one_winner():
    collection = MemoryCollection()
    clock = Clock()
    Lease(lambda: collection, "sweep/T", "dead", Silence(STALE, INTERVAL, clock)).hold()
    rivals = [Lease(lambda: collection, "sweep/T", f"r{i}", Silence(STALE, INTERVAL, clock)) for i in range(8)]
    for _ in range(int(STALE / INTERVAL)):
        assert not any(rival.hold() for rival in rivals)
        clock.now += INTERVAL
    clock.now += INTERVAL
    barrier = threading.Barrier(len(rivals))
    won: list[bool] = []

    def contend(lease: Lease) -> None:
        barrier.wait()
        won.append(lease.hold())

    threads = [threading.Thread(target=contend, args=(rival,)) for rival in rivals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert won.count(True) == 1
