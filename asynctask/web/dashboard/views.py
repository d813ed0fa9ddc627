"""The dashboard's pages and actions: server-rendered Jinja (autoescaped), plain HTML forms.

Pages refresh themselves through `static/dashboard.js`, which re-fetches the page and swaps
the regions marked `data-live`; every action is a POST form that works without JavaScript.
"""

from __future__ import annotations

import codecs
import json
import logging
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from ...errors import AsyncTaskError, InvalidTaskId, InvalidTransition
from ...jsonable import as_utc, jsonable
from ...logs import MAX_READ, read_log
from ...status import ACTIVE, FINISHED, RERUNNABLE, TaskStatus
from ...store.registry import live_workers
from ...validation import check_task_id
from .auth import (
    CSRF_FIELD,
    check_csrf,
    check_token,
    clear_session,
    csrf_token,
    may_see,
    secure,
    set_session,
    signed_in,
    tokens,
)
from .charts import queue_wait, seconds, throughput
from .schedules import register_schedule_pages

if TYPE_CHECKING:
    from ...task import AsyncTask

logger = logging.getLogger(__name__)

NAME = "asynctask_dashboard"
STATUSES = [status.value for status in TaskStatus]
PAGE_SIZE = 50
#: How often an open page refreshes itself, in milliseconds.
REFRESH_MS = 2000
#: The window of the overview's charts.
STATS_MINUTES = 60
#: Most tasks a searched bulk action selects (each type).
BULK_LIMIT = 10_000
#: Most task ids one call of `bulk` takes.
BULK_BATCH = 1000
#: The log a task page shows before it follows the file.
LOG_PAGE = MAX_READ
#: The deepest page of one type's list: its skip stays within what the API takes.
MAX_PAGE = (2**31 - 1) // PAGE_SIZE
#: The deepest page of the list of every type (each type's list is read from its start):
#: at most 1,000 tasks a type, the API's largest page.
MAX_MERGED_PAGE = 1000 // PAGE_SIZE
#: Messages an action leaves for the page it redirects to; only these texts are shown.
NOTICES = {
    "cancelled": "Task cancelled.",
    "cancel-requested": "Cancel requested: the task stops as soon as its worker notices.",
    "not-cancelled": "Not cancelled: the task is {status}.",
    "retried": "Task submitted again.",
    "not-retried": "Not submitted again: the task is {status}.",
    "bulk-retry": "Retried {changed} of {matched} failed task(s).",
    "bulk-cancel": "Cancelled {changed} of {matched} queued task(s).",
    "signed-out": "Signed out.",
}


