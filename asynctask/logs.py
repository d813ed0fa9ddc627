"""One rotating log file per task, `logger_dir/<task_id>.log`.

A task's handlers are opened when an attempt starts and closed when it ends, counted per task
so that two attempts of one task in one process share them. The upstream tool cached a
handler per task forever and leaked a file descriptor with each one.

A task's logger is a `TaskLogger` of its own, never a logger something else uses. While an
attempt runs it is registered under the task id, so `logging.getLogger(task_id)` inside `main`
reaches it, unless that name already belongs to another logger of the process (`root`,
`asynctask.task`, `werkzeug`, a parent of existing loggers...): that logger is left exactly as
it is, and the task logs through a private logger that `logging` does not know by name. When
the attempt ends the task's logger leaves the registry again.
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
#: The loggers of the tasks with an attempt running here: task id -> (attempts, handlers, logger).
_open: dict[str, tuple[int, list[logging.Handler], logging.Logger]] = {}


class TaskLogger(logging.Logger):
    """A task's logger: level DEBUG, and it does not propagate, so 'a.b' never writes to a's file."""

    def __init__(self, name: str) -> None:
        super().__init__(name, logging.DEBUG)
        self.propagate = False
        self.parent = logging.root

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        """As `Logger.isEnabledFor`, uncached: the logger's level is reset when its attempt ends,
        and clearing `logging`'s caches then would cost a pass over every logger of the process."""
        return not self.disabled and self.manager.disable < level and level >= self.getEffectiveLevel()


def log_path(logger_dir: Path, task_id: str) -> Path:
    """Where a task's log lives; `task_id` must already be validated."""
    return logger_dir / f"{task_id}.log"


def task_logger(task_id: str) -> logging.Logger:
    """The task's logger, named `task_id`: the one its running attempt uses, else a new one.

    It is registered with `logging` (so that `logging.getLogger(task_id)` finds it) only while
    an attempt has it open (see `opened`), and only if no other logger has that name.
    """
    with _lock:
        entry = _open.get(task_id)
    return entry[2] if entry is not None else TaskLogger(task_id)


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
        if sys.version_info >= (3, 11):  # earlier versions have no column markers to drop
            frame.colno = frame.end_colno = None
    for nested in (summary.__cause__, summary.__context__, *(getattr(summary, "exceptions", None) or ())):
        _drop_columns(nested, seen)


def public_error(exc: BaseException) -> str:
    """The error text a failed task shows its clients: the traceback of the task's own code.

    Frames of asynctask and of the standard library's `concurrent` and `threading` modules are
    left out, each file is named relative to the root its module was imported from
    (`examples/flaky.py`, or just `flaky.py`), never by its path on the server, and chained
    exceptions stay as `format_exception` shows them (without `^^^` markers). The full
    traceback belongs in the task's log file.
    """
    summary = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _drop_columns(summary, set())
    _keep_own_frames(summary, exc, set())
    return _scrub("".join(summary.format()).rstrip("\n"))


def _internal_roots() -> tuple[str, ...]:
    """The folders and files whose frames are the machinery around `main`, not the task's code."""
    import concurrent

    roots = [Path(__file__).resolve().parent, Path(concurrent.__file__).resolve().parent]
    return tuple(f"{root}{os.sep}" for root in roots) + (str(Path(threading.__file__).resolve()),)


_INTERNAL = _internal_roots()


def _is_internal(filename: str) -> bool:
    path = os.path.realpath(filename) if os.path.isabs(filename) else filename
    return path.startswith(_INTERNAL)


