"""The OpenAPI document (`/openapi.json`): valid OpenAPI 3.1, typed from `main` as the server checks params."""

from __future__ import annotations

import enum
import json
import logging
import re
from typing import Any, Literal, Optional

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from tasks import Echo, Typed

from asynctask import AsyncTask, InvalidParams, TaskStatus
from asynctask.web.openapi import TASK_ID_PATTERN, openapi_document, openapi_spec

NOT_JSON = object()


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Varied(AsyncTask):
    """Params of many kinds."""

    def main(
        self,
        logger: logging.Logger,
        name: Optional[str],  # noqa: UP045 - the old spelling is tested too
        tags: list[str],
        mode: Literal["fast", "slow"] = "fast",
        ratio: float | None = None,
        anything=None,
        options: dict = {},  # noqa: B006 - only read
        pair: tuple[int, int] = (1, 2),
        color: Color = Color.RED,
        when: Any = NOT_JSON,
        *,
        flag: bool = False,
    ) -> None:
        return None


class Unresolvable(AsyncTask):
    def main(self, logger: logging.Logger, a: int, b: NoSuchType = 1) -> None:  # noqa: F821
        return None


@pytest.fixture
def spec_of(make_task):
    """`spec_of(cls, **options)`: the OpenAPI document of a task instance, validated."""

    def build(cls: type[AsyncTask], endpoint: str = "/api", **options: Any) -> dict[str, Any]:
        spec = openapi_spec(make_task(cls, **options), endpoint)
        validate(spec)
        return spec

    return build


