"""The HTTP API, through Flask's test client.

Every answer is checked the way a client would see it: the status code, the JSON envelope
`{"status", "data", "error_data", "error_msg"}`, and for refused requests that nothing was
stored in the collection and no file was written.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from datetime import datetime, timedelta

import pytest
from tasks import Echo, Gate, Typed

from asynctask import AsyncTask
from asynctask.status import FINISHED

ENVELOPE_KEYS = {"status", "data", "error_data", "error_msg"}
PUBLIC_TIMES = ("created_at", "started_at", "finished_at", "update_time")
INTERNAL_FIELDS = ("_id", "owner", "heartbeat_at", "beats", "deadline")
MiB = 1024 * 1024

#: Ids the API refuses, by the name pytest shows for each.
INVALID_IDS = {
    "traversal": "../../x",
    "slash": "a/b",
    "dotdot": "..",
    "dot": ".",
    "empty": "",
    "129 chars": "a" * 129,
    "space": "a b",
    "unicode": "é",
    "nul": "a\x00b",
}


# -- sample tasks -------------------------------------------------------------------------

class FailsOnce(AsyncTask):
    """Fails on its first call and succeeds afterwards; records the params of each call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def get_task_id(self, name, n=1):
        return name

    def main(self, logger, name, n=1):
        self.seen.append({"name": name, "n": n})
        if len(self.seen) == 1:
            raise ValueError("first attempt fails on purpose")
        return n * 2


class Raises(AsyncTask):
    def main(self, logger, number):
        raise ValueError(f"cannot handle number {number}")


class ReturnsUnstorable(AsyncTask):
    def main(self, logger, kind):
        return {"set": {1, 2}, "object": object(), "bytes": b"raw bytes"}[kind]


class SecretRetrieve(Echo):
    """A `retrieve` hook that fails with server-side details in its message."""

    def retrieve(self, task_id):
        raise RuntimeError("secret /etc/passwd path")


class SecretTaskId(Echo):
    def get_task_id(self, **params):
        raise KeyError("secret /etc/passwd path")


class RefusingTaskId(Echo):
    def get_task_id(self, **params):
        raise ValueError("bad text")


# -- helpers ------------------------------------------------------------------------------

def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def envelope(response, code):
    """Check `response` is `code` with a strict-JSON envelope; return the envelope."""
    text = response.get_data(as_text=True)
    assert response.status_code == code, text
    assert response.mimetype == "application/json"
    body = json.loads(text, parse_constant=_refuse_constant)
    assert set(body) == ENVELOPE_KEYS
    assert isinstance(body["error_data"], list)
    assert isinstance(body["error_msg"], str)
    if code < 400:
        assert body["status"] == "ok"
        assert body["error_msg"] == ""
    else:
        assert body["status"] == "error"
        assert body["error_msg"]
    return body


def assert_nothing_changed(task):
    """No task document, and no file anywhere under the test's temp folder."""
    assert task.collection.count_documents({}) == 0
    assert [p for p in task.logger_dir.parent.rglob("*") if p.is_file()] == []


def poll(client, url, timeout=10.0):
    """GET `url` until the task is finished; fail at the deadline."""
    deadline = time.monotonic() + timeout
    data = None
    while time.monotonic() < deadline:
        data = envelope(client.get(url), 200)["data"]
        if data["status"] in FINISHED:
            return data
        time.sleep(0.005)
    raise AssertionError(f"{url} did not finish within {timeout}s: {data}")


def post_together(app, body, n=16):
    """POST `body` from `n` threads, each with its own client, released at once."""
    barrier = threading.Barrier(n)
    responses = [None] * n

    def post(i):
        client = app.test_client()
        barrier.wait(timeout=10)
        responses[i] = client.post("/api", json=body)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    return [envelope(response, 202)["data"] for response in responses]


@pytest.fixture
def serve(make_task, memory):
    """`serve(cls, **kwargs)` -> (task, test client) of `cls` at /api on the `memory` store."""

    def serve(cls=Echo, **kwargs):
        task = make_task(cls, memory, **kwargs)
        return task, task.app("/api").test_client()

    return serve


# -- envelope and JSON --------------------------------------------------------------------

