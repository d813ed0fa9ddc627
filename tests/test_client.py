"""The HTTP client against a real HTTP server in a background thread.

Most tests run an AsyncTask's own Flask app; a few use a small recording app instead, to see
exactly what the client sends and how it takes answers that no asynctask service gives.
"""

from __future__ import annotations

import hashlib
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from flask import Flask, jsonify, request
from tasks import Echo, Gate, Typed
from werkzeug.serving import make_server

from asynctask import AsyncTask, report_progress
from asynctask.client import Client
from asynctask.errors import (
    AuthenticationFailed,
    ClientError,
    InvalidParams,
    InvalidTaskId,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    Unauthorized,
)

TOKEN = "s3cret"


@pytest.fixture(autouse=True)
def no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services and clients here get a token only when a test gives one."""
    monkeypatch.delenv("ASYNCTASK_API_TOKEN", raising=False)


@pytest.fixture
def serve_app() -> Iterator[Callable[[Any], str]]:
    """Serve WSGI apps on free local ports, each in a thread; returns the base URL."""
    running = []

    def start(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        # A short poll interval makes shutdown() quick.
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-http", daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def serve(make_task: Callable[..., AsyncTask], serve_app: Callable[[Any], str]) -> Iterator[Callable[..., tuple]]:
    """`serve(TaskClass, token=None, **options) -> (client, task)`: the task's app on a real server."""
    clients: list[Client] = []

    def start(cls: type[AsyncTask], token: str | None = None, **options: Any) -> tuple[Client, AsyncTask]:
        task = make_task(cls, **options)
        clients.append(Client(serve_app(task.app("/api")), token))
        return clients[-1], task

    yield start
    for client in clients:
        client.close()


def open_gate_later(task: Any, delay: float = 0.3) -> threading.Timer:
    """Open a Gate task's gate after `delay` seconds, while the client is waiting."""
    timer = threading.Timer(delay, task.gate.set)
    timer.start()
    return timer


# -- submit, get, wait ----------------------------------------------------------------------

def test_submit_get_wait_round_trip(serve):
    client, task = serve(Echo)
    task_id = client.submit(value={"words": ["a", "b"]}, n=2)
    assert task_id == task.get_task_id(value={"words": ["a", "b"]}, n=2)
    view = client.get(task_id)
    assert view["task_id"] == task_id
    assert view["status"] in ("queued", "running", "success")
    assert client.wait(task_id, timeout=10) == {"words": ["a", "b"]}
    assert client.get(task_id)["status"] == "success"


def test_submit_typed_params_and_deterministic_id(serve):
    client, _ = serve(Typed)
    task_id = client.submit(text="to be or not to be", top=2)
    assert task_id == hashlib.sha1(b"2:to be or not to be").hexdigest()
    assert client.wait(task_id, timeout=10) == ["to", "be"]


def test_wait_returns_as_soon_as_the_task_finishes(serve):
    client, task = serve(Gate)
    task_id = client.submit(name="slow", result=[1, 2])
    assert task.started.wait(5)
    views = []
    timer = open_gate_later(task)
    begin = time.monotonic()
    assert client.wait(task_id, timeout=20, on_update=views.append) == [1, 2]
    elapsed = time.monotonic() - begin
    timer.join()
    assert elapsed < 15, f"a long-poll should answer when the task ends, not after 20 s: {elapsed:.2f}s"
    assert [(view["task_id"], view["status"]) for view in views] == [(task_id, "success")], \
        "one long-poll should have covered the whole wait"


