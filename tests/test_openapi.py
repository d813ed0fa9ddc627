"""The OpenAPI document (CONTRACT section 8, `/openapi.json`): valid, and typed from `main`."""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Dict, List, Literal, Optional, Tuple, Union  # noqa: UP035 - the old aliases are tested too

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from tasks import Echo, Typed

from asynctask import AsyncTask
from asynctask.openapi import TASK_ID_PATTERN, openapi_document, openapi_spec, schema_for

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


def test_the_document_is_valid_openapi_3(spec_of):
    spec = spec_of(Typed)
    assert spec["openapi"] == "3.0.3"
    assert json.loads(json.dumps(spec, allow_nan=False)) == spec
    assert spec["info"]["title"] == "Typed task API"
    assert set(spec["paths"]) == {
        "/api", "/api/{task_id}", "/api/{task_id}/log", "/ping", "/healthz", "/metrics", "/openapi.json",
    }
    assert set(spec["paths"]["/api"]) == {"post", "get"}
    assert set(spec["paths"]["/api/{task_id}"]) == {"parameters", "get", "delete"}


def test_the_title_and_endpoint_can_be_chosen(make_task):
    spec = openapi_spec(make_task(Typed), "/tasks/count/", title="Counting")
    validate(spec)
    assert spec["info"]["title"] == "Counting"
    assert "/tasks/count" in spec["paths"] and "/tasks/count/{task_id}/log" in spec["paths"]
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


def body_is_valid(spec: dict[str, Any], body: Any, path: str = "/api") -> bool:
    """Whether `body` is a valid POST body by `spec` (as a client or a fuzzer reads it)."""
    schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = OAS30Validator({**schema, "components": spec["components"]})
    return validator.is_valid(body)


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
    assert not body_is_valid(spec, {"text": "a b"})
    rerun = spec["components"]["schemas"]["Rerun"]["properties"]["task_id"]
    assert rerun["pattern"] == TASK_ID_PATTERN


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
    data = params(spec_of(Varied))
    props = data["properties"]
    assert data["required"] == ["name", "tags"]
    assert props["name"] == {"type": "string", "nullable": True}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"], "default": "fast"}
    assert props["ratio"] == {"type": "number", "nullable": True, "default": None}
    assert props["anything"] == {"default": None}
    assert props["options"] == {"type": "object", "default": {}}
    assert props["pair"] == {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                             "default": [1, 2]}
    assert props["color"] == {"type": "string", "enum": ["red", "blue"], "default": "red"}
    assert props["when"] == {}  # no JSON default for an object()
    assert props["flag"] == {"type": "boolean", "default": False}


