"""The `asynctask worker` command: a process that runs the tasks of some task types and
serves no HTTP, with the database (a local worker) or over HTTP only (`--url`, a remote worker).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .instances import autostart, shutdown_all
from .store.registry import worker_name

if TYPE_CHECKING:
    from .backend import Backend
    from .task import AsyncTask

logger = logging.getLogger(__name__)


def load_tasks(targets: Iterable[str]) -> list[AsyncTask]:
    """The `AsyncTask` objects named by 'module:object' (a task, or a Flask app serving tasks)."""
    from .task import AsyncTask

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    tasks: list[AsyncTask] = []
    for target in targets:
        module_name, _, name = target.partition(":")
        if not module_name or not name:
            raise ValueError(f"expected MODULE:OBJECT, not {target!r}")
        obj = getattr(importlib.import_module(module_name), name)
        if isinstance(obj, AsyncTask):
            tasks.append(obj)
            continue
        served = [task for task, _ in getattr(obj, "extensions", {}).get("asynctask", [])]
        if not served:
            raise TypeError(f"{target} is neither an AsyncTask nor a Flask app serving one")
        tasks.extend(served)
    return tasks


def run_worker(targets: list[str], *, concurrency: int | None = None, grace: float = 20.0,
               url: str | None = None, token: str | None = None) -> int:
    """Run the task types named by `targets` until SIGTERM or SIGINT; serve no HTTP.

    With `url` it is a remote worker: it reaches the service at `url` over HTTP with the
    worker `token`, and never the database. On the signal it takes no new work, gives running
    tasks `grace` seconds, releases the rest to the queue and returns 0.
    """
    with autostart(False):
        tasks = load_tasks(targets)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    for task in tasks:
        task.asynctask_engine.start_worker(concurrency, None if url is None else _remote(task, url, token, stop))
    names = ", ".join(task.name for task in tasks)
    slots = ", ".join(str(task.asynctask_engine.runtime().capacity) for task in tasks)
    print(f"asynctask worker {worker_name()} ready: {names} (slots: {slots})", flush=True)
    while not stop.wait(1.0):
        pass  # a timed wait, so the signal handler runs promptly in the main thread
    released = shutdown_all(grace)
    print(f"asynctask worker {worker_name()} stopped ({released} task(s) released)", flush=True)
    if released:
        # Their `main` threads cannot be interrupted: exit now rather than wait for them.
        logging.shutdown()
        os._exit(0)
    return 0


def _remote(task: AsyncTask, url: str, token: str | None, stop: threading.Event) -> Backend:
    """The HTTP backend of `task` at the service `url`, once the service answers (or a signal)."""
    from .errors import ServiceUnreachable
    from .remote.backend import HttpBackend
    wait = min(task.poll_interval.total_seconds(), task.heartbeat_interval.total_seconds() / 3, 30.0)
    pause = 0.5
    while True:
        try:
            return HttpBackend.for_task(url, token, task.name, claim_wait=wait)
        except ServiceUnreachable as exc:
            logger.warning("the service does not answer yet (%s); trying again in %gs", exc, pause)
            if stop.wait(pause):
                raise SystemExit(0) from None
            pause = min(pause * 2, 10.0)
