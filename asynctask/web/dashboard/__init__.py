"""The operator's dashboard: `GET /dashboard` on every app that `app()` or `init_app()` builds.

An overview of each task type (counts per status, queue depth, running tasks, throughput and
queue wait over the last hour, live workers), a searchable task list with bulk actions, and a
page per task with its params, result, error and live log. Server-rendered, with its own
small script and stylesheet in `static/`; nothing is loaded from another site.
"""

from __future__ import annotations

from flask import Blueprint

__all__ = ["blueprint"]


def blueprint() -> Blueprint:
    """A new dashboard blueprint (mounted at /dashboard) for a Flask app that serves task types."""
    from .views import create_blueprint

    return create_blueprint()
