"""Values made once per process: forgotten in a child that `os.fork` makes.

Threads, pools and database clients do not survive a fork (gunicorn forks its workers after
`--preload` loads the app). A `PerProcess` value is made on first use and dropped in every
forked child by one `os.register_at_fork` hook, as CPython's own executors do, instead of
comparing pids on every call.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_all: weakref.WeakSet[PerProcess] = weakref.WeakSet()


class PerProcess(Generic[T]):
    """`get()` gives the value `make()` made in this process, making it on first use."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._lock = threading.Lock()
        _all.add(self)

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._make()
                value = self._value
        return value

    def peek(self) -> T | None:
        """The value if this process made it already, else None (nothing is made)."""
        return self._value

    def take(self) -> T | None:
        """Forget the value and return it (to shut it down); the next `get()` makes a new one."""
        with self._lock:
            value, self._value = self._value, None
        return value

    def _forget(self) -> None:
        self._value = None
        self._lock = threading.Lock()


def _after_fork_in_child() -> None:
    for value in list(_all):
        value._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)
