"""Checks on user input made before anything reaches the database or the file system."""

from __future__ import annotations

import inspect
import json
import math
import re
import typing
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import bson
import pydantic
import pydantic_core
from pydantic.json_schema import GenerateJsonSchema, PydanticJsonSchemaWarning

from .errors import InvalidParams, InvalidTaskId, ResultNotStorable
from .jsonable import jsonable

#: A valid task id (and request id): 1-128 characters of A-Z a-z 0-9 _ . : - (and not "." or "..").
TASK_ID_CHARS = r"[A-Za-z0-9_.:-]{1,128}"
_TASK_ID = re.compile(TASK_ID_CHARS)
#: The longest long-poll (`?wait=`) the service holds a request for, in seconds.
MAX_WAIT = 60
#: A MongoDB document may hold at most 16 MiB.
MAX_BSON_SIZE = 16 * 1024 * 1024
#: The longest duration an option may have (about 100 years): a date that far on still fits
#: in a `datetime`, so no deadline, retry or expiry computed from it can overflow.
MAX_DURATION = 100 * 365 * 24 * 3600.0
#: `run()` takes this keyword for itself, so `main` cannot.
RESERVED_PARAMS = ("task_id",)
#: How deep params may nest; deeper input is refused before it is stored.
MAX_DEPTH = 64
#: The range of a task's priority; higher runs first.
MIN_PRIORITY, MAX_PRIORITY = -100, 100
#: Where `Signature.json_schema` points references to its definitions by default.
DEFAULT_REF_TEMPLATE = "#/$defs/{model}"


def check_task_id(task_id: Any) -> str:
    """Return `task_id` if it is a valid id, else raise `InvalidTaskId`.

    A valid id is 1-128 characters of A-Z a-z 0-9 _ . : - and not "." or "..".
    """
    if not isinstance(task_id, str):
        raise InvalidTaskId(f"task_id must be a string, not {type(task_id).__name__}")
    if task_id in (".", "..") or not _TASK_ID.fullmatch(task_id):
        raise InvalidTaskId(
            "task_id must be 1-128 characters of A-Z a-z 0-9 _ . : - and not '.' or '..'"
        )
    return task_id


# -- JSON values no store or client can round-trip ----------------------------------------------

def is_unicode(text: str) -> bool:
    """Whether `text` is valid Unicode: no lone surrogate (which `json.loads` accepts as "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unsafe_value(value: Any, where: str = "params", max_depth: int | None = MAX_DEPTH) -> str | None:
    """What is wrong with `value`, or None: a non-finite number, a string or key that is not
    valid Unicode, or nesting deeper than `max_depth`, at any depth (keys included).

    The problem is named by the top-level key it is under (`where` for `value` itself).
    Iterative, so any depth of nesting is looked at without recursion.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, name, depth = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{name}: {item!r} is not a finite number"
        elif isinstance(item, str):
            if not is_unicode(item):
                return f"{name}: a string is not valid Unicode (it holds a lone surrogate)"
        elif isinstance(item, (Mapping, list, tuple)):
            if max_depth is not None and depth >= max_depth:
                return f"{name}: nested more than {max_depth} levels deep"
            if isinstance(item, Mapping):
                for key, child in item.items():
                    if isinstance(key, str) and not is_unicode(key):
                        return f"{name}: a key is not valid Unicode (it holds a lone surrogate)"
                    if isinstance(key, float) and not math.isfinite(key):
                        return f"{name}: a key is not a finite number"
                    stack.append((child, key if depth == 0 and isinstance(key, str) else name, depth + 1))
            else:
                stack.extend((child, name, depth + 1) for child in item)
    return None


# -- params against main's signature ------------------------------------------------------------

