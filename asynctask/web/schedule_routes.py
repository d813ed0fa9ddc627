"""The routes of a task type's schedules, under its endpoint, on its API blueprint.

They share everything with the type's other routes: the envelope, the API token, the 415 for
a body that is not JSON, the error handlers (`InvalidSchedule` 400, `ScheduleNotFound` 404,
`ScheduleExists` 409).

| route | answer |
| --- | --- |
| `GET {endpoint}/schedules` | 200 `{"schedules": [view, ...]}` |
| `POST {endpoint}/schedules` | 201 the new schedule's view; 409 for a taken name |
| `GET`, `PATCH`, `DELETE {endpoint}/schedules/<name>` | 200 its view / the changed view / `{"name", "removed"}` |
| `POST {endpoint}/schedules/<name>/pause`, `/resume` | 200 its view |
| `POST {endpoint}/schedules/<name>/trigger` | 202 `{"task_id", "status", "schedule"}`, `Location` of the task |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from ..errors import BadRequest
from ..schedules import Schedule
from ..schedules.book import book_of
from ..schedules.schedule import CATCH_UP, MAX_NAME
from .http import envelope, json_body

if TYPE_CHECKING:
    from ..task import AsyncTask

#: Body fields of POST and PATCH, and the `Schedule` argument each one is.
FIELDS = {
    "name": "name", "cron": "cron", "every_seconds": "every", "tz": "tz", "params": "params",
    "priority": "priority", "catch_up": "catch_up", "catch_up_window_seconds": "catch_up_window", "enabled": "enabled",
}


def register_schedule_routes(blueprint: Blueprint, task: AsyncTask, endpoint: str) -> None:
    """Add the schedule routes of `task` under `endpoint` to its API `blueprint`."""
    base = endpoint.rstrip("/")
    book = book_of(task)

    @blueprint.get(f"{base}/schedules")
    def schedules_list() -> Response:
        return envelope({"schedules": book.list()})

    @blueprint.post(f"{base}/schedules")
    def schedule_add() -> Response:
        changes = _fields(_body(required=True))
        if "name" not in changes:
            raise BadRequest("body must hold 'name', and 'cron' or 'every_seconds'")
        name = changes.pop("name")
        view = book.add(Schedule(name, **changes))
        response = envelope(view, 201)
        response.headers["Location"] = f"{request.script_root}{base}/schedules/{view['name']}"
        return response

    @blueprint.get(f"{base}/schedules/<name>")
    def schedule_show(name: str) -> Response:
        return envelope(book.get(name))

    @blueprint.patch(f"{base}/schedules/<name>")
    def schedule_update(name: str) -> Response:
        changes = _fields(_body(required=True))
        if not changes:
            raise BadRequest(f"body must hold at least one of {', '.join(sorted(set(FIELDS) - {'name'}))}")
        return envelope(book.update(name, **changes))

    @blueprint.delete(f"{base}/schedules/<name>")
    def schedule_remove(name: str) -> Response:
        book.remove(name)
        return envelope({"name": name, "removed": True})

    @blueprint.post(f"{base}/schedules/<name>/pause")
    def schedule_pause(name: str) -> Response:
        _body(required=False)
        return envelope(book.pause(name))

    @blueprint.post(f"{base}/schedules/<name>/resume")
    def schedule_resume(name: str) -> Response:
        _body(required=False)
        return envelope(book.resume(name))

    @blueprint.post(f"{base}/schedules/<name>/trigger")
    def schedule_trigger(name: str) -> Response:
        _body(required=False)
        doc = book.run_now(name)
        response = envelope({"task_id": doc["task_id"], "status": doc["status"], "schedule": name}, 202)
        response.headers["Location"] = f"{request.script_root}{base}/{doc['task_id']}"
        response.headers["Retry-After"] = "1"
        return response


def _body(required: bool) -> dict[str, Any]:
    return json_body(required=required) or {}


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    """The body's fields as `Schedule` arguments; unknown fields are a 400. Their values are
    checked by `Schedule` itself (a 400 naming the field)."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unexpected field(s) in the body: {', '.join(unknown)}")
    if "params" in body and not isinstance(body["params"], dict):
        raise BadRequest("'params' must be an object of params")
    return {FIELDS[key]: value for key, value in body.items()}


# -- OpenAPI -------------------------------------------------------------------------------------


