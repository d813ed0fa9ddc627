"""Workers over HTTP: a remote worker with no database runs the service's tasks through its API.

The first part drives the worker routes in this process (Flask's test client); the second
runs the real thing: the service under `asynctask serve --no-worker` over the test wire
server, and `asynctask worker remote_tasks:api --url ...` processes whose environment has no
reachable database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from apps import free_port, http
from waiting import wait_until

from asynctask import AsyncTask, MemoryCollection

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
WORKER_TOKEN, API_TOKEN = "worker-secret", "api-secret"
DEADLINE = 30.0


class Plain(AsyncTask):
    def main(self, logger: Any, n: int = 0) -> int:
        return n


def me(owner: str = "lab-pc:42:abc") -> dict[str, Any]:
    return {"owner": owner, "host": "lab-pc", "pid": 42}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Plain, Any]]:
    task = Plain(MemoryCollection(), tmp_path, worker=False, worker_token=WORKER_TOKEN, api_token=API_TOKEN,
                 max_content_length=64 * 1024)
    yield task, task.app().test_client()
    task.shutdown()


def as_worker(token: str = WORKER_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_worker_routes_answer_404_without_a_worker_token(tmp_path):
    task = Plain(MemoryCollection(), tmp_path)
    try:
        client = task.app().test_client()
        assert client.post("/api/worker/claim", json={"worker": me()}).status_code == 404
        assert client.get("/worker/types").status_code == 404
    finally:
        task.shutdown()


def test_the_worker_token_and_the_api_token_open_only_their_own_routes(service):
    task, client = service
    body = {"worker": me()}
    assert client.post("/api/worker/claim", json=body).status_code == 401
    assert client.post("/api/worker/claim", json=body, headers=as_worker("wrong")).status_code == 401
    assert client.post("/api/worker/claim", json=body, headers=as_worker(API_TOKEN)).status_code == 401
    assert client.post("/api/worker/claim", json=body, headers=as_worker()).status_code == 200
    assert client.post("/api", json={"data": {}}, headers=as_worker()).status_code == 401
    assert client.get("/workers", headers=as_worker()).status_code == 401
    assert client.post("/api", json={"data": {}}, headers=as_worker(API_TOKEN)).status_code == 202
    with pytest.raises(ValueError):
        Plain(MemoryCollection(), "logs", worker_token="same", api_token="same")


def test_a_claimed_task_is_fenced_by_its_attempt(service):
    task, client = service
    task_id = task.submit({"n": 7})
    claimed = client.post("/api/worker/claim", json={"worker": me()}, headers=as_worker()).get_json()["data"]["task"]
    assert (claimed["task_id"], claimed["attempt"], claimed["params"]) == (task_id, 1, {"n": 7})
    deadline = datetime.fromisoformat(claimed["deadline"])
    ahead = deadline - datetime.now(timezone.utc)
    assert timedelta(0) < ahead <= task.task_timeout and claimed["timeout"] == task.task_timeout.total_seconds()
    assert task.retrieve(task_id)["worker"] == "lab-pc:42"
    beat = {"worker": {**me(), "slots": 2, "running": 1, "started_at": "2026-01-01T00:00:00+00:00"},
            "task_ids": [task_id]}
    answer = client.post("/api/worker/heartbeat", json=beat, headers=as_worker()).get_json()["data"]
    assert answer == {"lost": [], "cancel": []}
    assert [w["worker"] for w in task.workers()] == ["lab-pc:42"] and task.workers()[0]["remote"] is True
    stale = {"worker": me(), "task_id": task_id, "attempt": 2, "ending": "success", "result": 1}
    refused = client.post("/api/worker/finish", json=stale, headers=as_worker())
    assert refused.status_code == 409 and task.retrieve(task_id)["status"] == "running"
    done = {**stale, "attempt": 1, "result": 14}
    assert client.post("/api/worker/finish", json=done, headers=as_worker()).status_code == 200
    view = task.retrieve(task_id)
    assert (view["status"], view["result"]) == ("success", 14)
    again = client.post("/api/worker/finish", json=done, headers=as_worker())
    assert again.status_code == 409, "an attempt records one outcome"


def test_bad_input_from_a_worker_is_4xx_and_changes_nothing(service):
    task, client = service
    task_id = task.submit({"n": 1})
    client.post("/api/worker/claim", json={"worker": me()}, headers=as_worker())
    before = task.retrieve(task_id)
    finish = {"worker": me(), "task_id": task_id, "attempt": 1, "ending": "success"}
    cases = [
        ({**finish, "task_id": "unknown-task"}, 409),
        ({**finish, "task_id": "../etc/passwd"}, 400),
        ({**finish, "attempt": "one"}, 400),
        ({**finish, "ending": "exploded"}, 400),
        ({**finish, "result": 2**70}, 400),  # JSON, but no BSON integer holds it
        ({**finish, "result": "x" * 100_000}, 413),  # over the service's body limit
        ({key: value for key, value in finish.items() if key != "worker"}, 400),
    ]
    for body, status in cases:
        assert client.post("/api/worker/finish", json=body, headers=as_worker()).status_code == status, body
    not_json = client.post("/api/worker/finish", data=b"{not json", headers={**as_worker(),
                                                                                "Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert task.retrieve(task_id) == before


def test_log_lines_and_progress_of_the_current_attempt_reach_the_service(service, tmp_path):
    task, client = service
    task_id = task.submit({"n": 1})
    client.post("/api/worker/claim", json={"worker": me()}, headers=as_worker())
    lines = {"task_id": task_id, "attempt": 1, "lines": ["first line", "second line"]}
    assert client.post("/api/worker/log", json=lines, headers=as_worker()).status_code == 200
    assert client.post("/api/worker/log", json={**lines, "attempt": 5}, headers=as_worker()).status_code == 409
    log = client.get(f"/api/{task_id}/log", headers=as_worker(API_TOKEN))
    assert log.data.decode() == "first line\nsecond line\n"
    progress = {"task_id": task_id, "attempt": 1, "percent": 40, "message": "warming"}
    assert client.post("/api/worker/progress", json=progress, headers=as_worker()).status_code == 200
    assert task.retrieve(task_id)["progress"] == {"percent": 40.0, "message": "warming"}


# -- real processes ------------------------------------------------------------------------------


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCTASK_", "REMOTE_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), DISABLE_STREAM_HANDLER="1",
               REMOTE_HEARTBEAT="0.2", REMOTE_STALE_AFTER="1.0", REMOTE_POLL="0.1", **extra)
    return env


class Process:
    """A subprocess in a group of its own, killed at the end."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=20)


