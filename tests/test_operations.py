"""Operating a task service over HTTP: long-poll, listing, the log
endpoint, expiry, auth, tracing, /healthz, and several task types in one Flask app.

Everything goes through Flask's test client and is checked as a client sees it: the status
code, the envelope `{"status", "data", "error_data", "error_msg"}`, the headers.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from ops_tasks import Controlled, Length, Quick, Upper
from waiting import wait_for, wait_until

from asynctask import AsyncTask, MemoryCollection, logs
from asynctask.store.tasks import PUBLIC_FIELDS
from asynctask.web import http as web_module

ENVELOPE_KEYS = {"status", "data", "error_data", "error_msg"}
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


@pytest.fixture(autouse=True)
def no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCTASK_API_TOKEN", raising=False)


def envelope(response: Any, code: int) -> dict[str, Any]:
    """The JSON envelope of `response`, which must have status `code`."""
    body = response.get_json(silent=True)
    assert response.status_code == code, (response.status_code, body or response.data[:200])
    assert isinstance(body, dict) and set(body) == ENVELOPE_KEYS, body
    assert body["status"] == ("ok" if code < 400 else "error"), body
    if code >= 400:
        assert body["error_msg"], body
    return body


# == long-poll ====================================================================================

def test_long_poll_answers_as_soon_as_the_task_finishes(make_task):
    task = make_task(Controlled)
    client = task.app("/api").test_client()
    task.run(name="lp")
    assert task.started["lp"].wait(5)
    timer = threading.Timer(0.3, task.release["lp"].set)
    timer.start()

    asked = time.monotonic()
    body = envelope(client.get("/api/lp?wait=60"), 200)
    answered = time.monotonic()
    timer.join()

    assert body["data"]["status"] == "success" and body["data"]["result"] == "lp done"
    assert answered - asked >= 0.25  # it did wait for the task
    # ...and answered once main returned, long before the 60 s wait was over.
    assert answered - task.returned_at["lp"] < 10


def test_long_poll_sees_a_task_another_process_runs(make_task):
    shared = MemoryCollection()
    runner = make_task(Controlled, shared)
    watcher = make_task(Controlled, shared)  # serves the HTTP request; runs nothing
    task_id = runner.run(name="elsewhere")
    assert runner.started["elsewhere"].wait(5)
    timer = threading.Timer(0.3, runner.release["elsewhere"].set)
    timer.start()

    body = envelope(watcher.app("/api").test_client().get(f"/api/{task_id}?wait=60"), 200)
    answered = time.monotonic()
    timer.join()

    assert body["data"]["status"] == "success"
    assert answered - runner.returned_at["elsewhere"] < 10  # not at the end of the 60 s wait


def test_long_poll_answers_after_the_wait_with_the_current_state(make_task):
    task = make_task(Controlled)
    client = task.app("/api").test_client()
    task.run(name="slow")
    assert task.started["slow"].wait(5)

    asked = time.monotonic()
    body = envelope(client.get("/api/slow?wait=0.2"), 200)
    took = time.monotonic() - asked

    assert body["data"]["status"] == "running"
    assert took >= 0.19


def test_long_poll_on_a_finished_or_unknown_task_answers_at_once(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()
    assert wait_for(task, task.run(name="finished"))["status"] == "success"

    asked = time.monotonic()
    assert envelope(client.get("/api/finished?wait=60"), 200)["data"]["status"] == "success"
    envelope(client.get("/api/unknown-task?wait=60"), 404)
    assert time.monotonic() - asked < 10  # not after the wait of 60 s


@pytest.mark.parametrize("wait", ["soon", "61", "-1", "nan", "inf", ""])
def test_a_wait_that_is_not_a_number_of_seconds_up_to_60_is_a_400(make_task, wait):
    task = make_task(Quick)
    client = task.app("/api").test_client()
    assert wait_for(task, task.run(name="w"))["status"] == "success"

    body = envelope(client.get(f"/api/w?wait={wait}"), 400)

    assert "wait" in body["error_msg"]


def test_a_wait_of_60_is_accepted(make_task):
    task = make_task(Quick)
    assert wait_for(task, task.run(name="w60"))["status"] == "success"
    envelope(task.app("/api").test_client().get("/api/w60?wait=60"), 200)


def test_a_long_poll_holds_no_worker(make_task):
    task = make_task(Controlled, max_worker=1)
    client = task.app("/api").test_client()
    task.update_task("parked", {"status": "pending", "params": {"name": "parked"}})
    polling = threading.Event()
    retrieve = task.retrieve

    def watched_retrieve(task_id: str) -> Any:
        if task_id == "parked":
            polling.set()
        return retrieve(task_id)

    task.retrieve = watched_retrieve  # type: ignore[method-assign]
    answers: list[Any] = []

    def long_poll() -> None:
        answers.append(task.app("/api").test_client().get("/api/parked?wait=60"))

    poller = threading.Thread(target=long_poll)
    poller.start()
    try:
        assert polling.wait(10), "the long-poll never looked at its task"
        task.release["free"].set()
        response = client.post("/api", json={"data": {"name": "free"}})
        envelope(response, 202)

        assert wait_for(task, "free", timeout=30)["status"] == "success"
        assert poller.is_alive()  # the task ran while the long-poll was still waiting
    finally:
        # Ending the parked task ends the long-poll.
        task.update_task("parked", {"status": "cancelled"})
        poller.join(30)
    assert not poller.is_alive()
    assert envelope(answers[0], 200)["data"]["status"] == "cancelled"


def test_the_202_of_a_post_says_when_to_ask_again(make_task):
    task = make_task(Quick)

    response = task.app("/api").test_client().post("/api", json={"data": {"name": "ra"}})

    body = envelope(response, 202)
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["Location"].endswith(f"/api/{body['data']['task_id']}")


# == listing ======================================================================================

def seed(task: AsyncTask, statuses: list[str], start: datetime | None = None, step: timedelta = timedelta(minutes=1)) -> list[str]:
    """Store one task per status, created `step` apart (oldest first); returns their ids."""
    start = start or datetime.now(timezone.utc) - timedelta(days=1)
    ids = []
    for number, status in enumerate(statuses):
        task_id = f"seed-{number:03d}"
        task.update_task(task_id, {
            "status": status, "params": {"name": task_id}, "created_at": start + number * step, "attempts": 1,
        })
        ids.append(task_id)
    return ids


def listing(client: Any, query: str = "") -> dict[str, Any]:
    return envelope(client.get(f"/api{query}"), 200)["data"]


def test_the_list_shows_newest_first_with_total_and_counts(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()
    ids = seed(task, ["success", "failed", "success", "pending", "cancelled", "success"])
    newest = task.run(name="newest")
    wait_for(task, newest)

    data = listing(client)

    assert set(data) == {"tasks", "total", "counts"}
    assert [view["task_id"] for view in data["tasks"]] == [newest, *reversed(ids)]
    assert data["total"] == 7
    assert data["counts"] == {"success": 4, "failed": 1, "pending": 1, "cancelled": 1}
    for view in data["tasks"]:
        assert set(view) <= set(PUBLIC_FIELDS)
        assert not {"_id", "owner", "heartbeat_at", "deadline"} & set(view)
    assert data["tasks"][0]["result"] == "newest"
    assert datetime.fromisoformat(data["tasks"][1]["created_at"]).tzinfo is not None


def test_the_list_filters_by_status_and_pages_with_limit_and_skip(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()
    ids = seed(task, ["success", "failed", "success", "pending", "cancelled", "success"])

    only_success = listing(client, "?status=success")
    assert [v["task_id"] for v in only_success["tasks"]] == [ids[5], ids[2], ids[0]]
    assert only_success["total"] == 3
    assert only_success["counts"]["failed"] == 1  # counts cover every status

    page = listing(client, "?limit=2&skip=1")
    assert [v["task_id"] for v in page["tasks"]] == [ids[4], ids[3]]
    assert page["total"] == 6

    page = listing(client, "?status=success&limit=1&skip=1")
    assert [v["task_id"] for v in page["tasks"]] == [ids[2]]

    assert listing(client, "?status=running") == {"tasks": [], "total": 0, "counts": only_success["counts"]}
    assert listing(client, "?skip=100")["tasks"] == []


def test_the_list_defaults_to_50_and_takes_up_to_1000(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()
    seed(task, ["success"] * 55)

    assert len(listing(client)["tasks"]) == 50
    assert listing(client)["total"] == 55
    assert len(listing(client, "?limit=1000")["tasks"]) == 55


def test_pages_of_tasks_created_at_the_same_time_neither_repeat_nor_skip(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()
    ids = seed(task, ["success"] * 7, step=timedelta(0))

    seen = [v["task_id"] for skip in range(0, 7, 2) for v in listing(client, f"?limit=2&skip={skip}")["tasks"]]

    assert sorted(seen) == sorted(ids)


@pytest.mark.parametrize(
    "query", ["?limit=1001", "?limit=0", "?limit=-5", "?limit=ten", "?limit=2.5", "?skip=-1", "?skip=x", "?status=done"],
)
def test_a_bad_list_query_is_a_400_naming_the_parameter(make_task, query):
    task = make_task(Quick)

    body = envelope(task.app("/api").test_client().get(f"/api{query}"), 400)

    assert query[1:].split("=")[0] in body["error_msg"]


# == the log endpoint ==============================================================================

def test_the_log_endpoint_returns_the_lines_as_text_with_the_next_offset(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()
    task_id = task.run(name="logged", lines=3)
    wait_for(task, task_id)
    path = task.logger_dir / "logged.log"
    wait_until(lambda: b"task succeeded" in path.read_bytes(), "the outcome was not logged", timeout=2)
    content = path.read_bytes()

    response = client.get(f"/api/{task_id}/log")

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.data == content
    assert [f"quick logged line {n}" in response.text for n in range(3)] == [True] * 3
    assert int(response.headers["X-Log-Offset"]) == len(content)

    middle = content.index(b"\n") + 1  # just after the first line
    response = client.get(f"/api/{task_id}/log?offset={middle}")
    assert response.data == content[middle:]
    assert b"line 0" not in response.data and b"line 1" in response.data
    assert int(response.headers["X-Log-Offset"]) == len(content)

    response = client.get(f"/api/{task_id}/log?offset={len(content)}")
    assert response.status_code == 200 and response.data == b""
    assert int(response.headers["X-Log-Offset"]) == len(content)


def test_the_log_of_a_running_task_shows_the_lines_so_far_and_later_the_rest(make_task):
    task = make_task(Controlled)
    client = task.app("/api").test_client()
    task.run(name="growing", lines=2)
    assert task.started["growing"].wait(5)

    first = client.get("/api/growing/log")
    assert first.status_code == 200
    assert "before the gate, line 1" in first.text and "after the gate" not in first.text
    offset = int(first.headers["X-Log-Offset"])

    task.release["growing"].set()
    wait_for(task, "growing")
    path = task.logger_dir / "growing.log"
    wait_until(lambda: b"task succeeded" in path.read_bytes(), "the outcome was not logged", timeout=2)

    rest = client.get(f"/api/growing/log?offset={offset}")
    assert "before the gate" not in rest.text
    assert "after the gate, line 0" in rest.text and "after the gate, line 1" in rest.text
    assert "task succeeded" in rest.text
    assert first.data + rest.data == path.read_bytes()
    assert int(rest.headers["X-Log-Offset"]) == path.stat().st_size


def test_after_the_log_rotated_an_offset_past_the_new_file_starts_over(make_task, monkeypatch):
    # Every line goes to a fresh file: each file then holds exactly one line.
    monkeypatch.setattr(logs, "MAX_BYTES", 1)
    task = make_task(Controlled)
    client = task.app("/api").test_client()
    task.run(name="rotating", lines=3)
    assert task.started["rotating"].wait(5)
    read = client.get("/api/rotating/log")
    assert read.text.count("\n") == 1 and "before the gate, line 2" in read.text
    offset = int(read.headers["X-Log-Offset"])

    task.release["rotating"].set()
    wait_for(task, "rotating")
    path = task.logger_dir / "rotating.log"
    wait_until(lambda: b"task succeeded" in path.read_bytes(), "the outcome was not logged", timeout=2)
    assert (task.logger_dir / "rotating.log.1").exists()
    current = path.read_bytes()
    assert len(current) < offset  # the premise: the new file is shorter than what was read

    again = client.get(f"/api/rotating/log?offset={offset}")

    assert again.status_code == 200
    assert again.data == current
    assert int(again.headers["X-Log-Offset"]) == len(current)


def test_the_log_of_an_unknown_task_is_a_404_and_of_a_task_without_log_empty(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()
    task.update_task("no-log-yet", {"status": "pending"})

    for offset in ("", "?offset=120"):
        empty = client.get(f"/api/no-log-yet/log{offset}")
        assert (empty.status_code, empty.data, empty.headers["X-Log-Offset"]) == (200, b"", "0")
        assert empty.mimetype == "text/plain"
    assert "never-heard-of" in envelope(client.get("/api/never-heard-of/log"), 404)["error_msg"]
    assert not (task.logger_dir / "no-log-yet.log").exists(), "reading creates no file"


@pytest.mark.parametrize("path", ["/api/bad!id/log", "/api/%2E%2E/log", "/api/ok/log?offset=-1", "/api/ok/log?offset=x"])
def test_a_bad_log_request_is_a_400(make_task, path):
    task = make_task(Quick)
    wait_for(task, task.run(name="ok"))

    envelope(task.app("/api").test_client().get(path), 400)


# == expiry ========================================================================================

def test_a_finished_task_expires_through_a_ttl_index(make_task):
    task = make_task(Controlled, result_ttl=0.5)
    client = task.app("/api").test_client()
    task.run(name="short-lived")
    assert task.started["short-lived"].wait(5)
    assert task.collection.find_one({"task_id": "short-lived"}).get("expire_at") is None  # not while running

    task.release["short-lived"].set()
    view = wait_for(task, "short-lived")

    doc = task.collection.find_one({"task_id": "short-lived"})
    finished_at = view["finished_at"]
    expire_at = doc["expire_at"].replace(tzinfo=doc["expire_at"].tzinfo or timezone.utc)
    assert abs((expire_at - finished_at).total_seconds() - 0.5) < 0.01
    ttl = [info for info in task.collection.index_information().values() if info["key"] == [("expire_at", 1)]]
    assert len(ttl) == 1 and ttl[0]["expireAfterSeconds"] == 0
    # The in-memory store (mongomock) removes expired documents whenever the collection is read.
    envelope(client.get("/api/short-lived"), 200)
    wait_until(lambda: client.get("/api/short-lived").status_code == 404, "the task never expired", timeout=5)
    assert client.get("/api/short-lived").get_json()["status"] == "error"


def test_a_timedelta_result_ttl_is_accepted_and_none_keeps_tasks(make_task):
    kept = make_task(Quick)
    wait_for(kept, kept.run(name="kept"))
    assert "expire_at" not in kept.collection.find_one({"task_id": "kept"})

    task = make_task(Quick, result_ttl=timedelta(hours=1))
    wait_for(task, task.run(name="hour"))
    doc = task.collection.find_one({"task_id": "hour"})
    assert doc["expire_at"] - doc["finished_at"] == timedelta(hours=1)


@pytest.mark.parametrize("gone", ["expired", "nightly.log"])
def test_the_log_files_of_expired_tasks_are_removed_and_others_kept(make_task, gone):
    task = make_task(Controlled, result_ttl=0.5, heartbeat_interval=0.05)
    task.release[gone].set()
    task.run(name=gone, lines=1)
    task.run(name="still-running", lines=1)
    assert task.started["still-running"].wait(5)
    wait_for(task, gone)
    gone_log = task.logger_dir / f"{gone}.log"
    rotated = task.logger_dir / f"{gone}.log.1"  # as if it had rotated once
    rotated.write_text("an older part of the log\n")
    long_ago = time.time() - 3600
    os.utime(rotated, (long_ago, long_ago))
    kept_log = task.logger_dir / "still-running.log"
    assert gone_log.exists() and kept_log.exists()

    wait_until(lambda: not gone_log.exists() and not rotated.exists(), f"the log files of {gone} are still there", timeout=3)

    assert task.retrieve(gone) is None
    assert kept_log.exists() and task.retrieve("still-running")["status"] == "running"


# == auth ==========================================================================================

TOKEN = "s3cret"
PROTECTED = [
    ("POST", "/api"),
    ("GET", "/api"),
    ("GET", "/api?task_id=t1"),
    ("GET", "/api/t1"),
    ("GET", "/api/t1?wait=0.1"),
    ("DELETE", "/api/t1"),
    ("GET", "/api/t1/log"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
]
BAD_AUTHORIZATION = {
    "none": None,
    "wrong token": f"Bearer {TOKEN}x",
    "prefix of the token": f"Bearer {TOKEN[:-1]}",
    "empty bearer": "Bearer ",
    "basic scheme": f"Basic {TOKEN}",
    "no scheme": TOKEN,
}


def request(client: Any, method: str, path: str, authorization: str | None = None) -> Any:
    headers = {"Authorization": authorization} if authorization is not None else {}
    body = {"json": {"data": {"name": "authorized"}}} if method == "POST" else {}
    return client.open(path, method=method, headers=headers, **body)


@pytest.fixture
def guarded(make_task) -> tuple[AsyncTask, Any]:
    task = make_task(Quick, api_token=TOKEN)
    return task, task.app("/api").test_client()


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("authorization", list(BAD_AUTHORIZATION.values()), ids=list(BAD_AUTHORIZATION))
def test_every_route_refuses_a_request_without_the_token(guarded, method, path, authorization):
    task, client = guarded

    response = request(client, method, path, authorization)

    envelope(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert task.collection.count_documents({}) == 0  # nothing was submitted


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_takes_the_right_token(guarded, method, path):
    task, client = guarded

    response = request(client, method, path, f"Bearer {TOKEN}")

    assert response.status_code != 401 and response.status_code < 500, response.data[:300]
    if method == "POST":
        assert response.status_code == 202


@pytest.mark.parametrize("path", ["/ping", "/healthz"])
def test_ping_and_healthz_need_no_token(guarded, path):
    _, client = guarded
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_the_token_can_come_from_the_environment(make_task, monkeypatch):
    monkeypatch.setenv("ASYNCTASK_API_TOKEN", "from-the-env")
    task = make_task(Quick)
    client = task.app("/api").test_client()

    envelope(request(client, "POST", "/api"), 401)
    envelope(request(client, "POST", "/api", f"Bearer {TOKEN}"), 401)
    envelope(request(client, "POST", "/api", "Bearer from-the-env"), 202)


def test_an_explicit_token_wins_over_the_environment(make_task, monkeypatch):
    monkeypatch.setenv("ASYNCTASK_API_TOKEN", "from-the-env")
    client = make_task(Quick, api_token=TOKEN).app("/api").test_client()

    envelope(request(client, "GET", "/api", "Bearer from-the-env"), 401)
    envelope(request(client, "GET", "/api", f"Bearer {TOKEN}"), 200)


def test_without_a_token_configured_no_route_needs_one(make_task):
    client = make_task(Quick).app("/api").test_client()
    envelope(request(client, "POST", "/api"), 202)
    envelope(request(client, "GET", "/api"), 200)


def test_the_token_is_compared_in_constant_time(guarded, monkeypatch):
    _, client = guarded
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(given: Any, expected: Any) -> bool:
        compared.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(web_module.hmac, "compare_digest", spy)

    envelope(request(client, "GET", "/api", "Bearer guess"), 401)
    envelope(request(client, "GET", "/api", f"Bearer {TOKEN}"), 200)

    assert [expected for _, expected in compared] == [TOKEN.encode(), TOKEN.encode()]
    assert [given for given, _ in compared] == [b"guess", TOKEN.encode()]


# == tracing =======================================================================================

def test_the_request_id_is_echoed_stored_and_in_every_log_line(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()

    response = client.post("/api", json={"data": {"name": "traced", "lines": 3}}, headers={"X-Request-ID": "abc-123"})

    body = envelope(response, 202)
    assert response.headers["X-Request-ID"] == "abc-123"
    view = wait_for(task, body["data"]["task_id"])
    assert view["trace_id"] == "abc-123"
    assert envelope(client.get("/api/traced"), 200)["data"]["trace_id"] == "abc-123"
    path = task.logger_dir / "traced.log"
    wait_until(lambda: "task succeeded" in path.read_text(), "the outcome was not logged", timeout=2)
    lines = path.read_text().splitlines()
    assert len(lines) == 4  # three of main's, one of the outcome
    assert all("| abc-123 |" in line for line in lines), lines


def test_without_a_request_id_one_is_made_echoed_and_stored(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()

    first = client.post("/api", json={"data": {"name": "untraced-1"}})
    second = client.post("/api", json={"data": {"name": "untraced-2"}})

    made = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert all(VALID_REQUEST_ID.fullmatch(trace) for trace in made) and made[0] != made[1]
    assert wait_for(task, "untraced-1")["trace_id"] == made[0]
    assert wait_for(task, "untraced-2")["trace_id"] == made[1]


@pytest.mark.parametrize("given", ["a" * 129, "has space", "<script>", "semi;colon", "ü"])
def test_an_invalid_request_id_is_replaced_by_a_made_one(make_task, given):
    task = make_task(Quick)
    client = task.app("/api").test_client()

    response = client.post("/api", json={"data": {"name": "replaced"}}, headers={"X-Request-ID": given.encode("utf-8").decode("latin-1")})

    envelope(response, 202)
    echoed = response.headers["X-Request-ID"]
    assert echoed != given and VALID_REQUEST_ID.fullmatch(echoed)
    assert wait_for(task, "replaced")["trace_id"] == echoed


def test_every_answer_echoes_the_request_id(make_task):
    task = make_task(Quick)
    client = task.app("/api").test_client()
    for path in ("/api", "/api/unknown", "/ping", "/healthz", "/no/such/route"):
        response = client.get(path, headers={"X-Request-ID": "req-42"})
        assert response.headers.get("X-Request-ID") == "req-42", path


# == /healthz ======================================================================================

class BrokenDatabase:
    """A collection whose reads fail once `broken` is set, as when the database is down."""

    def __init__(self) -> None:
        self.inner = MemoryCollection()
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def find_one(self, *args: Any, **kwargs: Any) -> Any:
        if self.broken:
            raise ConnectionError("db-host-7:27017 secret details: connection refused")
        return self.inner.find_one(*args, **kwargs)


def test_healthz_is_200_when_the_database_answers_and_503_when_it_does_not(make_task, caplog):
    collection = BrokenDatabase()
    client = make_task(Quick, collection).app("/api").test_client()

    assert envelope(client.get("/healthz"), 200)["data"] == {"database": "ok"}

    collection.broken = True
    with caplog.at_level(logging.WARNING):
        body = envelope(client.get("/healthz"), 503)

    assert "secret" not in str(body) and "27017" not in str(body)
    assert "database" in body["error_msg"]
    assert client.get("/ping").status_code == 200  # the process itself is alive

    collection.broken = False
    envelope(client.get("/healthz"), 200)


@pytest.mark.timeout(60)
def test_healthz_answers_503_promptly_when_the_database_stalls_or_is_gone(tmp_path):
    """A stalled database (its process stopped) and a closed port: each a 503 within seconds,
    not pymongo's 30 s server selection or a read that waits for ever."""
    import signal
    import subprocess
    import sys

    from mongo_wire import _read_port, _stop
    from pymongo import MongoClient

    server = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "mongo_wire.py"),
                               "--port", "0", "--watch-stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    clients: list[MongoClient] = []
    tasks: list[Quick] = []
    try:
        port = _read_port(server, 10)
        for uri in (f"mongodb://127.0.0.1:{port}/?directConnection=true", "mongodb://127.0.0.1:9/"):
            clients.append(MongoClient(uri, tz_aware=True, connect=False))
            tasks.append(Quick(clients[-1].asynctask_test.healthz, tmp_path / "logs", worker=False))
        stalling, gone = tasks
        stalling_client = stalling.app("/api").test_client()
        envelope(stalling_client.get("/healthz"), 200)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            envelope(stalling_client.get("/healthz"), 503)
            assert time.monotonic() - started < 20
        finally:
            os.kill(server.pid, signal.SIGCONT)
        envelope(stalling_client.get("/healthz"), 200)
        started = time.monotonic()
        envelope(gone.app("/api").test_client().get("/healthz"), 503)
        assert time.monotonic() - started < 20
    finally:
        for task in tasks:
            task.shutdown()
        for client in clients:
            client.close()
        _stop(server)


