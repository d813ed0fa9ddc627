"""The HTTP API (CONTRACT section 4): routes, the response envelope and error handling.

Every answer, errors included, is the envelope
`{"status": "ok"|"error", "data": ..., "error_data": [...], "error_msg": "..."}`.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, jsonify, request, url_for
from werkzeug.exceptions import HTTPException

from .errors import AsyncTaskError, InvalidParams, TaskNotFound
from .jsonable import jsonable
from .validation import check_task_id

if TYPE_CHECKING:
    from .task import AsyncTask

logger = logging.getLogger(__name__)


class BadRequest(AsyncTaskError, ValueError):
    """Raised when a request body or query is not what the route takes."""

    http_status = 400


def envelope(data: Any = None, status: int = 200, *, error_msg: str = "", error_data: list | None = None) -> Response:
    """The JSON response every route answers with."""
    body = {
        "status": "error" if error_msg else "ok",
        "data": jsonable(data),
        "error_data": jsonable(error_data or []),
        "error_msg": error_msg,
    }
    response = jsonify(body)
    response.status_code = status
    return response


def _json_body(required: bool) -> dict[str, Any] | None:
    """The request body as a JSON object; None when absent and not `required`."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise BadRequest("request body must be a JSON object")
        return None
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise BadRequest("request body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(body).__name__}")
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def create_blueprint(task: AsyncTask, endpoint: str = "/api", name: str | None = None) -> Blueprint:
    """The routes of one task type under `endpoint`, with envelope error handlers."""
    if not isinstance(endpoint, str) or not endpoint.startswith("/"):
        raise ValueError(f"endpoint must be a path starting with '/', not {endpoint!r}")
    endpoint = endpoint.rstrip("/")
    blueprint = Blueprint(name or f"asynctask{endpoint.replace('/', '_') or '_root'}", __name__)
    # A serving process heartbeats and recovers orphans even before it takes its first task.
    blueprint.before_request(task.start)

    def show(task_id: Any) -> Response:
        view = task.retrieve(check_task_id(task_id))
        if view is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        return envelope(view)

    @blueprint.post(endpoint or "/")
    def submit() -> Response:
        body = _json_body(required=True)
        assert body is not None
        if "data" not in body:
            raise BadRequest("body must hold 'data': an object of params")
        params = body["data"]
        if not isinstance(params, dict):
            raise BadRequest(f"'data' must be an object of params, not {type(params).__name__}")
        params = dict(params)
        task_id = params.pop("task_id", "")
        if task_id == "" and "task_id" in body["data"]:
            raise InvalidParams("task_id may not be empty")
        doc = task._submit(task_id, params)
        response = envelope({"task_id": doc["task_id"], "status": doc["status"]}, 202)
        response.headers["Location"] = url_for(f".{show_by_path.__name__}", task_id=doc["task_id"])
        return response

    @blueprint.get(endpoint or "/")
    def show_by_query() -> Response:
        body = _optional_body()
        task_id = body["task_id"] if body and "task_id" in body else request.args.get("task_id")
        if task_id is None:
            raise BadRequest("task_id is required: GET ?task_id=ID or a JSON body {\"task_id\": ID}")
        return show(task_id)

    @blueprint.get(f"{endpoint}/<task_id>")
    def show_by_path(task_id: str) -> Response:
        return show(task_id)

    register_error_handlers(blueprint)
    return blueprint


def _optional_body() -> dict[str, Any] | None:
    """A GET's JSON body, if it has one; a body that is not a JSON object is ignored."""
    try:
        return _json_body(required=False)
    except BadRequest:
        return None


def register_error_handlers(target: Flask | Blueprint) -> None:
    """Answer every error in the envelope; a server error gets an id and no details."""

    def handle_error(exc: AsyncTaskError) -> Response:
        if exc.http_status >= 500:
            return handle_unexpected(exc)
        return envelope(None, exc.http_status, error_msg=str(exc), error_data=[{"type": type(exc).__name__}])

    def handle_http(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code >= 500:
            return handle_unexpected(exc)
        response = envelope(None, code, error_msg=exc.description or exc.name)
        if code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    def handle_unexpected(exc: Exception) -> Response:
        error_id = uuid.uuid4().hex[:16]
        logger.error("error id %s: %s %s failed", error_id, request.method, request.path, exc_info=exc)
        return envelope(
            None, 500, error_msg=f"internal server error (error id {error_id})",
            error_data=[{"error_id": error_id}],
        )

    target.register_error_handler(AsyncTaskError, handle_error)
    target.register_error_handler(HTTPException, handle_http)
    target.register_error_handler(Exception, handle_unexpected)


def create_app(task: AsyncTask, endpoint: str = "/api") -> Flask:
    """A Flask app with `/ping` and the task's routes at `endpoint`."""
    app = Flask("asynctask")
    app.config["MAX_CONTENT_LENGTH"] = task.max_content_length
    app.register_blueprint(create_blueprint(task, endpoint))

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"status": "ok"}

    register_error_handlers(app)
    return app
