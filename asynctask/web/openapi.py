"""The OpenAPI 3.1 document of a task service's HTTP API.

The params of a new task (`data` in the body of `POST {endpoint}`) are described by the JSON
Schema of the very pydantic model the server checks them with (`Signature.json_schema`), so
the document and the server agree on what is taken. `openapi_document` describes an app
serving several task types (`init_app`, blueprints).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..status import TaskStatus
from ..validation import MAX_PRIORITY, MIN_PRIORITY, TASK_ID_CHARS, Signature

if TYPE_CHECKING:
    from ..task import AsyncTask

OPENAPI_VERSION = "3.1.0"
#: The task id as a JSON Schema pattern ('.' and '..' are refused too).
TASK_ID_PATTERN = f"^{TASK_ID_CHARS}$"
STATUSES = [status.value for status in TaskStatus]
#: Longest window of `GET {endpoint}/stats`, in minutes.
MAX_STATS_MINUTES = 1440
#: Largest `skip` of the list.
MAX_SKIP = 2**31 - 1

_DEFS_REF = "#/$defs/"
_COMPONENT_NAME = re.compile(r"[^A-Za-z0-9._-]")


# -- the params of a new task --------------------------------------------------------------------

def _signature(task: AsyncTask) -> Signature:
    return getattr(task, "_signature", None) or Signature(task.main)


def params_schema(task: AsyncTask) -> dict[str, Any]:
    """The JSON Schema (2020-12) of the params of a new task of `task`'s type, as the server checks them.

    Self-contained: named types are under `$defs`.
    """
    return _signature(task).json_schema()


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


def _component_schemas(schema: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`schema` with its `$defs` moved to components named `prefix_Name`, and those components."""
    defs = schema.pop("$defs", {})
    names = {name: f"{prefix}_{_COMPONENT_NAME.sub('_', name)}" for name in defs}

    def moved(value: Any) -> Any:
        if isinstance(value, dict):
            result = {key: moved(item) for key, item in value.items()}
            ref = result.get("$ref")
            if isinstance(ref, str) and ref.startswith(_DEFS_REF) and ref[len(_DEFS_REF):] in names:
                result["$ref"] = f"#/components/schemas/{names[ref[len(_DEFS_REF):]]}"
            return result
        if isinstance(value, list):
            return [moved(item) for item in value]
        return value

    return moved(schema), {names[name]: moved(definition) for name, definition in defs.items()}


# -- the document --------------------------------------------------------------------------------

