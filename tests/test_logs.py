"""Per-task log files.

One rotating file per task at `logger_dir/<task_id>.log`; every line holds the time, level,
pid, task id, module:line and message; handlers live only while the task runs, so open file
descriptors and registered loggers do not grow with the number of tasks; the console
handler obeys `DISABLE_STREAM_HANDLER`. A task whose id is also the name of another logger
of the process leaves that logger as it was. A failed task's public error shows the task's own
frames only, without server paths.
"""

from __future__ import annotations

import ast
import inspect
import logging
import multiprocessing
import os
import re
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime, timedelta
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import pytest
from tasks import Echo, Gate
from waiting import wait_for as wait_for_view
from waiting import wait_until

import asynctask.logs
from asynctask import AsyncTask, MemoryCollection

# -- sample tasks -------------------------------------------------------------------------


class Talker(AsyncTask):
    """Logs known lines, and reports what `logging.getLogger(task_id)` gives inside main."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loggers: dict[str, logging.Logger] = {}

    def get_task_id(self, name: str, lines: int = 1) -> str:
        return name

    def main(self, logger: logging.Logger, name: str, lines: int = 1) -> dict:
        self.loggers[name] = logger
        for number in range(lines):
            logger.info("said line %d of %s", number, name)
        by_name = logging.getLogger(name)
        by_name.warning("written through getLogger(%s)", name)
        handlers = [
            {"rotating": isinstance(h, RotatingFileHandler), "max_bytes": getattr(h, "maxBytes", None),
             "backups": getattr(h, "backupCount", None), "file": getattr(h, "baseFilename", None)}
            for h in logger.handlers
        ]
        return {"same_logger": by_name is logger, "handlers": handlers}


class Pair(AsyncTask):
    """Two of its tasks meet at a barrier, so both are running while they log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.barrier = threading.Barrier(2)

    def get_task_id(self, name: str) -> str:
        return name

    def main(self, logger: logging.Logger, name: str) -> str:
        logger.info("before the meeting: %s", name)
        self.barrier.wait(timeout=10)
        logger.info("while both run: %s", name)
        logging.getLogger(name).info("by name while both run: %s", name)
        self.barrier.wait(timeout=10)
        return name


