"""The client commands of the `asynctask` CLI, against a real HTTP server in a background thread.

Commands run in-process through `asynctask.cli.main` (output read with capsys); one runs as a
real subprocess to check what a shell sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request
from tasks import Echo, Gate, Typed
from werkzeug.serving import make_server

from asynctask import AsyncTask
from asynctask.cli import main, parse_params, parse_value, render_progress

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services and commands here get a token only when a test gives one."""
    monkeypatch.delenv("ASYNCTASK_API_TOKEN", raising=False)


@pytest.fixture
def serve(make_task: Callable[..., AsyncTask]) -> Iterator[Callable[..., tuple[str, AsyncTask]]]:
    """`serve(TaskClass, **options) -> (base_url, task)`: the task's app on a real server."""
    running = []

    def start(cls: type[AsyncTask], **options: Any) -> tuple[str, AsyncTask]:
        task = make_task(cls, **options)
        server = make_server("127.0.0.1", 0, task.app("/api"), threaded=True)
        # A short poll interval makes shutdown() quick.
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}", task

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- parsing k=v ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    ("3", 3), ("2.5", 2.5), ("true", True), ("null", None), ('["a"]', ["a"]), ('{"k": 1}', {"k": 1}),
    ('"3"', "3"), ("hello world", "hello world"), ("", ""), ("NaN", "NaN"), ("Infinity", "Infinity"),
    ("[1,", "[1,"),
])
def test_values_are_json_when_they_parse(text, value):
    assert parse_value(text) == value