def openapi_spec(task: AsyncTask, endpoint: str = "/api", *, title: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `task` served at `endpoint` (as `task.app(endpoint)` does)."""
    return openapi_document([(task, endpoint)], title=title)


def openapi_document(services: Iterable[tuple[AsyncTask, str]], *, title: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of one app serving several (task, endpoint) pairs."""
    from ..version import __version__

    services = [(task, _base(endpoint)) for task, endpoint in services]
    if not services:
        raise ValueError("an OpenAPI document needs at least one (task, endpoint)")
    names = [type(task).__name__ for task, _ in services]
    spec: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
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
        spec["components"].setdefault("securitySchemes", {})["bearerAuth"] = {"type": "http", "scheme": "bearer"}
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
    schema, definitions = _component_schemas(params_schema(task), params)
    spec["components"]["schemas"].update(definitions)
    spec["components"]["schemas"][params] = schema
    by_id = [{"$ref": "#/components/parameters/TaskId"}]
    paths: dict[str, dict[str, Any]] = {
        base or "/": {"post": _submit_operation(params), "get": _list_operation()},
        f"{base}/bulk": {"post": _bulk_operation()},
        f"{base}/stats": {"get": _stats_operation()},
        f"{base}/{{task_id}}": {"parameters": by_id, "get": _show_operation(), "delete": _cancel_operation()},
        f"{base}/{{task_id}}/log": {"parameters": by_id, "get": _log_operation()},
    }
    from .schedule_routes import schedule_paths

    paths.update(schedule_paths(base))  # {endpoint}/schedules...
    secured = bool(getattr(task, "api_token", None))
    for item in paths.values():
        for method, operation in item.items():
            if method != "parameters":
                operation["operationId"] += suffix
                _secure(operation, secured)
    spec["paths"].update(paths)
    if getattr(task, "worker_token", None):
        from .worker_routes import worker_paths

        spec["paths"].update(worker_paths(base, suffix))
        spec["components"].setdefault("securitySchemes", {})["workerAuth"] = {
            "type": "http", "scheme": "bearer", "description": "The worker token (not the API token)."}


def _secure(operation: dict[str, Any], secured: bool) -> None:
    operation["responses"].update(_errors("401"))
    if secured:
        operation["security"] = [{"bearerAuth": []}]


def _service_paths(protected: bool) -> dict[str, Any]:
    """/ping, /healthz and /dashboard (which signs in by itself), open; the rest behind any task's token."""
    metrics, openapi, workers = _metrics_operation(), _openapi_operation(), _workers_operation()
    for operation in (metrics, openapi, workers):
        _secure(operation, protected)
    return {
        "/ping": {"get": _ping_operation()},
        "/healthz": {"get": _healthz_operation()},
        "/metrics": {"get": metrics},
        "/openapi.json": {"get": openapi},
        "/workers": {"get": workers},
        "/dashboard": {"get": _dashboard_operation()},
    }


# -- schemas ---------------------------------------------------------------------------------------

def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (with one `type`) that also allows null."""
    return {**schema, "type": [schema["type"], "null"]}


def _date_time(nullable: bool = True) -> dict[str, Any]:
    schema = {"type": "string", "format": "date-time"}
    return _nullable(schema) if nullable else schema


def _count() -> dict[str, Any]:
    return {"type": "integer", "minimum": 0}


def _percentiles() -> dict[str, Any]:
    seconds = {"type": ["number", "null"], "minimum": 0, "description": "Seconds; null without a sample."}
    return {"type": "object", "properties": {"p50": seconds, "p95": seconds}}


def _by_status() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": _count()}


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
                    "total": _count(),
                    "counts": _by_status(),
                },
            },
            "BulkResult": {
                "type": "object",
                "required": ["matched", "changed"],
                "properties": {"matched": _count(), "changed": _count()},
            },
            "Stats": _stats_schema(),
            "Worker": _worker_schema(),
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
    """The public view of a task."""
    return {
        "type": "object",
        "required": ["task_id", "status"],
        "properties": {
            "task_id": {"type": "string"},
            "status": {"$ref": "#/components/schemas/TaskStatus"},
            "params": {"type": ["object", "null"]},
            "result": {},
            "error": {"type": ["string", "null"]},
            "attempts": {"type": ["integer", "null"]},
            "priority": {"type": ["integer", "null"], "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY},
            "created_at": _date_time(),
            "queued_at": _date_time(),
            "run_at": {**_date_time(), "description": "When the task is due (held until then)."},
            "started_at": _date_time(),
            "finished_at": _date_time(),
            "update_time": _date_time(),
            "worker": {"type": ["string", "null"], "description": "The worker running it, or that ran it last."},
            "progress": {
                "type": ["object", "null"],
                "properties": {
                    "percent": {"type": "number"},
                    "message": {"type": ["string", "null"]},
                },
            },
            "next_retry_at": _date_time(),
            "trace_id": {"type": ["string", "null"]},
            "held": {
                "type": ["object", "null"],
                "description": "Why a due queued task waits: the rate limit or per-key concurrency limit "
                               "holding it back (`until`: when the rate lets its next start), else null.",
                "properties": {
                    "reason": {"type": "string", "enum": ["rate", "concurrency"]},
                    "key": {"type": ["string", "null"]},
                    "until": _date_time(),
                },
            },
        },
    }


def _stats_schema() -> dict[str, Any]:
    finished = {
        "type": "object",
        "description": "Tasks finished, by final status.",
        "additionalProperties": _count(),
    }
    minute = {
        "type": "object",
        "required": ["minute", "submitted", "started", "finished"],
        "properties": {
            "minute": _date_time(nullable=False),
            "submitted": _count(),
            "started": _count(),
            "finished": finished,
            "queue_wait": _percentiles(),
            "run_time": _percentiles(),
        },
    }
    return {
        "type": "object",
        "required": ["series", "queue_depth", "running"],
        "properties": {
            "type": {"type": "string", "description": "The task type."},
            "minutes": {"type": "integer", "minimum": 1, "maximum": MAX_STATS_MINUTES},
            "since": _date_time(nullable=False),
            "until": _date_time(nullable=False),
            "series": {"type": "array", "items": minute, "description": "One row per minute, oldest first."},
            "totals": {"type": "object", "properties": {
                "submitted": _count(), "started": _count(), "finished": finished,
            }},
            "queue_wait": {**_percentiles(), "description": "From due to started, over the window."},
            "run_time": {**_percentiles(), "description": "From started to finished, over the window."},
            "queue_depth": {**_count(), "description": "Queued tasks that are due now."},
            "running": _count(),
        },
    }


def _worker_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["worker", "host", "pid"],
        "properties": {
            "worker": {"type": "string"},
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "types": {"type": "array", "items": {"type": "string"}, "description": "Task types it runs."},
            "slots": {"type": ["integer", "null"], "minimum": 0},
            "running": {"type": ["integer", "null"], "minimum": 0},
            "started_at": _date_time(),
            "heartbeat_at": _date_time(),
            "remote": {"type": "boolean", "description": "A worker that reaches the service over HTTP only."},
        },
    }


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
    "415": "The request body is not sent as `Content-Type: application/json`.",
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


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


# -- operations ----------------------------------------------------------------------------------

def _submit_operation(params: str) -> dict[str, Any]:
    data = {"anyOf": [{"$ref": f"#/components/schemas/{params}"}, {"$ref": "#/components/schemas/Rerun"}]}
    body = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": data,
            "priority": {
                "type": "integer", "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY, "default": 0,
                "description": "Tasks of higher priority are run first.",
            },
            "delay": {"type": "number", "minimum": 0, "description": "Hold the task this many seconds."},
            "run_at": {
                "type": "string", "format": "date-time",
                "description": "Hold the task until this time (ISO 8601 with a time zone).",
            },
        },
        "additionalProperties": False,
        "not": {"required": ["delay", "run_at"]},
    }
    return {
        "operationId": "submitTask",
        "summary": "Submit a task, or re-run a stored one with `data.task_id`.",
        "parameters": [{
            "name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "Stored as the task's trace_id and echoed in the response (1-128 of A-Z a-z 0-9 _ . : -).",
        }],
        "requestBody": _json_body(body),
        "responses": {
            "202": _ok("Accepted.", "Submitted", {
                "Location": {"schema": {"type": "string"}, "description": "The URL of the task."},
                "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds before asking again."},
            }),
            **_errors("400", "404", "409", "413", "415", "500"),
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
            _query("skip", {"type": "integer", "minimum": 0, "maximum": MAX_SKIP, "default": 0}, "Tasks to skip."),
            _query("q", {"type": "string", "maxLength": 200}, "Only tasks whose id or params hold this text."),
        ],
        "responses": {
            "200": _ok("A task, or a page of tasks.", {"anyOf": [
                {"$ref": "#/components/schemas/Task"}, {"$ref": "#/components/schemas/TaskList"},
            ]}),
            **_errors("400", "404"),
        },
    }


def _bulk_operation() -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["action"],
        "properties": {
            "action": {"type": "string", "enum": ["retry", "cancel"],
                       "description": "Retry finished tasks, or cancel unfinished ones."},
            "status": {"$ref": "#/components/schemas/TaskStatus"},
            "task_ids": {"type": "array", "items": {"type": "string", "pattern": TASK_ID_PATTERN}},
        },
        "additionalProperties": False,
        "anyOf": [{"required": ["status"]}, {"required": ["task_ids"]}],
    }
    return {
        "operationId": "bulkAction",
        "summary": "Retry or cancel the tasks of this type a status and/or a list of ids selects.",
        "requestBody": _json_body(body),
        "responses": {
            "200": _ok("How many tasks were selected and how many changed.", "BulkResult"),
            **_errors("400", "413", "415", "500"),
        },
    }


def _stats_operation() -> dict[str, Any]:
    minutes = {"type": "integer", "minimum": 1, "maximum": MAX_STATS_MINUTES, "default": 60}
    return {
        "operationId": "taskStats",
        "summary": "Per-minute throughput, queue wait and run time of this task type, queue depth and running.",
        "parameters": [_query("minutes", minutes, "The window, in whole minutes up to now.")],
        "responses": {"200": _ok("The figures.", "Stats"), **_errors("400")},
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
            **_errors("400", "404", "409", "415"),
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


def _workers_operation() -> dict[str, Any]:
    data = {
        "type": "object",
        "required": ["workers"],
        "properties": {"workers": {"type": "array", "items": {"$ref": "#/components/schemas/Worker"}}},
    }
    return {
        "operationId": "listWorkers",
        "summary": "The live worker processes of the app's task types.",
        "responses": {"200": _ok("The workers.", data), **_errors("503")},
    }


def _dashboard_operation() -> dict[str, Any]:
    return {
        "operationId": "dashboard",
        "summary": "The web dashboard (it asks for a token itself when the service has one).",
        "responses": {"200": {"description": "An HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
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
        "responses": {"200": _json_response("OpenAPI 3.1.", {"type": "object"})},
    }
