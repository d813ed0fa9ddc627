"""A short fault-injection run (bench/faults.py): real processes, SIGKILL, SIGTERM and SIGSTOP of
workers, database stalls longer than stale_after, two workers with skewed clocks, with
priorities, delays, retries, cancels and max_concurrency; nothing lost, stuck, run twice at
once (frozen zombies apart), over the cap, and no cancel lost."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import faults  # noqa: E402


@pytest.mark.timeout(300)
def test_a_short_fault_run_breaks_no_promise(tmp_path):
    report = faults.run(seed=7, duration=25, workers=3, folder=tmp_path)
    print("\n".join(report.lines()))
    assert report.submitted > 50 and report.statuses.get("success", 0) > 30
    assert report.faults["SIGKILL"] + report.faults["SIGTERM"] + report.faults["worker frozen"] >= 2
    assert report.faults["database stall"] >= 1
    assert report.lost == [] and report.stuck == []
    assert report.duplicates == [], "main ran twice at once outside a frozen zombie"
    assert report.cap_overruns == 0 and report.most_at_once <= faults.CAP
    assert report.cancels_lost == []
