"""The OpenAPI 3.0.3 document of a task's HTTP API (CONTRACT sections 4 and 8).

The body of `POST {endpoint}` is described from `main`'s signature: each keyword param is a
property of `data`, typed from its annotation, with its default when JSON can carry it.
`openapi_document` describes an app serving several task types (`init_app`, blueprints).
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import json
import types
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .status import TaskStatus
from .validation import Signature

if TYPE_CHECKING:
    from .task import AsyncTask

#: The task id as a JSON Schema pattern (CONTRACT section 4; '.' and '..' are refused too).
TASK_ID_PATTERN = "^[A-Za-z0-9_.:-]{1,128}$"
STATUSES = [status.value for status in TaskStatus]

_PRIMITIVES: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
_UNIONS = {typing.Union} | ({types.UnionType} if hasattr(types, "UnionType") else set())
_ARRAYS = {
    list, tuple, set, frozenset,
    collections.abc.Sequence, collections.abc.MutableSequence,
    collections.abc.Set, collections.abc.MutableSet, collections.abc.Collection, collections.abc.Iterable,
}
_OBJECTS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}
_JSON_TYPES: dict[str, Any] = {
    "string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict,
}


# -- Python annotations as schemas -----------------------------------------------------------

def schema_for(annotation: Any) -> dict[str, Any]:
    """The OpenAPI 3.0 schema of the JSON values an annotation allows; {} allows anything."""
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, str):
        return {}
    if annotation is None or annotation is type(None):
        return {"nullable": True, "enum": [None]}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return schema_for(args[0])
    if origin in _UNIONS:
        return _union(args)
    if origin is typing.Literal:
        return _enum(args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _enum(tuple(annotation))
    if annotation in _PRIMITIVES:
        return {"type": _PRIMITIVES[annotation]}
    base = origin or annotation
    if base in _ARRAYS:
        return _array(base, args)
    if base in _OBJECTS:
        return _object(args)
    return {}


def _union(args: tuple[Any, ...]) -> dict[str, Any]:
    members = [arg for arg in args if arg is not type(None)]
    schemas = [schema_for(arg) for arg in members]
    schema = schemas[0] if len(schemas) == 1 else _any_of(schemas)
    return nullable(schema) if len(members) < len(args) else schema


def _any_of(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    unique = [s for i, s in enumerate(schemas) if s not in schemas[:i]]
    if any(not s for s in unique):
        return {}
    return unique[0] if len(unique) == 1 else {"anyOf": unique}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` that also allows null (OpenAPI 3.0 has `nullable`, not a null type)."""
    if not schema:
        return {}
    if "anyOf" in schema:
        return {**schema, "anyOf": [nullable(s) for s in schema["anyOf"]]}
    result = {**schema, "nullable": True}
    # 3.0.3: an enum restricts even a nullable value, so null must be one of its values.
    if "enum" in result and None not in result["enum"]:
        result["enum"] = [*result["enum"], None]
    return result


def _enum(values: tuple[Any, ...]) -> dict[str, Any]:
    plain = [v.value if isinstance(v, enum.Enum) else v for v in values]
    present = [v for v in plain if v is not None]
    kinds = {_PRIMITIVES.get(type(v)) for v in present}
    schema: dict[str, Any] = {"enum": present}
    if len(kinds) == 1 and None not in kinds:
        schema["type"] = kinds.pop()
    return nullable(schema) if len(present) < len(plain) else schema


