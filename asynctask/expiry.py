"""Removal of the log files of tasks that expired (`result_ttl`).

MongoDB's TTL monitor removes expired task documents; a worker's sweep then removes their log
files, checking at most once a minute per folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from .logs import log_files

#: The next time each log folder is looked at (monotonic seconds).
_next_look: dict[Path, float] = {}
_BATCH = 500


def remove_expired_logs(logger_dir: Path, ttl: timedelta, existing: Callable[[list[str]], set[str]]) -> None:
    """Remove log files older than `ttl` whose task no longer exists (per `existing(ids)`)."""
    now = time.monotonic()
    if now < _next_look.get(logger_dir, 0.0):
        return
    _next_look[logger_dir] = now + min(60.0, ttl.total_seconds())
    cutoff = time.time() - ttl.total_seconds()
    old = {
        task_id: paths for task_id, paths in log_files(logger_dir).items()
        if all(_modified(path) < cutoff for path in paths)
    }
    ids = list(old)
    for start in range(0, len(ids), _BATCH):
        batch = ids[start:start + _BATCH]
        for task_id in set(batch) - existing(batch):
            for path in old[task_id]:
                path.unlink(missing_ok=True)


def _modified(path: Path) -> float:
    """When a file was last written; a file another process just removed counts as new."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