def _submitted_then_shown(client):
    return client.get(client.post("/api", json={"data": {"value": 1}}).headers["Location"])


@pytest.mark.parametrize(
    "cls, options, send, code",
    [
        pytest.param(Echo, {}, lambda c: c.post("/api", json={"data": {"value": 1}}), 202, id="post"),
        pytest.param(Echo, {}, _submitted_then_shown, 200, id="get"),
        pytest.param(Echo, {}, lambda c: c.post("/api", data="{oops", content_type="application/json"), 400,
                     id="bad-json"),
        pytest.param(Echo, {}, lambda c: c.post("/api", data="value=1"), 415, id="not-json"),
        pytest.param(Echo, {}, lambda c: c.get("/api/unknown"), 404, id="unknown-task"),
        pytest.param(Echo, {}, lambda c: c.get("/nowhere"), 404, id="unknown-route"),
        pytest.param(Echo, {}, lambda c: c.put("/api", json={}), 405, id="wrong-method"),
        pytest.param(
            Echo, {"max_content_length": 1024}, lambda c: c.post("/api", data="x" * 2048), 413,
            id="too-large",
        ),
        pytest.param(SecretRetrieve, {}, lambda c: c.get("/api/some-id"), 500, id="server-error"),
    ],
)
def test_every_answer_is_a_json_envelope(serve, cls, options, send, code):
    _, client = serve(cls, **options)
    envelope(send(client), code)


def test_ping(serve):
    _, client = serve()
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "ok"}


# -- submit and show ----------------------------------------------------------------------

def test_post_answers_202_with_location_and_the_task_succeeds(serve):
    task, client = serve(Typed)
    response = client.post("/api", json={"data": {"text": "a b c d", "top": 2}})

    data = envelope(response, 202)["data"]
    assert set(data) == {"task_id", "status"}
    assert data["status"] in ("queued", "running")  # a free slot may have taken it already
    assert response.headers["Location"] == f"/api/{data['task_id']}"

    view = poll(client, response.headers["Location"])
    assert view["task_id"] == data["task_id"]
    assert view["status"] == "success"
    assert view["result"] == ["a", "b"]
    assert view["error"] is None
    assert view["attempts"] == 1
    times = {name: datetime.fromisoformat(view[name]) for name in PUBLIC_TIMES}
    for name, value in times.items():
        assert value.utcoffset() == timedelta(0), (name, view[name])
    assert times["created_at"] <= times["started_at"] <= times["finished_at"]
    for name in INTERNAL_FIELDS:
        assert name not in view


def test_public_view_of_a_running_task_hides_internal_fields(serve):
    """While a task runs its document holds owner and heartbeat; GET shows none."""
    task, client = serve(Gate)
    task_id = envelope(client.post("/api", json={"data": {"name": "held"}}), 202)["data"]["task_id"]
    assert task.started.wait(10)

    stored = task.collection.find_one({"task_id": task_id})
    assert {"owner", "heartbeat_at", "beats"} <= set(stored)
    view = envelope(client.get(f"/api/{task_id}"), 200)["data"]
    assert view["status"] == "running"
    for name in INTERNAL_FIELDS:
        assert name not in view


def test_get_by_path_query_and_json_body_agree(serve, wait_for):
    task, client = serve()
    task_id = envelope(client.post("/api", json={"data": {"value": [1, 2]}}), 202)["data"]["task_id"]
    wait_for(task, task_id)

    by_path = envelope(client.get(f"/api/{task_id}"), 200)["data"]
    by_query = envelope(client.get("/api", query_string={"task_id": task_id}), 200)["data"]
    by_body = envelope(client.get("/api", json={"task_id": task_id}), 200)["data"]
    assert by_path == by_query == by_body
    assert by_path["task_id"] == task_id
    assert by_path["result"] == [1, 2]


@pytest.mark.parametrize(
    "get",
    [
        pytest.param(lambda c: c.get("/api/no-such-task"), id="path"),
        pytest.param(lambda c: c.get("/api", query_string={"task_id": "no-such-task"}), id="query"),
        pytest.param(lambda c: c.get("/api", json={"task_id": "no-such-task"}), id="body"),
    ],
)
def test_get_unknown_task_is_404(serve, get):
    task, client = serve()
    body = envelope(get(client), 404)
    assert "no-such-task" in body["error_msg"]
    assert_nothing_changed(task)


