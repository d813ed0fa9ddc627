"""Coroutine tasks: `async def main` runs on the process's event loop, holding a slot and no thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from waiting import wait_until

import asynctask
from asynctask import AsyncTask, MemoryCollection
from asynctask.coroutines import event_loop


class Sleepy(AsyncTask):
    """Awaits `seconds`, reporting progress; records what it saw."""

    seen: dict[str, Any] = {}

    async def main(self, logger: logging.Logger, name: str, seconds: float = 1.0, percent: float = 0.0) -> str:
        logger.info("sleeping %s", seconds)
        asynctask.report_progress(percent, f"at {percent}")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            Sleepy.seen[name] = "CancelledError"
            raise
        Sleepy.seen[name] = "cancelled()" if asynctask.cancelled() else "done"
        return name


class Stubborn(AsyncTask):
    """Swallows the cancellation and returns a value anyway."""

    async def main(self, logger: logging.Logger, name: str) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "ignored the cancel"
        return name


class Typed(AsyncTask):
    async def main(self, logger: logging.Logger, top: int, text: str = "") -> list:
        return text.split()[:top]


class Failing(AsyncTask):
    calls = 0

    async def main(self, logger: logging.Logger, name: str) -> None:
        Failing.calls += 1
        await asyncio.sleep(0)
        raise ValueError(f"boom {Failing.calls}")


class Blocking(AsyncTask):
    async def main(self, logger: logging.Logger, seconds: float) -> str:
        time.sleep(seconds)  # wrong in a coroutine: it blocks the loop
        return "blocked"


def test_fifty_coroutines_of_one_second_run_at_once(make_task, wait_for):
    task = make_task(Sleepy, max_worker=50)
    threads_before = threading.active_count()
    began = time.monotonic()
    ids = [task.submit({"name": f"s{i}", "seconds": 1.0}) for i in range(50)]
    most_threads = threading.active_count()
    for task_id in ids:
        view = wait_for(task, task_id, timeout=30)
        most_threads = max(most_threads, threading.active_count())
        assert view["status"] == "success"
    took = time.monotonic() - began
    assert took < 20, f"50 x 1 s in parallel took {took:.1f}s (serial would be 50 s)"
    assert most_threads - threads_before < 20, "coroutines hold no thread each"


def test_a_coroutine_task_has_typed_params_and_stores_its_result(make_task, wait_for):
    task = make_task(Typed)
    view = wait_for(task, task.submit({"top": "2", "text": "a b c"}))
    assert (view["status"], view["result"]) == ("success", ["a", "b"])
    with pytest.raises(asynctask.InvalidParams):
        task.submit({"top": "two"})
    client = task.app().test_client()
    schema = client.get("/openapi.json").get_json()
    assert "top" in str(schema)


def test_a_cancelled_coroutine_sees_cancelled_error_and_ends_cancelled(make_task, wait_for):
    task = make_task(Sleepy)
    task_id = task.submit({"name": "cancel-me", "seconds": 30})
    wait_until(lambda: task.retrieve(task_id)["status"] == "running")
    wait_until(lambda: task.retrieve(task_id)["progress"] is not None)
    assert task.cancel(task_id) == "running"
    view = wait_for(task, task_id)
    assert view["status"] == "cancelled"
    assert Sleepy.seen["cancel-me"] == "CancelledError"


def test_a_timed_out_coroutine_sees_cancelled_error_and_fails(make_task, wait_for):
    task = make_task(Sleepy, task_timeout=0.5)
    view = wait_for(task, task.submit({"name": "too-long", "seconds": 30}))
    assert view["status"] == "failed" and "TaskTimeout" in view["error"]
    wait_until(lambda: Sleepy.seen.get("too-long") == "CancelledError")


def test_the_ending_follows_the_stop_whatever_main_does_with_it(make_task, wait_for):
    task = make_task(Stubborn)
    task_id = task.submit({"name": "stubborn"})
    wait_until(lambda: task.retrieve(task_id)["status"] == "running")
    task.cancel(task_id)
    view = wait_for(task, task_id)
    assert view["status"] == "cancelled" and view["result"] is None


def test_concurrent_coroutines_each_report_their_own_progress(make_task, wait_for):
    task = make_task(Sleepy)
    first = task.submit({"name": "p1", "seconds": 5, "percent": 25})
    second = task.submit({"name": "p2", "seconds": 5, "percent": 75})
    wait_until(lambda: task.retrieve(first)["progress"] and task.retrieve(second)["progress"])
    assert task.retrieve(first)["progress"] == {"percent": 25.0, "message": "at 25.0"}
    assert task.retrieve(second)["progress"] == {"percent": 75.0, "message": "at 75.0"}
    for task_id in (first, second):
        task.cancel(task_id)
        wait_for(task, task_id)


def test_a_failing_coroutine_is_retried_and_logs_to_its_file(make_task, wait_for, tmp_path):
    Failing.calls = 0
    task = make_task(Failing, max_retries=1, retry_delay=0.05, poll_interval=0.05)
    view = wait_for(task, task.submit({"name": "f"}))
    assert view["status"] == "failed" and "boom 2" in view["error"] and view["attempts"] == 2
    sleepy = make_task(Sleepy)
    wait_for(sleepy, sleepy.submit({"name": "logged", "seconds": 0}, task_id=None))
    logs = list((tmp_path / "logs").glob("*.log"))
    assert any("sleeping 0" in path.read_text() for path in logs)


def test_a_coroutine_that_blocks_the_loop_is_named_in_a_warning(make_task, wait_for, caplog):
    from asynctask import metrics

    task = make_task(Blocking)
    with caplog.at_level(logging.WARNING, logger="asynctask.coroutines"):
        task_id = task.submit({"seconds": 2.5})
        assert wait_for(task, task_id)["status"] == "success"
        wait_until(lambda: any("blocked" in r.getMessage() for r in caplog.records))
    warning = next(r.getMessage() for r in caplog.records if "blocked" in r.getMessage())
    assert task_id in warning
    assert "asynctask_event_loop_lag_seconds" in metrics.render()[0].decode()


def test_a_coroutine_main_runs_with_asyncio_run_in_a_child_process(make_task, wait_for):
    from executor_tasks import AsyncChild

    task = make_task(AsyncChild, executor="processes", max_worker=1)
    view = wait_for(task, task.submit({"value": 21}), timeout=60)
    assert (view["status"], view["result"]) == ("success", 42)


def test_the_loop_is_made_after_a_fork_in_each_process():
    import os

    parent = event_loop()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            child = event_loop()
            answer = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "ok"), child.loop).result(5)
            ok = child is not parent and answer == "ok"
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)


def test_get_task_id_retrieve_and_callback_stay_plain_functions(tmp_path, wait_for):
    heard: list[str] = []

    class Hooked(Sleepy):
        def get_task_id(self, name: str, seconds: float = 1.0, percent: float = 0.0) -> str:
            return f"hooked-{name}"

        def callback(self, future: Any, task_id: str) -> Any:
            heard.append(future.result())

    task = Hooked(MemoryCollection(), tmp_path)
    try:
        task_id = task.submit({"name": "x", "seconds": 0})
        assert task_id == "hooked-x"
        assert wait_for(task, task_id)["result"] == "x"
        wait_until(lambda: heard == ["x"])
    finally:
        task.shutdown()


@pytest.mark.timeout(120)
def test_the_fastapi_example_serves_and_awaits_tasks_under_uvicorn(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "ASYNCTASK_URL": f"http://127.0.0.1:{port}", "ASYNCTASK_LOG_DIR": str(tmp_path)}
    env.pop("ASYNCTASK_MONGO_URI", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", str(port), "--log-level", "warning"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/tasks/ping", timeout=2) as response:
                    return response.status == 200
            except OSError:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else "uvicorn exited"
                return False

        wait_until(answers, "uvicorn serves the app", timeout=60, interval=0.1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/summaries?text=to+be+or+not+to+be&words=3", method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        assert body["summary"] == "to be or"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/tasks/api/{body['task_id']}", timeout=10) as response:
            view = json.loads(response.read())["data"]
        assert view["status"] == "success" and view["result"] == "to be or"
    finally:
        server.terminate()
        server.wait(20)


@pytest.mark.parametrize("hook", ["get_task_id", "retrieve", "callback"])
def test_an_async_def_hook_other_than_main_is_a_type_error_at_construction(tmp_path, hook):
    async def coroutine_hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        return None

    hooked = type("Hooked", (Sleepy,), {hook: coroutine_hook})
    with pytest.raises(TypeError, match=hook):
        hooked(MemoryCollection(), tmp_path / "logs")
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())


def test_the_async_client_submits_waits_and_raises_like_the_client(tmp_path):
    import asyncio as aio
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Threaded(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    task = Sleepy(MemoryCollection(), tmp_path, max_worker=10)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_server("127.0.0.1", port, task.app(), server_class=Threaded, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    async def use() -> None:
        async with asynctask.AsyncClient(f"http://127.0.0.1:{port}") as client:
            task_id = await client.submit(name="remote", seconds=0.1)
            assert await client.wait(task_id, timeout=30) == "remote"
            assert (await client.get(task_id))["status"] == "success"
            assert (await client.list())["total"] >= 1
            with pytest.raises(asynctask.TaskNotFound):
                await client.get("missing")
            with pytest.raises(asynctask.InvalidParams):
                await client.submit(seconds="soon")
            slow = await client.submit(name="slow", seconds=30)
            await client.cancel(slow)
            with pytest.raises(asynctask.TaskCancelled):
                await client.wait(slow, timeout=30)
            assert "schedules" in await client.call("GET", "schedules")
        plain = asynctask.AsyncClient(f"http://127.0.0.1:{port}")
        assert (await plain.get(task_id))["status"] == "success"
        await plain.close()

    try:
        aio.run(use())
    finally:
        server.shutdown()
        task.shutdown()