def _array(base: Any, args: tuple[Any, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": {}}
    if base is tuple and args and args[-1] is not Ellipsis:
        fixed = [a for a in args if a != ()]
        schema.update(minItems=len(fixed), maxItems=len(fixed))
        if fixed:
            schema["items"] = _any_of([schema_for(a) for a in fixed])
    elif args:
        schema["items"] = schema_for(args[0])
    if base in (set, frozenset, collections.abc.Set, collections.abc.MutableSet):
        schema["uniqueItems"] = True
    return schema


def _object(args: tuple[Any, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    values = schema_for(args[1]) if len(args) == 2 else {}
    if values:
        schema["additionalProperties"] = values
    return schema


def _hints(main: Any, parameters: dict[str, inspect.Parameter]) -> dict[str, Any]:
    """`main`'s annotations, resolved; a name that cannot be resolved only loses its own type."""
    try:
        return typing.get_type_hints(main, include_extras=True)
    except Exception:  # noqa: BLE001 - user annotations may name anything
        pass
    namespace = getattr(main, "__globals__", {})
    hints = {}
    for name, param in parameters.items():
        annotation = param.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(namespace))  # noqa: S307 - the module's own annotation
            except Exception:  # noqa: BLE001
                annotation = inspect.Parameter.empty
        hints[name] = annotation
    return hints


def _json_value(value: Any) -> tuple[bool, Any]:
    """(True, value as JSON gives it back) when JSON can carry `value`, else (False, None)."""
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        return True, json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, OverflowError, RecursionError):
        return False, None


def params_schema(task: AsyncTask) -> dict[str, Any]:
    """The schema of the params of a new task (`data` in a POST body), from `main`'s signature."""
    signature = getattr(task, "_signature", None) or Signature(task.main)
    hints = _hints(task.main, signature.parameters)
    properties = {name: _param_schema(param, hints.get(name, param.annotation))
                  for name, param in signature.parameters.items()}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if signature.required:
        schema["required"] = list(signature.required)
    if signature.var_keyword:
        # **kwargs takes any name but these two: run() and asynctask pass them itself.
        schema["not"] = {"anyOf": [{"required": ["task_id"]}, {"required": ["logger"]}]}
    else:
        schema["additionalProperties"] = False
    return schema


def rerun_schema() -> dict[str, Any]:
    """The schema of `data` that re-runs a stored task: its id and nothing else."""
    return {
        "type": "object",
        "required": ["task_id"],
        "properties": {"task_id": {
            "type": "string", "pattern": TASK_ID_PATTERN,
            "description": "Re-run the stored task with this id and its stored params (not '.' or '..').",
        }},
        "additionalProperties": False,
    }


def _param_schema(param: inspect.Parameter, annotation: Any) -> dict[str, Any]:
    schema = schema_for(annotation)
    if param.default is param.empty:
        return schema
    if param.default is None:
        schema = nullable(schema)
    encodable, default = _json_value(param.default)
    # A default its own annotation does not allow would make the whole document invalid.
    if encodable and fits(default, schema):
        schema = {**schema, "default": default}
    return schema


def fits(value: Any, schema: dict[str, Any]) -> bool:
    """Whether the JSON `value` is allowed by `schema` (one `schema_for` made)."""
    if value is None:
        return not schema or bool(schema.get("nullable"))
    if "anyOf" in schema:
        return any(fits(value, option) for option in schema["anyOf"])
    if "enum" in schema and not any(value == v and type(value) is type(v) for v in schema["enum"]):
        return False
    kind = schema.get("type")
    if kind is None:
        return True
    if isinstance(value, bool) != (kind == "boolean") or not isinstance(value, _JSON_TYPES[kind]):
        return False
    if kind == "array":
        return (schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
                and all(fits(item, schema["items"]) for item in value))
    if kind == "object":
        return all(fits(item, schema.get("additionalProperties", {})) for item in value.values())
    return True


# -- the document ----------------------------------------------------------------------------

def openapi_spec(task: AsyncTask, endpoint: str = "/api", *, title: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of `task` served at `endpoint` (as `task.app(endpoint)` does)."""
    return openapi_document([(task, endpoint)], title=title)


def openapi_document(services: Iterable[tuple[AsyncTask, str]], *, title: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of one app serving several (task, endpoint) pairs."""
    from . import __version__

    services = [(task, _base(endpoint)) for task, endpoint in services]
    if not services:
        raise ValueError("an OpenAPI document needs at least one (task, endpoint)")
    names = [type(task).__name__ for task, _ in services]
    spec: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": title or f"{', '.join(dict.fromkeys(names))} task API", "version": __version__},
        "paths": {},
        "components": _shared_components(),
    }
    if len(services) == 1:
        spec["info"]["description"] = (type(services[0][0]).__doc__ or "").strip() or "Tasks run by asynctask."
    # With several task types, each gets its own schema and operation names.
    suffixes = [""] if len(services) == 1 else _unique(names)
    for (task, base), suffix in zip(services, suffixes, strict=True):
        _add_task(spec, task, base, suffix)
    protected = any(getattr(task, "api_token", None) for task, _ in services)
    spec["paths"].update(_service_paths(protected))
    if protected:
        spec["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    return spec


def _base(endpoint: str) -> str:
    if not isinstance(endpoint, str) or not endpoint.startswith("/"):
        raise ValueError(f"endpoint must be a path starting with '/', not {endpoint!r}")
    return endpoint.rstrip("/")


def _unique(names: list[str]) -> list[str]:
    """`names`, each made unique by a number after its second and later occurrences."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}{seen[name]}")
    return unique


def _add_task(spec: dict[str, Any], task: AsyncTask, base: str, suffix: str) -> None:
    """Add the routes of one task type at `base`, and the schema of its params."""
    params = f"{suffix}Params"
    spec["components"]["schemas"][params] = params_schema(task)
    by_id = [{"$ref": "#/components/parameters/TaskId"}]
    paths = {
        base or "/": {"post": _submit_operation(params), "get": _list_operation()},
        f"{base}/{{task_id}}": {"parameters": by_id, "get": _show_operation(), "delete": _cancel_operation()},
        f"{base}/{{task_id}}/log": {"parameters": by_id, "get": _log_operation()},
    }
    secured = bool(getattr(task, "api_token", None))
    for item in paths.values():
        for method, operation in item.items():
            if method != "parameters":
                operation["operationId"] += suffix
                _secure(operation, secured)
    spec["paths"].update(paths)


def _secure(operation: dict[str, Any], secured: bool) -> None:
    operation["responses"].update(_errors("401"))
    if secured:
        operation["security"] = [{"bearerAuth": []}]


def _service_paths(protected: bool) -> dict[str, Any]:
    """/ping and /healthz, always open; /metrics and /openapi.json, behind any task's token."""
    metrics, openapi = _metrics_operation(), _openapi_operation()
    _secure(metrics, protected)
    _secure(openapi, protected)
    return {
        "/ping": {"get": _ping_operation()},
        "/healthz": {"get": _healthz_operation()},
        "/metrics": {"get": metrics},
        "/openapi.json": {"get": openapi},
    }


def _shared_components() -> dict[str, Any]:
    return {
        "schemas": {
            "TaskStatus": {"type": "string", "enum": STATUSES},
            "Rerun": rerun_schema(),
            "Submitted": {
                "type": "object",
                "required": ["task_id", "status"],
                "properties": {
                    "task_id": {"type": "string"},
                    "status": {"$ref": "#/components/schemas/TaskStatus"},
                },
            },
            "Cancelled": {
                "type": "object",
                "required": ["task_id", "status"],
                "properties": {
                    "task_id": {"type": "string"},
                    "status": {"$ref": "#/components/schemas/TaskStatus"},
                    "cancel_requested": {"type": "boolean"},
                },
            },
            "Task": _task_view(),
            "TaskList": {
                "type": "object",
                "required": ["tasks", "total", "counts"],
                "properties": {
                    "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
                    "total": {"type": "integer", "minimum": 0},
                    "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                },
            },
            "Error": _envelope({}, "error"),
        },
        "parameters": {
            "TaskId": {
                "name": "task_id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": TASK_ID_PATTERN},
            },
        },
        "responses": {
            code: _json_response(description, {"$ref": "#/components/schemas/Error"})
            for code, description in _ERRORS.items()
        },
    }


def _task_view() -> dict[str, Any]:
    """The public view of a task (CONTRACT section 3)."""
    return {
        "type": "object",
        "required": ["task_id", "status"],
        "properties": {
            "task_id": {"type": "string"},
            "status": {"$ref": "#/components/schemas/TaskStatus"},
            "params": {"type": "object", "nullable": True},
            "result": {},
            "error": {"type": "string", "nullable": True},
            "attempts": {"type": "integer", "nullable": True},
            "created_at": _date_time(),
            "started_at": _date_time(),
            "finished_at": _date_time(),
            "update_time": _date_time(),
            "progress": {
                "type": "object", "nullable": True,
                "properties": {
                    "percent": {"type": "number"},
                    "message": {"type": "string", "nullable": True},
                },
            },
            "next_retry_at": _date_time(),
            "trace_id": {"type": "string", "nullable": True},
        },
    }


def _date_time() -> dict[str, Any]:
    return {"type": "string", "format": "date-time", "nullable": True}


def _envelope(data: dict[str, Any], status: str) -> dict[str, Any]:
    """The envelope every JSON answer uses, with `data` as given."""
    return {
        "type": "object",
        "required": ["status", "data", "error_data", "error_msg"],
        "properties": {
            "status": {"type": "string", "enum": [status]},
            "data": data,
            "error_data": {"type": "array", "items": {}},
            "error_msg": {"type": "string"},
        },
    }


_ERRORS = {
    "400": "The request is not what the route takes; `error_msg` names the problem.",
    "401": "A bearer token is required and was missing or wrong.",
    "404": "Unknown task (a re-run of an unknown id, too) or route.",
    "409": "The task has already finished.",
    "413": "The request body is over the size limit.",
    "500": "Server error; `error_data` holds an error id that is also in the server log.",
    "503": "The database does not answer.",
}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(description: str, data: str | dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A 2xx answer: the envelope with `data` (a schema, or the name of a component)."""
    schema = {"$ref": f"#/components/schemas/{data}"} if isinstance(data, str) else data
    response = _json_response(description, _envelope(schema, "ok"))
    if headers:
        response["headers"] = headers
    return response


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/{code}"} for code in codes}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _submit_operation(params: str) -> dict[str, Any]:
    data = {"anyOf": [{"$ref": f"#/components/schemas/{params}"}, {"$ref": "#/components/schemas/Rerun"}]}
    body = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {
        "operationId": "submitTask",
        "summary": "Submit a task, or re-run a stored one with `data.task_id`.",
        "parameters": [{
            "name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "Stored as the task's trace_id and echoed in the response (1-128 of A-Z a-z 0-9 _ . : -).",
        }],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "202": _ok("Accepted.", "Submitted", {
                "Location": {"schema": {"type": "string"}, "description": "The URL of the task."},
                "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds before asking again."},
            }),
            **_errors("400", "404", "413", "500"),
        },
    }


def _list_operation() -> dict[str, Any]:
    return {
        "operationId": "listTasks",
        "summary": "With `task_id`, one task's public view; without, a page of tasks, newest first.",
        "parameters": [
            _query("task_id", {"type": "string", "pattern": TASK_ID_PATTERN}, "Show this task."),
            _query("status", {"$ref": "#/components/schemas/TaskStatus"}, "Only tasks in this status."),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}, "Page size."),
            _query("skip", {"type": "integer", "minimum": 0, "default": 0}, "Tasks to skip."),
        ],
        "responses": {
            "200": _ok("A task, or a page of tasks.", {"anyOf": [
                {"$ref": "#/components/schemas/Task"}, {"$ref": "#/components/schemas/TaskList"},
            ]}),
            **_errors("400", "404"),
        },
    }


def _show_operation() -> dict[str, Any]:
    return {
        "operationId": "getTask",
        "summary": "The public view of a task; with `wait`, as soon as it is finished or after `wait` s.",
        "parameters": [_query("wait", {"type": "number", "minimum": 0, "maximum": 60}, "Seconds to long-poll.")],
        "responses": {"200": _ok("The task.", "Task"), **_errors("400", "404")},
    }


def _cancel_operation() -> dict[str, Any]:
    return {
        "operationId": "cancelTask",
        "summary": "Cancel a queued or running task.",
        "responses": {
            "200": _ok("Cancelled.", "Cancelled"),
            "202": _ok("Cancel requested; the running task ends `cancelled`.", "Cancelled"),
            **_errors("400", "404", "409"),
        },
    }


def _log_operation() -> dict[str, Any]:
    return {
        "operationId": "getTaskLog",
        "summary": "The task's log file from byte `offset`.",
        "parameters": [_query("offset", {"type": "integer", "minimum": 0, "default": 0}, "First byte to send.")],
        "responses": {
            "200": {
                "description": "Log text.",
                "headers": {"X-Log-Offset": {
                    "schema": {"type": "integer", "minimum": 0}, "description": "The offset to ask next.",
                }},
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_errors("400", "404"),
        },
    }


def _ping_operation() -> dict[str, Any]:
    schema = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}}
    return {"operationId": "ping", "summary": "Liveness.", "responses": {"200": _json_response("Alive.", schema)}}


def _healthz_operation() -> dict[str, Any]:
    return {
        "operationId": "healthz",
        "summary": "Readiness: whether the database answers.",
        "responses": {
            "200": _ok("The database answers.", {"type": "object", "properties": {"database": {"type": "string"}}}),
            **_errors("503"),
        },
    }


def _metrics_operation() -> dict[str, Any]:
    return {
        "operationId": "metrics",
        "summary": "Prometheus metrics in the text exposition format.",
        "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }


def _openapi_operation() -> dict[str, Any]:
    return {
        "operationId": "openapi",
        "summary": "This document.",
        "responses": {"200": _json_response("OpenAPI 3.0.3.", {"type": "object"})},
    }
