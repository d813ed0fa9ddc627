"""Statuses: the enum's values and the moves the store allows between them."""

from __future__ import annotations

from asynctask import TaskStatus
from asynctask.status import ACTIVE, ALLOWED_FROM, FINISHED, RERUNNABLE


def test_statuses_are_the_contract_strings():
    assert [s.value for s in TaskStatus] == ["pending", "queued", "running", "success", "failed", "cancelled"]
    assert TaskStatus("success") == "success" and str(TaskStatus.FAILED) == "failed"


def test_finished_tasks_move_nowhere_but_through_a_claim():
    for target, sources in ALLOWED_FROM.items():
        assert not set(sources) & {"success", "cancelled"}, target
    assert ALLOWED_FROM["running"] == ("queued",)
    assert set(ALLOWED_FROM["success"]) == {"running"}


def test_groups_partition_the_statuses():
    assert set(ACTIVE) | set(FINISHED) | {"pending"} == {s.value for s in TaskStatus}
    assert set(RERUNNABLE) == {"failed", "pending", "cancelled"}
