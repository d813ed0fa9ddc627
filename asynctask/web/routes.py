"""The HTTP API: routes, the response envelope, errors, auth, tracing.

Every JSON answer, errors included, is the envelope
`{"status": "ok"|"error", "data": ..., "error_data": [...], "error_msg": "..."}`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from typing import TYPE_CHECKING, Any, cast

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..errors import AsyncTaskError, BadRequest, TaskNotFound
from ..logs import read_log
from ..status import TaskStatus
from ..store.registry import live_workers
from ..validation import MAX_WAIT, TASK_ID_CHARS, check_task_id
from .http import check_token, envelope, json_body

if TYPE_CHECKING:
    from ..task import AsyncTask

logger = logging.getLogger(__name__)

EXTENSION = "asynctask"
MAX_LIMIT = 1000
#: The largest `skip` MongoDB takes (a 64-bit int); the list refuses more with a 400.
MAX_SKIP = 2**31 - 1
MAX_SEARCH = 200
MAX_STATS_MINUTES = 1440
_REQUEST_ID = re.compile(TASK_ID_CHARS)
#: The HTTP methods `/metrics` counts by name; any other is counted as "other".
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The largest `skip` (and other integer query parameter) taken: what MongoDB takes for sure.
MAX_INT_ARG = 2**31 - 1



def _optional_body() -> dict[str, Any] | None:
    """A GET's JSON body, if it has one; a body that is not a JSON object is ignored."""
    try:
        return json_body(required=False)
    except BadRequest:
        return None


def _number_arg(name: str, default: float, low: float, high: float | None = None, *, integer: bool = False) -> Any:
    """A numeric query parameter within [low, high], or a 400 naming it.

    An integer parameter is at most `MAX_INT_ARG` unless `high` says otherwise; a number
    parameter is finite.
    """
    raw = request.args.get(name)
    if raw is None:
        return default
    if integer and high is None:
        high = MAX_INT_ARG
    kind = "an integer" if integer else "a number"
    try:
        if integer and not re.fullmatch(r"[+-]?[0-9]{1,30}", raw.strip()):
            raise ValueError(raw)
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be {kind}, not {raw[:40]!r}") from None
    if not (low <= value and (high is None or value <= high)):  # NaN is in no range
        shown = "{:.0f}" if integer else "{:g}"
        bounds = (f"between {shown.format(low)} and {shown.format(high)}" if high is not None
                  else f"at least {shown.format(low)}")
        raise BadRequest(f"{name} must be {kind} {bounds}")
    return value


def _trace() -> None:
    """Take the caller's X-Request-ID (or make one) as this request's trace id."""
    given = request.headers.get("X-Request-ID", "")
    g.asynctask_trace_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _echo_trace(response: Response) -> Response:
    trace_id = g.get("asynctask_trace_id")
    if trace_id:
        response.headers["X-Request-ID"] = trace_id
    return response


