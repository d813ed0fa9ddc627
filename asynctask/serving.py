"""Running asynctask under gunicorn: worker hooks, and the application behind `asynctask serve`.

The hooks also work with plain gunicorn: `gunicorn -c python:asynctask.serving 'mymodule:app'`.
- `post_worker_init`: start each task's heartbeat and recovery thread in the worker, after the
  fork, so a worker that has not had a request yet still takes over orphaned tasks.
- `worker_exit` (SIGTERM, SIGINT, a restart): take no new work, give running tasks
  `ASYNCTASK_SHUTDOWN_GRACE` seconds (default 20), then release the rest to other processes.
- `child_exit`: drop an exited worker's live Prometheus gauges (`PROMETHEUS_MULTIPROC_DIR`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

from .task import AsyncTask, shutdown_all, start_all

#: gunicorn's own wait for workers is longer than asynctask's grace, so release always runs.
graceful_timeout = 30


def grace_seconds() -> float:
    """The grace running tasks get on a graceful stop, from `ASYNCTASK_SHUTDOWN_GRACE`."""
    return float(os.environ.get("ASYNCTASK_SHUTDOWN_GRACE", "20"))


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: the app is loaded in this worker; start its tasks' background threads."""
    start_all()


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: the worker is stopping; stop its tasks gracefully.

    Tasks still running after the grace are released to other processes; their `main` threads
    cannot be interrupted, so the worker ends at once rather than run them beside their next
    attempt. gunicorn also calls this hook in the master, for a worker already gone
    (`Arbiter.kill_worker`); there it does nothing, so that an app loaded with `--preload`
    stays open for the workers forked later.
    """
    if os.getpid() != getattr(worker, "pid", None):
        return
    if shutdown_all(grace=grace_seconds()):
        logging.shutdown()
        os._exit(0)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, in the master: drop the live metrics of a worker that exited."""
    from . import metrics

    metrics.mark_process_dead(worker.pid)


def load(target: str, endpoint: str = "/api") -> Any:
    """The WSGI app named by 'module:object'; an `AsyncTask` object is served at `endpoint`."""
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        raise ValueError(f"expected MODULE:OBJECT, not {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj = getattr(importlib.import_module(module_name), name)
    if isinstance(obj, AsyncTask):
        return obj.app(endpoint)
    if not callable(obj):
        raise TypeError(f"{target} is neither an AsyncTask nor a WSGI app")
    return obj


def serve(target: str, *, bind: str = "127.0.0.1:8000", workers: int = 1, endpoint: str = "/api",
          preload: bool = False, grace: float | None = None) -> None:
    """Run `target` under gunicorn with asynctask's worker hooks."""
    from gunicorn.app.base import BaseApplication

    if grace is not None:
        os.environ["ASYNCTASK_SHUTDOWN_GRACE"] = str(grace)

    class Application(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": bind, "workers": workers, "preload_app": preload,
                "graceful_timeout": max(graceful_timeout, grace_seconds() + 10),
                "post_worker_init": post_worker_init, "worker_exit": worker_exit, "child_exit": child_exit,
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return load(target, endpoint)

    Application().run()
