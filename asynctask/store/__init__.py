"""Where tasks are kept: the task documents (the queue), the worker registry and concurrency
slots, the stats, the in-memory store, and which collection to use.

- `tasks`: every database call on the task documents of one type, and the indexes they use.
- `registry`: live workers and `max_concurrency` slots, in companion collections.
- `stats`: per-minute figures over a bounded time window.
- `memory/`: the embedded store, an indexed in-memory collection behind one lock.
- `connection`: MongoDB when `ASYNCTASK_MONGO_URI` is set, else memory.
"""

from .tasks import PUBLIC_FIELDS, TaskStore, utcnow

__all__ = ["PUBLIC_FIELDS", "TaskStore", "utcnow"]