class _Schema(GenerateJsonSchema):
    """JSON Schema without a title per property (the property's name says it all)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _hints(main: Callable[..., Any], parameters: Mapping[str, inspect.Parameter]) -> dict[str, Any]:
    """`main`'s annotations, resolved; a name that cannot be resolved only loses its own type."""
    try:
        return typing.get_type_hints(main, include_extras=True)
    except Exception:  # noqa: BLE001 - user annotations may name anything
        pass
    namespace = dict(getattr(main, "__globals__", {}))
    hints = {}
    for name, param in parameters.items():
        annotation = param.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - the module's own annotation
            except Exception:  # noqa: BLE001
                annotation = Any
        hints[name] = annotation
    return hints


def _usable(annotation: Any) -> Any:
    """`annotation`, or Any when there is none or pydantic cannot validate it or describe it in JSON Schema."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return Any
    try:
        pydantic.TypeAdapter(annotation).json_schema()
    except Exception:  # noqa: BLE001 - any type pydantic cannot take is taken as any value
        return Any
    return annotation

#: What a pydantic error type expects, in the words of an error message.
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "int_parsing_size": "an integer", "float_type": "a number", "float_parsing": "a number",
    "finite_number": "a finite number", "string_type": "a string", "string_unicode": "a string",
    "bool_type": "a boolean", "bool_parsing": "a boolean", "list_type": "a list", "tuple_type": "a list",
    "set_type": "a list", "frozen_set_type": "a list", "dict_type": "an object", "model_type": "an object",
    "model_attributes_type": "an object", "dataclass_type": "an object", "none_required": "null",
}


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "params"


def _describe(error: Any) -> str:
    """One pydantic error as "name: expected an integer, got 'ten'"."""
    where = _location(tuple(error.get("loc", ())))
    got = _short_repr(error.get("input"))
    expected = _EXPECTED.get(error["type"])
    message = str(error.get("msg", "invalid value"))
    if expected is None and message.startswith("Input should be "):
        expected = message[len("Input should be "):].replace("a valid ", "a ", 1)
    if expected is not None:
        return f"{where}: expected {expected}, got {got}"
    return f"{where}: {message[:1].lower()}{message[1:]}, got {got}"


class Signature:
    """What `main` accepts, read once: a pydantic model of its keyword params.

    `check` validates (and converts, in pydantic's lax mode: "10" for an `int` is 10) the
    params of a new task against the model; `json_schema` describes the same model.
    """

    def __init__(self, main: Callable[..., Any]) -> None:
        try:
            params = inspect.signature(main).parameters
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot read the signature of main: {exc}") from exc
        kinds = {p.name: p.kind for p in params.values()}
        #: `async def main`: its attempts run on the process's event loop.
        self.coroutine = inspect.iscoroutinefunction(main)
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

        hints = _hints(main, self.parameters)
        #: Each param's type as checked: its annotation, or Any (none, or one pydantic cannot take).
        self.annotations = {name: _usable(hints.get(name, p.annotation)) for name, p in self.parameters.items()}
        self.adapters = {name: pydantic.TypeAdapter(a) for name, a in self.annotations.items()}
        # Fields get neutral names and the param's name as alias, so any name a Python function
        # may take (`model_config`, `json`, `_private`) is a param like any other.
        self._fields = {f"p{i}": name for i, name in enumerate(self.parameters)}
        fields: dict[str, Any] = {}
        for field, name in self._fields.items():
            param = self.parameters[name]
            default = ... if param.default is param.empty else param.default
            fields[field] = (self.annotations[name], pydantic.Field(default, alias=name))
        config = pydantic.ConfigDict(
            extra="allow" if self.var_keyword else "forbid", allow_inf_nan=False,
            populate_by_name=False, arbitrary_types_allowed=True,
        )
        self.model: type[pydantic.BaseModel] = pydantic.create_model(
            "Params", __config__=config, **fields,
        )
        #: The defaults JSON Schema shows: those JSON carries and the annotation allows.
        self._schema_defaults: dict[str, Any] = {}
        for name, param in self.parameters.items():
            if param.default is not param.empty:
                shown, value = self._json_default(name, param.default)
                if shown:
                    self._schema_defaults[name] = value

    def _json_default(self, name: str, default: Any) -> tuple[bool, Any]:
        """(True, the default as JSON) when JSON carries it and the param's type allows it."""
        adapter = self.adapters[name]
        try:
            text = json.dumps(pydantic_core.to_jsonable_python(default), allow_nan=False)
            adapter.validate_json(text, strict=True)
        except Exception:  # noqa: BLE001 - a default JSON cannot carry, or its type does not allow
            return False, None
        return True, json.loads(text)

    def check(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The params converted to `main`'s annotations; raises `InvalidParams` naming each problem.

        Refused: params `main` does not take (unless it has **kwargs), required ones missing,
        values that do not fit a param's annotation, non-finite numbers, strings that are not
        valid Unicode, operator keys (`$x`, `a.b`), and params too large to store. Only the
        params given are returned (defaults are `main`'s business). A converted value that
        MongoDB cannot store as it is (an Enum, a dataclass) is returned in its JSON form.
        """
        if not isinstance(params, Mapping):
            raise InvalidParams(f"params must be a mapping, not {type(params).__name__}")
        if any(not isinstance(key, str) for key in params):
            raise InvalidParams("params: keys must be strings")
        unsafe = unsafe_value(params)
        if unsafe:
            raise InvalidParams(unsafe)
        problems = []
        if "logger" in params:
            problems.append("'logger' is passed by asynctask and cannot be a param")
        if not self.var_keyword:
            unknown = sorted(k for k in params if k not in self.parameters and k != "logger")
            if unknown:
                problems.append(f"unexpected param(s): {', '.join(unknown)}")
        missing = [n for n in self.required if n not in params]
        if missing:
            problems.append(f"missing required param(s): {', '.join(missing)}")
        data = {k: v for k, v in params.items() if k != "logger"}
        model = None
        try:
            model = self.model.model_validate(data)
        except pydantic.ValidationError as exc:
            problems.extend(
                _describe(error) for error in exc.errors(include_url=False)
                if error["type"] not in ("missing", "extra_forbidden")
            )
        if problems or model is None:
            raise InvalidParams("; ".join(problems) or "params are not valid")
        converted = self._converted(model)
        values = {key: converted[key] for key in params if key in converted}
        unsafe = unsafe_value(values)
        if unsafe:
            raise InvalidParams(unsafe)
        check_keys(values, "params")
        try:
            encoded = bson.encode({"params": values})
        except (bson.errors.InvalidDocument, TypeError, OverflowError, ValueError) as exc:
            raise InvalidParams(f"params cannot be stored: {exc}") from exc
        if len(encoded) > MAX_BSON_SIZE // 2:
            raise InvalidParams("params are too large to store")
        return values

    def _converted(self, model: pydantic.BaseModel) -> dict[str, Any]:
        """The params the model holds that were given, each as MongoDB can store it."""
        values: dict[str, Any] = {}
        for field in model.model_fields_set:
            name = self._fields.get(field)
            if name is None:
                continue
            value = getattr(model, field)
            try:
                bson.encode({"v": value})
            except Exception:  # noqa: BLE001 - stored in its JSON form instead
                try:
                    value = self.adapters[name].dump_python(value, mode="json")
                except Exception as exc:  # noqa: BLE001
                    raise InvalidParams(f"params cannot be stored: {name}: {exc}") from exc
            values[name] = value
        values.update(model.model_extra or {})
        return values

    def json_schema(self, ref_template: str = DEFAULT_REF_TEMPLATE) -> dict[str, Any]:
        """The JSON Schema (2020-12, as OpenAPI 3.1 uses) of the params `check` accepts.

        Definitions of named types (an Enum, a model) are under `$defs`, referred to by
        `ref_template` (which has a `{model}` placeholder).
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
            schema = self.model.model_json_schema(
                by_alias=True, ref_template=ref_template, schema_generator=_Schema, mode="validation",
            )
        schema.pop("title", None)
        properties = schema.setdefault("properties", {})
        for name, prop in properties.items():
            prop.pop("default", None)
            if name in self._schema_defaults:
                prop["default"] = self._schema_defaults[name]
        if self.var_keyword:
            # Any other name is a param, but these two: asynctask and run() pass them itself.
            schema["not"] = {"anyOf": [{"required": ["task_id"]}, {"required": ["logger"]}]}
            schema.pop("additionalProperties", None)
        else:
            schema["additionalProperties"] = False
        return schema


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
    if result is None:
        return
    try:
        size = len(bson.encode({"result": result}))
        json.dumps(jsonable(result), allow_nan=False)
    except (bson.errors.InvalidDocument, TypeError, ValueError, OverflowError) as exc:
        raise ResultNotStorable(
            f"main returned a {type(result).__name__} that cannot be stored as BSON/JSON: {exc}"
        ) from exc
    if size > MAX_BSON_SIZE - 64 * 1024:
        raise ResultNotStorable(f"main returned a result of {size} bytes; MongoDB stores at most 16 MiB")


# -- queue options -------------------------------------------------------------------------------

def queue_options(
    priority: Any = None, delay: Any = None, run_at: Any = None, *, now: datetime | None = None,
) -> tuple[int, datetime | None]:
    """(priority, due time) of a new task from its queue options; raises `InvalidParams`.

    `priority` is an int from -100 to 100 (None: 0; higher runs first). `delay` is seconds
    (int or float, finite, >= 0) or a timedelta; `run_at` an aware datetime or an ISO 8601
    string with a time zone. Give at most one of them. The due time is in UTC, None when the
    task is due now (no delay, a delay of 0, or a `run_at` not after `now`).
    """
    if priority is None:
        priority = 0
    elif isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidParams(f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority!r}")
    elif not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidParams(f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority!r}")
    if delay is not None and run_at is not None:
        raise InvalidParams("give delay or run_at, not both")
    now = datetime.now(timezone.utc) if now is None else _aware("now", now, TypeError)
    if delay is not None:
        seconds = _seconds(delay)
        if seconds == 0:
            return priority, None
        try:
            return priority, now + timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidParams(f"delay is too large: {delay!r}") from None
    if run_at is not None:
        if isinstance(run_at, str):
            run_at = _parse_time(run_at)
        elif not isinstance(run_at, datetime):
            raise InvalidParams(f"run_at must be a datetime or an ISO 8601 string with a time zone, not {run_at!r}")
        due = _aware("run_at", run_at, InvalidParams)
        return priority, (due if due > now else None)
    return priority, None


def _seconds(delay: Any) -> float:
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        try:
            seconds = float(delay)
        except OverflowError:
            raise InvalidParams(f"delay is too large: {delay!r}") from None
    else:
        raise InvalidParams(f"delay must be seconds (a number) or a timedelta, not {_short_repr(delay)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidParams(f"delay must be a finite number of seconds >= 0, not {delay!r}")
    return seconds


def _parse_time(text: str) -> datetime:
    """An ISO 8601 date-time string as a datetime ("Z" for UTC too, on every Python)."""
    given = text.strip()
    if given[-1:] in ("Z", "z"):
        given = given[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(given)
    except ValueError:
        raise InvalidParams(
            f"run_at must be an ISO 8601 date-time with a time zone, e.g. 2030-01-01T09:00:00+00:00, "
            f"not {_short_repr(text)}"
        ) from None


def _aware(name: str, value: datetime, error: type[Exception]) -> datetime:
    """`value` in UTC; a naive datetime is refused with `error`."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise error(f"{name} must have a time zone (e.g. +00:00 or Z), not {value.isoformat()!r}")
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise error(f"{name} is out of range: {value.isoformat()!r}") from None


# -- options of AsyncTask ------------------------------------------------------------------------

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
    if seconds > MAX_DURATION:
        raise ValueError(f"{name} must be at most {MAX_DURATION:g} seconds (about 100 years), not {value!r}")
    return timedelta(seconds=seconds)


def positive_int(name: str, value: Any) -> int:
    """`value` if it is an int >= 1, else a TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")
    return value
