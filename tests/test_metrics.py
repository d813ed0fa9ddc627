"""Prometheus metrics: the lifecycle functions, and aggregation over gunicorn workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from asynctask import metrics

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly `labels` in exposition `text`, or None."""
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and item.labels == labels:
                return item.value
    return None


def rendered() -> str:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return body.decode()


@pytest.fixture
def name() -> str:
    """A task name no other test counts under."""
    return f"T{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)


def test_submitted_counts_per_task(name):
    assert sample(rendered(), "asynctask_tasks_submitted_total", task=name) is None
    metrics.submitted(name)
    metrics.submitted(name)
    assert sample(rendered(), "asynctask_tasks_submitted_total", task=name) == 2


def test_a_run_raises_then_lowers_in_flight_and_records_its_duration(name):
    metrics.started(name)
    metrics.started(name)
    assert sample(rendered(), "asynctask_tasks_in_flight", task=name) == 2
    metrics.finished(name, "success", 0.2)
    metrics.finished(name, "failed", 3.0)
    text = rendered()
    assert sample(text, "asynctask_tasks_in_flight", task=name) == 0
    assert sample(text, "asynctask_tasks_finished_total", task=name, status="success") == 1
    assert sample(text, "asynctask_tasks_finished_total", task=name, status="failed") == 1
    assert sample(text, "asynctask_task_duration_seconds_count", task=name) == 2
    assert sample(text, "asynctask_task_duration_seconds_sum", task=name) == pytest.approx(3.2)
    assert sample(text, "asynctask_task_duration_seconds_bucket", task=name, le="0.5") == 1


def test_a_task_that_did_not_run_here_leaves_in_flight_and_duration_alone(name):
    metrics.started(name)
    metrics.finished(name, "cancelled", None)
    text = rendered()
    assert sample(text, "asynctask_tasks_finished_total", task=name, status="cancelled") == 1
    assert sample(text, "asynctask_tasks_in_flight", task=name) == 1
    assert sample(text, "asynctask_task_duration_seconds_count", task=name) is None


def test_an_attempt_that_stopped_without_finishing_only_leaves_in_flight(name):
    metrics.started(name)
    metrics.stopped(name)
    text = rendered()
    assert sample(text, "asynctask_tasks_in_flight", task=name) == 0
    assert sample(text, "asynctask_tasks_finished_total", task=name, status="failed") is None
    assert sample(text, "asynctask_task_duration_seconds_count", task=name) is None


def test_http_requests_are_counted_by_route(name):
    metrics.request("GET", f"/{name}/<task_id>", 404)
    assert sample(rendered(), "asynctask_http_requests_total", method="GET", route=f"/{name}/<task_id>", code="404") == 1


def test_with_a_multiprocess_dir_render_reads_only_that_dir(name, tmp_path, monkeypatch):
    metrics.submitted(name)
    assert sample(rendered(), "asynctask_tasks_submitted_total", task=name) == 1
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    assert sample(rendered(), "asynctask_tasks_submitted_total", task=name) is None


def test_mark_process_dead_drops_only_the_live_gauges_of_that_process(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    files = ["gauge_livesum_12345.db", "gauge_livesum_999.db", "counter_12345.db"]
    for file in files:
        (tmp_path / file).write_bytes(b"")

    metrics.mark_process_dead(12345)

    # The dead worker's in-flight count goes; what it counted stays in the totals.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_12345.db", "gauge_livesum_999.db"]


def test_mark_process_dead_without_a_multiprocess_dir_keeps_this_process_gauges(name):
    metrics.started(name)
    metrics.mark_process_dead(os.getpid())
    assert sample(rendered(), "asynctask_tasks_in_flight", task=name) == 1


# -- several gunicorn workers ------------------------------------------------------------------

class Gunicorn:
    """`gunicorn --workers 2` serving tests/metrics_app.py on a free port."""

    def __init__(self, tmp_path: Path) -> None:
        self.stderr_path = tmp_path / "gunicorn.err"
        env = {
            **os.environ,
            metrics.MULTIPROC_ENV: str(tmp_path / "prom"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
        }
        (tmp_path / "prom").mkdir()
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "python:metrics_app", "--workers", "2",
                 "--bind", "127.0.0.1:0", "metrics_app:app"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            )
        self.port = self._wait_until_booted(timeout=60)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def _wait_until_booted(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{self.stderr()}")
            text = self.stderr()
            listening = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
            if listening and text.count("Booting worker") >= 2:
                return int(listening.group(1))
            time.sleep(0.05)
        pytest.fail(f"gunicorn did not boot 2 workers within {timeout}s:\n{self.stderr()}")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return response.read()

    def pid(self, path: str) -> int:
        return json.loads(self.get(path))["pid"]

    def metric(self, name: str, **labels: str) -> float | None:
        return sample(self.get("/metrics").decode(), name, **labels)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # quick shutdown: nothing to finish
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Gunicorn]:
    server = Gunicorn(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_metrics_add_up_over_gunicorn_workers(gunicorn):
    requests, pids = 0, set()
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(8) as pool:
        # Bump at least 40 times, and until both workers have counted some.
        while requests < 40 or len(pids) < 2:
            assert time.monotonic() < deadline, f"only workers {pids} answered {requests} requests"
            pids.update(pool.map(gunicorn.pid, ["/bump"] * 8))
            requests += 8
    for _ in range(4):  # each answer may come from either worker
        assert gunicorn.metric("asynctask_tasks_submitted_total", task="T") == requests


def test_a_dead_worker_leaves_the_in_flight_gauge(gunicorn):
    pid = gunicorn.pid("/start")
    assert gunicorn.metric("asynctask_tasks_in_flight", task="T") == 1
    gunicorn.pid("/bump")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    # Without a live process the gauge has no sample at all.
    while gunicorn.metric("asynctask_tasks_in_flight", task="T"):
        assert time.monotonic() < deadline, f"in-flight gauge still counts dead worker {pid}"
        time.sleep(0.05)
    assert gunicorn.metric("asynctask_tasks_submitted_total", task="T") == 1