@pytest.mark.parametrize(("annotation", "schema"), [
    (int, {"type": "integer"}),
    (bool, {"type": "boolean"}),
    (Any, {}),
    (List[int], {"type": "array", "items": {"type": "integer"}}),  # noqa: UP006
    (list, {"type": "array", "items": {}}),
    (Sequence[str], {"type": "array", "items": {"type": "string"}}),
    (Tuple[str, ...], {"type": "array", "items": {"type": "string"}}),  # noqa: UP006
    (set[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
    (Dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),  # noqa: UP006
    (Mapping, {"type": "object"}),
    (Optional[List[int]], {"type": "array", "items": {"type": "integer"}, "nullable": True}),  # noqa: UP006, UP045
    (Optional[Any], {}),  # noqa: UP045
    (Union[int, str], {"anyOf": [{"type": "integer"}, {"type": "string"}]}),  # noqa: UP007
    (Union[int, str, None], {"anyOf": [{"type": "integer", "nullable": True}, {"type": "string", "nullable": True}]}),  # noqa: UP007
    (Literal[1, 2], {"type": "integer", "enum": [1, 2]}),
    (Literal["a", None], {"type": "string", "enum": ["a", None], "nullable": True}),
    (Literal["a", 1], {"enum": ["a", 1]}),
    (Optional[Literal["a", "b"]], {"type": "string", "enum": ["a", "b", None], "nullable": True}),  # noqa: UP045
    (logging.Logger, {}),
])
def test_schema_for(annotation, schema):
    assert schema_for(annotation) == schema


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
    assert set(paths["/api"]["post"]["responses"]) == {"202", "400", "401", "404", "413", "500"}
    assert set(paths["/api"]["get"]["responses"]) == {"200", "400", "401", "404"}
    assert set(paths["/api/{task_id}"]["get"]["responses"]) == {"200", "400", "401", "404"}
    assert {"200", "202", "401", "404", "409"} <= set(paths["/api/{task_id}"]["delete"]["responses"])
    log = paths["/api/{task_id}/log"]["get"]
    assert "X-Log-Offset" in log["responses"]["200"]["headers"]
    assert "text/plain" in log["responses"]["200"]["content"]
    assert log["parameters"][0]["schema"] == {"type": "integer", "minimum": 0, "default": 0}
    assert set(paths["/healthz"]["get"]["responses"]) == {"200", "503"}
    assert paths["/ping"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["required"] == ["status"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]


def test_the_list_and_long_poll_query_parameters(spec_of):
    paths = spec_of(Typed)["paths"]
    query = {p["name"]: p["schema"] for p in paths["/api"]["get"]["parameters"]}
    assert query["limit"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}
    assert query["skip"] == {"type": "integer", "minimum": 0, "default": 0}
    assert query["status"] == {"$ref": "#/components/schemas/TaskStatus"}
    assert query["task_id"]["type"] == "string"
    wait = paths["/api/{task_id}"]["get"]["parameters"][0]
    assert wait["name"] == "wait" and wait["schema"] == {"type": "number", "minimum": 0, "maximum": 60}


def test_answers_use_the_envelope_and_the_public_view(spec_of):
    schemas = spec_of(Typed)["components"]["schemas"]
    assert schemas["TaskStatus"]["enum"] == ["pending", "queued", "running", "success", "failed", "cancelled"]
    error = schemas["Error"]
    assert error["required"] == ["status", "data", "error_data", "error_msg"]
    assert error["properties"]["status"]["enum"] == ["error"]
    view = schemas["Task"]["properties"]
    assert view["created_at"] == {"type": "string", "format": "date-time", "nullable": True}
    assert view["progress"]["nullable"] is True
    assert {"task_id", "status", "result", "error", "attempts", "started_at", "finished_at", "update_time",
            "next_retry_at", "trace_id", "params"} <= set(view)


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
        if name in ("GET /ping", "GET /healthz"):
            assert "security" not in operation and "401" not in operation["responses"]
        else:
            assert operation["security"] == [{"bearerAuth": []}], name
            assert "401" in operation["responses"], name
    assert "s3cret" not in json.dumps(spec)


def test_several_task_types_in_one_document(make_task):
    spec = openapi_document([
        (make_task(Typed), "/count"), (make_task(Echo, api_token="t"), "/echo/"), (make_task(Typed), "/"),
    ])
    validate(spec)
    assert spec["info"]["title"] == "Typed, Echo task API"
    schemas = spec["components"]["schemas"]
    assert schemas["TypedParams"]["required"] == ["text"] and schemas["Typed2Params"]["required"] == ["text"]
    assert "additionalProperties" not in schemas["EchoParams"]
    post = spec["paths"]["/echo"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["properties"]["data"]["anyOf"][0] == {
        "$ref": "#/components/schemas/EchoParams",
    }
    assert body_is_valid(spec, {"data": {"x": 1}}, "/echo") and not body_is_valid(spec, {"data": {"x": 1}}, "/count")
    assert post["security"] == [{"bearerAuth": []}]
    assert "security" not in spec["paths"]["/count"]["post"]
    assert spec["paths"]["/metrics"]["get"]["security"] == [{"bearerAuth": []}]
    assert {"/", "/{task_id}", "/{task_id}/log", "/count/{task_id}", "/echo/{task_id}/log"} <= set(spec["paths"])
    ids = [op["operationId"] for op in operations(spec).values()]
    assert len(ids) == len(set(ids))
    with pytest.raises(ValueError):
        openapi_document([])


def test_building_the_document_has_no_side_effects(make_task):
    task = make_task(Typed)
    first = openapi_spec(task)
    first["components"]["schemas"]["Task"]["properties"]["created_at"]["nullable"] = False
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