def schedule_paths(base: str) -> dict[str, Any]:
    """The schedule routes of one type at `base`, as OpenAPI path items."""
    ref = "#/components/responses/"
    seconds = {"type": ["number", "null"], "minimum": 1, "description": "An interval, in whole seconds."}
    fields: dict[str, Any] = {
        "name": {"type": "string", "pattern": f"^[A-Za-z0-9_.:-]{{1,{MAX_NAME}}}$"},
        "cron": {"type": ["string", "null"], "description": "5 fields: minute hour day month weekday."},
        "every_seconds": seconds,
        "tz": {"type": "string", "default": "UTC", "description": "An IANA time zone for the cron expression."},
        "params": {"type": "object", "description": "The params of each tick's task."},
        "priority": {"type": "integer", "minimum": -100, "maximum": 100, "default": 0},
        "catch_up": {"type": "string", "enum": list(CATCH_UP), "default": "latest"},
        "catch_up_window_seconds": {"type": "number", "minimum": 0, "default": 600},
        "enabled": {"type": "boolean", "default": True},
    }
    when = {"type": ["string", "null"], "format": "date-time"}
    run = {"type": "object", "properties": {
        "task_id": {"type": "string"}, "tick": {**when, "description": "Null for a run asked by hand."},
        "at": when, "status": {"type": ["string", "null"], "description": "Null once the task was removed."},
    }}
    view = {"type": "object", "required": ["name", "enabled"], "properties": {
        **fields, "every_seconds": {"type": ["integer", "null"]},
        "declared": {"type": "boolean", "description": "Declared on the task class."},
        "description": {"type": ["string", "null"], "description": "The expression in words."},
        "last_tick": when, "last_task_id": {"type": ["string", "null"]},
        "last_status": {"type": ["string", "null"]}, "next_tick": {**when, "description": "Null while paused."},
        "runs": {"type": "array", "items": run, "description": "The newest tasks, newest first."},
        "error": {"type": ["string", "null"]}, "created_at": when, "updated_at": when,
    }}

    def ok(description: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": {
            "type": "object", "required": ["status", "data"],
            "properties": {"status": {"const": "ok"}, "data": data, "error_data": {"type": "array"},
                           "error_msg": {"type": "string"}}}}}}

    def errors(*codes: str) -> dict[str, Any]:
        special = {"404": "No schedule of that name (or no such route).", "409": "The name is taken."}
        return {code: ({"description": special[code], "content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/Error"}}}} if code in special else {"$ref": f"{ref}{code}"})
            for code in codes}

    def body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
        return {"required": required, "content": {"application/json": {"schema": schema}}}

    def operation(operation_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"operationId": operation_id, "summary": summary, "tags": ["schedules"], "responses": responses, **extra}

    new = {"type": "object", "required": ["name"], "properties": fields, "additionalProperties": False,
           "oneOf": [{"required": ["cron"]}, {"required": ["every_seconds"]}]}
    change = {"type": "object", "properties": {k: v for k, v in fields.items() if k != "name"},
              "additionalProperties": False, "minProperties": 1}
    empty = body({"type": "object"}, required=False)
    name = [{"name": "name", "in": "path", "required": True, "schema": fields["name"]}]
    triggered = {"type": "object", "required": ["task_id", "status"], "properties": {
        "task_id": {"type": "string"}, "status": {"$ref": "#/components/schemas/TaskStatus"},
        "schedule": {"type": "string"}}}
    return {
        f"{base}/schedules": {
            "get": operation("listSchedules", "The type's schedules, by name.", {
                "200": ok("The schedules.", {"type": "object", "properties": {
                    "schedules": {"type": "array", "items": view}}})}),
            "post": operation("addSchedule", "Add a schedule (cron or interval); its first tick is after now.", {
                "201": ok("Added.", view), **errors("400", "409", "413", "415")}, requestBody=body(new)),
        },
        f"{base}/schedules/{{name}}": {
            "parameters": name,
            "get": operation("getSchedule", "One schedule.", {"200": ok("The schedule.", view), **errors("400", "404")}),
            "patch": operation("updateSchedule", "Change a schedule; the change applies to the ticks after now.", {
                "200": ok("Changed.", view), **errors("400", "404", "413", "415")}, requestBody=body(change)),
            "delete": operation("removeSchedule", "Remove a schedule (its tasks stay).", {
                "200": ok("Removed.", {"type": "object"}), **errors("400", "404")}),
        },
        **{f"{base}/schedules/{{name}}/{verb}": {"parameters": name, "post": operation(
            f"{verb}Schedule", summary, {"200": ok("The schedule.", view), **errors("400", "404", "415")},
            requestBody=empty)} for verb, summary in (
                ("pause", "Enqueue no tick of the schedule until it is resumed."),
                ("resume", "Enqueue the schedule's ticks again, from the first after now."))},
        f"{base}/schedules/{{name}}/trigger": {"parameters": name, "post": operation(
            "triggerSchedule", "Run the schedule's task once now; moves no tick.",
            {"202": ok("Submitted.", triggered), **errors("400", "404", "415")}, requestBody=empty)},
    }
