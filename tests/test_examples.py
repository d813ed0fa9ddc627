"""The runnable examples (examples/progress.py, retries.py, cancel.py).

Each is imported the way gunicorn imports it (`examples.<name>:app`), with the in-memory
store and its logs in a temporary folder, and its demo is run with short timings.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
from flask import Flask

from asynctask import AsyncTask


@pytest.fixture
def example(tmp_path, monkeypatch) -> Iterator[Callable[[str], ModuleType]]:
    """Import `examples.<name>` afresh, logging to a temp folder; shut its task down after."""
    imported: list[ModuleType] = []
    monkeypatch.setenv("ASYNCTASK_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("ASYNCTASK_MONGO_URI", raising=False)
    monkeypatch.delenv("ASYNCTASK_API_TOKEN", raising=False)

    def load(name: str) -> ModuleType:
        sys.modules.pop(f"examples.{name}", None)
        module = importlib.import_module(f"examples.{name}")
        imported.append(module)
        assert isinstance(module.app, Flask) and isinstance(module.api, AsyncTask)
        assert "python -m examples." in module.__doc__ and f"examples.{name}:app" in module.__doc__
        return module

    yield load
    for module in imported:
        module.api.shutdown(wait=True)
        sys.modules.pop(module.__name__, None)


def test_the_progress_example_prints_progress_until_the_task_succeeds(example, capsys):
    progress = example("progress")
    began = time.monotonic()

    view = progress.demo(files=6, pause=0.1)

    assert time.monotonic() - began < 30  # the demo ends on its own
    assert view["status"] == "success" and view["result"] == {"indexed": 6}
    assert view["progress"] == {"percent": 100.0, "message": "indexed 6 of 6 files"}
    out = capsys.readouterr().out
    assert "POST /api -> 202" in out
    assert "100.0%  indexed 6 of 6 files" in out
    assert out.rstrip().endswith("success: {'indexed': 6}")


def test_the_retries_example_retries_a_flaky_call_and_fails_a_bad_one_at_once(example, capsys):
    retries = example("retries")
    began = time.monotonic()

    views = retries.demo(flaky=2)

    assert time.monotonic() - began < 30  # the demo ends on its own
    flaky, bad = views["flaky"], views["bad"]
    assert (flaky["status"], flaky["attempts"], flaky["result"]) == ("success", 3, {"symbol": "ACME", "price": 42.0})
    assert (bad["status"], bad["attempts"]) == ("failed", 1)
    assert "ValueError: no such symbol" in bad["error"]
    out = capsys.readouterr().out
    assert "next retry at" in out
    assert "-> success" in out and "-> failed: ValueError: no such symbol: 'AC-ME'" in out


def test_the_cancel_example_cancels_a_queued_and_a_running_task(example, capsys):
    cancel = example("cancel")
    began = time.monotonic()

    answers = cancel.demo(pause=0.02)

    assert time.monotonic() - began < 30  # the demo ends on its own
    code, body = answers["cancel the queued one"]
    assert (code, body["data"]["status"]) == (200, "cancelled")
    code, body = answers["cancel the running one"]
    assert (code, body["data"]["status"]) == (202, "running")
    code, body = answers["wait for the running one"]
    assert (code, body["data"]["status"]) == (200, "cancelled")
    assert answers["cancel it again"][0] == 409
    out = capsys.readouterr().out
    assert out.count("\n") == 6 and "-> 409" in out


def test_the_fleet_example_runs_its_demo_and_exits_0(tmp_path):
    """`python -m examples.fleet`, as its docstring says: queued reports run by priority."""
    import os
    import subprocess
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("ASYNCTASK_MONGO_URI", "ASYNCTASK_API_TOKEN")}
    env.update(ASYNCTASK_LOG_DIR=str(tmp_path / "logs"), DISABLE_STREAM_HANDLER="1")
    done = subprocess.run([sys.executable, "-m", "examples.fleet"], cwd=Path(__file__).resolve().parents[1],
                          env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5 and all(" success: {'title': " in line for line in lines)
    started = [line.split()[0] for line in lines]
    assert started.index("urgent") < started.index("backlog")  # higher priority first
    assert (tmp_path / "logs").is_dir()
