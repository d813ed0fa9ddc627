"""Fuzz the HTTP API with schemathesis against its own OpenAPI document.

No request the document allows may get a 5xx, and no answer may break the document. The
schema is loaded from `openapi_spec()` directly, so this works whether or not the app serves
`/openapi.json` itself. Examples are bounded to keep the run short.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from asynctask.openapi import openapi_spec
from tasks import Typed

CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def api_schema(make_task: Any) -> Any:
    """The document of a `Typed` task at /api, calling its Flask app through WSGI."""
    task = make_task(Typed)
    schema = schemathesis.openapi.from_dict(openapi_spec(task, "/api"))
    schema.app = task.app("/api")
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_keeps_to_its_document(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)