def _keep_own_frames(summary: traceback.TracebackException | None, exc: BaseException | None,
                     seen: set[int]) -> None:
    """Drop internal frames from `summary` (the summary of `exc`) and of the exceptions chained to it."""
    if summary is None or exc is None or id(summary) in seen:
        return
    seen.add(id(summary))
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    kept = traceback.StackSummary()
    if len(frames) == len(summary.stack):
        for frame, entry in zip(frames, summary.stack, strict=True):
            if not _is_internal(entry.filename):
                entry.filename = _module_relative(entry.filename, frame.f_globals.get("__name__"))
                kept.append(entry)
    else:  # not expected; never show a server path all the same
        kept.extend(entry for entry in summary.stack if not _is_internal(entry.filename))
        for entry in kept:
            entry.filename = _module_relative(entry.filename, None)
    summary.stack = kept
    _keep_own_frames(summary.__cause__, exc.__cause__, seen)
    _keep_own_frames(summary.__context__, exc.__context__, seen)
    for nested, inner in zip(getattr(summary, "exceptions", None) or (), getattr(exc, "exceptions", None) or (),
                             strict=False):
        _keep_own_frames(nested, inner, seen)


def _module_relative(filename: str, module: Any) -> str:
    """`filename` relative to the root its module `module` ('pkg.mod') was imported from."""
    if not os.path.isabs(filename):
        return filename  # "<string>", "<stdin>", already relative
    path = Path(filename)
    if isinstance(module, str) and module and module != "__main__":
        parts = module.split(".")
        if path.stem == "__init__":
            parts.append("__init__")
        tail = path.parts[-len(parts):]
        if len(tail) == len(parts) and [*tail[:-1], Path(tail[-1]).stem] == parts:
            return "/".join(tail)
    for entry in sorted((p for p in sys.path if p and os.path.isabs(p)), key=len, reverse=True):
        if filename.startswith(entry.rstrip(os.sep) + os.sep):
            return Path(os.path.relpath(filename, entry)).as_posix()
    return path.name


#: A frame line of a traceback that reached us as text (a child process's, in `RemoteTraceback`).
_FRAME_LINE = re.compile(r'^(?P<indent>\s*)File "(?P<file>[^"]+)", line (?P<rest>.*)$')
#: A line of Python 3.11's `^^^`/`~~~` column markers under a frame's source line.
_MARKERS = re.compile(r"^\s*[~^]+\s*$")


def _scrub(text: str) -> str:
    """Frames written out in exception messages (a child process's traceback, sent back as text):
    internal ones dropped, paths made relative, column markers removed."""
    out: list[str] = []
    lines = [line for line in text.split("\n") if not _MARKERS.match(line)]
    index = 0
    while index < len(lines):
        line = lines[index]
        match = _FRAME_LINE.match(line)
        index += 1
        if match is None or not os.path.isabs(match["file"]):
            out.append(line)
            continue
        # The frame's source line, if any, is indented deeper than its "File" line.
        source = None
        if index < len(lines) and not _FRAME_LINE.match(lines[index]) and \
                lines[index].startswith(match["indent"] + " ") and lines[index].strip():
            source = lines[index]
            index += 1
        if _is_internal(match["file"]):
            continue
        out.append(f'{match["indent"]}File "{_module_relative(match["file"], None)}", line {match["rest"]}')
        if source is not None:
            out.append(source)
    return "\n".join(out)


class _TaskFormatter(logging.Formatter):
    """Task log lines; tracebacks from `logger.exception` in `main` are formatted thread-safely."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return format_exception(ei[1]) if ei[1] is not None else super().formatException(ei)


def _formatter(task_id: str, trace_id: str | None) -> logging.Formatter:
    """The line format with this task's ids filled in (both are validated, brace-free text)."""
    fmt = LOG_FORMAT.replace("{task_id}", task_id).replace("{trace_id}", trace_id or "-")
    return _TaskFormatter(fmt, style="{", validate=False)  # LOG_FORMAT is fixed: no need to parse it per task


