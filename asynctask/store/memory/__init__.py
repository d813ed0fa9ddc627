"""The embedded store: a thread-safe, indexed, pymongo-like collection in this process's memory.

- `collection.py`: `MemoryCollection` and `MemoryDatabase`, the pymongo surface, one lock;
- `documents.py`: one collection's documents, its structures and the query planner;
- `indexes.py`: the structures (hash, sorted, unique, TTL, counts);
- `updates.py`: the update operators, copy-on-write;
- `values.py`: how values are stored, copied and ordered.
"""

from .collection import MemoryCollection, MemoryDatabase

__all__ = ["MemoryCollection", "MemoryDatabase"]
