"""A tiny WSGI app and gunicorn config for the multiprocess metrics test.

Served as `gunicorn -c python:metrics_app metrics_app:app`; `PROMETHEUS_MULTIPROC_DIR` must be
set before gunicorn starts. The routes answer with the worker's pid so a test can tell workers apart.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, Response

from asynctask import metrics

app = Flask(__name__)

#: Recent gunicorn opens a control socket in the home folder; parallel test servers would share it.
control_socket_disable = True


@app.get("/bump")
def bump() -> dict[str, int]:
    """Count one submitted task of type "T"."""
    metrics.submitted("T")
    time.sleep(0.01)  # long enough that concurrent requests spread over the workers
    return {"pid": os.getpid()}


@app.get("/start")
def start() -> dict[str, int]:
    """Raise the in-flight gauge of "T" in this worker."""
    metrics.started("T")
    return {"pid": os.getpid()}


@app.get("/metrics")
def show_metrics() -> Response:
    """The metrics of every worker."""
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, in the master: a worker is gone."""
    metrics.mark_process_dead(worker.pid)
