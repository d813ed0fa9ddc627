"""Serving the quickstart with gunicorn, in real processes (CONTRACT section 6).

One worker on the in-memory store; then two workers with `--preload` on a shared MongoDB
(the test wire server), where any worker answers for any task and the master, which
imported the app before forking, holds no MongoClient and no thread.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from mongo_wire import running_server
except ImportError:  # pragma: no cover - run from the repository root as a package
    from tests.mongo_wire import running_server

ROOT = Path(__file__).resolve().parents[1]

#: A gunicorn config whose hook records, in the master just before each fork, what exists.
PRE_FORK_HOOK = textwrap.dedent(
    """
    import gc, json, os, threading

    def pre_fork(server, worker):
        import pymongo
        clients = sum(1 for obj in gc.get_objects() if isinstance(obj, pymongo.MongoClient))
        report = {"threads": [t.name for t in threading.enumerate()], "clients": clients}
        with open(os.environ["PRE_FORK_REPORT"], "a") as out:
            out.write(json.dumps(report) + "\\n")
    """
)


class Server:
    """A gunicorn process serving the quickstart on 127.0.0.1."""

    def __init__(self, proc: subprocess.Popen, port: int, stderr_path: Path) -> None:
        self.proc, self.port, self.stderr_path = proc, port, stderr_path
        self.base = f"http://127.0.0.1:{port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                status, body, _ = request("GET", f"{self.base}/ping", timeout=1)
                if status == 200 and body == {"status": "ok"}:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"gunicorn did not answer /ping within {timeout}s:\n{self.stderr()}")


def request(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any, Any]:
    """(status, JSON body, headers) of one HTTP request; error statuses are returned too."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null"), error.headers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `gunicorn examples.quickstart:app` with extra args and env; killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(*args: str, **env: str) -> Server:
        port = _free_port()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASK_MONGO")}
        child_env.update(PYTHONPATH=str(ROOT), ASYNCTASK_LOG_DIR=str(tmp_path / "logs"), **env)
        stderr_path = tmp_path / f"gunicorn-{port}.err"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *args,
                 "examples.quickstart:app"],
                cwd=ROOT, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )
        started.append(proc)
        return Server(proc, port, stderr_path)

    yield start
    for proc in started:
        _stop(proc)


def _submit(server: Server, text: str, top: int) -> str:
    """POST a text; return the absolute URL of the task from the Location header."""
    status, body, headers = request("POST", f"{server.base}/api", {"data": {"text": text, "top": top}})
    assert status == 202, body
    assert body["status"] == "ok"
    assert body["data"]["status"] in ("queued", "running", "success")
    location = headers["Location"]
    assert location.endswith(f"/api/{body['data']['task_id']}")
    return urllib.parse.urljoin(server.base, location)


def _poll(urls: list[str], timeout: float = 15.0) -> dict[str, dict[str, Any]]:
    """GET every URL until its task is finished; fail at the deadline."""
    deadline = time.monotonic() + timeout
    views: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for url in urls:
            if url in views:
                continue
            status, body, _ = request("GET", url)
            assert status == 200, body
            if body["data"]["status"] in ("success", "failed", "cancelled"):
                views[url] = body["data"]
        if len(views) == len(urls):
            return views
        time.sleep(0.02)
    pending = [url for url in urls if url not in views]
    pytest.fail(f"{len(pending)} tasks did not finish within {timeout}s, e.g. {pending[:2]}")


def test_one_worker_on_the_memory_store(gunicorn, tmp_path):
    server = gunicorn("--workers", "1")
    server.wait_ready()

    url = _submit(server, "to be or not to be", top=2)
    view = _poll([url])[url]
    assert view["status"] == "success", view["error"]
    assert view["result"] == [["to", 2], ["be", 2]]
    assert view["task_id"] == url.rsplit("/", 1)[1]
    log = tmp_path / "logs" / f"{view['task_id']}.log"
    assert "counting 18 characters" in log.read_text(encoding="utf-8")

    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn did not exit within 10s of SIGTERM:\n{server.stderr()}")
    assert code == 0, server.stderr()
    assert "Traceback" not in server.stderr()


def test_two_preloaded_workers_share_the_mongo_store(gunicorn, tmp_path):
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(PRE_FORK_HOOK)
    pre_fork_report = tmp_path / "pre_fork.jsonl"
    with running_server() as uri:
        server = gunicorn(
            "--workers", "2", "--preload", "--config", str(config),
            ASYNCTASK_MONGO_URI=uri, ASYNCTASK_MONGO_COLLECTION=f"serving_{uuid.uuid4().hex[:10]}",
            PRE_FORK_REPORT=str(pre_fork_report),
        )
        server.wait_ready()

        texts = {f"w{n} x w{n} y w{n}": [[f"w{n}", 3]] for n in range(20)}
        urls = {_submit(server, text, top=1): expected for text, expected in texts.items()}
        assert len(set(urls)) == 20
        views = _poll(list(urls))
        for url, expected in urls.items():
            assert views[url]["status"] == "success", views[url]["error"]
            assert views[url]["result"] == expected

        # Every task ran in a worker, never in the master that imported the app.
        pids = set()
        for url in urls:
            log = tmp_path / "logs" / f"{url.rsplit('/', 1)[1]}.log"
            pids |= {int(line[1:line.index("]")]) for line in log.read_text(encoding="utf-8").splitlines()}
        assert pids and server.proc.pid not in pids

        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn did not exit within 10s of SIGTERM:\n{server.stderr()}")

    reports = [json.loads(line) for line in pre_fork_report.read_text().splitlines()]
    assert len(reports) == 2  # one per worker forked, none respawned
    for report in reports:
        assert report["threads"] == ["MainThread"], "the master started threads before forking"
        assert report["clients"] == 0, "the master made a MongoClient before forking"
    stderr = server.stderr()
    assert "MongoClient opened before fork" not in stderr
    assert [line for line in stderr.splitlines() if "fork" in line and "warn" in line.lower()] == []
    assert "Traceback" not in stderr, stderr
