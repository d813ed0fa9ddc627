"""No-op tasks per second through one remote worker (HTTP only) against one local worker.

An API-only service (`asynctask serve tests/remote_tasks.py --no-worker`, gunicorn gthread)
over the test wire server accepts N no-op tasks; then one worker process with 4 slots runs
them all: (a) a local `asynctask worker` that reaches the database, (b) a remote
`asynctask worker --url` that reaches only the service's HTTP API. The clock runs from the
worker's start to the last success. Uses ASYNCTASK_TEST_MONGO_URI if set, else the wire server.

Run from the repository root:

    python bench/remote.py [--tasks 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from apps import free_port  # noqa: E402
from mongo_wire import running_server  # noqa: E402

TOKEN, API = "bench-worker", "bench-api"


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCTASK_", "REMOTE_"))}
    base.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), DISABLE_STREAM_HANDLER="1",
                REMOTE_HEARTBEAT="2", REMOTE_POLL="0.1", **extra)
    return base


@contextlib.contextmanager
def process(command: list[str], environment: dict[str, str]) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(command, cwd=ROOT, env=environment, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def call(method: str, url: str, body: Any = None) -> Any:
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {API}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def wait_ping(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{base}/ping", timeout=1):
                return
        time.sleep(0.05)
    raise TimeoutError("the service did not start")


def one_round(uri: str, logs: Path, tasks: int, remote: bool) -> float:
    collection = f"b_{uuid.uuid4().hex[:8]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    service_env = env(ASYNCTASK_MONGO_URI=uri, REMOTE_COLLECTION=collection, REMOTE_LOG_DIR=str(logs / "s"),
                      ASYNCTASK_WORKER_TOKEN=TOKEN, ASYNCTASK_API_TOKEN=API, XDG_RUNTIME_DIR=str(logs))
    serve = [sys.executable, "-m", "asynctask.cli", "serve", "remote_tasks:api", "--no-worker",
             "--bind", f"127.0.0.1:{port}"]
    with process(serve, service_env):
        wait_ping(base)
        for _ in range(tasks):
            call("POST", f"{base}/api", {"data": {"seconds": 0}})
        if remote:
            worker_env = env(ASYNCTASK_MONGO_URI="mongodb://127.0.0.1:9", REMOTE_LOG_DIR=str(logs / "w"))
            command = [sys.executable, "-m", "asynctask.cli", "worker", "remote_tasks:api", "--url", base,
                       "--token", TOKEN, "--concurrency", "4"]
        else:
            worker_env = env(ASYNCTASK_MONGO_URI=uri, REMOTE_COLLECTION=collection, REMOTE_LOG_DIR=str(logs / "w"))
            command = [sys.executable, "-m", "asynctask.cli", "worker", "remote_tasks:api", "--concurrency", "4"]
        began = time.monotonic()
        with process(command, worker_env):
            while call("GET", f"{base}/api?status=success&limit=1")["total"] < tasks:
                time.sleep(0.05)
                if time.monotonic() - began > 300:
                    raise TimeoutError("the tasks did not finish")
        return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    uri_env = os.environ.get("ASYNCTASK_TEST_MONGO_URI")
    with tempfile.TemporaryDirectory() as folder, \
            (contextlib.nullcontext(uri_env) if uri_env else running_server()) as uri:
        results: dict[str, list[float]] = {"local": [], "remote": []}
        for _ in range(args.rounds):  # interleaved, so that machine noise hits both alike
            for kind in ("local", "remote"):
                results[kind].append(args.tasks / one_round(uri, Path(folder), args.tasks, kind == "remote"))
    local, remote = statistics.median(results["local"]), statistics.median(results["remote"])
    print(f"{args.tasks} no-op tasks, one worker process with 4 slots (includes its start), "
          f"medians of {args.rounds} interleaved rounds")
    print(f"  local worker (database):     {local:7.1f} tasks/s")
    print(f"  remote worker (HTTP only):   {remote:7.1f} tasks/s  ({remote / local:.2f}x the local one)")


if __name__ == "__main__":
    main()
