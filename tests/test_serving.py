"""Serving with gunicorn, in real processes.

The quickstart on one worker on the in-memory store; then two workers with `--preload` on a
shared MongoDB (the test wire server), where any worker answers for any task and the master,
which imported the app before forking, holds no MongoClient and no thread. Then
`asynctask serve`: long-polls and slow clients do not stop it from answering, asynctask's
own log lines reach gunicorn's error log, and several workers on the in-memory store warn.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mongo_wire import running_server
from waiting import wait_until

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

    def wait_ready(self, timeout: float = 60.0) -> None:
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


# -- asynctask serve ---------------------------------------------------------------------------

#: Task services for `asynctask serve`, written to a module in the test's folder.
SERVED = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    from asynctask import AsyncTask, MemoryCollection, default_collection

    LOG_DIR = os.environ["ASYNCTASK_LOG_DIR"]


    class Broken(AsyncTask):
        def main(self, logger, text: str) -> str:
            return text

        def retrieve(self, task_id):
            raise RuntimeError("the store fell over")


    class Slow(AsyncTask):
        \"\"\"Runs until the file `go` exists (a minute at most).\"\"\"

        def main(self, logger, go: str) -> str:
            deadline = time.monotonic() + 60
            while not Path(go).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return "done"


    broken = Broken(MemoryCollection(), LOG_DIR)
    slow = Slow(default_collection(), LOG_DIR)  # in memory: ASYNCTASK_MONGO_URI is not set
    """
)


@pytest.fixture
def asynctask_serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `asynctask serve TARGET --bind ... ARGS` (targets of `SERVED` are `served:NAME`)."""
    (tmp_path / "served.py").write_text(SERVED)
    started: list[subprocess.Popen] = []

    def start(target: str, *args: str) -> Server:
        port = _free_port()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASK_MONGO")}
        child_env.update(
            PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), ASYNCTASK_LOG_DIR=str(tmp_path / "logs")
        )
        stderr_path = tmp_path / f"serve-{port}.err"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from asynctask.cli import main; sys.exit(main())",
                 "serve", target, "--bind", f"127.0.0.1:{port}", *args],
                cwd=ROOT, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )
        started.append(proc)
        server = Server(proc, port, stderr_path)
        server.wait_ready()
        return server

    yield start
    for proc in started:
        _stop(proc)


def _open_long_poll(server: Server, path: str) -> tuple[threading.Thread, list[Any]]:
    """Send `GET path` and wait for its answer in a thread; the request is sent on return."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=90)
    connection.request("GET", path)
    answers: list[Any] = []

    def read() -> None:
        try:
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
        except OSError as error:
            answers.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, answers


def test_long_polls_and_a_half_sent_request_do_not_stop_the_server(asynctask_serve, tmp_path):
    server = asynctask_serve("served:slow")
    go = tmp_path / "go"
    status, body, _ = request("POST", f"{server.base}/api", {"data": {"go": str(go)}})
    assert status == 202, body
    task_url = f"{server.base}/api/{body['data']['task_id']}"
    wait_until(lambda: request("GET", task_url)[1]["data"]["status"] == "running", "the task never ran", timeout=30)
    path = urllib.parse.urlsplit(task_url).path

    longest, longest_answer = _open_long_poll(server, f"{path}?wait=35")  # past a sync worker's 30 s
    poll, _ = _open_long_poll(server, f"{path}?wait=20")
    half = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        half.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # and never the rest

        status, body, _ = request("GET", f"{server.base}/ping", timeout=5)

        assert (status, body) == (200, {"status": "ok"})
        assert poll.is_alive() and longest.is_alive()  # both long-polls were still open
    finally:
        half.close()
    longest.join(60)
    assert longest_answer and not isinstance(longest_answer[0], Exception), longest_answer
    status, body = longest_answer[0]
    assert (status, body["data"]["status"]) == (200, "running")
    go.write_text("go")
    status, body, _ = request("GET", f"{task_url}?wait=30", timeout=40)
    assert body["data"]["status"] == "success"
    assert "WORKER TIMEOUT" not in server.stderr()
    assert _sharing_warnings(server.stderr()) == []  # one worker: its memory store is the only one


def test_the_error_id_of_a_500_is_in_the_server_error_log(asynctask_serve):
    server = asynctask_serve("served:broken")

    status, body, _ = request("GET", f"{server.base}/api/some-task")

    assert status == 500, body
    error_id = re.search(r"error id (\S+?)\)", body["error_msg"]).group(1)
    assert "fell over" not in body["error_msg"]
    line = re.compile(rf"^\[[^]]+\] \[\d+\] \[ERROR\] error id {re.escape(error_id)}: GET /api/some-task failed$", re.M)
    wait_until(lambda: line.search(server.stderr()), f"error id {error_id} in gunicorn's error log", timeout=10)
    stderr = server.stderr()
    assert len(re.findall(rf"error id {re.escape(error_id)}\b", stderr)) == 1, stderr  # once, not twice
    assert "RuntimeError: the store fell over" in stderr  # with its traceback


def _sharing_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "[WARNING]" in line and "ASYNCTASK_MONGO_URI" in line]


@pytest.mark.parametrize("preload", [False, True], ids=["loaded-in-workers", "preloaded"])
def test_each_of_several_workers_on_the_memory_store_warns(asynctask_serve, preload):
    server = asynctask_serve("examples.quickstart:api", "--workers", "2", *(["--preload"] if preload else []))

    warned = wait_until(lambda: len(found := _sharing_warnings(server.stderr())) >= 2 and found,
                        "a warning from each worker", timeout=30)

    assert len(warned) == 2, warned
    pids = {re.search(r"\] \[(\d+)\] \[WARNING\]", line).group(1) for line in warned}
    assert len(pids) == 2 and str(server.proc.pid) not in pids  # one per worker, none from the master
    assert all("not shared" in line for line in warned)
