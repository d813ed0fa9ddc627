"""Checks on user input made before anything reaches the database or the file system."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import bson

from .errors import InvalidParams, InvalidTaskId, ResultNotStorable
from .jsonable import jsonable

_TASK_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
#: A MongoDB document may hold at most 16 MiB.
MAX_BSON_SIZE = 16 * 1024 * 1024
#: `run()` takes this keyword for itself, so `main` cannot.
RESERVED_PARAMS = ("task_id",)
#: How deep params may nest; deeper input is refused before it is stored.
MAX_DEPTH = 64


def check_task_id(task_id: Any) -> str:
    """Return `task_id` if it is a valid id (CONTRACT section 4), else raise `InvalidTaskId`."""
    if not isinstance(task_id, str):
        raise InvalidTaskId(f"task_id must be a string, not {type(task_id).__name__}")
    if task_id in (".", "..") or not _TASK_ID.fullmatch(task_id):
        raise InvalidTaskId(
            "task_id must be 1-128 characters of A-Z a-z 0-9 _ . : - and not '.' or '..'"
        )
    return task_id


class Signature:
    """What `main` accepts, read once so each submission is checked without introspection."""

    def __init__(self, main: Callable[..., Any]) -> None:
        try:
            params = inspect.signature(main).parameters
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot read the signature of main: {exc}") from exc
        kinds = {p.name: p.kind for p in params.values()}
        self.var_keyword = inspect.Parameter.VAR_KEYWORD in kinds.values()
        if "logger" not in kinds and not self.var_keyword:
            raise TypeError("main must accept a 'logger' parameter (or **kwargs)")
        if kinds.get("logger") in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            raise TypeError("main must accept 'logger' as a keyword")
        for name in RESERVED_PARAMS:
            if name in kinds:
                raise TypeError(f"main may not take a parameter named {name!r}: run() reserves it")
        required_positional = [
            p.name
            for p in params.values()
            if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty
        ]
        if required_positional:
            raise TypeError(f"main's params are passed by keyword; {required_positional} are positional-only")
        keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.parameters = {
            p.name: p for p in params.values() if p.kind in keyword_kinds and p.name != "logger"
        }
        self.required = [n for n, p in self.parameters.items() if p.default is p.empty]

    def check(self, params: Mapping[str, Any]) -> None:
        """Raise `InvalidParams` naming each param `main` cannot take or needs but lacks."""
        problems = []
        if "logger" in params:
            problems.append("'logger' is passed by asynctask and cannot be a param")
        if not self.var_keyword:
            unknown = sorted(k for k in params if k not in self.parameters)
            if unknown:
                problems.append(f"unexpected param(s): {', '.join(map(str, unknown))}")
        missing = [n for n in self.required if n not in params]
        if missing:
            problems.append(f"missing required param(s): {', '.join(missing)}")
        if problems:
            raise InvalidParams("; ".join(problems))
        check_keys(params, "params")
        try:
            encoded = bson.encode({"params": dict(params)})
        except (bson.errors.InvalidDocument, TypeError, OverflowError) as exc:
            raise InvalidParams(f"params cannot be stored: {exc}") from exc
        if len(encoded) > MAX_BSON_SIZE // 2:
            raise InvalidParams("params are too large to store")


def check_keys(value: Any, where: str, depth: int = 0) -> None:
    """Refuse mapping keys MongoDB treats as operators or paths (`$x`, `a.b`) at any depth."""
    if depth > MAX_DEPTH:
        raise InvalidParams(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidParams(f"{where}: keys must be strings")
            if key.startswith("$") or "." in key or "\0" in key:
                raise InvalidParams(f"{where}: key {key!r} may not start with '$' or hold '.'")
            check_keys(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_keys(item, where, depth + 1)


def check_result(result: Any) -> None:
    """Raise `ResultNotStorable` unless `result` can be stored in MongoDB and sent as JSON."""
    try:
        size = len(bson.encode({"result": result}))
        json.dumps(jsonable(result), allow_nan=False)
    except (bson.errors.InvalidDocument, TypeError, ValueError, OverflowError) as exc:
        raise ResultNotStorable(
            f"main returned a {type(result).__name__} that cannot be stored as BSON/JSON: {exc}"
        ) from exc
    if size > MAX_BSON_SIZE - 64 * 1024:
        raise ResultNotStorable(f"main returned a result of {size} bytes; MongoDB stores at most 16 MiB")



def duration(name: str, value: Any, *, optional: bool = False) -> timedelta | None:
    """A positive number of seconds or timedelta as a timedelta; None only when `optional`."""
    if value is None and optional:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        kind = "None, " if optional else ""
        raise TypeError(f"{name} must be {kind}seconds (int or float) or a timedelta, not {value!r}")
    if not seconds > 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return timedelta(seconds=seconds)


def positive_int(name: str, value: Any) -> int:
    """`value` if it is an int >= 1, else a TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")
    return value
