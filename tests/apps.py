"""Task apps for the durability tests and the recovery benchmark, configured by the environment.

gunicorn imports `apps:app` in each worker; everything comes from environment variables:

| variable | meaning |
| --- | --- |
| `ASYNCTASK_MONGO_URI` | the shared MongoDB (the test wire server) |
| `ASYNCTASK_MONGO_DB` | database name (default `asynctask_durability`) |
| `APPS_COLLECTION` | the task collection; calls go to `<APPS_COLLECTION>_calls` |
| `APPS_SECONDS` | how long `main` works (default 0) |
| `APPS_RETRY_SECONDS` | how long it works from the second attempt on (default `APPS_SECONDS`) |
| `APPS_HEARTBEAT` | `heartbeat_interval` in seconds (default 10) |
| `APPS_STALE_AFTER` | `stale_after` in seconds (default 3 x heartbeat) |
| `APPS_FAIL_FIRST` | non-empty: the first attempt raises once it has worked |
| `APPS_MAX_WORKER` | slots per process (default 4) |
| `APPS_MAX_ATTEMPTS` | `max_attempts` (default 3) |
| `APPS_POLL` | `poll_interval` in seconds (default 1) |
| `APPS_MAX_CONCURRENCY` | `max_concurrency` (default none) |
| `APPS_RATE_LIMIT` | `rate_limit` (default none) |
| `APPS_PER_KEY` | `max_concurrency_per_key`, keyed by `tenant` (the `key` up to its first `-`) |
| `APPS_LOG_DIR` | folder of the task logs (default `logs`) |

`main` records every call in the database, not in memory, so the test process sees the calls
of every worker: one document per call with `task_id`, `pid`, `thread` (native id), `attempt`,
`started` and `ended` (epoch seconds; `ended` stays None for a call whose process died).

`Server` starts such an app under gunicorn (plain, with asynctask's hooks, or through
`asynctask serve`) in its own process group, and `WorkerProcess` runs `asynctask worker apps:api`,
for the tests and the benchmarks. `tasks`, `calls` and `all_in` read what they left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from asynctask import AsyncTask
from asynctask.attempt import current
from asynctask.store.connection import LazyMongoCollection

DEFAULT_DB = "asynctask_durability"
ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


class Recorded(AsyncTask):
    """Works for `seconds` (`retry_seconds` after the first attempt), recording each call in `calls`.

    With `fail_first`, the first attempt raises `RuntimeError` once it has worked.
    """

    def __init__(
        self, collection: Any, logger_dir: str, *, calls: Any, seconds: float, retry_seconds: float | None = None,
        fail_first: bool = False, **options: Any,
    ) -> None:
        super().__init__(collection, logger_dir, **options)
        self.calls = calls
        self.seconds = seconds
        self.retry_seconds = seconds if retry_seconds is None else retry_seconds
        self.fail_first = fail_first

    def get_task_id(self, key: str) -> str:
        return key

    def main(self, logger: logging.Logger, key: str) -> dict[str, Any]:
        attempt = current(key)
        number = attempt.number if attempt else None
        call_id = self.calls.insert_one({
            "task_id": key, "pid": os.getpid(), "thread": threading.get_native_id(), "attempt": number,
            "started": time.time(), "ended": None,
        }).inserted_id
        first = number in (None, 1)
        seconds = self.seconds if first else self.retry_seconds
        logger.info("attempt %s working %.2fs", number, seconds)
        try:
            time.sleep(seconds)
            if first and self.fail_first:
                raise RuntimeError(f"attempt {number} of {key} fails as asked")
        finally:
            self.calls.update_one({"_id": call_id}, {"$set": {"ended": time.time()}})
        return {"key": key, "pid": os.getpid()}


def tenant(params: dict[str, Any]) -> str:
    """The tenant of a task: its `key` up to the first "-" (`"A-07"` is tenant A's)."""
    return str(params["key"]).split("-")[0]


def build(
    uri: str,
    collection: str,
    *,
    database: str = DEFAULT_DB,
    seconds: float = 0.0,
    retry_seconds: float | None = None,
    fail_first: bool = False,
    heartbeat: float = 10.0,
    stale_after: float | None = None,
    max_worker: int = 4,
    max_attempts: int = 3,
    log_dir: str = "logs",
    poll: float = 1.0,
    max_concurrency: int | None = None,
    worker: bool | None = None,
    rate_limit: str | None = None,
    per_key: int | None = None,
) -> Recorded:
    """A `Recorded` task on `database.collection` at `uri`, its calls in `<collection>_calls`."""
    return Recorded(
        LazyMongoCollection(uri, database, collection), log_dir,
        calls=LazyMongoCollection(uri, database, f"{collection}_calls"), seconds=seconds, retry_seconds=retry_seconds,
        fail_first=fail_first,
        max_worker=max_worker, heartbeat_interval=heartbeat, stale_after=stale_after,
        max_attempts=max_attempts, poll_interval=poll, max_concurrency=max_concurrency, worker=worker,
        rate_limit=rate_limit, concurrency_key=tenant if per_key else None, max_concurrency_per_key=per_key,
    )


def from_environment() -> Recorded | None:
    """The task the environment describes, or None when no database is configured."""
    uri = os.environ.get("ASYNCTASK_MONGO_URI")
    if not uri:
        return None
    stale_after = os.environ.get("APPS_STALE_AFTER")
    retry_seconds = os.environ.get("APPS_RETRY_SECONDS")
    return build(
        uri,
        os.environ.get("APPS_COLLECTION", "tasks"),
        database=os.environ.get("ASYNCTASK_MONGO_DB") or DEFAULT_DB,
        seconds=float(os.environ.get("APPS_SECONDS", "0")),
        retry_seconds=float(retry_seconds) if retry_seconds else None,
        fail_first=bool(os.environ.get("APPS_FAIL_FIRST")),
        heartbeat=float(os.environ.get("APPS_HEARTBEAT", "10")),
        stale_after=float(stale_after) if stale_after else None,
        max_worker=int(os.environ.get("APPS_MAX_WORKER", "4")),
        max_attempts=int(os.environ.get("APPS_MAX_ATTEMPTS", "3")),
        log_dir=os.environ.get("APPS_LOG_DIR", "logs"),
        poll=float(os.environ.get("APPS_POLL", "1")),
        max_concurrency=int(os.environ["APPS_MAX_CONCURRENCY"]) if os.environ.get("APPS_MAX_CONCURRENCY") else None,
        rate_limit=os.environ.get("APPS_RATE_LIMIT") or None,
        per_key=int(os.environ["APPS_PER_KEY"]) if os.environ.get("APPS_PER_KEY") else None,
    )


api = from_environment()
app = api.app("/api") if api is not None else None


# -- launching the app under gunicorn ---------------------------------------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request; error statuses are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null")


def environment(uri: str, collection: str, log_dir: str | os.PathLike[str], **settings: Any) -> dict[str, str]:
    """The environment of a process serving `apps`: this one's, with the database and `APPS_*` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCTASK_", "APPS_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), DISABLE_STREAM_HANDLER="1",
        ASYNCTASK_MONGO_URI=uri, APPS_COLLECTION=collection, APPS_LOG_DIR=str(Path(log_dir) / "tasks"),
    )
    env.update({f"APPS_{name.upper()}": str(value) for name, value in settings.items()})
    return env


class Server:
    """`apps` served by gunicorn on 127.0.0.1, in a process group of its own.

    `mode` is "gunicorn" (plain gunicorn, no hooks), "hooks" (gunicorn with
    `-c python:asynctask.serving`) or "serve" (`asynctask serve`, with `grace`).
    `settings` become `APPS_*` variables, e.g. `seconds=2, heartbeat=0.2, stale_after=0.8`.
    """

    def __init__(
        self,
        uri: str,
        collection: str,
        log_dir: str | os.PathLike[str],
        *,
        mode: str = "hooks",
        workers: int = 1,
        grace: float | None = None,
        preload: bool = False,
        no_worker: bool = False,
        **settings: Any,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        bind = f"127.0.0.1:{self.port}"
        if mode == "serve":
            command = [sys.executable, "-m", "asynctask.cli", "serve", "apps:api", "--bind", bind,
                       "--workers", str(workers)]
            if grace is not None:
                command += ["--grace", str(grace)]
        elif mode in ("gunicorn", "hooks"):
            command = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers)]
            if mode == "hooks":
                command += ["-c", "python:asynctask.serving"]
            command.append("apps:app")
        else:
            raise ValueError(f"unknown mode {mode!r}")
        if preload:
            command.append("--preload")
        if no_worker:
            command.append("--no-worker")
        env = environment(uri, collection, log_dir, **settings)
        if grace is not None:
            env["ASYNCTASK_SHUTDOWN_GRACE"] = str(grace)
        # gunicorn's control socket goes to $XDG_RUNTIME_DIR: one short private folder per server.
        self.runtime_dir = tempfile.mkdtemp(prefix="gunicorn-")
        env["XDG_RUNTIME_DIR"] = self.runtime_dir
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.stderr_path = Path(log_dir) / f"gunicorn-{self.port}.err"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=err, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The gunicorn master's pid."""
        return self.proc.pid

    def stderr(self) -> str:
        """What gunicorn and the app wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Return once /ping answers; raise if gunicorn exits or the deadline passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                if http("GET", f"{self.base}/ping", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not answer /ping within {timeout}s:\n{self.stderr()}")

    def submit(self, key: str) -> tuple[int, Any]:
        """POST a task with param `key`."""
        return http("POST", f"{self.base}/api", {"data": {"key": key}}, timeout=30)

    def stop(self) -> None:
        """SIGKILL the master and its workers (the whole process group), and reap the master."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


class WorkerProcess:
    """`asynctask worker apps:api` in a process group of its own, ready once it says so."""

    def __init__(self, uri: str, collection: str, log_dir: str | os.PathLike[str], *, concurrency: int = 2,
                 grace: float = 20.0, **settings: Any) -> None:
        command = [sys.executable, "-m", "asynctask.cli", "worker", "apps:api",
                   "--concurrency", str(concurrency), "--grace", str(grace)]
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.stderr_path = Path(log_dir) / f"worker-{uuid.uuid4().hex[:8]}.err"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=environment(uri, collection, log_dir, **settings), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err, start_new_session=True, text=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> str:
        """The line the worker prints once it takes work; raise if it exits first."""
        assert self.proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not ready or "ready" not in ready[0]:
            raise RuntimeError(f"the worker did not get ready: {ready!r}\n{self.stderr_path.read_text()}")
        return ready[0]

    def stop(self) -> None:
        """SIGKILL the worker, if it still runs, and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def tasks(db: Any, name: str) -> dict[str, dict[str, Any]]:
    """Every task document of the collection, by task id."""
    return {doc["task_id"]: doc for doc in db[name].find({}, {"_id": 0})}


def calls(db: Any, name: str) -> dict[str, list[dict[str, Any]]]:
    """Every recorded call of `main`, by task id, oldest first."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for call in db[f"{name}_calls"].find({}, {"_id": 0}).sort("started", 1):
        by_task.setdefault(call["task_id"], []).append(call)
    return by_task


def all_in(db: Any, name: str, keys: list[str], status: str) -> dict[str, dict[str, Any]] | None:
    """The task documents if every one of `keys` has `status`, else None."""
    docs = tasks(db, name)
    if all(docs.get(key, {}).get("status") == status for key in keys):
        return docs
    return None
