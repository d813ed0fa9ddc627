"""Input checks: task ids, params against main's signature, storable results."""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from asynctask import InvalidParams, InvalidTaskId, ResultNotStorable
from asynctask.validation import Signature, check_result, check_task_id, queue_options


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


# -- typed params ---------------------------------------------------------------------------------

def test_check_returns_the_params_given_converted_to_the_annotations():
    signature = Signature(main)
    assert signature.check({"text": "a", "top": "10"}) == {"text": "a", "top": 10}
    assert signature.check({"text": "a", "flag": "true"}) == {"text": "a", "flag": True}
    assert signature.check({"text": "a"}) == {"text": "a"}  # defaults stay main's business


def test_a_wrong_type_names_the_param_and_the_type_expected():
    signature = Signature(main)
    with pytest.raises(InvalidParams) as caught:
        signature.check({"text": 5, "top": "ten", "colour": 1})
    message = str(caught.value)
    assert "top: expected an integer, got 'ten'" in message
    assert "text: expected a string, got 5" in message
    assert "colour" in message
    with pytest.raises(InvalidParams, match=r"top: expected an integer, got 2\.5"):
        signature.check({"text": "a", "top": 2.5})


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Opaque:
    """A class pydantic knows nothing about."""


def typed(logger, anything, tags: list[int], colour: Colour = Colour.RED, opaque: Opaque = None,
          ratio: float = 1.0, model_config: str = "", _private: int = 0, json: dict | None = None):
    return None


def test_params_of_every_kind():
    signature = Signature(typed)
    given = {"anything": {"x": [1, None]}, "tags": ["1", 2], "colour": "blue", "opaque": {"any": "json"},
             "ratio": "0.5", "model_config": "m", "_private": "3", "json": {"k": 1}}
    assert signature.check(given) == {
        "anything": {"x": [1, None]}, "tags": [1, 2], "colour": "blue", "opaque": {"any": "json"},
        "ratio": 0.5, "model_config": "m", "_private": 3, "json": {"k": 1},
    }
    with pytest.raises(InvalidParams, match="colour: expected 'red' or 'blue', got 'green'"):
        signature.check({"anything": 1, "tags": [], "colour": "green"})
    with pytest.raises(InvalidParams, match=r"tags\[1\]: expected an integer"):
        signature.check({"anything": 1, "tags": [1, "x"]})


def kwargs_main(logger, top: int = 1, **params):
    return params


def test_a_kwargs_main_passes_other_params_through():
    signature = Signature(kwargs_main)
    assert signature.check({"top": "2", "other": ["x"], "more": {"a": 1}}) == {
        "top": 2, "other": ["x"], "more": {"a": 1}}


@pytest.mark.parametrize("params", [
    pytest.param({"text": "a", "top": float("inf")}, id="inf"),
    pytest.param({"text": "a", "ratio": float("nan")}, id="nan"),
    pytest.param({"text": "a", "ratio": "inf"}, id="inf-text-for-a-float"),
    pytest.param({"text": "a", "extra": [1, {"deep": float("-inf")}]}, id="nested"),
])
def test_non_finite_numbers_are_refused(params):
    def ratio_main(logger, text, ratio: float = 1.0, **more):
        return None

    signature = Signature(ratio_main)
    with pytest.raises(InvalidParams, match="finite"):
        signature.check(params)


@pytest.mark.parametrize("params", [
    pytest.param({"text": "\ud800"}, id="value"),
    pytest.param({"text": "a", "extra": {"k": ["ok", "b\udfff"]}}, id="nested-value"),
    pytest.param({"text": "a", "extra": {"\ud800": 1}}, id="nested-key"),
    pytest.param({"text": "a", "\udbff": 1}, id="key"),
])
def test_strings_that_are_not_unicode_are_refused(params):
    signature = Signature(lambda logger, text, **more: None)
    with pytest.raises(InvalidParams, match="Unicode"):
        signature.check(params)


def test_the_json_schema_is_the_models():
    schema = Signature(typed).json_schema()
    assert schema["required"] == ["anything", "tags"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["tags"] == {"type": "array", "items": {"type": "integer"}}
    assert schema["properties"]["colour"] == {"$ref": "#/$defs/Colour", "default": "red"}
    assert schema["$defs"]["Colour"]["enum"] == ["red", "blue"]
    assert schema["properties"]["anything"] == {} and schema["properties"]["opaque"] == {"default": None}
    kwargs = Signature(lambda logger, **params: None).json_schema()
    assert "additionalProperties" not in kwargs
    assert kwargs["not"] == {"anyOf": [{"required": ["task_id"]}, {"required": ["logger"]}]}


# -- queue options --------------------------------------------------------------------------------

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_queue_options_default_to_priority_0_due_now():
    assert queue_options(now=NOW) == (0, None)
    assert queue_options(-100, now=NOW) == (-100, None)
    assert queue_options(100, delay=0, now=NOW) == (100, None)


def test_a_delay_or_run_at_gives_the_due_time_in_utc():
    assert queue_options(delay=90, now=NOW) == (0, NOW + timedelta(seconds=90))
    assert queue_options(delay=1.5, now=NOW) == (0, NOW + timedelta(seconds=1.5))
    assert queue_options(delay=timedelta(minutes=2), now=NOW) == (0, NOW + timedelta(minutes=2))
    later = datetime(2030, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=1)))
    due = queue_options(5, run_at=later, now=NOW)
    assert due == (5, datetime(2030, 1, 1, 13, 0, tzinfo=timezone.utc)) and due[1].utcoffset() == timedelta(0)
    assert queue_options(run_at="2030-01-01T13:00:00Z", now=NOW)[1] == datetime(2030, 1, 1, 13, tzinfo=timezone.utc)
    assert queue_options(run_at="2030-01-01T14:00:00+01:00", now=NOW)[1] == datetime(2030, 1, 1, 13, tzinfo=timezone.utc)
    assert queue_options(run_at="2029-12-31T00:00:00+00:00", now=NOW) == (0, None)  # past: due now


@pytest.mark.parametrize(("options", "named"), [
    ({"priority": 101}, "priority"),
    ({"priority": -101}, "priority"),
    ({"priority": True}, "priority"),
    ({"priority": 1.5}, "priority"),
    ({"priority": "1"}, "priority"),
    ({"delay": -1}, "delay"),
    ({"delay": float("inf")}, "delay"),
    ({"delay": float("nan")}, "delay"),
    ({"delay": True}, "delay"),
    ({"delay": "10"}, "delay"),
    ({"delay": timedelta(seconds=-1)}, "delay"),
    ({"delay": 1e300}, "delay"),
    ({"run_at": "2030-01-01T13:00:00"}, "run_at"),
    ({"run_at": datetime(2030, 1, 1, 13)}, "run_at"),
    ({"run_at": "tomorrow"}, "run_at"),
    ({"run_at": 1893456000}, "run_at"),
    ({"delay": 1, "run_at": "2030-01-01T13:00:00Z"}, "run_at"),
])
def test_bad_queue_options_are_refused_naming_the_option(options: dict[str, Any], named: str):
    with pytest.raises(InvalidParams, match=named):
        queue_options(**options, now=NOW)
