"""The routes remote workers use, under each task type's endpoint: claim, heartbeat, progress,
log lines, finish, leave. A remote worker reaches the service over HTTP(S) only and holds no
database credentials; every call lands in the same `StoreBackend` a local worker uses, fenced
by the attempt number, so there is one lifecycle.

They exist only when the type has a `worker_token` (else 404), and take only that token: the
API token opens none of them, and the worker token none of the API's routes.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, abort, g, request

from ..attempt import Attempt
from ..errors import AttemptSuperseded, BadRequest, ResultNotStorable
from ..logs import log_path
from ..status import TaskStatus
from ..validation import check_result, check_task_id
from .http import check_token, envelope, json_body

if TYPE_CHECKING:
    from ..task import AsyncTask

#: The longest claim long-poll.
MAX_CLAIM_WAIT = 30.0
#: How often a waiting claim looks at the queue again.
CLAIM_POLL = 0.2
#: Endings a remote worker may report, and the status each records.
FINAL = {"success": TaskStatus.SUCCESS, "failed": TaskStatus.FAILED, "cancelled": TaskStatus.CANCELLED}


def create_worker_blueprint(task: AsyncTask, endpoint: str) -> Blueprint:
    """The remote-worker routes of `task` under `endpoint` (`{endpoint}/worker/...`)."""
    base = endpoint.rstrip("/")
    blueprint = Blueprint(f"asynctask_worker{base.replace('/', '_') or '_root'}", __name__)
    backend = task.asynctask_engine.backend

    @blueprint.before_request
    def guard() -> None:
        if not task.worker_token:
            abort(404)
        check_token([task.worker_token])
        if request.mimetype != "application/json":
            abort(415, f"Content-Type must be application/json, not {request.mimetype or 'none'!r}")
        if request.content_length is not None and request.content_length > task.max_content_length:
            abort(413)
        g.asynctask_max_content_length = task.max_content_length

    @blueprint.post(f"{base}/worker/claim")
    def claim() -> Any:
        body = _body()
        owner, name = _worker(body)
        wait = _number(body, "wait", 0.0, MAX_CLAIM_WAIT)
        deadline = time.monotonic() + wait
        task.start()  # this process sweeps for the fleet, remote workers included
        while True:
            attempt = backend.claim(owner, name)
            if attempt is not None or time.monotonic() >= deadline:
                break
            time.sleep(min(CLAIM_POLL, max(deadline - time.monotonic(), 0.0)))
        if attempt is None:
            return envelope({"task": None})
        return envelope({"task": {
            "task_id": attempt.task_id, "attempt": attempt.number, "params": attempt.params,
            "trace_id": attempt.trace_id, "retries": attempt.retries,
            "timeout": task.task_timeout.total_seconds(),
            # The service's view of when the attempt times out; the worker counts `timeout` itself.
            "deadline": (datetime.now(timezone.utc) + task.task_timeout).isoformat(),
        }})

    @blueprint.post(f"{base}/worker/heartbeat")
    def heartbeat() -> Any:
        body = _body()
        owner, _ = _worker(body)
        info = body["worker"]
        task_ids = [check_task_id(t) for t in _list(body, "task_ids")]
        backend.register(
            owner, slots=_int(info, "slots"), running=_int(info, "running"), started_at=_time(info, "started_at"),
            host=_text(info, "host"), pid=_int(info, "pid"), remote=True,
        )
        lost = backend.heartbeat(owner, task_ids)
        cancel = backend.cancel_requests(owner, task_ids)
        return envelope({"lost": sorted(lost), "cancel": [[t, n] for t, n in cancel]})

    @blueprint.post(f"{base}/worker/progress")
    def progress() -> Any:
        body = _body()
        attempt = _attempt(body)
        message = body.get("message")
        if message is not None and not isinstance(message, str):
            raise BadRequest("'message' must be a string or null")
        if not backend.progress(attempt.task_id, attempt.number, _number(body, "percent", 0.0, 100.0), message):
            raise AttemptSuperseded(f"attempt {attempt.number} of task {attempt.task_id} is no longer current")
        return envelope({"recorded": True})

    @blueprint.post(f"{base}/worker/log")
    def log() -> Any:
        body = _body()
        attempt = _attempt(body)
        lines = _list(body, "lines")
        if not all(isinstance(line, str) for line in lines):
            raise BadRequest("'lines' must be a list of strings")
        if not task.asynctask_engine.store.is_latest(attempt.task_id, attempt.number):  # its last lines may follow its end
            raise AttemptSuperseded(f"attempt {attempt.number} of task {attempt.task_id} is no longer current")
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        with open(log_path(task.logger_dir, attempt.task_id), "a", encoding="utf-8") as file:
            file.write(text)
        return envelope({"lines": len(lines)})

    @blueprint.post(f"{base}/worker/finish")
    def finish() -> Any:
        body = _body()
        owner, _ = _worker(body)
        attempt = _attempt(body)
        ending = body.get("ending")
        error = body.get("error")
        if error is not None and not isinstance(error, str):
            raise BadRequest("'error' must be a string or null")
        if ending in FINAL:
            result = body.get("result")
            try:
                check_result(result)
            except ResultNotStorable as exc:
                raise BadRequest(str(exc)) from exc
            written = backend.finish(attempt, FINAL[ending], result=result, error=error,
                                     progress=_progress(body.get("progress")))
            status = FINAL[ending].value if written else None
        elif ending == "retry":
            status = backend.retry_later(attempt, error=error or "", wait=timedelta(
                seconds=_number(body, "wait", 0.0, task.retry_policy.max_delay)))
        elif ending == "released":
            status = backend.release(owner, attempt)
        else:
            raise BadRequest(f"'ending' must be one of {sorted([*FINAL, 'retry', 'released'])}, not {ending!r}")
        if status is None:
            raise AttemptSuperseded(f"attempt {attempt.number} of task {attempt.task_id} is no longer current")
        backend.free(attempt)  # its concurrency shares, now rather than at the next sweep
        return envelope({"status": status})

    @blueprint.post(f"{base}/worker/leave")
    def leave() -> Any:
        owner, _ = _worker(_body())
        backend.leave(owner)
        return envelope({"left": True})

    return blueprint


def register_worker_types(app: Flask) -> None:
    """`GET /worker/types`: the endpoint of each task type that takes remote workers, so one
    remote worker process can serve several types of a service (worker token only)."""

    @app.get("/worker/types")
    def worker_types() -> Any:
        served = [(task, endpoint) for task, endpoint in app.extensions.get("asynctask", []) if task.worker_token]
        if not served:
            abort(404)
        check_token([task.worker_token for task, _ in served if task.worker_token])
        return envelope({"types": {task.name: endpoint for task, endpoint in served}})


# -- the OpenAPI description ------------------------------------------------------------------------


def worker_paths(base: str, suffix: str) -> dict[str, Any]:
    """The remote-worker routes of one type, as OpenAPI path items (`workerAuth` security)."""
    worker = {"type": "object", "required": ["owner", "host", "pid"], "properties": {
        "owner": {"type": "string", "maxLength": 200}, "host": {"type": "string", "maxLength": 200},
        "pid": {"type": "integer", "minimum": 0}, "slots": {"type": "integer"}, "running": {"type": "integer"},
        "started_at": {"type": "string", "format": "date-time"}}}
    attempt = {"task_id": {"type": "string"}, "attempt": {"type": "integer", "minimum": 1}}
    bodies = {
        "claim": ("Claim the next due task (long-polls up to `wait` seconds, at most 30).",
                  {"worker": worker, "wait": {"type": "number", "minimum": 0, "maximum": MAX_CLAIM_WAIT}},
                  ["worker"]),
        "heartbeat": ("Register the worker and keep its tasks; answers the ids it lost and the cancels asked.",
                      {"worker": worker, "task_ids": {"type": "array", "items": {"type": "string"}}}, ["worker"]),
        "progress": ("Record the progress of an attempt.",
                     {**attempt, "percent": {"type": "number", "minimum": 0, "maximum": 100},
                      "message": {"type": ["string", "null"]}}, ["task_id", "attempt", "percent"]),
        "log": ("Append log lines of an attempt to the task's log file.",
                {**attempt, "lines": {"type": "array", "items": {"type": "string"}}}, ["task_id", "attempt", "lines"]),
        "finish": ("Record how an attempt ended; 409 when it is no longer the task's current attempt.",
                   {**attempt, "worker": worker, "retries": {"type": "integer", "minimum": 0},
                    "ending": {"type": "string", "enum": [*FINAL, "retry", "released"]}, "result": {},
                    "error": {"type": ["string", "null"]}, "wait": {"type": "number", "minimum": 0},
                    "progress": {"type": ["object", "null"]}}, ["worker", "task_id", "attempt", "ending"]),
        "leave": ("The worker stops: its registry entry goes.", {"worker": worker}, ["worker"]),
    }
    paths: dict[str, Any] = {}
    for route, (summary, properties, required) in bodies.items():
        paths[f"{base}/worker/{route}"] = {"post": {
            "operationId": f"worker_{route}{suffix}", "summary": summary, "tags": ["remote workers"],
            "security": [{"workerAuth": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": required, "properties": properties}}}},
            "responses": {
                "200": {"description": "Done; `data` as described.", "content": {"application/json": {
                    "schema": {"type": "object"}}}},
                **{code: {"$ref": f"#/components/responses/{code}"} for code in ("400", "401", "404", "409", "413", "415")},
            },
        }}
    return paths


# -- reading a worker's request ------------------------------------------------------------------


def _body() -> dict[str, Any]:
    body = json_body(required=True)
    assert body is not None
    return body


def _worker(body: dict[str, Any]) -> tuple[str, str]:
    """(owner, host:pid) of the worker a request comes from."""
    info = body.get("worker")
    if not isinstance(info, dict):
        raise BadRequest("'worker' must be an object with owner, host and pid")
    owner, host, pid = _text(info, "owner"), _text(info, "host"), _int(info, "pid")
    if len(owner) > 200 or len(host) > 200:
        raise BadRequest("'owner' and 'host' are at most 200 characters")
    return owner, f"{host}:{pid}"


def _attempt(body: dict[str, Any]) -> Attempt:
    task_id = check_task_id(body.get("task_id"))
    number = body.get("attempt")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise BadRequest("'attempt' must be the attempt number, an int >= 1")
    retries = body.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise BadRequest("'retries' must be an int >= 0")
    return Attempt(task_id, number, {}, retries=retries)


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string")
    return value


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"'{name}' must be an int >= 0")
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float:
    value = body.get(name, low)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"'{name}' must be a number from {low:g} to {high:g}")
    return float(value)


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if not isinstance(value, list) or len(value) > 10_000:
        raise BadRequest(f"'{name}' must be a list of at most 10000 items")
    return value


def _time(body: dict[str, Any], name: str) -> datetime:
    try:
        value = datetime.fromisoformat(_text(body, name))
    except ValueError:
        raise BadRequest(f"'{name}' must be an ISO 8601 time with a time zone") from None
    if value.tzinfo is None:
        raise BadRequest(f"'{name}' must be an ISO 8601 time with a time zone")
    return value


def _progress(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("percent"), (int, float)):
        raise BadRequest("'progress' must be null or {\"percent\": number, \"message\": string or null}")
    message = value.get("message")
    return {"percent": float(value["percent"]), "message": message if isinstance(message, str) else None}
