"""Running asynctask under gunicorn: worker hooks, and the application behind `asynctask serve`.

The hooks also work with plain gunicorn: `gunicorn -c python:asynctask.serving 'mymodule:app'`
(they add the graceful release on SIGTERM and the log set-up).
- `post_worker_init`: start each task's worker loop (claims, heartbeats, recovery) in the
  gunicorn worker, after the fork. Plain gunicorn without this file does the same: a task built
  in a gunicorn worker, or in a `--preload` master before the fork, starts its loop there.
- `worker_exit` (SIGTERM, SIGINT, a restart): take no new work, give running tasks
  `ASYNCTASK_SHUTDOWN_GRACE` seconds (default 20), then release the rest to other processes.
- `child_exit`: drop an exited worker's live Prometheus gauges (`PROMETHEUS_MULTIPROC_DIR`).

The settings below serve many clients at once: threaded workers (a long-poll `?wait=` holds
a thread, not the worker, and one slow or half-sent request cannot stall the rest) with a
timeout above the longest long-poll (60 s). asynctask's own log lines (the error id of a 500,
takeovers, releases) go to gunicorn's error log.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

from .instances import shutdown_all, start_all
from .task import AsyncTask

#: gunicorn's own wait for workers is longer than asynctask's grace, so release always runs.
graceful_timeout = 30
#: Threaded workers; a long-poll or a slow client holds one of `threads` threads of a worker.
worker_class = "gthread"
threads = 8
#: Above the longest long-poll (`?wait=60`), which a sync worker's 30 s would kill.
timeout = 120


def grace_seconds() -> float:
    """The grace running tasks get on a graceful stop, from `ASYNCTASK_SHUTDOWN_GRACE`."""
    return float(os.environ.get("ASYNCTASK_SHUTDOWN_GRACE", "20"))


def log_to_gunicorn(error_log: logging.Logger) -> None:
    """Send asynctask's log lines (INFO and up) to gunicorn's error log, unless the `asynctask`
    logger already has handlers of its own. They then stop at `asynctask`, so that a handler
    on the root logger does not write each line a second time."""
    library = logging.getLogger("asynctask")
    if library.handlers or not error_log.handlers:
        return
    for handler in error_log.handlers:
        library.addHandler(handler)
    if library.level == logging.NOTSET:
        library.setLevel(logging.INFO)
    library.propagate = False


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: the app is loaded in this worker; start its tasks' background threads."""
    from .store import connection

    log_to_gunicorn(worker.log.error_log)
    connection.serving_workers(worker.cfg.workers)
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
    from .metrics import mark_process_dead

    mark_process_dead(worker.pid)


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
          preload: bool = False, grace: float | None = None, threads: int = threads, worker: bool = True) -> None:
    """Run `target` under gunicorn with asynctask's worker hooks, `threads` threads per worker.

    With `worker=False` the processes only accept and serve tasks; dedicated `asynctask worker`
    processes run them.
    """
    from gunicorn.app.base import BaseApplication

    if grace is not None:
        os.environ["ASYNCTASK_SHUTDOWN_GRACE"] = str(grace)
    if not worker:
        os.environ["ASYNCTASK_NO_WORKER"] = "1"

    class Application(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": bind, "workers": workers, "preload_app": preload,
                "worker_class": worker_class, "threads": threads, "timeout": timeout,
                "graceful_timeout": max(graceful_timeout, grace_seconds() + 10),
                "post_worker_init": post_worker_init, "worker_exit": worker_exit, "child_exit": child_exit,
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return load(target, endpoint)

    Application().run()