# -- re-run -------------------------------------------------------------------------------

def test_post_task_id_reruns_a_failed_task_with_its_stored_params(serve, wait_for):
    task, client = serve(FailsOnce)
    envelope(client.post("/api", json={"data": {"name": "flaky", "n": 21}}), 202)
    first = wait_for(task, "flaky")
    assert first["status"] == "failed"

    response = client.post("/api", json={"data": {"task_id": "flaky"}})
    again = envelope(response, 202)["data"]
    assert again["task_id"] == "flaky" and again["status"] in ("queued", "running")
    assert response.headers["Location"] == "/api/flaky"

    second = wait_for(task, "flaky")
    assert second["status"] == "success"
    assert second["result"] == 42
    assert second["error"] is None
    assert second["attempts"] == 2
    assert task.seen == [{"name": "flaky", "n": 21}, {"name": "flaky", "n": 21}]


def test_post_task_id_of_a_successful_task_does_not_run_it_again(serve, wait_for):
    task, client = serve()
    task_id = envelope(client.post("/api", json={"data": {"value": 1}}), 202)["data"]["task_id"]
    wait_for(task, task_id)

    again = envelope(client.post("/api", json={"data": {"task_id": task_id}}), 202)["data"]
    assert again == {"task_id": task_id, "status": "success"}
    assert task.calls == 1


def test_post_task_id_unknown_is_404(serve):
    task, client = serve()
    body = envelope(client.post("/api", json={"data": {"task_id": "no-such-task"}}), 404)
    assert "no-such-task" in body["error_msg"]
    assert_nothing_changed(task)


def test_post_task_id_with_other_params_is_400(serve, wait_for):
    task, client = serve()
    task_id = envelope(client.post("/api", json={"data": {"value": 1}}), 202)["data"]["task_id"]
    wait_for(task, task_id)

    body = envelope(client.post("/api", json={"data": {"task_id": task_id, "value": 2}}), 400)
    assert "task_id" in body["error_msg"]
    assert task.collection.count_documents({}) == 1
    assert task.calls == 1


# -- bad input ----------------------------------------------------------------------------

def _json(value):
    return json.dumps(value)


BAD_POSTS = [
    pytest.param(Echo, "{not json", "JSON", id="body-not-json"),
    pytest.param(Echo, b"\xff\xfe{}", "JSON", id="body-not-utf8"),
    pytest.param(Echo, "", "JSON", id="body-empty"),
    pytest.param(Echo, _json([{"data": {}}]), "JSON", id="body-array"),
    pytest.param(Echo, _json("data"), "JSON", id="body-string"),
    pytest.param(Echo, _json(42), "JSON", id="body-number"),
    pytest.param(Echo, _json(None), "JSON", id="body-null"),
    pytest.param(Echo, '{"data": {"value": NaN}}', "JSON", id="body-nan"),
    pytest.param(Echo, '{"data": {"value": Infinity}}', "JSON", id="body-infinity"),
    pytest.param(Echo, _json({"params": {"value": 1}}), "data", id="data-missing"),
    pytest.param(Echo, _json({"data": [1, 2]}), "data", id="data-list"),
    pytest.param(Echo, _json({"data": "value=1"}), "data", id="data-string"),
    pytest.param(Echo, _json({"data": None}), "data", id="data-null"),
    pytest.param(Echo, _json({"data": {"task_id": 5}}), "task_id", id="task_id-number"),
    pytest.param(Echo, _json({"data": {"task_id": 0}}), "task_id", id="task_id-zero"),
    pytest.param(Echo, _json({"data": {"task_id": ["a"]}}), "task_id", id="task_id-list"),
    pytest.param(Echo, _json({"data": {"task_id": {"$ne": None}}}), "task_id", id="task_id-operator"),
    pytest.param(Echo, _json({"data": {"task_id": None}}), "task_id", id="task_id-null"),
    pytest.param(Echo, _json({"data": {"task_id": True}}), "task_id", id="task_id-bool"),
    *[
        pytest.param(Echo, _json({"data": {"task_id": bad}}), "task_id", id=f"body-task_id-{name}")
        for name, bad in INVALID_IDS.items()
    ],
    # Gate's get_task_id returns its `name` param: an invalid computed id is refused too.
    *[
        pytest.param(Gate, _json({"data": {"name": bad}}), "task_id", id=f"computed-task_id-{name}")
        for name, bad in INVALID_IDS.items()
    ],
    pytest.param(Typed, _json({"data": {"text": "a", "colour": "red"}}), "colour", id="unknown-param"),
    pytest.param(Typed, _json({"data": {"top": 3}}), "text", id="required-param-missing"),
    pytest.param(Typed, _json({"data": {"text": "a", "logger": "x"}}), "logger", id="logger-param"),
    pytest.param(Echo, _json({"data": {"logger": "x"}}), "logger", id="logger-param-kwargs"),
    pytest.param(Echo, _json({"data": {"$where": "1"}}), "$where", id="dollar-key"),
    pytest.param(Echo, _json({"data": {"a.b": 1}}), "a.b", id="dotted-key"),
    pytest.param(Echo, _json({"data": {"value": {"x": {"$gt": 1}}}}), "$gt", id="nested-dollar-key"),
    pytest.param(Echo, _json({"data": {"value": [1, {"ok": [{"x.y": 2}]}]}}), "x.y", id="dotted-key-in-list"),
]


