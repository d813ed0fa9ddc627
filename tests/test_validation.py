"""Input checks: task ids, params against main's signature, storable results."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from asynctask import InvalidParams, InvalidTaskId, ResultNotStorable
from asynctask.validation import Signature, check_result, check_task_id


@pytest.mark.parametrize("task_id", ["a", "A-z_0.9:x", "x" * 128, "...", "a..b", "1b6c0f"])
def test_valid_task_ids(task_id):
    assert check_task_id(task_id) == task_id


@pytest.mark.parametrize(
    "task_id",
    ["", ".", "..", "x" * 129, "../../x", "a/b", "a\\b", "a b", "é", "a\0b", "a\nb", "$ne", "a%2Fb"],
)
def test_invalid_task_ids(task_id):
    with pytest.raises(InvalidTaskId) as info:
        check_task_id(task_id)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("task_id", [None, 1, 1.5, ["a"], {"$ne": None}, b"abc"])
def test_task_id_must_be_a_string(task_id):
    with pytest.raises(InvalidTaskId, match="string"):
        check_task_id(task_id)


def main(logger: logging.Logger, text: str, top: int = 10, *, flag: bool = False):
    return text


def test_signature_names_unknown_and_missing_params():
    signature = Signature(main)
    signature.check({"text": "a", "top": 1, "flag": True})
    with pytest.raises(InvalidParams, match="colour"):
        signature.check({"text": "a", "colour": 1})
    with pytest.raises(InvalidParams, match="missing.*text"):
        signature.check({"top": 1})
    with pytest.raises(InvalidParams, match="logger"):
        signature.check({"text": "a", "logger": 1})


def test_kwargs_main_takes_any_param_but_not_operator_keys():
    signature = Signature(lambda logger, **params: params)
    signature.check({"anything": {"nested": [1, {"deep": True}]}})
    for bad in [{"$where": 1}, {"a": {"$gt": 1}}, {"a": [{"b.c": 1}]}]:
        with pytest.raises(InvalidParams, match=r"\$|\."):
            signature.check(bad)


def test_unstorable_params_are_refused():
    signature = Signature(lambda logger, **params: params)
    with pytest.raises(InvalidParams, match="stored"):
        signature.check({"x": object()})


@pytest.mark.parametrize(
    "result", [None, 1, "s", [1, "a"], {"a": {"b": [1.5]}}, (1, 2), datetime.now(timezone.utc)]
)
def test_storable_results(result):
    check_result(result)


@pytest.mark.parametrize("result", [{1, 2}, object(), b"bytes", float("nan"), {1: "int key"}, 2**70])
def test_unstorable_results(result):
    with pytest.raises(ResultNotStorable, match="cannot be stored"):
        check_result(result)


def test_oversized_result_is_refused():
    with pytest.raises(ResultNotStorable, match="16 MiB"):
        check_result("x" * (17 * 1024 * 1024))