def create_blueprint(task: AsyncTask, endpoint: str = "/api", name: str | None = None) -> Blueprint:
    """The routes of one task type under `endpoint`, with envelope error handlers."""
    if not isinstance(endpoint, str) or not endpoint.startswith("/"):
        raise ValueError(f"endpoint must be a path starting with '/', not {endpoint!r}")
    endpoint = endpoint.rstrip("/")
    blueprint = Blueprint(name or f"asynctask{endpoint.replace('/', '_') or '_root'}", __name__)

    @blueprint.before_request
    def before() -> None:
        from werkzeug.exceptions import UnsupportedMediaType

        _trace()
        check_token([task.api_token] if task.api_token else [])
        if request.content_length is not None and request.content_length > task.max_content_length:
            raise RequestEntityTooLarge()
        g.asynctask_max_content_length = task.max_content_length
        with contextlib.suppress(AttributeError):  # Flask < 3.1: the Content-Length check above does
            request.max_content_length = task.max_content_length
        # Only a JSON body is read, and a browser sends one cross-site only after a CORS
        # preflight: no web page can submit a task with a plain form post. A form always
        # declares its type, even empty; a POST with neither body nor type (pause, trigger) is taken.
        with_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        writes = request.method in ("POST", "PUT", "PATCH")
        if ((writes and (with_body or request.mimetype)) or (request.method == "DELETE" and with_body)) \
                and request.mimetype != "application/json":
            raise UnsupportedMediaType(
                f"Content-Type must be application/json, not {request.mimetype or 'none'!r}"
            )
        # A serving process heartbeats and recovers orphans before it takes its first task.
        task.start()

    blueprint.after_request(_echo_trace)

    def show(task_id: Any, wait: float = 0.0) -> Response:
        check_task_id(task_id)
        view = task.wait(task_id, wait) if wait > 0 else task.retrieve(task_id)
        if view is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        return envelope(view)

    @blueprint.post(endpoint or "/")
    def submit() -> Response:
        body = json_body(required=True)
        assert body is not None
        if "data" not in body:
            raise BadRequest("body must hold 'data': an object of params")
        params = body["data"]
        if not isinstance(params, dict):
            raise BadRequest(f"'data' must be an object of params, not {type(params).__name__}")
        params = dict(params)
        task_id = check_task_id(params.pop("task_id")) if "task_id" in params else None
        unknown = sorted(set(body) - {"data", "priority", "delay", "run_at"})
        if unknown:
            raise BadRequest(f"unexpected field(s) in the body: {', '.join(unknown)}")
        doc = task.asynctask_engine.submit(
            params, task_id=task_id, priority=body.get("priority", 0), delay=body.get("delay"),
            run_at=body.get("run_at"), trace_id=g.asynctask_trace_id,
        )
        response = envelope({"task_id": doc["task_id"], "status": doc["status"]}, 202)
        response.headers["Location"] = url_for(f".{show_by_path.__name__}", task_id=doc["task_id"])
        response.headers["Retry-After"] = "1"
        return response

    @blueprint.get(endpoint or "/")
    def show_or_list() -> Response:
        body = _optional_body()
        task_id = body["task_id"] if body and "task_id" in body else request.args.get("task_id")
        if task_id is not None:
            return show(task_id)
        status = request.args.get("status") or None
        if status is not None and status not in {s.value for s in TaskStatus}:
            raise BadRequest(f"status must be one of {', '.join(s.value for s in TaskStatus)}")
        limit = _number_arg("limit", 50, 1, MAX_LIMIT, integer=True)
        skip = _number_arg("skip", 0, 0, MAX_SKIP, integer=True)
        search = request.args.get("q") or None
        if search is not None and len(search) > MAX_SEARCH:
            raise BadRequest(f"q may hold at most {MAX_SEARCH} characters")
        return envelope(task.list(status, limit, skip, search))

    @blueprint.post(f"{endpoint}/bulk")
    def bulk() -> Response:
        body = json_body(required=True)
        assert body is not None
        unknown = sorted(set(body) - {"action", "status", "task_ids"})
        if unknown:
            raise BadRequest(f"unexpected field(s) in the body: {', '.join(unknown)}")
        action, status, task_ids = body.get("action"), body.get("status"), body.get("task_ids")
        if action not in ("retry", "cancel"):
            raise BadRequest("action must be 'retry' or 'cancel'")
        if status is not None and (not isinstance(status, str) or status not in {s.value for s in TaskStatus}):
            raise BadRequest(f"status must be one of {', '.join(s.value for s in TaskStatus)}")
        if task_ids is not None and not isinstance(task_ids, list):
            raise BadRequest("task_ids must be a list of task ids")
        return envelope(task.bulk(action, status, task_ids))

    @blueprint.get(f"{endpoint}/stats")
    def stats() -> Response:
        return envelope(task.stats(_number_arg("minutes", 60, 1, MAX_STATS_MINUTES, integer=True)))

    @blueprint.get(f"{endpoint}/<task_id>")
    def show_by_path(task_id: str) -> Response:
        return show(task_id, _number_arg("wait", 0.0, 0.0, MAX_WAIT))

    @blueprint.delete(f"{endpoint}/<task_id>")
    def cancel(task_id: str) -> Response:
        status = task.cancel(task_id)
        running = status == TaskStatus.RUNNING.value
        return envelope({"task_id": task_id, "status": status, "cancel_requested": running}, 202 if running else 200)

    @blueprint.get(f"{endpoint}/<task_id>/log")
    def log(task_id: str) -> Response:
        check_task_id(task_id)
        offset = _number_arg("offset", 0, 0, 2**63 - 1, integer=True)
        # Only a task of this type has a log here: no other file in logger_dir is ever served.
        if task.retrieve(task_id) is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        chunk, next_offset = read_log(task.logger_dir, task_id, offset) or (b"", 0)  # no line logged yet
        response = Response(chunk, mimetype="text/plain")
        response.headers["X-Log-Offset"] = str(next_offset)
        return response

    from .schedule_routes import register_schedule_routes

    register_schedule_routes(blueprint, task, endpoint)  # {endpoint}/schedules...
    register_error_handlers(blueprint)
    # However the blueprint is added (init_app or app.register_blueprint), the app gets
    # /ping, /healthz, /metrics, /openapi.json and envelope errors with its first task type.
    blueprint.record(lambda state: _attach(cast(Flask, state.app), task, endpoint or "/"))
    return blueprint