def params(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["components"]["schemas"]["Params"]



def test_the_document_is_valid_openapi_3_1(spec_of):
    spec = spec_of(Typed)
    assert spec["openapi"] == "3.1.0"
    assert json.loads(json.dumps(spec, allow_nan=False)) == spec
    assert spec["info"]["title"] == "Typed task API"
    assert set(spec["paths"]) == {
        "/api", "/api/bulk", "/api/stats", "/api/{task_id}", "/api/{task_id}/log",
        "/ping", "/healthz", "/metrics", "/openapi.json", "/workers", "/dashboard",
        "/api/schedules", "/api/schedules/{name}", "/api/schedules/{name}/pause", "/api/schedules/{name}/resume",
        "/api/schedules/{name}/trigger",
    }
    assert set(spec["paths"]["/api"]) == {"post", "get"}
    assert set(spec["paths"]["/api/{task_id}"]) == {"parameters", "get", "delete"}
    assert "nullable" not in json.dumps(spec)  # 3.0 only; 3.1 says null in `type`


def test_the_title_and_endpoint_can_be_chosen(make_task):
    spec = openapi_spec(make_task(Typed), "/tasks/count/", title="Counting")
    validate(spec)
    assert spec["info"]["title"] == "Counting"
    assert "/tasks/count" in spec["paths"] and "/tasks/count/{task_id}/log" in spec["paths"]
    assert "/tasks/count/bulk" in spec["paths"] and "/tasks/count/stats" in spec["paths"]
    with pytest.raises(ValueError):
        openapi_spec(make_task(Typed), "api")


def test_the_post_body_follows_mains_signature(spec_of):
    spec = spec_of(Typed)
    body = spec["paths"]["/api"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"]["required"] == ["data"]
    data = params(spec)
    assert data["required"] == ["text"]
    assert data["properties"]["text"] == {"type": "string"}
    assert data["properties"]["top"] == {"type": "integer", "default": 10}
    assert data["additionalProperties"] is False
    assert "logger" not in data["properties"]


def body_schema(spec: dict[str, Any], path: str = "/api") -> dict[str, Any]:
    return spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def is_valid(spec: dict[str, Any], schema: dict[str, Any], value: Any) -> bool:
    """Whether `value` is valid by `schema`, its references resolved in `spec`."""
    return OAS31Validator({**schema, "components": spec["components"]}).is_valid(value)


def body_is_valid(spec: dict[str, Any], body: Any, path: str = "/api") -> bool:
    """Whether `body` is a valid POST body by `spec` (as a client or a fuzzer reads it)."""
    return is_valid(spec, body_schema(spec, path), body)


def test_data_holds_params_or_the_id_of_a_task_to_rerun(spec_of):
    spec = spec_of(Typed)
    assert body_is_valid(spec, {"data": {"text": "a b"}})
    assert body_is_valid(spec, {"data": {"text": "a b", "top": 3}})
    assert body_is_valid(spec, {"data": {"task_id": "abc:1"}})
    assert not body_is_valid(spec, {"data": {"task_id": "abc", "text": "a b"}})  # the server refuses both
    assert not body_is_valid(spec, {"data": {"task_id": "a/b"}})
    assert not body_is_valid(spec, {"data": {"text": "a", "other": 1}})
    assert not body_is_valid(spec, {"data": {"top": 1}})
    assert not body_is_valid(spec, {"data": {"text": 1}})
    assert not body_is_valid(spec, {"data": {"text": "a", "top": 1.5}})
    assert not body_is_valid(spec, {"text": "a b"})
    rerun = spec["components"]["schemas"]["Rerun"]["properties"]["task_id"]
    assert rerun["pattern"] == TASK_ID_PATTERN


def test_the_body_takes_the_queue_options(spec_of):
    spec = spec_of(Typed)
    properties = body_schema(spec)["properties"]
    assert properties["priority"]["type"] == "integer"
    assert (properties["priority"]["minimum"], properties["priority"]["maximum"]) == (-100, 100)
    assert properties["delay"]["type"] == "number" and properties["delay"]["minimum"] == 0
    assert properties["run_at"] == {**properties["run_at"], "type": "string", "format": "date-time"}
    data = {"text": "a"}
    assert body_is_valid(spec, {"data": data, "priority": 100, "delay": 2.5})
    assert body_is_valid(spec, {"data": data, "priority": -100, "run_at": "2030-01-01T09:00:00+01:00"})
    assert not body_is_valid(spec, {"data": data, "priority": 101})
    assert not body_is_valid(spec, {"data": data, "priority": 1.5})
    assert not body_is_valid(spec, {"data": data, "delay": -1})
    assert not body_is_valid(spec, {"data": data, "delay": 1, "run_at": "2030-01-01T09:00:00Z"})
    assert not body_is_valid(spec, {"data": data, "colour": "red"})


def test_a_main_with_kwargs_takes_any_other_param(spec_of):
    spec = spec_of(Echo)
    data = params(spec)
    assert "additionalProperties" not in data
    assert "required" not in data
    assert data["properties"]["value"] == {"default": None}
    assert body_is_valid(spec, {"data": {"value": 1, "more": [1], "other": None}})
    assert not body_is_valid(spec, {"data": {"value": 1, "logger": "x"}})
    assert not body_is_valid(spec, {"data": {"value": 1, "task_id": "x"}})


def test_annotations_map_to_json_types(spec_of):
    spec = spec_of(Varied)
    data = params(spec)
    props = data["properties"]
    assert data["required"] == ["name", "tags"]
    assert props["name"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"], "default": "fast"}
    assert props["ratio"] == {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None}
    assert props["anything"] == {"default": None}
    assert props["options"]["type"] == "object" and props["options"]["default"] == {}
    assert props["pair"]["prefixItems"] == [{"type": "integer"}, {"type": "integer"}]
    assert props["pair"]["default"] == [1, 2]
    assert props["when"] == {}  # no JSON default for an object()
    assert props["flag"] == {"type": "boolean", "default": False}
    # A named type is a component of its own, under the name of the params it belongs to.
    assert props["color"] == {"$ref": "#/components/schemas/Params_Color", "default": "red"}
    assert spec["components"]["schemas"]["Params_Color"]["enum"] == ["red", "blue"]


VARIED_BODIES = [
    ({"name": None, "tags": []}, True),
    ({"name": "n", "tags": ["a"], "mode": "slow", "ratio": 0.5, "options": {"k": [1]}, "pair": [3, 4],
      "color": "blue", "when": {"any": "thing"}, "flag": True, "anything": [None]}, True),
    ({"tags": []}, False),
    ({"name": "n", "tags": "a"}, False),
    ({"name": "n", "tags": [1]}, False),
    ({"name": "n", "tags": [], "mode": "medium"}, False),
    ({"name": "n", "tags": [], "ratio": "half"}, False),
    ({"name": "n", "tags": [], "options": []}, False),
    ({"name": "n", "tags": [], "pair": [1, 2, 3]}, False),
    ({"name": "n", "tags": [], "pair": [1, "x"]}, False),
    ({"name": "n", "tags": [], "color": "green"}, False),
    ({"name": "n", "tags": [], "flag": "maybe"}, False),
    ({"name": "n", "tags": [], "unknown": 1}, False),
    ({"name": 1, "tags": []}, False),
]


@pytest.mark.parametrize(("data", "valid"), VARIED_BODIES)
def test_the_document_and_the_server_agree_on_params(spec_of, make_task, data, valid):
    """The `Params` schema is the one the server checks params with."""
    spec = spec_of(Varied)
    assert is_valid(spec, params(spec), data) is valid
    signature = make_task(Varied)._signature
    if valid:
        signature.check(data)
    else:
        with pytest.raises(InvalidParams):
            signature.check(data)


def test_an_unresolvable_annotation_only_loses_its_own_type(spec_of):
    props = params(spec_of(Unresolvable))["properties"]
    assert props["a"] == {"type": "integer"}
    assert props["b"] == {"default": 1}


def test_the_task_id_path_parameter_has_the_id_pattern(spec_of):
    spec = spec_of(Typed)
    ref = spec["paths"]["/api/{task_id}"]["parameters"][0]["$ref"]
    parameter = spec["components"]["parameters"][ref.rsplit("/", 1)[1]]
    assert parameter["in"] == "path" and parameter["required"] is True
    assert parameter["schema"]["pattern"] == TASK_ID_PATTERN == "^[A-Za-z0-9_.:-]{1,128}$"
    pattern = re.compile(TASK_ID_PATTERN)
    assert pattern.match("a.b:c-d_9") and not pattern.match("a/b") and not pattern.match("x" * 129)


def test_routes_answer_with_the_documented_codes(spec_of):
    paths = spec_of(Typed)["paths"]
    assert set(paths["/api"]["post"]["responses"]) == {"202", "400", "401", "404", "409", "413", "415", "500"}
    assert set(paths["/api"]["get"]["responses"]) == {"200", "400", "401", "404"}
    assert set(paths["/api/{task_id}"]["get"]["responses"]) == {"200", "400", "401", "404"}
    assert {"200", "202", "401", "404", "409"} <= set(paths["/api/{task_id}"]["delete"]["responses"])
    assert {"200", "400", "401", "413", "415"} <= set(paths["/api/bulk"]["post"]["responses"])
    log = paths["/api/{task_id}/log"]["get"]
    assert "X-Log-Offset" in log["responses"]["200"]["headers"]
    assert "text/plain" in log["responses"]["200"]["content"]
    assert log["parameters"][0]["schema"] == {"type": "integer", "minimum": 0, "default": 0}
    assert set(paths["/healthz"]["get"]["responses"]) == {"200", "503"}
    assert paths["/ping"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["required"] == ["status"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/html" in paths["/dashboard"]["get"]["responses"]["200"]["content"]


def test_the_list_and_long_poll_query_parameters(spec_of):
    paths = spec_of(Typed)["paths"]
    query = {p["name"]: p["schema"] for p in paths["/api"]["get"]["parameters"]}
    assert query["limit"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}
    assert query["skip"] == {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0}
    assert query["status"] == {"$ref": "#/components/schemas/TaskStatus"}
    assert query["task_id"]["type"] == "string"
    wait = paths["/api/{task_id}"]["get"]["parameters"][0]
    assert wait["name"] == "wait" and wait["schema"] == {"type": "number", "minimum": 0, "maximum": 60}


def ok_data(operation: dict[str, Any], code: str = "200") -> dict[str, Any]:
    """The schema of `data` in an operation's envelope answer."""
    return operation["responses"][code]["content"]["application/json"]["schema"]["properties"]["data"]


def test_bulk_stats_and_workers_operations(spec_of):
    spec = spec_of(Typed)
    schemas = spec["components"]["schemas"]
    bulk = spec["paths"]["/api/bulk"]["post"]
    body = bulk["requestBody"]["content"]["application/json"]["schema"]
    assert is_valid(spec, body, {"action": "retry", "status": "failed"})
    assert is_valid(spec, body, {"action": "cancel", "task_ids": ["a", "b"]})
    assert not is_valid(spec, body, {"action": "retry"})  # a status or ids select the tasks
    assert not is_valid(spec, body, {"action": "delete", "status": "failed"})
    assert not is_valid(spec, body, {"action": "cancel", "task_ids": ["a/b"]})
    assert ok_data(bulk) == {"$ref": "#/components/schemas/BulkResult"}
    assert schemas["BulkResult"]["required"] == ["matched", "changed"]

    stats = spec["paths"]["/api/stats"]["get"]
    assert stats["parameters"][0]["name"] == "minutes"
    assert stats["parameters"][0]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1440, "default": 60}
    figures = schemas["Stats"]["properties"]
    assert {"series", "queue_wait", "run_time", "queue_depth", "running"} <= set(figures)
    minute = figures["series"]["items"]["properties"]
    assert {"minute", "submitted", "started", "finished", "queue_wait"} <= set(minute)
    assert set(figures["run_time"]["properties"]) == {"p50", "p95"}

    workers = ok_data(spec["paths"]["/workers"]["get"])
    assert workers["properties"]["workers"]["items"] == {"$ref": "#/components/schemas/Worker"}
    assert set(schemas["Worker"]["properties"]) == {
        "worker", "host", "pid", "types", "slots", "running", "started_at", "heartbeat_at", "remote"}


def test_answers_use_the_envelope_and_the_public_view(spec_of):
    schemas = spec_of(Typed)["components"]["schemas"]
    assert schemas["TaskStatus"]["enum"] == [status.value for status in TaskStatus]
    error = schemas["Error"]
    assert error["required"] == ["status", "data", "error_data", "error_msg"]
    assert error["properties"]["status"]["enum"] == ["error"]
    view = schemas["Task"]["properties"]
    assert view["created_at"] == {"type": ["string", "null"], "format": "date-time"}
    assert "null" in view["progress"]["type"]
    assert {"task_id", "status", "result", "error", "attempts", "started_at", "finished_at", "update_time",
            "next_retry_at", "trace_id", "params", "priority", "run_at", "queued_at", "worker"} <= set(view)


def operations(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every operation of `spec` by "METHOD path"."""
    return {
        f"{method.upper()} {path}": operation
        for path, item in spec["paths"].items()
        for method, operation in item.items() if method != "parameters"
    }


def test_security_only_with_an_api_token(spec_of):
    spec = spec_of(Typed)
    assert "securitySchemes" not in spec["components"]
    assert not any("security" in op for op in operations(spec).values())
    spec = spec_of(Typed, api_token="s3cret")
    assert spec["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    for name, operation in operations(spec).items():
        if name in ("GET /ping", "GET /healthz", "GET /dashboard"):
            assert "security" not in operation and "401" not in operation["responses"]
        else:
            assert operation["security"] == [{"bearerAuth": []}], name
            assert "401" in operation["responses"], name
    assert "s3cret" not in json.dumps(spec)


def test_several_task_types_in_one_document(make_task):
    spec = openapi_document([
        (make_task(Typed), "/count"), (make_task(Echo, api_token="t"), "/echo/"), (make_task(Typed), "/"),
        (make_task(Varied), "/varied"),
    ])
    validate(spec)
    assert spec["info"]["title"] == "Typed, Echo, Varied task API"
    schemas = spec["components"]["schemas"]
    assert schemas["TypedParams"]["required"] == ["text"] and schemas["Typed2Params"]["required"] == ["text"]
    assert "additionalProperties" not in schemas["EchoParams"]
    assert schemas["VariedParams"]["properties"]["color"]["$ref"] == "#/components/schemas/VariedParams_Color"
    post = spec["paths"]["/echo"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["properties"]["data"]["anyOf"][0] == {
        "$ref": "#/components/schemas/EchoParams",
    }
    assert body_is_valid(spec, {"data": {"x": 1}}, "/echo") and not body_is_valid(spec, {"data": {"x": 1}}, "/count")
    assert post["security"] == [{"bearerAuth": []}]
    assert "security" not in spec["paths"]["/count"]["post"]
    assert spec["paths"]["/metrics"]["get"]["security"] == [{"bearerAuth": []}]
    assert {"/", "/{task_id}", "/{task_id}/log", "/count/{task_id}", "/echo/{task_id}/log", "/echo/bulk"} \
        <= set(spec["paths"])
    ids = [op["operationId"] for op in operations(spec).values()]
    assert len(ids) == len(set(ids))
    with pytest.raises(ValueError):
        openapi_document([])


def test_building_the_document_has_no_side_effects(make_task):
    task = make_task(Varied)
    first = openapi_spec(task)
    first["components"]["schemas"]["Task"]["properties"]["created_at"]["format"] = "date"
    first["components"]["schemas"]["Params"]["properties"]["mode"]["enum"].append("other")
    assert openapi_spec(task) != first


def test_the_app_serves_the_document(make_task):
    task = make_task(Typed)
    response = task.app("/api").test_client().get("/openapi.json")
    assert response.status_code == 200
    validate(response.get_json())
    assert response.get_json() == openapi_spec(task, "/api")


class BadDefaults(AsyncTask):
    def main(self, logger: logging.Logger, a: int = True, b: str = 3, c: list[int] = ["x"], d: int = 2.5,  # noqa: B006
             e: float = 1, f: Literal["x"] = "y", g: bool = 0) -> None:
        return None


def test_a_default_its_annotation_does_not_allow_is_left_out(spec_of):
    props = params(spec_of(BadDefaults))["properties"]
    assert all("default" not in props[name] for name in "abcdfg")
    assert props["e"]["default"] == 1