@pytest.mark.parametrize("cls, raw, word", BAD_POSTS)
def test_bad_post_is_400_naming_the_problem_and_changes_nothing(serve, cls, raw, word):
    task, client = serve(cls)
    body = envelope(client.post("/api", data=raw, content_type="application/json"), 400)
    assert word in body["error_msg"]
    assert_nothing_changed(task)
    assert getattr(task, "calls", 0) == 0


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_body_is_a_client_error(serve, depth):
    """Nesting no parser or database takes is bad input (400), not a server error."""
    task, client = serve()
    raw = '{"data": {"value": ' + "[" * depth + "]" * depth + "}}"
    envelope(client.post("/api", data=raw, content_type="application/json"), 400)
    assert_nothing_changed(task)


def test_kwargs_main_accepts_unknown_params(serve, wait_for):
    task, client = serve()
    task_id = envelope(client.post("/api", json={"data": {"colour": "red"}}), 202)["data"]["task_id"]
    view = wait_for(task, task_id)
    assert view["status"] == "success"
    assert view["params"] == {"colour": "red"}


def test_valid_id_characters_and_128_chars_are_accepted(serve, wait_for):
    task, client = serve(Gate)
    task.gate.set()
    for task_id in ("A-z_0.9:x", "a" * 128):
        response = client.post("/api", json={"data": {"name": task_id}})
        assert envelope(response, 202)["data"]["task_id"] == task_id
        assert wait_for(task, task_id)["status"] == "success"
        assert envelope(client.get(response.headers["Location"]), 200)["data"]["task_id"] == task_id


@pytest.mark.parametrize("bad", list(INVALID_IDS.values()), ids=list(INVALID_IDS))
def test_get_with_invalid_task_id_is_400(serve, bad):
    task, client = serve()
    body = envelope(client.get("/api", query_string={"task_id": bad}), 400)
    assert "task_id" in body["error_msg"]
    assert_nothing_changed(task)


@pytest.mark.parametrize(
    "task_id",
    [
        pytest.param(5, id="number"),
        pytest.param(["a"], id="list"),
        pytest.param({"$ne": None}, id="operator"),
    ],
)
def test_get_with_non_string_task_id_in_body_is_400(serve, task_id):
    task, client = serve()
    body = envelope(client.get("/api", json={"task_id": task_id}), 400)
    assert "task_id" in body["error_msg"]
    assert_nothing_changed(task)


@pytest.mark.parametrize(
    "method, url",
    [
        ("GET", "/api/..%2F..%2Fetc"),
        ("GET", "/api/..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/api/.."),
        ("GET", "/api/%2E%2E"),
        ("GET", "/api?task_id=..%2F..%2Fetc%2Fpasswd"),
        ("POST", "/api/..%2F..%2Fetc"),
    ],
)
def test_path_traversal_in_the_url_is_refused(serve, method, url):
    task, client = serve()
    response = client.open(url, method=method, json={"data": {"value": 1}})
    assert 400 <= response.status_code < 500
    body = envelope(response, response.status_code)
    assert "root:" not in json.dumps(body)
    assert_nothing_changed(task)