def register_error_handlers(target: Flask | Blueprint) -> None:
    """Answer every error in the envelope; a server error gets an id and no details."""

    def handle_error(exc: AsyncTaskError) -> Response:
        if exc.http_status >= 500 and exc.http_status != 503:
            return handle_unexpected(exc)
        return envelope(None, exc.http_status, error_msg=str(exc), error_data=[{"type": type(exc).__name__}])

    def handle_http(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code >= 500:
            return handle_unexpected(exc)
        response = envelope(None, code, error_msg=exc.description or exc.name)
        if code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        if code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
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


def _tasks() -> list[tuple[AsyncTask, str]]:
    return current_app.extensions[EXTENSION]


def _register_service_routes(app: Flask) -> None:
    """/ping, /healthz, /metrics and /openapi.json, once per app, for every task type in it."""

    def protected() -> None:
        check_token([task.api_token for task, _ in _tasks() if task.api_token])

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/healthz")
    def healthz() -> Response:
        try:
            for task, _ in _tasks():
                task.ping()
        except Exception:
            logger.warning("health check: the database did not answer", exc_info=True)
            return envelope({"database": "unreachable"}, 503, error_msg="the database does not answer")
        return envelope({"database": "ok"})

    @app.get("/workers")
    def workers() -> Response:
        protected()
        return envelope({"workers": live_workers(task for task, _ in _tasks())})

    @app.get("/metrics")
    def metrics() -> Response:
        protected()
        from ..metrics import render

        body, content_type = render(task for task, _ in _tasks())
        return Response(body, content_type=content_type)

    @app.get("/openapi.json")
    def openapi() -> Response:
        protected()
        from .openapi import openapi_document

        return jsonify(openapi_document(_tasks()))

    @app.after_request
    def count(response: Response) -> Response:
        from ..metrics import request as count_request

        route = request.url_rule.rule if request.url_rule else "<unmatched>"
        # A made-up method name (`FOO /api`) is not a new label each time.
        method = request.method if request.method in STANDARD_METHODS else "other"
        count_request(method, route, response.status_code)
        return response

    app.before_request(_trace)
    app.after_request(_echo_trace)
    register_error_handlers(app)

    from .dashboard import blueprint as dashboard_blueprint
    from .worker_routes import register_worker_types

    app.register_blueprint(dashboard_blueprint())  # GET /dashboard
    register_worker_types(app)  # GET /worker/types, for remote workers


def _attach(app: Flask, task: AsyncTask, endpoint: str) -> None:
    """Note `task` in `app`; the service routes are added with the first task."""
    from .worker_routes import create_worker_blueprint

    registered = app.extensions.setdefault(EXTENSION, [])
    if not registered:
        _register_service_routes(app)
    registered.append((task, endpoint))
    app.register_blueprint(create_worker_blueprint(task, endpoint))  # {endpoint}/worker/...


def init_app(app: Flask, task: AsyncTask, endpoint: str = "/api") -> None:
    """Serve `task` at `endpoint` in `app`; the service routes are added with the first task."""
    app.register_blueprint(create_blueprint(task, endpoint))


def create_app(task: AsyncTask, endpoint: str = "/api") -> Flask:
    """A Flask app with `/ping`, `/healthz`, `/metrics`, `/openapi.json` and the task's routes."""
    app = Flask("asynctask")
    app.config["MAX_CONTENT_LENGTH"] = task.max_content_length
    init_app(app, task, endpoint)
    return app