class HeldEcho(Echo):
    """Echo whose `main` waits for `gate`: a batch is submitted while the workers sit idle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def main(self, logger: logging.Logger, value: Any = None, **extra: Any) -> Any:
        if not self.gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        return super().main(logger, value, **extra)


def _line_of(function: Any, text: str) -> int:
    """The line number, in its file, of the first source line of `function` containing `text`."""
    lines, first = inspect.getsourcelines(function)
    for offset, line in enumerate(lines):
        if text in line:
            return first + offset
    raise AssertionError(f"{text!r} is not in the source of {function.__qualname__}")


def _wait_for_text(path: Path, text: str, timeout: float = 5.0) -> str:
    """The content of `path` once it holds `text`; fail at the deadline."""
    deadline = time.monotonic() + timeout
    content = ""
    while time.monotonic() < deadline:
        content = path.read_text(encoding="utf-8") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.01)
    raise AssertionError(f"{path.name} did not get {text!r} within {timeout}s; it holds:\n{content}")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


#: A task's log line: pid, time, level, task id, then (section 8) possibly other ids such as
#: the trace id, then module:line and the message.
LINE = re.compile(
    r"^\[\s*(?P<pid>\d+)\] (?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \| (?P<level>[A-Z]+)\s* \| "
    r"(?P<task>\S+) (?:\| \S+ )*\| (?P<module>\w+):(?P<line>\d+) - (?P<message>.*)$"
)


def _parsed(content: str, text: str) -> re.Match:
    """The parts of the first line of `content` that holds `text`."""
    line = next((line for line in content.splitlines() if text in line), None)
    assert line is not None, f"no line holds {text!r} in:\n{content}"
    match = LINE.match(line)
    assert match, f"not a task log line: {line!r}"
    return match


# -- the file and its lines ---------------------------------------------------------------


def test_one_file_per_task_and_each_line_holds_time_level_pid_id_location_message(make_task, wait_for):
    task = make_task(Talker)
    before = datetime.now().replace(microsecond=0)
    first = task.run(name="first")
    second = task.run(name="second")
    assert wait_for(task, first)["status"] == "success"
    assert wait_for(task, second)["status"] == "success"
    after = datetime.now()

    assert sorted(p.name for p in task.logger_dir.iterdir()) == ["first.log", "second.log"]
    content = _wait_for_text(task.logger_dir / "first.log", "task succeeded")
    assert "second" not in content

    match = _parsed(content, "said line 0 of first")
    assert int(match["pid"]) == os.getpid()
    logged_at = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f")
    assert before <= logged_at <= after + timedelta(seconds=1)
    assert match["level"] == "INFO"
    assert match["task"] == "first"
    assert match["module"] == "test_logs"
    assert int(match["line"]) == _line_of(Talker.main, 'logger.info("said line')
    assert match["message"] == "said line 0 of first"

    warning = _parsed(content, "written through getLogger")
    assert (warning["level"], warning["task"], warning["module"]) == ("WARNING", "first", "test_logs")


def test_get_logger_by_task_id_inside_main_is_the_task_logger(make_task, wait_for):
    task = make_task(Talker)
    task_id = task.run(name="by-name")
    view = wait_for(task, task_id)
    assert view["status"] == "success", view["error"]
    assert view["result"]["same_logger"] is True
    content = (task.logger_dir / "by-name.log").read_text(encoding="utf-8")
    assert "written through getLogger(by-name)" in content


def test_success_and_failure_outcomes_are_logged(make_task, wait_for):
    task = make_task(Gate)
    task.gate.set()
    ok = task.run(name="fine")
    bad = task.run(name="broken", fail=True)
    assert wait_for(task, ok)["status"] == "success"
    assert wait_for(task, bad)["status"] == "failed"

    assert "task succeeded" in _wait_for_text(task.logger_dir / "fine.log", "task succeeded")
    failed = _wait_for_text(task.logger_dir / "broken.log", "task failed")
    failed_line = _parsed(failed, "task failed")
    assert (failed_line["level"], failed_line["task"]) == ("ERROR", "broken")
    assert "ValueError: asked to fail: broken" in failed
    assert "task succeeded" not in failed


class Explainer(AsyncTask):
    """Logs a chained exception with `logger.exception`, then fails with another one."""

    def main(self, logger: logging.Logger, name: str) -> None:
        try:
            try:
                empty: dict[str, int] = {}
                empty["missing"]  # noqa: B018 - raises KeyError
            except KeyError as exc:
                raise LookupError(f"no entry for {name}") from exc
        except LookupError:
            logger.exception("looking up %s went wrong", name)
        raise ZeroDivisionError(f"{name} divided by zero")


def test_task_tracebacks_are_written_without_parsing_source(make_task, wait_for, monkeypatch):
    # Python 3.11 places its `^^^` markers with `ast.parse`, whose recursion counter CPython
    # shares between threads: a task thread doing so once broke a parse in the main thread.
    parsed_in: list[str] = []
    real_parse = ast.parse

    def watched_parse(*args: Any, **kwargs: Any) -> Any:
        parsed_in.append(threading.current_thread().name)
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(ast, "parse", watched_parse)
    monkeypatch.setenv("DISABLE_STREAM_HANDLER", "1")
    task = make_task(Explainer)
    task_id = task.run(name="lookup")
    document = wait_for(task, task_id)

    assert document["status"] == "failed"
    assert document["error"].startswith("Traceback (most recent call last):")
    assert document["error"].endswith("ZeroDivisionError: lookup divided by zero")
    logged = _wait_for_text(task.logger_dir / f"{task_id}.log", "task failed")
    for text in ("looking up lookup went wrong", "KeyError: 'missing'",
                 "The above exception was the direct cause", "LookupError: no entry for lookup"):
        assert text in logged
    assert "^^^" not in document["error"] + logged
    assert parsed_in == []


# -- resources ------------------------------------------------------------------------------


def test_open_file_descriptors_and_loggers_do_not_grow_with_tasks_run(make_task):
    """2,000 tasks in batches of 50, each on a fresh (small, fast) store, finished before the next."""
    log_dir = None

    def run_batch(first: int, count: int) -> list[str]:
        nonlocal log_dir
        task = make_task(HeldEcho, MemoryCollection())
        log_dir = task.logger_dir
        # Submitting while busy workers hold the GIL would only measure GIL hand-offs.
        ids = [task.run(value=first + n) for n in range(count)]
        task.gate.set()
        wait_until(lambda: task.collection.count_documents({"status": "success"}) == count,
                   f"{count} tasks succeeded", timeout=60)
        task.shutdown(wait=True)  # returns once every attempt has ended
        return ids

    run_batch(-50, 50)  # warm-up: imports, lazily built objects
    fds_before = _open_fds()
    loggers_before = len(logging.Logger.manager.loggerDict)
    ids: list[str] = []
    for batch in range(40):
        ids += run_batch(batch * 50, 50)

    assert len(set(ids)) == 2000
    assert log_dir is not None
    assert all((log_dir / f"{task_id}.log").exists() for task_id in ids)
    assert _open_fds() - fds_before <= 5
    registered = logging.Logger.manager.loggerDict
    assert [task_id for task_id in ids if task_id in registered] == []
    assert len(registered) - loggers_before <= 5


def test_a_finished_task_logger_has_no_handlers_left(make_task, wait_for):
    task = make_task(Talker)
    task_id = task.run(name="closed")
    view = wait_for(task, task_id)
    handler_files = [h["file"] for h in view["result"]["handlers"] if h["file"]]
    assert handler_files == [str(task.logger_dir / "closed.log")]
    _wait_for_text(task.logger_dir / "closed.log", "task succeeded")
    task.shutdown(wait=True)  # returns once the attempt has ended
    used = task.loggers["closed"]
    assert used.name == "closed"
    assert used.handlers == []
    # Kept past its attempt, it is a plain logger again: its level follows its parents'.
    assert used.level == logging.NOTSET and used.propagate
    root_level = logging.root.level
    try:
        logging.root.setLevel(logging.WARNING)
        assert not used.isEnabledFor(logging.INFO) and used.isEnabledFor(logging.ERROR)
    finally:
        logging.root.setLevel(root_level)


def test_dotted_task_ids_leave_no_placeholder_loggers_behind(make_task):
    """`logging` registers a placeholder for each missing parent of 'n.part'; none may stay."""
    task = make_task(Talker)
    for n in range(50):
        task.run(name=f"dotted{n}.part")
    wait_until(lambda: task.collection.count_documents({"status": "success"}) == 50, "50 tasks succeeded",
               timeout=60)
    task.shutdown(wait=True)  # returns once every attempt has ended
    left = sorted(name for name in logging.Logger.manager.loggerDict if name.startswith("dotted"))
    assert left == [], f"{len(left)} loggers/placeholders left behind, e.g. {left[:3]}"


# -- console output -----------------------------------------------------------------------


def test_console_output_without_disable_stream_handler(make_task, wait_for, monkeypatch, capfd):
    monkeypatch.delenv("DISABLE_STREAM_HANDLER", raising=False)
    task = make_task(Echo)
    task_id = task.run(value="shown-on-console")
    assert wait_for(task, task_id)["status"] == "success"
    err = capfd.readouterr().err
    line = _parsed(err, "echo 'shown-on-console'")
    assert (line["level"], line["task"], line["module"]) == ("INFO", task_id, "tasks")


def test_no_console_output_with_disable_stream_handler(make_task, wait_for, monkeypatch, capfd):
    monkeypatch.setenv("DISABLE_STREAM_HANDLER", "1")
    task = make_task(Echo)
    task_id = task.run(value="kept-in-file")
    assert wait_for(task, task_id)["status"] == "success"
    _wait_for_text(task.logger_dir / f"{task_id}.log", "task succeeded")
    task.shutdown(wait=True)
    content = (task.logger_dir / f"{task_id}.log").read_text(encoding="utf-8")
    assert "echo 'kept-in-file'" in content
    captured = capfd.readouterr()
    assert "kept-in-file" not in captured.err
    assert "kept-in-file" not in captured.out


# -- names and rotation ---------------------------------------------------------------------


def test_dotted_task_id_logs_only_into_its_own_file(make_task, wait_for):
    task = make_task(Pair)
    parent = task.run(name="a")
    child = task.run(name="a.b")
    assert wait_for(task, parent)["status"] == "success"
    assert wait_for(task, child)["status"] == "success"

    parent_log = _wait_for_text(task.logger_dir / "a.log", "task succeeded")
    child_log = _wait_for_text(task.logger_dir / "a.b.log", "task succeeded")
    assert "while both run: a.b" in child_log
    assert "by name while both run: a.b" in child_log
    assert "while both run: a\n" in parent_log
    assert "a.b" not in parent_log
    assert {LINE.match(line)["task"] for line in parent_log.splitlines()} == {"a"}
    assert {LINE.match(line)["task"] for line in child_log.splitlines()} == {"a.b"}


def test_task_log_rotates(make_task, wait_for, monkeypatch):
    monkeypatch.setattr(asynctask.logs, "MAX_BYTES", 2000)
    monkeypatch.setattr(asynctask.logs, "BACKUP_COUNT", 3)
    task = make_task(Talker)
    task_id = task.run(name="chatty", lines=200)
    view = wait_for(task, task_id)
    assert view["status"] == "success", view["error"]
    assert [h["rotating"] for h in view["result"]["handlers"] if h["file"]] == [True]
    _wait_for_text(task.logger_dir / "chatty.log", "task succeeded")  # the task's last line

    names = sorted(p.name for p in task.logger_dir.iterdir())
    assert names == ["chatty.log", "chatty.log.1", "chatty.log.2", "chatty.log.3"]
    for path in task.logger_dir.iterdir():
        assert 0 < path.stat().st_size <= 2000


def test_a_full_log_from_an_earlier_attempt_rotates_before_the_next_line(make_task, wait_for, monkeypatch):
    monkeypatch.setattr(asynctask.logs, "MAX_BYTES", 2000)
    task = make_task(Talker)
    task.logger_dir.mkdir(parents=True, exist_ok=True)
    earlier = "é" * 995 + "\n"  # 1,991 bytes in 996 characters
    (task.logger_dir / "full.log").write_text(earlier, encoding="utf-8")
    assert wait_for(task, task.run(name="full"))["status"] == "success"
    _wait_for_text(task.logger_dir / "full.log", "task succeeded")
    assert (task.logger_dir / "full.log.1").read_text(encoding="utf-8") == earlier
    assert "said line 0 of full" in (task.logger_dir / "full.log").read_text(encoding="utf-8")


def test_default_rotation_is_ten_files_of_ten_mib(make_task, wait_for):
    task = make_task(Talker)
    view = wait_for(task, task.run(name="sizes"))
    assert [h for h in view["result"]["handlers"] if h["file"]] == [
        {"rotating": True, "max_bytes": 10 * 1024 * 1024, "backups": 10, "file": str(task.logger_dir / "sizes.log")}
    ]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups came in Python 3.11")
def test_format_exception_keeps_every_exception_of_a_group():
    try:
        raise ExceptionGroup("two went wrong", [KeyError("first"), TypeError("second")])  # noqa: F821
    except ExceptionGroup as group:  # noqa: F821
        text = asynctask.logs.format_exception(group)
    assert "ExceptionGroup: two went wrong (2 sub-exceptions)" in text
    assert "KeyError: 'first'" in text and "TypeError: second" in text
    assert "^^^" not in text


# -- task ids that name other loggers ---------------------------------------------------------


class Clash(AsyncTask):
    """Logs a line, notes the state of `logging.getLogger(name)` while it runs, waits for `gate`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = threading.Event()
        self.gate = threading.Event()
        self.seen: dict[str, Any] = {}

    def get_task_id(self, name: str) -> str:
        return name

    def main(self, logger: logging.Logger, name: str) -> str:
        logger.info("task line of %s", name)
        logging.getLogger(f"{name}.part").info("part line of %s", name)
        self.seen[name] = _state(logging.getLogger(name))
        self.started.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        return name