class Halfway(AsyncTask):
    """Reports 50 % progress, then waits for its gate."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def main(self, logger: Any) -> str:
        report_progress(50, "half way")
        if not self.gate.wait(timeout=10):
            raise RuntimeError("the test never opened the gate")
        return "done"


def test_on_update_sees_progress(serve):
    client, task = serve(Halfway)
    seen = []

    def on_update(view: dict[str, Any]) -> None:
        seen.append(view.get("progress"))
        if view.get("progress"):
            task.gate.set()

    assert client.wait(client.submit(), timeout=10, on_update=on_update) == "done"
    assert {"percent": 50.0, "message": "half way"} in seen


def test_wait_raises_task_failed_with_the_server_error_text(serve):
    client, task = serve(Gate)
    task.gate.set()
    task_id = client.submit(name="broken", fail=True)
    with pytest.raises(TaskFailed) as caught:
        client.wait(task_id, timeout=10)
    assert "asked to fail: broken" in caught.value.error
    assert caught.value.task_id == task_id
    assert "asked to fail: broken" in str(caught.value)
    assert caught.value.view["status"] == "failed"


def test_wait_times_out_on_a_task_that_does_not_finish(serve):
    client, task = serve(Gate)
    task_id = client.submit(name="stuck")
    assert task.started.wait(5)
    begin = time.monotonic()
    with pytest.raises(TimeoutError):
        client.wait(task_id, timeout=1.5)
    elapsed = time.monotonic() - begin
    assert 1.4 <= elapsed < 15, elapsed  # at the timeout, not before
    assert client.get(task_id)["status"] == "running"


def test_wait_with_zero_timeout_looks_once(serve):
    client, task = serve(Gate)
    task_id = client.submit(name="stuck")
    begin = time.monotonic()
    with pytest.raises(TimeoutError):
        client.wait(task_id, timeout=0)
    assert time.monotonic() - begin < 10  # one look, no wait


# -- errors ---------------------------------------------------------------------------------

def test_unknown_task_is_task_not_found(serve):
    client, _ = serve(Echo)
    for call in (client.get, client.wait):
        with pytest.raises(TaskNotFound) as caught:
            call("no-such-task")
        assert caught.value.status_code == 404
        assert isinstance(caught.value, LookupError)


def test_bad_params_are_invalid_params_with_the_server_message(serve):
    client, task = serve(Typed)
    with pytest.raises(InvalidParams) as caught:
        client.submit(top=2)  # `text` is required
    assert caught.value.status_code == 400
    assert "text" in str(caught.value)
    assert task.collection.find_one({}) is None


def test_invalid_task_id_is_refused_before_any_request(serve_app):
    hits = []
    app = Flask("recorder")
    app.before_request(lambda: hits.append(request.path))
    client = Client(serve_app(app))
    for bad in ("../ping", "a/b", "..", ""):
        with pytest.raises(InvalidTaskId):
            client.get(bad)
    assert hits == []


def test_connection_errors_propagate_as_requests_exceptions():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(requests.ConnectionError):
        client.get("abc")


def test_exceptions_survive_pickling():
    failed = pickle.loads(pickle.dumps(TaskFailed("t1", "Traceback...\nValueError: boom", {"status": "failed"})))
    assert (failed.task_id, failed.error, failed.view) == ("t1", "Traceback...\nValueError: boom", {"status": "failed"})
    refused = pickle.loads(pickle.dumps(Unauthorized("no token", 401)))
    assert isinstance(refused, ClientError) and refused.status_code == 401
    refused = pickle.loads(pickle.dumps(AuthenticationFailed("no token", 401, [{"type": "x"}])))
    assert type(refused) is AuthenticationFailed and refused.error_data == [{"type": "x"}]
    cancelled = pickle.loads(pickle.dumps(TaskCancelled("t2", {"status": "cancelled"})))
    assert (cancelled.task_id, cancelled.view, cancelled.status_code) == ("t2", {"status": "cancelled"}, 200)
    assert failed.status_code == 200 and isinstance(failed, ClientError)


# -- what the client sends, and answers no asynctask service gives -----------------------------

@pytest.fixture
def recorder(serve_app: Callable[[Any], str]) -> tuple[str, list, dict]:
    """A fake service: records each request; `answers[path]` is a list of (status, body) to give."""
    seen: list[dict[str, Any]] = []
    answers: dict[str, list] = {}
    app = Flask("recorder")

    @app.route("/<path:path>", methods=["GET", "POST", "DELETE"])
    def any_route(path: str) -> Any:
        seen.append({"method": request.method, "path": "/" + path, "args": dict(request.args),
                     "auth": request.headers.get("Authorization"), "json": request.get_json(silent=True)})
        queue = answers.get("/" + path) or [(200, {"status": "ok", "data": {"task_id": "t", "status": "running"}})]
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(body, str):
            return body, status, {"Content-Type": "text/html"}
        return jsonify(body), status

    return serve_app(app), seen, answers


def ok(data: Any) -> tuple[int, dict]:
    return 200, {"status": "ok", "data": data, "error_data": [], "error_msg": ""}


def test_token_is_sent_as_a_bearer_header(recorder):
    url, seen, _ = recorder
    Client(url, TOKEN).get("t")
    Client(url).get("t")
    Client(url, "").get("t")
    assert [hit["auth"] for hit in seen] == [f"Bearer {TOKEN}", None, None]


def test_requests_follow_the_contract(recorder):
    url, seen, answers = recorder
    answers["/jobs"] = [(202, {"status": "ok", "data": {"task_id": "t9", "status": "queued"}})]
    answers["/jobs/t9"] = [ok({"task_id": "t9", "status": "cancelled"})]
    client = Client(url + "/", endpoint="/jobs/")
    assert client.submit(text="x", top=3) == "t9"
    assert client.cancel("t9")["status"] == "cancelled"
    client.list()
    client.list("failed", limit=10, skip=20)
    assert [(hit["method"], hit["path"]) for hit in seen] == [
        ("POST", "/jobs"), ("DELETE", "/jobs/t9"), ("GET", "/jobs"), ("GET", "/jobs")]
    assert seen[0]["json"] == {"data": {"text": "x", "top": 3}}
    assert seen[2]["args"] == {"limit": "50", "skip": "0"}
    assert seen[3]["args"] == {"status": "failed", "limit": "10", "skip": "20"}


def test_wait_long_polls_with_at_most_60_seconds(recorder):
    url, seen, answers = recorder
    running = ok({"task_id": "t", "status": "running"})
    answers["/api/t"] = [running, running, ok({"task_id": "t", "status": "success", "result": 7})]
    assert Client(url).wait("t") == 7
    assert [hit["args"].get("wait") for hit in seen] == ["60", "60", "60"]
    seen.clear()
    answers["/api/t"] = [running, ok({"task_id": "t", "status": "success", "result": 8})]
    assert Client(url).wait("t", on_update=lambda view: None) == 8
    assert [hit["args"].get("wait") for hit in seen] == ["1", "1"], "with on_update, it polls each second"


def test_wait_asks_for_the_time_left_and_does_not_flood_a_server_without_long_poll(recorder):
    url, seen, answers = recorder
    answers["/api/t"] = [ok({"task_id": "t", "status": "running"})]  # answers at once, for ever
    begin = time.monotonic()
    with pytest.raises(TimeoutError):
        Client(url).wait("t", timeout=2.2)
    assert 2.1 <= time.monotonic() - begin
    assert seen[0]["args"]["wait"] == "2"
    assert all(1 <= int(hit["args"].get("wait", "1")) <= 2 for hit in seen)
    assert 3 <= len(seen) <= 14, f"{len(seen)} polls in 2.2 s"


def test_wait_keeps_its_deadline_when_a_long_poll_would_overshoot(serve_app):
    app = Flask("slow-long-poll")
    asked = []

    @app.get("/api/<task_id>")
    def show(task_id: str) -> Any:
        asked.append(int(request.args["wait"]))
        time.sleep(asked[-1])  # a long-poll server whose task never finishes
        return jsonify(ok({"task_id": task_id, "status": "running"})[1])

    with pytest.raises(TimeoutError):
        Client(serve_app(app)).wait("t", timeout=1.5)
    assert asked == [1, 1]  # the deadline is kept: no third long-poll past it


@pytest.mark.parametrize(("status", "body", "error", "message"), [
    (401, {"status": "error", "data": None, "error_msg": "missing token"}, Unauthorized, "missing token"),
    (409, {"status": "error", "data": None, "error_msg": "task is finished"}, ClientError, "task is finished"),
    (503, {"status": "error", "data": None, "error_msg": "shutting down"}, ClientError, "shutting down"),
    (502, "<html>Bad Gateway</html>", ClientError, "502"),
    (200, {"unexpected": True}, ClientError, "not an asynctask answer"),
])
def test_error_answers_become_exceptions(recorder, status, body, error, message):
    url, _, answers = recorder
    answers["/api/t"] = [(status, body)]
    with pytest.raises(error) as caught:
        Client(url).get("t")
    assert caught.value.status_code == status
    assert message in str(caught.value)
    assert "<html>" not in str(caught.value)


# -- cancel and list ---------------------------------------------------------------------------

def test_cancel_an_unknown_task_is_task_not_found(serve):
    client, _ = serve(Echo)
    with pytest.raises(TaskNotFound) as caught:
        client.cancel("no-such-task")
    assert caught.value.status_code == 404


def test_cancel_a_queued_task(serve):
    client, task = serve(Gate, max_worker=1)
    client.submit(name="first")
    assert task.started.wait(5)
    queued = client.submit(name="second")
    assert client.get(queued)["status"] == "queued"
    client.cancel(queued)
    assert client.get(queued)["status"] == "cancelled"
    with pytest.raises(TaskCancelled) as caught:
        client.wait(queued, timeout=5)
    assert caught.value.task_id == queued


def test_cancel_a_running_task(serve):
    client, task = serve(Gate)
    task_id = client.submit(name="running")
    assert task.started.wait(5)
    client.cancel(task_id)
    timer = open_gate_later(task, 0.1)
    with pytest.raises(TaskCancelled):
        client.wait(task_id, timeout=10)
    timer.join()


def test_cancel_a_finished_task_is_a_409(serve):
    client, _ = serve(Echo)
    task_id = client.submit(value=1)
    client.wait(task_id, timeout=10)
    with pytest.raises(ClientError) as caught:
        client.cancel(task_id)
    assert caught.value.status_code == 409


def test_list_newest_first_with_counts(serve):
    client, _ = serve(Echo)
    ids = [client.submit(value=n) for n in range(3)]
    for task_id in ids:
        client.wait(task_id, timeout=10)
    listed = client.list()
    assert [view["task_id"] for view in listed["tasks"]] == ids[::-1]
    assert listed["total"] == 3
    assert listed["counts"].get("success") == 3
    page = client.list("success", limit=2, skip=1)
    assert [view["task_id"] for view in page["tasks"]] == ids[1::-1]
    assert client.list("failed")["tasks"] == []


# -- auth (server side: the api_token option) --------------------------------------------------

def test_token_is_accepted_and_a_wrong_one_refused(serve):
    client, _ = serve(Echo, token=TOKEN, api_token=TOKEN)
    task_id = client.submit(value="secret work")
    assert client.wait(task_id, timeout=10) == "secret work"
    for token in (None, "wrong"):
        other = Client(client.base_url, token)
        with pytest.raises(Unauthorized) as caught:
            other.get(task_id)
        assert caught.value.status_code == 401


# -- the URL, queue options, the error classes --------------------------------------------------------

@pytest.mark.parametrize(("suffix", "endpoint", "path"), [
    ("", None, "/api"),
    ("/", None, "/api"),
    ("/api", None, "/api"),
    ("/api/", None, "/api"),
    ("/jobs", None, "/jobs"),
    ("/jobs/", None, "/jobs"),
    ("/prefix/api", None, "/prefix/api"),
    ("", "/jobs", "/jobs"),
    ("/", "jobs/", "/jobs"),
])
def test_the_url_is_the_base_url_or_the_endpoints_own(recorder, suffix, endpoint, path):
    url, seen, _ = recorder
    client = Client(url + suffix, endpoint=endpoint)
    client.get("t")
    assert seen[-1]["path"] == f"{path}/t"
    assert client.url == url + path
    assert client.base_url == url


def test_enqueue_sends_the_queue_options_beside_the_params(recorder):
    url, seen, _ = recorder
    client = Client(url + "/api")
    assert client.enqueue({"text": "x"}) == "t"
    client.enqueue({"text": "x"}, priority=7, delay=1.5)
    client.enqueue({"text": "x"}, priority=-3, delay=timedelta(minutes=1))
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    client.enqueue({"text": "x"}, run_at=at)
    client.enqueue({"text": "x"}, run_at="2030-01-02T03:04:05Z")
    assert [hit["json"] for hit in seen] == [
        {"data": {"text": "x"}},
        {"data": {"text": "x"}, "priority": 7, "delay": 1.5},
        {"data": {"text": "x"}, "priority": -3, "delay": 60.0},
        {"data": {"text": "x"}, "run_at": "2030-01-02T03:04:05+02:00"},
        {"data": {"text": "x"}, "run_at": "2030-01-02T03:04:05Z"},
    ]


@pytest.mark.parametrize("options", [
    {"priority": 101}, {"priority": True}, {"delay": -1}, {"delay": float("nan")},
    {"run_at": datetime(2030, 1, 1)}, {"run_at": "2030-01-01T00:00:00"},
    {"delay": 1, "run_at": "2030-01-01T00:00:00Z"},
])
def test_bad_queue_options_are_refused_before_any_request(recorder, options):
    url, seen, _ = recorder
    with pytest.raises(InvalidParams):
        Client(url).enqueue({"text": "x"}, **options)
    assert seen == []


def test_enqueue_against_a_service(serve):
    client, _ = serve(Typed)
    task_id = client.enqueue({"text": "a b c", "top": 2}, priority=5)
    assert task_id == hashlib.sha1(b"2:a b c").hexdigest()
    assert client.wait(task_id, timeout=10) == ["a", "b"]


@pytest.mark.parametrize(("status", "error"), [
    (400, InvalidParams), (401, AuthenticationFailed), (404, TaskNotFound), (409, ClientError), (415, ClientError),
])
def test_every_refused_request_is_a_client_error(recorder, status, error):
    url, _, answers = recorder
    answers["/api/t"] = [(status, {"status": "error", "data": None, "error_data": [], "error_msg": "no"})]
    with pytest.raises(ClientError) as caught:
        Client(url).get("t")
    assert isinstance(caught.value, error) and caught.value.status_code == status


def test_the_errors_of_a_finished_task_are_client_errors_and_the_old_name_still_works():
    assert issubclass(TaskFailed, ClientError) and issubclass(TaskCancelled, ClientError)
    assert Unauthorized is AuthenticationFailed
    assert str(TaskFailed("t", "Traceback\nValueError: boom")) == "task t failed: ValueError: boom"
    assert str(TaskCancelled("t")) == "task t was cancelled"