@pytest.fixture
def fleet(mongo_uri: str, tmp_path: Path) -> Iterator[dict[str, Callable[..., Any]]]:
    """`service(port)` starts the API-only service; `worker()` a remote worker with no database."""
    started: list[Process] = []
    collection = f"r_{os.urandom(6).hex()}"

    def service(port: int | None = None) -> tuple[Process, str]:
        port = port or free_port()
        env = environment(ASYNCTASK_MONGO_URI=mongo_uri, REMOTE_COLLECTION=collection,
                          REMOTE_LOG_DIR=str(tmp_path / "service-logs"), ASYNCTASK_WORKER_TOKEN=WORKER_TOKEN,
                          ASYNCTASK_API_TOKEN=API_TOKEN, XDG_RUNTIME_DIR=str(tmp_path))
        process = Process([sys.executable, "-m", "asynctask.cli", "serve", "remote_tasks:api", "--no-worker",
                           "--bind", f"127.0.0.1:{port}", "--grace", "1"], env,
                          tmp_path / f"service-{port}-{len(started)}.out")
        started.append(process)
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert process.proc.poll() is None, process.output()
            try:
                return http("GET", f"{base}/ping", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(answers, "the service answers", timeout=DEADLINE, interval=0.05)
        return process, base

    def worker(base: str, token: str = WORKER_TOKEN) -> Process:
        env = environment(ASYNCTASK_MONGO_URI="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=500",
                          REMOTE_LOG_DIR=str(tmp_path / f"worker-logs-{len(started)}"))
        process = Process([sys.executable, "-m", "asynctask.cli", "worker", "remote_tasks:api", "--url", base,
                           "--token", token, "--concurrency", "2", "--grace", "1"], env,
                          tmp_path / f"worker-{len(started)}.out")
        started.append(process)
        wait_until(lambda: "ready" in process.output() or process.proc.poll() is not None, "the worker starts",
                   timeout=DEADLINE)
        assert process.proc.poll() is None, process.output()
        return process

    yield {"service": service, "worker": worker}
    for process in started:
        process.kill()


def api(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if response.headers.get_content_type() == "application/json" \
                else raw.decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null")


def view(base: str, task_id: str) -> dict[str, Any]:
    return api("GET", f"{base}/api/{task_id}")[1]["data"]


def finished(base: str, task_id: str) -> dict[str, Any] | None:
    current = view(base, task_id)
    return current if current["status"] in ("success", "failed", "cancelled") else None


@pytest.mark.timeout(120)
def test_a_remote_worker_runs_tasks_with_logs_progress_and_cancel(fleet):
    _, base = fleet["service"]()
    worker = fleet["worker"](base)
    listed = wait_until(lambda: api("GET", f"{base}/workers")[1]["data"]["workers"], "the worker is listed",
                        timeout=DEADLINE, interval=0.02)
    assert [(w["pid"], w["slots"]) for w in listed] == [(worker.proc.pid, 2)], "listed with its slots from the first"
    task_id = api("POST", f"{base}/api", {"data": {"seconds": 1.0, "steps": 4}})[1]["data"]["task_id"]
    wait_until(lambda: (view(base, task_id).get("progress") or {}).get("percent", 0) > 0, "progress shows",
               timeout=DEADLINE)
    done = wait_until(lambda: finished(base, task_id), "the task ends", timeout=DEADLINE)
    assert done["status"] == "success" and done["result"]["pid"] == worker.proc.pid
    log = wait_until(lambda: "step 4 of 4" in (text := api("GET", f"{base}/api/{task_id}/log")[1]) and text,
                     "the log lines reach the service", timeout=DEADLINE)
    assert "step 1 of 4" in log
    workers = api("GET", f"{base}/workers")[1]["data"]["workers"]
    assert [(w["pid"], w.get("remote")) for w in workers] == [(worker.proc.pid, True)]

    long = api("POST", f"{base}/api", {"data": {"seconds": 30, "steps": 300}})[1]["data"]["task_id"]
    wait_until(lambda: view(base, long)["status"] == "running", "it runs", timeout=DEADLINE)
    assert api("DELETE", f"{base}/api/{long}")[0] in (200, 202)
    ended = wait_until(lambda: finished(base, long), "the cancel reaches the worker", timeout=DEADLINE)
    assert ended["status"] == "cancelled"


@pytest.mark.timeout(120)
def test_a_killed_remote_worker_s_task_runs_again_and_its_late_finish_is_refused(fleet):
    _, base = fleet["service"]()
    first = fleet["worker"](base)
    task_id = api("POST", f"{base}/api", {"data": {"seconds": 30, "steps": 300}})[1]["data"]["task_id"]
    wait_until(lambda: view(base, task_id)["status"] == "running", "the first worker runs it", timeout=DEADLINE)
    killed_at = time.monotonic()
    first.kill()
    wait_until(lambda: view(base, task_id)["status"] == "queued", "it goes back to the queue", timeout=DEADLINE)
    assert time.monotonic() - killed_at > 0.9, "not before stale_after"
    late = {"worker": {"owner": "x:1:y", "host": "x", "pid": 1}, "task_id": task_id, "attempt": 1,
            "ending": "success", "result": {"late": True}}
    status, _ = http_worker("POST", f"{base}/api/worker/finish", late)
    assert status == 409
    second = fleet["worker"](base)
    wait_until(lambda: view(base, task_id)["status"] == "running" and view(base, task_id)["attempts"] == 2,
               "the second worker runs it", timeout=DEADLINE)
    assert view(base, task_id)["worker"].endswith(f":{second.proc.pid}")


@pytest.mark.timeout(150)
def test_a_remote_worker_rides_out_a_service_restart(fleet):
    service, base = fleet["service"]()
    port = int(base.rsplit(":", 1)[1])
    worker = fleet["worker"](base)
    task_id = api("POST", f"{base}/api", {"data": {"seconds": 3, "steps": 30}})[1]["data"]["task_id"]
    wait_until(lambda: view(base, task_id)["status"] == "running", "it runs", timeout=DEADLINE)
    service.kill()
    fleet["service"](port)  # the same address, the same database
    done = wait_until(lambda: finished(base, task_id), "the outcome is recorded after the restart",
                      timeout=60)
    assert done["status"] == "success" and done["result"]["pid"] == worker.proc.pid and done["attempts"] == 1


def http_worker(method: str, url: str, body: Any, token: str = WORKER_TOKEN) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null")


def test_the_worker_routes_are_in_the_openapi_document(service):
    task, client = service
    document = client.get("/openapi.json", headers=as_worker(API_TOKEN)).get_json()
    for route in ("claim", "heartbeat", "progress", "log", "finish", "leave"):
        operation = document["paths"][f"/api/worker/{route}"]["post"]
        assert operation["security"] == [{"workerAuth": []}]
    assert document["components"]["securitySchemes"]["workerAuth"]["scheme"] == "bearer"
    from openapi_spec_validator import validate

    validate(document)