def test_params_from_pairs():
    assert parse_params(["text=a=b c", "top=3", "tags=[\"x\"]", "task_id=123"]) == {
        "text": "a=b c", "top": 3, "tags": ["x"], "task_id": "123"}
    for bad in (["novalue"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(ValueError):
            parse_params(bad)


# -- submit, status, wait --------------------------------------------------------------------

def test_submit_status_wait(serve, capsys):
    url, _ = serve(Typed)
    code, out, err = run(capsys, "submit", url, "text=to be or not to be", "top=2")
    assert (code, err) == (0, "")
    task_id = out.strip()
    assert task_id == hashlib.sha1(b"2:to be or not to be").hexdigest()

    code, out, err = run(capsys, "wait", url, task_id, "--timeout", "10")
    assert (code, err) == (0, "")  # capsys is no terminal: no progress bar
    assert json.loads(out) == ["to", "be"]

    code, out, _ = run(capsys, "status", url, task_id)
    assert code == 0
    view = json.loads(out)
    assert (view["task_id"], view["status"], view["result"]) == (task_id, "success", ["to", "be"])


def test_submit_bad_usage_and_refused_params(serve, capsys):
    url, task = serve(Typed)
    code, out, err = run(capsys, "submit", url, "top")
    assert (code, out) == (2, "") and "KEY=VALUE" in err
    code, out, err = run(capsys, "submit", url, "top=2")  # `text` is required
    assert (code, out) == (3, "") and "text" in err
    assert task.collection.find_one({}) is None


def test_wait_failed_exits_1_with_the_error(serve, capsys):
    url, task = serve(Gate)
    task.gate.set()
    code, out, _ = run(capsys, "submit", url, "name=broken", "fail=true")
    assert code == 0
    code, out, err = run(capsys, "wait", url, out.strip(), "--timeout", "10")
    assert (code, out) == (1, "")
    assert "asked to fail: broken" in err


def test_wait_timeout_exits_2(serve, capsys):
    url, task = serve(Gate)
    run(capsys, "submit", url, "name=stuck")
    assert task.started.wait(5)
    code, out, err = run(capsys, "wait", url, "stuck", "--timeout", "0.5")
    assert (code, out) == (2, "")
    assert "stuck" in err


def test_unknown_task_and_unreachable_service_exit_3(serve, capsys):
    url, _ = serve(Echo)
    for command in ("status", "wait"):
        code, out, err = run(capsys, command, url, "no-such-task")
        assert (code, out) == (3, "") and "not found" in err
    code, out, err = run(capsys, "status", "http://127.0.0.1:1", "x")
    assert (code, out) == (3, "") and err


def test_endpoint_option(make_task, capsys):
    task = make_task(Echo)
    server = make_server("127.0.0.1", 0, task.app("/jobs"), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        code, out, _ = run(capsys, "submit", url, "--endpoint", "/jobs", "value=5")
        assert code == 0
        code, out, _ = run(capsys, "wait", url, out.strip(), "--endpoint", "/jobs", "--timeout", "10")
        assert (code, json.loads(out)) == (0, 5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("fail", "exit_code"), [(False, 0), (True, 1)])
def test_wait_exit_code_in_a_real_process(serve, fail, exit_code):
    url, task = serve(Gate)
    task.gate.set()
    task_id = f"sub-{fail}".lower()
    assert main(["submit", url, f"name={task_id}", f"fail={json.dumps(fail)}", "result=[1, 2]"]) == 0
    env = {key: value for key, value in os.environ.items() if key != "ASYNCTASK_API_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "asynctask.cli", "wait", url, task_id, "--timeout", "10"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == exit_code, done.stderr
    assert "Traceback (most recent call last)" not in done.stderr or fail
    if fail:
        assert done.stdout == "" and "asked to fail" in done.stderr
    else:
        assert json.loads(done.stdout) == [1, 2] and done.stderr == ""


# -- cancel, list, token -----------------------------------------------------------------------

def test_cancel_then_wait_exits_1(serve, capsys):
    url, task = serve(Gate, max_worker=1)
    run(capsys, "submit", url, "name=first")
    assert task.started.wait(5)
    run(capsys, "submit", url, "name=second")
    code, out, err = run(capsys, "cancel", url, "second")
    assert (code, err) == (0, "")
    code, out, err = run(capsys, "wait", url, "second", "--timeout", "5")
    assert (code, out) == (1, "") and "cancelled" in err


def test_list(serve, capsys):
    url, task = serve(Echo)
    ids = [task.run(value=n) for n in range(2)]
    code, out, err = run(capsys, "list", url)
    assert (code, err) == (0, "")
    listed = json.loads(out)
    assert sorted(view["task_id"] for view in listed["tasks"]) == sorted(ids)
    assert listed["total"] == 2
    code, out, _ = run(capsys, "list", url, "--status", "failed")
    assert (code, json.loads(out)["tasks"]) == (0, [])


def test_token_from_option_and_environment(serve, capsys, monkeypatch):
    url, task = serve(Echo, api_token="s3cret")
    code, out, err = run(capsys, "submit", url, "value=1")
    assert code == 3 and out == ""
    code, out, err = run(capsys, "submit", url, "--token", "s3cret", "value=1")
    assert (code, err) == (0, "")
    monkeypatch.setenv("ASYNCTASK_API_TOKEN", "s3cret")
    code, out, err = run(capsys, "status", url, out.strip())
    assert (code, err) == (0, "")


# -- the progress line -------------------------------------------------------------------------

def test_progress_bar_from_percent_and_message():
    line = render_progress({"status": "running", "progress": {"percent": 42.0, "message": "counting"}})
    assert line == "running [########------------]  42% counting"
    assert "[" + "#" * 20 + "] 100%" in render_progress({"status": "running", "progress": {"percent": 250}})
    assert "[" + "-" * 20 + "]   0%" in render_progress({"status": "running", "progress": {"percent": -5}})


def test_progress_without_percent_shows_the_status():
    assert render_progress({"status": "queued"}) == "queued"
    assert render_progress({"status": "running", "progress": None}) == "running"
    assert render_progress({"status": "running", "progress": {"percent": None, "message": "warming\nup"}}) \
        == "running warming up"
    assert render_progress({"status": "running", "progress": {"percent": float("nan")}}) == "running"


def test_progress_line_fits_the_terminal():
    view = {"status": "running", "progress": {"percent": 50, "message": "x" * 500}}
    assert len(render_progress(view, columns=60)) == 59


# -- the URL, queue options, serve and worker ---------------------------------------------------------

def test_the_url_may_be_the_endpoints_own(serve, capsys):
    url, task = serve(Typed)
    code, out, err = run(capsys, "submit", url + "/api/", "text=a b", "top=1")
    assert (code, err) == (0, "")
    task_id = out.strip()
    code, out, err = run(capsys, "wait", url + "/api", task_id, "--timeout", "10")
    assert (code, json.loads(out)) == (0, ["a"])


@pytest.fixture
def recorded(make_task: Callable[..., AsyncTask]) -> Iterator[tuple[str, list]]:
    """A fake service that records the JSON body of each POST and answers with task id "t"."""
    bodies: list[Any] = []
    app = Flask("recorder")

    @app.post("/api")
    def submit() -> Any:
        bodies.append(request.get_json())
        return jsonify({"status": "ok", "data": {"task_id": "t", "status": "queued"}, "error_data": [],
                        "error_msg": ""}), 202

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", bodies
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_submit_with_queue_options_anywhere_among_the_params(recorded, capsys):
    url, bodies = recorded
    code, out, err = run(capsys, "submit", url, "text=a", "--priority", "5", "top=2", "--delay", "30")
    assert (code, out.strip(), err) == (0, "t", "")
    code, out, err = run(capsys, "submit", "--run-at", "2030-01-01T09:00:00+01:00", url, "text=b")
    assert (code, err) == (0, "")
    assert bodies == [
        {"data": {"text": "a", "top": 2}, "priority": 5, "delay": 30.0},
        {"data": {"text": "b"}, "run_at": "2030-01-01T09:00:00+01:00"},
    ]


@pytest.mark.parametrize("options", [
    ["--priority", "101"], ["--priority", "high"], ["--delay", "-1"], ["--run-at", "2030-01-01T09:00:00"],
    ["--run-at", "soon"], ["--delay", "1", "--run-at", "2030-01-01T09:00:00Z"],
])
def test_bad_queue_options_are_a_usage_error(recorded, capsys, options):
    url, bodies = recorded
    code, out, err = run(capsys, "submit", url, "text=a", *options)
    assert (code, out) == (2, "")
    assert err
    assert bodies == []


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record the calls of `serving.serve` and `worker.run_worker` instead of running them."""
    made: list[tuple[str, tuple, dict]] = []

    def serve(*args: Any, **kwargs: Any) -> None:
        made.append(("serve", args, kwargs))

    def run_worker(*args: Any, **kwargs: Any) -> int:
        made.append(("run_worker", args, kwargs))
        return 7

    import asynctask.serving

    monkeypatch.setattr(asynctask.serving, "serve", serve)
    monkeypatch.setitem(sys.modules, "asynctask.worker_command", types.SimpleNamespace(run_worker=run_worker))
    return made


def test_serve_passes_its_options_on(calls, capsys):
    assert main(["serve", "app:task"]) == 0
    assert main(["serve", "--no-worker", "app:task", "-b", "0.0.0.0:9000", "-w", "3", "--endpoint", "/jobs",
                 "--preload", "--grace", "5"]) == 0
    assert calls == [
        ("serve", ("app:task",), {"bind": "127.0.0.1:8000", "workers": 1, "endpoint": "/api", "preload": False,
                                  "grace": None, "worker": True}),
        ("serve", ("app:task",), {"bind": "0.0.0.0:9000", "workers": 3, "endpoint": "/jobs", "preload": True,
                                  "grace": 5.0, "worker": False}),
    ]


def test_worker_runs_the_targets_and_exits_with_their_code(calls, capsys):
    assert main(["worker", "app:first", "app:second"]) == 7
    assert main(["worker", "app:first", "--concurrency", "4", "--grace", "2.5"]) == 7
    assert main(["worker", "app:first", "--url", "https://tasks.example", "--token", "t"]) == 7
    assert calls == [
        ("run_worker", (["app:first", "app:second"],), {"concurrency": None, "grace": 20.0}),
        ("run_worker", (["app:first"],), {"concurrency": 4, "grace": 2.5}),
        ("run_worker", (["app:first"],), {"concurrency": None, "grace": 20.0, "url": "https://tasks.example",
                                          "token": "t"}),
    ]
    code = main(["worker"])  # a target is required
    assert code == 2 and "MODULE:OBJ" in capsys.readouterr().err


def test_migrate_adopts_the_tasks_0_1_stored(tmp_path, monkeypatch, capsys):
    (tmp_path / "old_service.py").write_text(
        "from asynctask import AsyncTask, MemoryCollection\n"
        "collection = MemoryCollection()\n"
        "collection.insert_one({'task_id': 'old', 'status': 'failed', 'params': {}, 'attempts': 1})\n"
        "class Old(AsyncTask):\n"
        "    def main(self, logger):\n"
        "        return 1\n"
        "api = Old(collection, 'logs')\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["migrate", "old_service:api"]) == 0
    assert "Old: 1 task(s) adopted" in capsys.readouterr().out
    import old_service

    assert old_service.api.retrieve("old")["status"] == "failed"