# == several task types in one app =================================================================

def serve_two(app: Flask, upper: AsyncTask, length: AsyncTask) -> None:
    """Submit one task to each endpoint and check each ran its own `main`."""
    client = app.test_client()
    first = envelope(client.post("/upper", json={"data": {"text": "abc"}}), 202)["data"]["task_id"]
    second = envelope(client.post("/length", json={"data": {"items": [1, 2, 3]}}), 202)["data"]["task_id"]

    assert envelope(client.get(f"/upper/{first}?wait=5"), 200)["data"]["result"] == "ABC"
    assert envelope(client.get(f"/length/{second}?wait=5"), 200)["data"]["result"] == 3
    # Each endpoint knows only its own tasks.
    envelope(client.get(f"/upper/{second}"), 404)
    assert upper.retrieve(second) is None and length.retrieve(first) is None
    # Params are checked against each endpoint's own main.
    assert "items" in envelope(client.post("/upper", json={"data": {"items": []}}), 400)["error_msg"]
    envelope(client.post("/length", data="not json", content_type="application/json"), 400)
    assert [v["task_id"] for v in envelope(client.get("/length"), 200)["data"]["tasks"]] == [second]

    assert client.get("/ping").get_json() == {"status": "ok"}
    envelope(client.get("/healthz"), 200)
    envelope(client.get("/no/such/route"), 404)
    envelope(client.put("/upper"), 405)


def test_two_task_types_in_one_app_with_init_app(make_task):
    upper, length = make_task(Upper), make_task(Length)
    app = Flask(__name__)

    upper.init_app(app, "/upper")
    length.init_app(app, "/length")

    serve_two(app, upper, length)


def test_two_task_types_in_one_app_with_blueprints(make_task):
    upper, length = make_task(Upper), make_task(Length)
    app = Flask(__name__)

    app.register_blueprint(upper.blueprint("/upper"))
    app.register_blueprint(length.blueprint("/length"))

    serve_two(app, upper, length)


def test_the_app_keeps_its_own_routes(make_task):
    upper = make_task(Upper)
    app = Flask(__name__)

    @app.get("/mine")
    def mine() -> dict[str, str]:
        return {"mine": "yes"}

    upper.init_app(app, "/upper")

    assert app.test_client().get("/mine").get_json() == {"mine": "yes"}
    envelope(app.test_client().post("/upper", json={"data": {"text": "x"}}), 202)

