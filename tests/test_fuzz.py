"""Fuzz the HTTP API with schemathesis against its own OpenAPI document.

No request the document allows may get a 5xx, and no answer may break the document. The
schema is loaded from `openapi_spec()` directly, so this works whether or not the app serves
`/openapi.json` itself. Examples are bounded to keep the run short.
"""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from tasks import Typed

from asynctask import MemoryCollection
from asynctask.web.openapi import openapi_spec

CHECKS = [not_a_server_error, response_schema_conformance]


def _document() -> dict[str, Any]:
    """The document of `Typed` at /api; it depends on the class only, so a throwaway instance will do."""
    task = Typed(MemoryCollection(), tempfile.gettempdir())
    try:
        return openapi_spec(task, "/api")
    finally:
        task.shutdown()


# schemathesis parametrizes at collection time, so the schema exists at import; the app per test.
schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture
def app(make_task: Any) -> Any:
    """A fresh `Typed` service on an in-memory store, at /api."""
    return make_task(Typed).app("/api")


@schema.parametrize()
@settings(
    max_examples=25, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_keeps_to_its_document(case: Any, app: Any) -> None:
    case.call_and_validate(checks=CHECKS, app=app)