# -- routes, methods, size limit ----------------------------------------------------------

@pytest.mark.parametrize(
    "method, url, code",
    [
        ("GET", "/nowhere", 404),
        ("GET", "/api/some-id/extra", 404),
        ("PUT", "/api", 405),
        ("PATCH", "/api/some-id", 405),
        ("DELETE", "/ping", 405),
        ("POST", "/ping", 405),
    ],
)
def test_unknown_route_and_wrong_method(serve, method, url, code):
    task, client = serve()
    envelope(client.open(url, method=method), code)
    assert_nothing_changed(task)


def test_body_over_configured_limit_is_413(serve):
    task, client = serve(max_content_length=1024)
    envelope(client.post("/api", json={"data": {"value": "x" * 2048}}), 413)
    assert_nothing_changed(task)
    envelope(client.post("/api", json={"data": {"value": "x" * 900}}), 202)


def test_default_limit_is_one_mib(serve, wait_for):
    task, client = serve()
    big = envelope(client.post("/api", json={"data": {"value": "x" * 900_000}}), 202)
    assert len(wait_for(task, big["data"]["task_id"])["result"]) == 900_000

    envelope(client.post("/api", json={"data": {"value": "y" * int(1.1 * MiB)}}), 413)
    assert task.collection.count_documents({}) == 1


# -- server errors ------------------------------------------------------------------------

LEAKS = ("secret", "/etc", "Traceback", "RuntimeError", "KeyError")


def _error_id_is_logged(body, caplog):
    """The 500's error id is in its message and in the server log, next to the details."""
    text = json.dumps(body)
    for leak in LEAKS:
        assert leak not in text
    match = re.search(r"[0-9a-f]{8,}", body["error_msg"])
    assert match, body["error_msg"]
    logged = [r for r in caplog.records if r.name == "asynctask.web.routes" and match.group() in r.getMessage()]
    assert logged
    assert "secret /etc/passwd path" in caplog.text


def test_retrieve_failure_is_500_with_error_id_only(serve, caplog):
    caplog.set_level(logging.ERROR, logger="asynctask.web.routes")
    _, client = serve(SecretRetrieve)
    body = envelope(client.get("/api/some-id"), 500)
    _error_id_is_logged(body, caplog)


def test_get_task_id_key_error_is_500_with_error_id_only(serve, caplog):
    caplog.set_level(logging.ERROR, logger="asynctask.web.routes")
    task, client = serve(SecretTaskId)
    body = envelope(client.post("/api", json={"data": {"value": 1}}), 500)
    _error_id_is_logged(body, caplog)
    assert_nothing_changed(task)


def test_get_task_id_value_error_is_400_naming_it(serve):
    task, client = serve(RefusingTaskId)
    body = envelope(client.post("/api", json={"data": {"value": 1}}), 400)
    assert "bad text" in body["error_msg"]
    assert_nothing_changed(task)


# -- how tasks end ------------------------------------------------------------------------

def test_main_raising_fails_the_task_with_its_message(serve, wait_for):
    task, client = serve(Raises)
    task_id = envelope(client.post("/api", json={"data": {"number": 7}}), 202)["data"]["task_id"]
    wait_for(task, task_id)
    view = envelope(client.get(f"/api/{task_id}"), 200)["data"]
    assert view["status"] == "failed"
    assert "cannot handle number 7" in view["error"]
    assert view["result"] is None


@pytest.mark.parametrize("kind", ["set", "object", "bytes"])
def test_unstorable_result_fails_the_task(serve, wait_for, kind):
    task, client = serve(ReturnsUnstorable)
    task_id = envelope(client.post("/api", json={"data": {"kind": kind}}), 202)["data"]["task_id"]
    wait_for(task, task_id)
    view = envelope(client.get(f"/api/{task_id}"), 200)["data"]
    assert view["status"] == "failed"
    assert "cannot be stored" in view["error"]
    assert view["result"] is None


# -- concurrency --------------------------------------------------------------------------