def _state(logger: logging.Logger) -> tuple[Any, ...]:
    return (logger.level, list(logger.handlers), logger.propagate, logger.parent, logger.disabled)


@pytest.mark.parametrize("name", ["root", "asynctask", "asynctask.task", "werkzeug"])
def test_a_task_named_like_another_logger_leaves_that_logger_alone(make_task, caplog, name):
    logging.getLogger("werkzeug")  # as Flask's server makes it
    library = logging.getLogger("asynctask.task")
    other = logging.getLogger(name)
    before, library_before = _state(other), _state(library)
    task = make_task(Clash)
    task_id = task.run(name=name)
    assert task.started.wait(10)

    with caplog.at_level(logging.INFO):
        library.warning("a library line while %s runs", name)
        assert [r.getMessage() for r in caplog.records if r.name == "asynctask.task"] == [
            f"a library line while {name} runs"
        ]
    assert task.seen[name] == before
    assert _state(other) == before and _state(library) == library_before

    task.gate.set()
    assert wait_for_view(task, task_id)["status"] == "success"
    task.shutdown(wait=True)  # every attempt has ended, its logger closed
    assert _state(other) == before and _state(library) == library_before
    assert logging.getLogger(name) is other
    content = (task.logger_dir / f"{name}.log").read_text(encoding="utf-8")
    assert f"task line of {name}" in content
    assert "a library line" not in content