class _AppendFile:
    """A task's log file as its handler writes it: one `write` system call per line, no buffer,
    its size counted here. Opening one costs two system calls (open, seek to the end) where a
    text file costs six; each of them lets go of the GIL, and getting it back can take a busy
    process a good part of a millisecond."""

    def __init__(self, path: str, encoding: str, errors: str | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._encoding, self._errors = encoding, errors or "strict"
        self.size = os.lseek(self._fd, 0, os.SEEK_END)

    def write(self, text: str) -> None:
        data = text.encode(self._encoding, self._errors)
        self.size += len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class _TaskFileHandler(RotatingFileHandler):
    """The task's rotating file, which asynctask creates itself: written line by line through an
    `_AppendFile`, and the size check before each line is the size counted there, without the
    two `stat` calls the standard handler makes to refuse rotating a non-regular file."""

    def _open(self) -> Any:
        return _AppendFile(self.baseFilename, self.encoding or "utf-8", self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        """Write one line, rotating first if it would take the file past `maxBytes`; the line is
        formatted once (the standard handler formats it for the size check, then again)."""
        try:
            line = self.format(record) + self.terminator
            if self.stream is None:
                self.stream = self._open()
            if 0 < self.maxBytes <= self.stream.tell() + len(line) and self.stream.tell() > 0:
                self.doRollover()
                if self.stream is None:
                    self.stream = self._open()
            self.stream.write(line)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _handlers(logger_dir: Path, task_id: str, trace_id: str | None) -> list[logging.Handler]:
    formatter = _formatter(task_id, trace_id)
    handlers: list[logging.Handler] = [
        _TaskFileHandler(
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
    """Attach the task's file (and console) handlers to `logger` for the duration of an attempt.

    A `TaskLogger` from `task_logger` is also registered under the task id meanwhile, if that
    name is free; a logger of another kind (from an overridden `get_logger`) only gets the
    handlers, and is otherwise left as it is.
    """
    with _lock:
        count, handlers, used = _open.get(task_id, (0, [], logger))
        if count == 0:
            handlers = _handlers(logger_dir, task_id, trace_id)
            for handler in handlers:
                logger.addHandler(handler)
            if isinstance(logger, TaskLogger) and logger.name == task_id:
                _register(logger)
        elif not isinstance(logger, TaskLogger):
            used = logger  # an overridden `get_logger`'s logger is used as given
        _open[task_id] = (count + 1, handlers, used)
    try:
        yield used
    finally:
        with _lock:
            count, handlers, used = _open.pop(task_id)
            if count > 1:
                _open[task_id] = (count - 1, handlers, used)
            else:
                for handler in handlers:
                    used.removeHandler(handler)
                    handler.close()
                if isinstance(used, TaskLogger):
                    _forget(used)


def _register(logger: TaskLogger) -> None:
    """Register `logger` under its name, unless something has that name: a logger, a placeholder
    for existing loggers below it, or the root logger (`logging.getLogger("root")`)."""
    manager = logging.Logger.manager
    with logging._lock:  # type: ignore[attr-defined]  # the registry's own lock
        if logger.name == logging.root.name or logger.name in manager.loggerDict:
            return
        manager.loggerDict[logger.name] = logger


def _forget(logger: TaskLogger) -> None:
    """Take a finished task's logger out of logging's registry, which otherwise keeps every
    logger forever. Loggers made below it meanwhile ('id.part') get the parent they would have
    had without it, and the task logger itself goes back to a plain logger's settings, in case
    code other than the task kept it."""
    manager = logging.Logger.manager
    with logging._lock:  # type: ignore[attr-defined]
        registry = manager.loggerDict
        if registry.get(logger.name) is logger:
            del registry[logger.name]
            children = [
                child for child in list(registry.values())
                if isinstance(child, logging.Logger) and child.parent is logger
            ]
            for child in children:
                manager._fixupParents(child)  # type: ignore[attr-defined]
            if children:
                children[0].setLevel(children[0].level)  # clears the levels the children cached
        logger.propagate = True
        logger.level = logging.NOTSET  # not setLevel: its cache clearing passes over every logger


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