def test_sixteen_simultaneous_posts_run_main_once(serve, wait_for):
    task, client = serve()
    answers = post_together(client.application, {"data": {"value": "same"}})

    task_ids = {answer["task_id"] for answer in answers}
    assert len(task_ids) == 1
    view = wait_for(task, task_ids.pop())
    assert view["status"] == "success"
    assert view["attempts"] == 1
    assert task.calls == 1
    assert task.collection.count_documents({}) == 1


def test_sixteen_simultaneous_posts_of_a_running_task_share_it(serve, wait_for):
    task, client = serve(Gate)
    answers = post_together(client.application, {"data": {"name": "shared"}})
    assert {answer["task_id"] for answer in answers} == {"shared"}
    assert {answer["status"] for answer in answers} <= {"queued", "running"}
    assert task.started.wait(10)

    # One more while it runs: the same task, still running, not started again.
    assert envelope(client.post("/api", json={"data": {"name": "shared"}}), 202)["data"] == {
        "task_id": "shared", "status": "running",
    }
    assert task.collection.count_documents({}) == 1

    task.gate.set()
    view = wait_for(task, "shared")
    assert view["status"] == "success"
    assert view["attempts"] == 1
    assert task.calls == 1


# -- hardening: media type, chunked bodies, numbers and text JSON allows, query ranges ------------

@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param(None, id="none"),
        pytest.param("text/plain", id="text-plain"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param("multipart/form-data; boundary=x", id="multipart"),
        pytest.param("application/jsonp", id="jsonp"),
    ],
)
def test_a_post_that_is_not_json_is_415_so_no_web_form_can_submit(serve, content_type):
    """A page on another site can post a plain form cross-site; it must not start a task."""
    task, client = serve()
    raw = json.dumps({"data": {"value": 1}})
    headers = {"Content-Type": content_type} if content_type else {}
    body = envelope(client.post("/api", data=raw, headers=headers), 415)
    assert "application/json" in body["error_msg"]
    assert_nothing_changed(task)
    assert task.calls == 0
    # JSON is taken with a charset parameter too.
    envelope(client.post("/api", data=raw, content_type="application/json; charset=utf-8"), 202)


def test_a_post_with_no_body_is_400_not_json_and_changes_nothing(serve):
    task, client = serve()
    body = envelope(client.post("/api"), 400)
    assert "JSON" in body["error_msg"]
    assert_nothing_changed(task)
    envelope(client.post("/api", content_type="application/x-www-form-urlencoded"), 415)  # an empty form
    assert_nothing_changed(task)


def test_delete_with_a_body_that_is_not_json_is_415_and_without_a_body_is_taken(serve, wait_for):
    task, client = serve(Gate)
    task_id = envelope(client.post("/api", json={"data": {"name": "held"}}), 202)["data"]["task_id"]
    assert task.started.wait(10)
    envelope(client.delete(f"/api/{task_id}", data="x=1", content_type="application/x-www-form-urlencoded"), 415)
    assert task.retrieve(task_id)["status"] == "running"
    assert envelope(client.delete(f"/api/{task_id}"), 202)["data"]["cancel_requested"] is True
    task.gate.set()
    assert wait_for(task, task_id)["status"] == "cancelled"
    # A GET's optional JSON body stays lenient about its Content-Type.
    response = client.open("/api", method="GET", data=json.dumps({"task_id": task_id}))
    assert envelope(response, 200)["data"]["task_id"] == task_id