def test_a_logger_made_below_a_task_logger_propagates_normally_after_the_task(make_task, caplog):
    task = make_task(Clash)
    name = f"below-{os.getpid()}-{time.monotonic_ns()}"
    task.gate.set()
    assert wait_for_view(task, task.run(name=name))["status"] == "success"
    task.shutdown(wait=True)
    content = (task.logger_dir / f"{name}.log").read_text(encoding="utf-8")
    assert f"part line of {name}" in content  # inside the task, it wrote to the task's file

    part = logging.getLogger(f"{name}.part")
    with caplog.at_level(logging.INFO):
        part.warning("after the task")
    assert [r.getMessage() for r in caplog.records if r.name == f"{name}.part"] == ["after the task"]
    assert name not in logging.Logger.manager.loggerDict or not isinstance(
        logging.Logger.manager.loggerDict[name], logging.Logger
    )


# -- the public error text ---------------------------------------------------------------------


def _read_setting(settings: dict[str, Any]) -> Any:
    return _lookup(settings, "port")


def _lookup(settings: dict[str, Any], key: str) -> Any:
    try:
        return settings[key]
    except KeyError as exc:
        raise LookupError(f"no setting {key!r}") from exc


def _frame_files(text: str) -> list[str]:
    return re.findall(r'File "([^"]+)"', text)


