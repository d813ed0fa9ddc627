"""One rotating log file per task, `logger_dir/<task_id>.log` (CONTRACT section 5).

A task's handlers are opened when an attempt starts and closed when it ends, counted per task
so that two attempts of one task in one process share them. The upstream tool cached a
handler per task forever and leaked a file descriptor with each one.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

#: The upstream tool's line format (pid, time, level, task id, module:line, message) plus the
#: trace id of the request that submitted the task.
LOG_FORMAT = (
    "[{process:>5}] {asctime} | {levelname: <8} | {task_id} | {trace_id} | {module}:{lineno} - {message}"
)
MAX_BYTES = 10 * 1024 * 1024
BACKUP_COUNT = 10

_lock = threading.Lock()
_open: dict[str, tuple[int, list[logging.Handler]]] = {}


def log_path(logger_dir: Path, task_id: str) -> Path:
    """Where a task's log lives; `task_id` must already be validated."""
    return logger_dir / f"{task_id}.log"


def task_logger(task_id: str) -> logging.Logger:
    """The logger named `task_id`; it does not propagate, so 'a.b' never writes to a's file."""
    logger = logging.getLogger(task_id)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def format_exception(exc: BaseException) -> str:
    """The traceback of `exc`, chained exceptions included, without the `^^^` column markers.

    Python 3.11 finds those markers with `ast.parse`, whose recursion counter CPython before 3.13
    shares between threads: a task thread formatting a traceback can make a parse in another
    thread fail with "SystemError: AST constructor recursion depth mismatch".
    """
    summary = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _drop_columns(summary, set())
    return "".join(summary.format()).rstrip("\n")


def _drop_columns(summary: traceback.TracebackException | None, seen: set[int]) -> None:
    if summary is None or id(summary) in seen:
        return
    seen.add(id(summary))
    for frame in summary.stack:
        if hasattr(frame, "colno"):  # Python 3.11+; earlier versions have no markers to drop
            frame.colno = frame.end_colno = None
    for nested in (summary.__cause__, summary.__context__, *(getattr(summary, "exceptions", None) or ())):
        _drop_columns(nested, seen)


class _TaskFormatter(logging.Formatter):
    """Task log lines; tracebacks from `logger.exception` in `main` are formatted thread-safely."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return format_exception(ei[1]) if ei[1] is not None else super().formatException(ei)


def _formatter(task_id: str, trace_id: str | None) -> logging.Formatter:
    """The line format with this task's ids filled in (both are validated, brace-free text)."""
    fmt = LOG_FORMAT.replace("{task_id}", task_id).replace("{trace_id}", trace_id or "-")
    return _TaskFormatter(fmt, style="{")


def _handlers(logger_dir: Path, task_id: str, trace_id: str | None) -> list[logging.Handler]:
    formatter = _formatter(task_id, trace_id)
    handlers: list[logging.Handler] = [
        RotatingFileHandler(
            log_path(logger_dir, task_id), maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT,
            encoding="utf-8", delay=True,
        )
    ]
    if not os.environ.get("DISABLE_STREAM_HANDLER"):
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
    return handlers


@contextmanager
def opened(
    logger: logging.Logger, logger_dir: Path, task_id: str, trace_id: str | None = None
) -> Iterator[logging.Logger]:
    """Attach the task's file (and console) handlers to `logger` for the duration of an attempt."""
    with _lock:
        count, handlers = _open.get(task_id, (0, []))
        if count == 0:
            handlers = _handlers(logger_dir, task_id, trace_id)
            for handler in handlers:
                logger.addHandler(handler)
        _open[task_id] = (count + 1, handlers)
    try:
        yield logger
    finally:
        with _lock:
            count, handlers = _open.pop(task_id)
            if count > 1:
                _open[task_id] = (count - 1, handlers)
            else:
                for handler in handlers:
                    logger.removeHandler(handler)
                    handler.close()
                _forget(logger)


def _forget(logger: logging.Logger) -> None:
    """Drop a finished task's logger, and the placeholders its dotted name made, from logging's
    registry, which otherwise keeps every logger forever."""
    registry = logging.Logger.manager.loggerDict
    with logging._lock:  # type: ignore[attr-defined]  # the registry's own lock
        if registry.get(logger.name) is not logger:
            return
        del registry[logger.name]
        parts = logger.name.split(".")
        for end in range(len(parts) - 1, 0, -1):
            holder = registry.get(".".join(parts[:end]))
            if isinstance(holder, logging.PlaceHolder):
                holder.loggerMap.pop(logger, None)
                if not holder.loggerMap:
                    del registry[".".join(parts[:end])]


#: A task's log file or one of its rotated parts: `<task_id>.log` or `<task_id>.log.<n>`.
_LOG_FILE = re.compile(r"(.+)\.log(?:\.\d+)?")


def log_files(logger_dir: Path) -> dict[str, list[Path]]:
    """The log files in `logger_dir` (rotated ones included), by task id."""
    files: dict[str, list[Path]] = {}
    for path in logger_dir.glob("*.log*"):
        # The task id is everything before the last ".log" (ids may hold ".log" themselves).
        match = _LOG_FILE.fullmatch(path.name)
        if match:
            files.setdefault(match.group(1), []).append(path)
    return files


#: Most bytes one read of a log returns; the client reads on from the offset it is given.
MAX_READ = 1024 * 1024


def read_log(logger_dir: Path, task_id: str, offset: int) -> tuple[bytes, int] | None:
    """Bytes of the task's log from `offset`, and the offset to read on from; None if no log.

    An offset past the end means the file was rotated since: reading starts over at 0.
    """
    path = log_path(logger_dir, task_id)
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if offset > size:
                offset = 0
            file.seek(offset)
            chunk = file.read(MAX_READ)
    except FileNotFoundError:
        return None
    return chunk, offset + len(chunk)