def post_chunked(client, raw):
    """POST `raw` as a server gives a chunked body to the app: no Content-Length, input terminated."""
    return client.post(
        "/api", input_stream=io.BytesIO(raw), content_type="application/json",
        headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_the_limit_is_413_not_cut_and_parsed(serve):
    task, client = serve(max_content_length=1024)
    raw = json.dumps({"data": {"value": "x" * 2000}}).encode()
    envelope(post_chunked(client, raw), 413)
    assert_nothing_changed(task)
    small = json.dumps({"data": {"value": "x" * 100}}).encode()
    envelope(post_chunked(client, small), 202)
    exact = json.dumps({"data": {"value": "y"}}).encode()
    exact = exact.replace(b'"y"', b'"' + b"y" * (1024 - len(exact) + 1) + b'"')
    assert len(exact) == 1024
    envelope(post_chunked(client, exact), 202)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param('{"data": {"value": 1e400}}', id="1e400"),
        pytest.param('{"data": {"value": -1e400}}', id="-1e400"),
        pytest.param('{"data": {"value": [1, {"deep": 2E999}]}}', id="nested"),
        pytest.param('{"data": {"value": 1}, "delay": 1e400}', id="beside-data"),
    ],
)
def test_a_number_too_large_for_a_float_is_400(serve, raw):
    task, client = serve()
    body = envelope(client.post("/api", data=raw, content_type="application/json"), 400)
    assert "range" in body["error_msg"]
    assert_nothing_changed(task)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param('{"data": {"value": "\\ud800"}}', id="value"),
        pytest.param('{"data": {"value": "a\\udfffb"}}', id="low-surrogate"),
        pytest.param('{"data": {"\\ud800": 1}}', id="key"),
        pytest.param('{"data": {"value": {"k": ["\\uDBFF"]}}}', id="nested"),
        pytest.param('{"data": {"value": "\\ude00\\ud83d"}}', id="reversed-pair"),
    ],
)
def test_a_lone_surrogate_is_400(serve, wait_for, raw):
    task, client = serve()
    body = envelope(client.post("/api", data=raw, content_type="application/json"), 400)
    assert "Unicode" in body["error_msg"]
    assert_nothing_changed(task)
    # An escaped surrogate pair is one character like any other.
    raw = '{"data": {"value": "smile \\ud83d\\ude00"}}'
    task_id = envelope(client.post("/api", data=raw, content_type="application/json"), 202)["data"]["task_id"]
    assert wait_for(task, task_id)["result"] == "smile \U0001f600"


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"skip": str(2**63)}, id="skip-2**63"),
        pytest.param({"skip": str(2**31)}, id="skip-2**31"),
        pytest.param({"skip": "1_000"}, id="skip-underscore"),
    ],
)
def test_list_skip_and_limit_beyond_what_the_database_takes_are_400(serve, query):
    _, client = serve()
    body = envelope(client.get("/api", query_string=query), 400)
    assert set(query) & set(body["error_msg"].split())
    assert envelope(client.get("/api", query_string={"skip": str(2**31 - 1)}), 200)["data"]["tasks"] == []


def test_made_up_methods_are_one_metrics_label(serve):
    _, client = serve()
    for method in ("FOO", "BARBAZ", "PROPFIND"):
        assert client.open("/api", method=method).status_code == 405
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="other"' in text
    for method in ("FOO", "BARBAZ", "PROPFIND"):
        assert f'method="{method}"' not in text


def test_the_log_route_serves_only_logs_of_tasks_of_its_type(serve, wait_for):
    task, client = serve()
    (task.logger_dir / "access.log").write_text("secret access log of the web server")
    (task.logger_dir / "gunicorn.log").write_text("secret error log")
    for name in ("access", "gunicorn"):
        response = client.get(f"/api/{name}/log")
        body = envelope(response, 404)
        assert "secret" not in response.get_data(as_text=True)
        assert name in body["error_msg"]
    task_id = envelope(client.post("/api", json={"data": {"value": "logged"}}), 202)["data"]["task_id"]
    wait_for(task, task_id)
    response = client.get(f"/api/{task_id}/log")
    assert response.status_code == 200
    assert "echo 'logged'" in response.get_data(as_text=True)


def test_params_are_converted_to_mains_annotations(serve, wait_for):
    task, client = serve(Typed)
    response = client.post("/api", json={"data": {"text": "a b c", "top": "2"}})
    task_id = envelope(response, 202)["data"]["task_id"]
    view = wait_for(task, task_id)
    assert view["result"] == ["a", "b"]
    assert view["params"] == {"text": "a b c", "top": 2}


def test_a_param_of_the_wrong_type_is_400_naming_it_and_the_type(serve):
    task, client = serve(Typed)
    body = envelope(client.post("/api", json={"data": {"text": "a", "top": "ten"}}), 400)
    assert "top: expected an integer, got 'ten'" in body["error_msg"]
    assert_nothing_changed(task)