def test_public_error_keeps_the_task_frames_without_server_paths():
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(_read_setting, {})
    try:
        future.result()
    except LookupError as error:
        full = asynctask.logs.format_exception(error)
        public = asynctask.logs.public_error(error)

    here = str(Path(__file__).resolve().parent)
    # The premise: the full traceback has server paths and concurrent.futures' frames.
    assert here in full and "concurrent" in full
    assert here not in public and os.sep + "concurrent" + os.sep not in public
    assert "threading" not in public
    assert set(_frame_files(public)) <= {"test_logs.py", "tests/test_logs.py"}, public
    assert [line.split(" in ")[-1] for line in public.splitlines() if line.lstrip().startswith("File ")] == [
        "_lookup", "test_public_error_keeps_the_task_frames_without_server_paths", "_read_setting", "_lookup",
    ]
    assert "KeyError: 'port'" in public
    assert "The above exception was the direct cause of the following exception:" in public
    assert public.endswith("LookupError: no setting 'port'")
    assert 'raise LookupError(f"no setting {key!r}") from exc' in public  # the source lines stay
    assert "^^^" not in public


def _fail_in_child(key: str) -> Any:
    return _lookup({}, key)


def test_public_error_of_a_child_process_traceback_has_no_server_paths():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        future = pool.submit(_fail_in_child, "host")
        with pytest.raises(LookupError) as caught:
            future.result(timeout=60)
    public = asynctask.logs.public_error(caught.value)

    assert str(Path(__file__).resolve().parent) in asynctask.logs.format_exception(caught.value)  # premise
    assert [path for path in _frame_files(public) if path.startswith("/")] == [], public
    assert "process.py" not in public and "_process_worker" not in public  # concurrent.futures' frames
    assert "_fail_in_child" in public and public.endswith("LookupError: no setting 'host'")
    assert "^^^" not in public
