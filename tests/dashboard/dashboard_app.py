"""An app serving several task types, as the dashboard tests need."""

from __future__ import annotations

import uuid

from flask import Flask

from asynctask import AsyncTask


def app_of(*tasks: AsyncTask) -> Flask:
    """One Flask app serving each task type at /api/<name>."""
    app = Flask(f"dashboard-{uuid.uuid4().hex[:6]}")
    for task in tasks:
        task.init_app(app, f"/api/{task.name.lower()}")
    return app