def create_blueprint() -> Blueprint:
    """The dashboard at /dashboard, for every task type the app serves."""
    bp = Blueprint(
        NAME, __name__, url_prefix="/dashboard", template_folder="templates",
        static_folder="static", static_url_path="/static",
    )

    @bp.before_request
    def guard() -> Any:
        if request.endpoint in (f"{NAME}.static", f"{NAME}.login"):
            return None
        if not signed_in():
            if request.method == "GET" and request.endpoint != f"{NAME}.log":
                return redirect(url_for(".login", next=_here()))
            abort(401, "sign in first")
        if request.method == "POST":
            check_csrf()
        return None

    bp.after_request(secure)

    @bp.context_processor
    def helpers() -> dict[str, Any]:
        return {
            "csrf_token": csrf_token, "csrf_field": CSRF_FIELD, "statuses": STATUSES,
            "with_token": bool(tokens()), "refresh_ms": REFRESH_MS, "when": when, "ago": ago,
            "seconds": seconds, "pretty": pretty, "run_time": run_time, "first_line": first_line,
            "iso": lambda value: _time(value).isoformat() if value else "",
        }

    @bp.get("")
    def overview() -> str:
        cards: list[dict[str, Any]] = []
        running: list[dict[str, Any]] = []
        for key, (task, endpoint) in _types().items():
            counts = task.list(limit=1)["counts"]
            stats = task.stats(STATS_MINUTES)
            limits = task.asynctask_engine.backend.limits  # due tasks a rate or per-key limit holds back
            cards.append({
                "key": key, "endpoint": endpoint, "counts": {s: counts.get(s, 0) for s in STATUSES},
                "total": sum(counts.values()), "stats": stats,
                "throughput": throughput(stats["series"]), "queue_wait": queue_wait(stats["series"]),
                "held": {} if limits is None else {reason: n for reason, n in limits.held_back().items() if n},
            })
            running += [{**view, "type": key} for view in task.list(TaskStatus.RUNNING.value, 20)["tasks"]]
        running.sort(key=lambda view: _time(view.get("started_at")))
        return render_template(
            f"{NAME}/overview.html", cards=cards, running=running,
            workers=live_workers(task for task, _ in _types().values()),
            minutes=STATS_MINUTES,
        )

    @bp.get("/tasks")
    def tasks() -> str:
        types = _types()
        type_key, status, search = _filter(request.args, types)
        selected = {type_key: types[type_key]} if type_key else types
        deepest = MAX_PAGE if len(selected) == 1 else MAX_MERGED_PAGE
        page = _page(request.args.get("page", ""), deepest)
        rows, total, counts = _page_of(selected, status, search, page)
        last = min(max(-(-total // PAGE_SIZE), 1), deepest)
        if not rows and page > last:  # past the end: the last page instead
            page = last
            rows, total, counts = _page_of(selected, status, search, page)
        return render_template(
            f"{NAME}/tasks.html", rows=rows, total=total, counts=counts, types=list(types),
            type_key=type_key, status=status, search=search, page=page, page_size=PAGE_SIZE,
            last_page=last, merged=len(selected) > 1,
            notice=_notice(), bulk_allowed={
                "retry": status in ("", TaskStatus.FAILED.value),
                "cancel": status in ("", TaskStatus.QUEUED.value),
            },
        )

    @bp.get("/tasks/<type_key>/<task_id>")
    def task(type_key: str, task_id: str) -> str:
        task, view = _task_view(type_key, task_id)
        log_text, log_offset = _log_start(task, task_id)
        return render_template(
            f"{NAME}/task.html", type_key=type_key, view=view, finished=view.get("status") in FINISHED,
            cancellable=view.get("status") in ACTIVE, retry_refusal=retry_refusal(task, view),
            log_text=log_text, log_offset=log_offset, notice=_notice(),
        )

    @bp.get("/tasks/<type_key>/<task_id>/log")
    def log(type_key: str, task_id: str) -> Response:
        task, _ = _task_view(type_key, task_id)  # only the log of a task of this type that exists
        try:
            offset = max(int(request.args.get("offset", "0")), 0)
        except ValueError:
            abort(400, "offset must be a whole number of bytes")
        chunk, next_offset = read_log(task.logger_dir, task_id, offset) or (b"", 0)  # no line logged yet
        response = Response(chunk, mimetype="text/plain")
        response.headers["X-Log-Offset"] = str(next_offset)
        return response

    @bp.post("/tasks/<type_key>/<task_id>/cancel")
    def cancel(type_key: str, task_id: str) -> WerkzeugResponse:
        task, view = _task_view(type_key, task_id)
        try:
            notice = "cancelled" if task.cancel(task_id) == TaskStatus.CANCELLED.value else "cancel-requested"
        except InvalidTransition:
            status = (task.retrieve(task_id) or view).get("status")
            return redirect(url_for(".task", type_key=type_key, task_id=task_id, notice="not-cancelled",
                                    was=status), 303)
        return redirect(url_for(".task", type_key=type_key, task_id=task_id, notice=notice), 303)

    @bp.post("/tasks/<type_key>/<task_id>/retry")
    def retry(type_key: str, task_id: str) -> WerkzeugResponse:
        task, view = _task_view(type_key, task_id)
        if retry_refusal(task, view) is None:
            task.run(task_id=task_id)  # the run rule decides again, atomically; the view tells what it did
            after = task.retrieve(task_id) or view
            if _submission(after) != _submission(view):
                return redirect(url_for(".task", type_key=type_key, task_id=task_id, notice="retried"), 303)
            view = after
        return redirect(url_for(".task", type_key=type_key, task_id=task_id, notice="not-retried",
                                was=view.get("status")), 303)

    @bp.post("/bulk")
    def bulk() -> WerkzeugResponse:
        action = request.form.get("action")
        if action not in ("retry", "cancel"):
            abort(400, "action must be retry or cancel")
        types = _types()
        type_key, status, search = _filter(request.form, types)  # a type it may not see: 404, not every type
        target = TaskStatus.FAILED.value if action == "retry" else TaskStatus.QUEUED.value
        matched = changed = 0
        if status in ("", target):
            for task, _ in ([types[type_key]] if type_key else types.values()):
                if search:  # the tasks the search finds, in batches the bulk action takes
                    ids = _matching_ids(task, target, search)
                    batches = [{"task_ids": ids[i:i + BULK_BATCH]} for i in range(0, len(ids), BULK_BATCH)]
                else:
                    batches = [{}]
                for batch in batches:
                    done = task.bulk(action, status=target, **batch)
                    matched += done["matched"]
                    changed += done["changed"]
        return redirect(url_for(
            ".tasks", type=type_key or None, status=status or None, q=search or None,
            notice=f"bulk-{action}", matched=matched, changed=changed,
        ), 303)

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        target = _safe_next(request.values.get("next"))
        if not tokens():
            return redirect(target)
        error = None
        if request.method == "POST":
            check_csrf()
            token = check_token(request.form.get("token", ""))
            if token is not None:
                response = redirect(target, 303)
                set_session(response, token)
                return response
            error = "That token is not valid. Use the API token of one of this service's task types."
        return render_template(f"{NAME}/login.html", error=error, next=target, notice=_notice()), 401 if error else 200

    @bp.post("/logout")
    def logout() -> WerkzeugResponse:
        response = redirect(url_for(".login", notice="signed-out"), 303)
        clear_session(response)
        return response

    @bp.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[str, int]:
        code = exc.code or 500
        if code >= 500:
            return unexpected(exc)
        return render_template(f"{NAME}/error.html", code=code, title=exc.name, message=exc.description), code

    @bp.errorhandler(AsyncTaskError)
    def task_error(exc: AsyncTaskError) -> tuple[str, int]:
        if exc.http_status >= 500:
            return unexpected(exc)
        return render_template(
            f"{NAME}/error.html", code=exc.http_status, title=type(exc).__name__, message=str(exc)
        ), exc.http_status

    @bp.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[str, int]:
        error_id = uuid.uuid4().hex[:16]
        logger.error("dashboard error id %s: %s %s failed", error_id, request.method, request.path, exc_info=exc)
        return render_template(
            f"{NAME}/error.html", code=500, title="Internal server error",
            message=f"Something went wrong on the server (error id {error_id}); its log has the details.",
        ), 500

    register_schedule_pages(bp, NAME, _types, _task)  # /dashboard/schedules (schedules.py)
    return bp


# -- helpers ----------------------------------------------------------------------------------

def _types() -> dict[str, tuple[AsyncTask, str]]:
    """The app's task types this session may see, by the key the dashboard's URLs use: the
    name, made unique over every type (so a type's URL is the same for every session)."""
    found: dict[str, tuple[AsyncTask, str]] = {}
    for task, endpoint in current_app.extensions.get("asynctask", []):
        key, n = task.name, 2
        while key in found:
            key, n = f"{task.name}-{n}", n + 1
        found[key] = (task, endpoint)
    return {key: entry for key, entry in found.items() if may_see(entry[0])}


def _no_type(type_key: str) -> NoReturn:
    """404 for a type that does not exist or that this session may not see (told apart by no one)."""
    abort(404, f"This service has no task type {type_key} that this session may see.")


def _task(type_key: str) -> AsyncTask:
    found = _types().get(type_key)
    if found is None:
        _no_type(type_key)
    return found[0]


def _task_view(type_key: str, task_id: str) -> tuple[AsyncTask, dict[str, Any]]:
    """The task type and the view of one of its tasks; 404 when there is no such task, or the
    id is not a valid one (so there cannot be)."""
    task = _task(type_key)
    try:
        check_task_id(task_id)
    except InvalidTaskId:
        abort(404, "There is no such task: that is not a valid task id.")
    view = task.retrieve(task_id)
    if view is None:
        abort(404, f"There is no task {task_id} of type {type_key}.")
    return task, view


def _filter(values: Any, types: dict[str, Any]) -> tuple[str, str, str]:
    """(type, status, search) of a request; no type or an unknown status means "all", a type
    the session cannot see is a 404 (never "all": a bulk action must not widen)."""
    type_key = values.get("type", "")
    if type_key and type_key not in types:
        _no_type(type_key)
    status = values.get("status", "")
    search = (values.get("q") or "").strip()[:200]
    return type_key, (status if status in STATUSES else ""), search


def _page_of(selected: dict[str, tuple[AsyncTask, str]], status: str, search: str,
             page: int) -> tuple[list[dict[str, Any]], int, dict[str, int]]:
    """One page of the list of the `selected` types, newest first: (rows, total, counts per status).

    Of one type the store skips to the page; of several, each type's list is read from its
    start and merged (which is why that list's deepest page is MAX_MERGED_PAGE).
    """
    rows: list[dict[str, Any]] = []
    total, counts = 0, dict.fromkeys(STATUSES, 0)
    skip = (page - 1) * PAGE_SIZE
    merged = len(selected) > 1
    for key, (task, _) in selected.items():
        listing = _list(task, status, search, limit=skip + PAGE_SIZE if merged else PAGE_SIZE,
                        skip=0 if merged else skip)
        rows += [{**view, "type": key} for view in listing["tasks"]]
        total += listing["total"]
        every = listing if not status else _list(task, None, search, limit=1)
        for name, n in every["counts"].items():
            counts[name] = counts.get(name, 0) + n
    if merged:
        rows.sort(key=lambda view: (_time(view.get("created_at")), view["task_id"]), reverse=True)
        rows = rows[skip:skip + PAGE_SIZE]
    return rows, total, counts


def _list(task: AsyncTask, status: str | None, search: str, limit: int, skip: int = 0) -> dict[str, Any]:
    if search:
        return task.list(status or None, limit, skip, search=search)
    return task.list(status or None, limit, skip)


def _matching_ids(task: AsyncTask, status: str, search: str) -> list[str]:
    ids: list[str] = []
    while len(ids) < BULK_LIMIT:
        page = task.list(status, BULK_BATCH, len(ids), search=search)["tasks"]
        ids += [view["task_id"] for view in page]
        if len(page) < BULK_BATCH:
            break
    return ids[:BULK_LIMIT]


def _log_start(task: AsyncTask, task_id: str) -> tuple[str, int]:
    """The start of the task's log as text, and the byte offset the page follows it from."""
    read = read_log(task.logger_dir, task_id, 0)
    if read is None:
        return "", 0
    chunk, offset = read
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(chunk, final=False)
    pending = len(decoder.getstate()[0])  # a character cut at the end is read again by the page
    return text, offset - pending


def _page(text: str, deepest: int) -> int:
    """The page number asked for, within 1..`deepest` (a larger one is `deepest`); anything but
    a whole number (`abc`, `-5`, `1e20`) is page 1."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return 1
    return deepest if len(text) > 12 else min(max(int(text), 1), deepest)


def retry_refusal(task: AsyncTask, view: dict[str, Any]) -> str | None:
    """Why the run rule would not submit this task again (the disabled Retry says it), or None
    when it would: failed, pending or cancelled; running with no worker (nothing will finish
    it); a success older than the type's `rerun_time_limit`."""
    status = view.get("status")
    if status is None or status in RERUNNABLE:
        return None
    if status == TaskStatus.RUNNING.value:
        return None if not view.get("worker") else "The task is running."
    if status == TaskStatus.QUEUED.value:
        return "The task is queued: it runs as soon as a worker takes it."
    if status != TaskStatus.SUCCESS.value:
        return f"The task is {status}."
    limit = task.rerun_time_limit
    if limit is None:
        return "The task succeeded, and this type never runs a successful task again (no rerun_time_limit)."
    if _time(view.get("update_time")) < datetime.now(timezone.utc) - limit:
        return None
    return f"The task succeeded less than {seconds(limit.total_seconds())} ago (the type's rerun_time_limit)."


def _submission(view: dict[str, Any]) -> tuple[Any, ...]:
    """What every submission of a task changes: a retry that left it equal did not happen."""
    return view.get("status"), view.get("attempts"), view.get("queued_at")


def _notice() -> str | None:
    template = NOTICES.get(request.args.get("notice", ""))
    if template is None:
        return None

    def number(name: str) -> int:
        try:
            return max(int(request.args.get(name, "0")), 0)
        except ValueError:
            return 0

    was = request.args.get("was", "")  # the task's status when an action left it as it was
    return template.format(matched=number("matched"), changed=number("changed"),
                           status=was if was in STATUSES else "unknown")


def _here() -> str:
    return request.full_path.rstrip("?")


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path of this site, never another site."""
    home = url_for(".overview")
    if not target:
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or not parts.path.startswith(home) or target.startswith("//"):
        return home
    return target


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str):
        try:
            return as_utc(datetime.fromisoformat(value))
        except ValueError:
            pass
    return datetime.min.replace(tzinfo=timezone.utc)


def when(value: Any, full: bool = False) -> str:
    """A time as an operator reads it, in UTC: the clock time today, with the date otherwise."""
    if not value:
        return "–"
    moment = _time(value)
    if full:
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if moment.date() == datetime.now(timezone.utc).date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def ago(value: Any) -> str:
    """How long ago (or how soon) a time is: "12 s ago", "in 3 min"."""
    if not value:
        return ""
    delta = (datetime.now(timezone.utc) - _time(value)).total_seconds()
    text = f"{int(abs(delta))} s" if abs(delta) < 60 else seconds(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def run_time(view: dict[str, Any]) -> str:
    """How long the task ran (or has been running)."""
    started = view.get("started_at")
    if not started:
        return "–"
    end = view.get("finished_at") or datetime.now(timezone.utc)
    return seconds(max((_time(end) - _time(started)).total_seconds(), 0.0))


def pretty(value: Any) -> str:
    """A task's params or result as indented JSON text."""
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False, default=str, sort_keys=False)


def first_line(error: Any, length: int = 140) -> str:
    """The last line of an error's traceback (the exception and its message), shortened."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= length else line[: length - 1] + "…"
