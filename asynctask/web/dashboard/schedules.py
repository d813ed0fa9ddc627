"""The dashboard's Schedules page: every schedule of the types this session may see, with its
expression in words, time zone, next run, last run and its status, a strip of its last runs by
status, and the actions Pause, Resume and Run now (POST forms with the CSRF field, like every
other action of the dashboard; the blueprint's guard checks the session and the CSRF proof).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from ...schedules.book import book_of
from ...schedules.schedule import check_name

if TYPE_CHECKING:
    from ...task import AsyncTask

#: What an action leaves for the page it redirects to; only these texts are shown.
NOTICES = {
    "paused": "Paused {name}: it enqueues no tick until it is resumed.",
    "resumed": "Resumed {name}: it runs again from its next tick.",
    "ran": "Started a run of {name} now.",
}
ACTIONS = ("pause", "resume", "run")


def register_schedule_pages(bp: Blueprint, templates: str, types_seen: Callable[[], dict[str, tuple[AsyncTask, str]]],
                            task_of: Callable[[str], AsyncTask]) -> None:
    """Add `GET /dashboard/schedules` and its actions to the dashboard blueprint `bp`: with its
    `templates` folder, the types the session sees (`types_seen`) by key, and `task_of` a key (404 if unseen)."""

    @bp.get("/schedules")
    def schedules() -> str:
        types = types_seen()
        rows: list[dict[str, Any]] = []
        for key, (task, endpoint) in types.items():
            rows += [{**view, "type": key, "endpoint": endpoint} for view in book_of(task).list()]
        notice, row = _notice(rows)
        started = request.args.get("task") if row is not None and request.args.get("done") == "ran" else None
        if row is None or started not in {run["task_id"] for run in row["runs"]}:
            started = None
        return render_template(f"{templates}/schedules.html", rows=rows, several=len(types) > 1, notice=notice,
                               started=started, started_type=row["type"] if row else None)

    @bp.post("/schedules/<type_key>/<name>/<action>")
    def schedule_action(type_key: str, name: str, action: str) -> WerkzeugResponse:
        if action not in ACTIONS:
            abort(404)
        task = task_of(type_key)
        check_name(name)
        book = book_of(task)
        if action == "run":
            task_id = book.trigger(name)
            return redirect(url_for(".schedules", done="ran", type=type_key, name=name, task=task_id), 303)
        getattr(book, action)(name)
        return redirect(url_for(".schedules", done=f"{action}d", type=type_key, name=name), 303)


def _notice(rows: list[dict[str, Any]]) -> tuple[str | None, dict[str, Any] | None]:
    """The text of the action just done and the row of its schedule; only a schedule the page
    shows is named (nothing else from the URL is)."""
    template = NOTICES.get(request.args.get("done", ""))
    type_key, name = request.args.get("type", ""), request.args.get("name", "")
    row = next((row for row in rows if (row["type"], row["name"]) == (type_key, name)), None)
    if template is None or row is None:
        return None, None
    alike = sum(other["name"] == name for other in rows)
    return template.format(name=name if alike == 1 else f"{name} ({type_key})"), row
