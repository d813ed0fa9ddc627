"""mongomock with indexes: the engine behind `asynctask.MemoryCollection`.

mongomock answers every query by running its filter engine on every document. This module
subclasses its client, database, collection and store so that a query runs the same filter
engine (`mongomock.filtering.filter_applies`) and the same update engine only on the few
candidate documents an index yields; what no index serves falls back to mongomock's scan.
Answers, order of results, update effects and `DuplicateKeyError`s stay mongomock's own.

The store keeps, next to mongomock's ordered dict of documents, one insertion number per
document (mongomock returns unsorted results, and breaks sort ties, in insertion order) and
these structures, each updated on every write from the document's current values:

- hash indexes, field value -> documents, on `task_id`, `type`, `status`, `owner`, on the
  fields of unique indexes and on the leading field of every index created: they serve a
  top-level equality or `$in` on that field (`_id` is served by the document dict itself);
- sorted indexes: per partition (the values of a few equality fields, e.g. `(type, status)`),
  a `sortedcontainers.SortedList` ordered by a sort key, then insertion number. They serve a
  sort equal to their key when the filter pins the partition (the claim's priority/run_at
  order, the list's created_at/task_id order): the scan walks the partition in order and
  stops once `skip + limit` documents matched. They also serve a `$lt/$lte/$gt/$gte` range
  on their first sort field (time windows, due tasks) by bisection;
- unique indexes, key -> documents, so a unique key is checked in O(1);
- TTL indexes ordered by expiry time, so mongomock's expiry (which it runs by scanning the
  whole collection on every access) costs nothing until a document is due;
- per-partition counts by `status`, which answer `[{"$match": {"type": T}}, {"$group":
  {"_id": "$status", "n": {"$sum": 1}}}]` without reading documents.

For each filter the planner picks the structure yielding the fewest candidates. Documents
whose indexed values are not plain scalars (lists, sub-documents, NaN, bytes) stay outside a
hash bucket (they are always candidates) or make a sorted index decline queries, so an index
never drops a document mongomock would match. Not thread-safe: `MemoryCollection` (and the
test wire server) run every call under one lock.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import mongomock
from bson import ObjectId
from mongomock import aggregate as mm_aggregate
from mongomock import codec_options as mm_codec_options
from mongomock import helpers
from mongomock import read_preferences as mm_read_preferences
from mongomock import store as mm_store
from mongomock.collection import Collection, Cursor
from mongomock.command_cursor import CommandCursor
from mongomock.database import Database
from mongomock.filtering import filter_applies
from mongomock.mongo_client import MongoClient
from pymongo.errors import DuplicateKeyError
from sortedcontainers import SortedList

__all__ = [
    "DEFAULT_HASH_FIELDS", "DEFAULT_SORTED_INDEXES", "DEFAULT_GROUP_COUNTS",
    "IndexedCollection", "IndexedCollectionStore", "IndexedDatabase", "IndexedMongoClient",
]

#: Fields always hash-indexed, whatever indexes were created.
DEFAULT_HASH_FIELDS: tuple[str, ...] = ("task_id", "type", "status", "owner")
#: (partition fields, sort key) of the sorted indexes kept whatever indexes were created.
DEFAULT_SORTED_INDEXES: tuple[tuple[tuple[str, ...], tuple[tuple[str, int], ...]], ...] = (
    (("type", "status"), (("priority", -1), ("run_at", 1))),  # the claim
    (("type", "status"), (("run_at", 1),)),  # the next due task, due counts
    (("type",), (("created_at", -1), ("task_id", 1))),  # the list; created_at windows
    (("type", "status"), (("created_at", -1), ("task_id", 1))),  # the list by status
    (("type",), (("started_at", 1),)),  # started_at windows
    (("type",), (("finished_at", 1),)),  # finished_at windows
)
#: (partition fields, grouped field) of the counts kept for `$group` by status.
DEFAULT_GROUP_COUNTS: tuple[tuple[tuple[str, ...], str], ...] = ((("type",), "status"), ((), "status"))
#: Leading fields of a created index taken as the partition of the sorted index derived from it.
CATEGORICAL_FIELDS = frozenset({"type", "status", "owner"})
#: Below this many candidates a hash plan plus mongomock's sort beats walking a sorted index.
SMALL_PLAN = 64

Key = Any  # a store key: a document's `_id`, or its `helpers.hashdict`


class _Marker:
    """A named sentinel."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_WILD = _Marker("WILD")  # a value no hash bucket holds: the document is always a candidate
_IRREGULAR = _Marker("IRREGULAR")  # a value a sorted or unique index cannot place
_SKIP = _Marker("SKIP")  # a sparse unique index ignores the document
_ABSENT = _Marker("ABSENT")


@functools.total_ordering
class _Bound:
    """Lower or higher than every other value, to bisect a range of tuples."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def __eq__(self, other: object) -> bool:
        return self is other

    def __lt__(self, other: object) -> bool:
        return self is not other and not self.high

    def __gt__(self, other: object) -> bool:
        return self is not other and self.high

    __hash__ = object.__hash__


_LOW, _HIGH = _Bound(False), _Bound(True)


class _Desc:
    """A sort component in descending order."""

    __slots__ = ("k",)

    def __init__(self, k: Any) -> None:
        self.k = k

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.k == other.k

    def __lt__(self, other: object) -> bool:
        if isinstance(other, _Desc):
            return bool(other.k < self.k)
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, _Desc):
            return bool(self.k < other.k)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Desc({self.k!r})"


_SIMPLE_TYPES = (str, int, float, datetime, ObjectId)


def _is_simple(value: Any) -> bool:
    """A scalar whose Python equality and hash agree with mongomock's equality (bool, int and
    float compare equal across types in both)."""
    if value is None:
        return True
    if isinstance(value, _SIMPLE_TYPES):
        return not (isinstance(value, float) and value != value)
    return False


def _hash_key(value: Any) -> Any:
    """The bucket of a document's value (missing and null share `None`), or `_WILD`."""
    return value if _is_simple(value) else _WILD


def _enc(value: Any) -> tuple[int, Any] | None:
    """The value as mongomock's BSON sort order compares it, `(type rank, value)`; None if the
    value is not a scalar this module orders (mongomock ranks missing like null)."""
    if value is None:
        return (5, 0)
    if isinstance(value, bool):
        return (40, value)
    if isinstance(value, (int, float)):
        return None if value != value else (10, value)
    if isinstance(value, str):
        return (15, value)
    if isinstance(value, ObjectId):
        return (35, value)
    if isinstance(value, datetime):
        return None if value.tzinfo is not None else (45, value)
    return None


def _is_operators(search: Any) -> bool:
    return isinstance(search, dict) and bool(search) and all(
        isinstance(k, str) and k.startswith("$") for k in search
    )


def _eq_values(search: Any) -> tuple[list[Any], bool] | None:
    """Values an equality or `$in` condition can only match, and whether the condition is
    nothing else; None if the condition is no such thing."""
    if isinstance(search, dict):
        if not _is_operators(search):
            return None
        if "$eq" in search:
            value = search["$eq"]
            return ([value], len(search) == 1) if _is_simple(value) else None
        values = search.get("$in")
        if isinstance(values, (list, tuple)) and all(_is_simple(v) for v in values):
            return list(dict.fromkeys(values)), len(search) == 1
        return None
    return ([search], True) if _is_simple(search) else None


_RANGE_OPS = {"$gt": (True, False), "$gte": (True, True), "$lt": (False, False), "$lte": (False, True)}
_EMPTY_RANGE = _Marker("EMPTY_RANGE")


def _range(search: Any) -> Any:
    """`(lo, lo_inclusive, hi, hi_inclusive, exact)` in `_enc` space for the `$gt/$gte/$lt/$lte`
    of a condition (values of another BSON type never match: type bracketing), `_EMPTY_RANGE`,
    or None if the condition has no usable bound."""
    if not _is_operators(search):
        return None
    lo = hi = None
    lo_incl = hi_incl = True
    rank = None
    only = True
    for op, operand in search.items():
        if op not in _RANGE_OPS:
            only = False
            continue
        encoded = _enc(operand)
        if encoded is None:
            return None
        if rank is None:
            rank = encoded[0]
        elif rank != encoded[0]:
            return _EMPTY_RANGE
        is_low, inclusive = _RANGE_OPS[op]
        if is_low:
            if lo is None or encoded > lo or (encoded == lo and not inclusive):
                lo, lo_incl = encoded, inclusive
        elif hi is None or encoded < hi or (encoded == hi and not inclusive):
            hi, hi_incl = encoded, inclusive
    if rank is None:
        return None
    if lo is None:
        lo, lo_incl = (rank, _LOW), True
    if hi is None:
        hi, hi_incl = (rank, _HIGH), True
    # A missing field ranks like null but matches no bound: only non-null ranges are exact.
    return lo, lo_incl, hi, hi_incl, only and rank != 5


def _dotted(doc: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (None when missing), `_WILD` across an array."""
    current: Any = doc
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, (list, tuple)):
            return _WILD
        else:
            return None
    return current


def _store_key(doc_id: Any) -> Key:
    return helpers.hashdict(doc_id) if isinstance(doc_id, dict) else doc_id


# -- the structures kept per document ---------------------------------------------------------


class _Structure:
    """Something kept up to date from every document; `tokens` is what each document was
    filed under, so a document changed in place can be refiled."""

    def __init__(self) -> None:
        self.tokens: dict[Key, Any] = {}

    def token(self, doc: Mapping[str, Any], seq: int) -> Any:
        raise NotImplementedError

    def add(self, key: Key, seq: int, token: Any) -> None:
        raise NotImplementedError

    def remove(self, key: Key, seq: int, token: Any) -> None:
        raise NotImplementedError

    def refile(self, key: Key, seq: int, doc: Mapping[str, Any]) -> None:
        new = self.token(doc, seq)
        old = self.tokens.get(key, _ABSENT)
        if old is not _ABSENT:
            if type(old) is type(new) and old == new:
                return
            self.remove(key, seq, old)
        self.add(key, seq, new)
        self.tokens[key] = new

    def discard(self, key: Key, seq: int) -> None:
        old = self.tokens.pop(key, _ABSENT)
        if old is not _ABSENT:
            self.remove(key, seq, old)


class _HashIndex(_Structure):
    def __init__(self, field: str) -> None:
        super().__init__()
        self.field = field
        self.buckets: dict[Any, set[Key]] = {}
        self.wild: set[Key] = set()

    def token(self, doc: Mapping[str, Any], seq: int) -> Any:
        return _hash_key(doc.get(self.field))

    def add(self, key: Key, seq: int, token: Any) -> None:
        if token is _WILD:
            self.wild.add(key)
        else:
            self.buckets.setdefault(token, set()).add(key)

    def remove(self, key: Key, seq: int, token: Any) -> None:
        if token is _WILD:
            self.wild.discard(key)
            return
        bucket = self.buckets[token]
        bucket.discard(key)
        if not bucket:
            del self.buckets[token]

    def size(self, values: list[Any]) -> int:
        return sum(len(self.buckets.get(v, ())) for v in values) + len(self.wild)

    def keys(self, values: list[Any]) -> Iterator[Key]:
        for value in values:
            yield from self.buckets.get(value, ())
        yield from self.wild


class _SortedIndex(_Structure):
    def __init__(self, partition: tuple[str, ...], order: tuple[tuple[str, int], ...]) -> None:
        super().__init__()
        self.partition = partition
        self.order = order
        self.parts: dict[tuple[Any, ...], SortedList] = {}
        self.irregular: set[Key] = set()

    def token(self, doc: Mapping[str, Any], seq: int) -> Any:
        pkey = []
        for field in self.partition:
            value = _hash_key(doc.get(field))
            if value is _WILD:
                return _IRREGULAR
            pkey.append(value)
        entry: list[Any] = []
        for field, direction in self.order:
            encoded = _enc(doc.get(field))
            if encoded is None:
                return _IRREGULAR
            entry.append(encoded if direction > 0 else _Desc(encoded))
        entry.append(seq)
        return tuple(pkey), tuple(entry)

    def add(self, key: Key, seq: int, token: Any) -> None:
        if token is _IRREGULAR:
            self.irregular.add(key)
            return
        pkey, entry = token
        part = self.parts.get(pkey)
        if part is None:
            part = self.parts[pkey] = SortedList()
        part.add(entry)

    def remove(self, key: Key, seq: int, token: Any) -> None:
        if token is _IRREGULAR:
            self.irregular.discard(key)
            return
        pkey, entry = token
        part = self.parts[pkey]
        part.remove(entry)
        if not part:
            del self.parts[pkey]

    def window(self, part: SortedList, rng: Any) -> tuple[int, int]:
        """Positions `[i, j)` of the entries whose first sort value lies in `rng`."""
        if rng is None:
            return 0, len(part)
        if rng is _EMPTY_RANGE:
            return 0, 0
        lo, lo_incl, hi, hi_incl, _ = rng
        if self.order[0][1] > 0:
            i = part.bisect_left((lo,) if lo_incl else (lo, _HIGH))
            j = part.bisect_left((hi, _HIGH) if hi_incl else (hi,))
        else:
            i = part.bisect_left((_Desc(hi),) if hi_incl else (_Desc(hi), _HIGH))
            j = part.bisect_left((_Desc(lo), _HIGH) if lo_incl else (_Desc(lo),))
        return i, max(i, j)


class _UniqueIndex(_Structure):
    def __init__(self, name: str, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.name = name
        self.fields = [field for field, _ in spec["key"]]
        self.sparse = bool(spec.get("sparse"))
        self.partial = spec.get("partialFilterExpression")
        self.buckets: dict[tuple[Any, ...], set[Key]] = {}
        self.irregular: set[Key] = set()

    def token(self, doc: Mapping[str, Any], seq: int) -> Any:
        if self.partial is not None:
            return _IRREGULAR
        values = []
        for field in self.fields:
            value = _hash_key(_dotted(doc, field))
            if value is _WILD:
                return _IRREGULAR
            values.append(value)
        if self.sparse and all(v is None for v in values):
            return _SKIP
        return tuple(values)

    def add(self, key: Key, seq: int, token: Any) -> None:
        if token is _IRREGULAR:
            self.irregular.add(key)
        elif token is not _SKIP:
            self.buckets.setdefault(token, set()).add(key)

    def remove(self, key: Key, seq: int, token: Any) -> None:
        if token is _IRREGULAR:
            self.irregular.discard(key)
        elif token is not _SKIP:
            bucket = self.buckets[token]
            bucket.discard(key)
            if not bucket:
                del self.buckets[token]

    def violated(self, collection: IndexedCollection, key: Key, doc: Mapping[str, Any]) -> bool:
        """mongomock's check (more than one document matches the new document's key, as an
        equality query), answered from the buckets unless a document is irregular."""
        token = self.tokens.get(key, _ABSENT)
        if token is _SKIP:
            return False
        query: dict[str, Any] = {}
        for field in self.fields:
            try:
                query[field] = helpers.get_value_by_dot(doc, field)
            except KeyError:
                query[field] = None
        if token is _IRREGULAR or token is _ABSENT:
            if self.sparse and set(query.values()) == {None}:
                return False
            if self.partial is not None:
                query = {"$and": [self.partial, query]}
            return sum(1 for _ in collection._iter_documents(query)) > 1
        count = len(self.buckets.get(token, ()))
        if self.irregular:
            documents = collection._store._documents
            count += sum(1 for k in self.irregular if filter_applies(query, documents[k]))
        return count > 1


class _TTLIndex(_Structure):
    def __init__(self, field: str, seconds: int) -> None:
        super().__init__()
        self.field = field
        self.seconds = seconds
        self.due: SortedList = SortedList()

    def token(self, doc: Mapping[str, Any], seq: int) -> Any:
        # mongomock's own reading of the field: the earliest date of a list, nothing falsy.
        value = mm_store._get_min_datetime_from_value(doc.get(self.field))
        if not isinstance(value, datetime) or value.tzinfo is not None or value == datetime.max:
            return None
        try:
            return value + timedelta(seconds=self.seconds), seq
        except OverflowError:
            return None

    def add(self, key: Key, seq: int, token: Any) -> None:
        if token is not None:
            self.due.add(token)

    def remove(self, key: Key, seq: int, token: Any) -> None:
        if token is not None:
            self.due.remove(token)


class _GroupCounts(_Structure):
    def __init__(self, partition: tuple[str, ...], field: str) -> None:
        super().__init__()
        self.partition = partition
        self.field = field
        self.counts: dict[tuple[Any, ...], dict[Any, int]] = {}
        self.irregular: set[Key] = set()

    def token(self, doc: Mapping[str, Any], seq: int) -> Any:
        values = [_hash_key(doc.get(f)) for f in (*self.partition, self.field)]
        if any(v is _WILD for v in values):
            return _IRREGULAR
        return tuple(values[:-1]), values[-1]

    def add(self, key: Key, seq: int, token: Any) -> None:
        if token is _IRREGULAR:
            self.irregular.add(key)
            return
        pkey, group = token
        counts = self.counts.setdefault(pkey, {})
        counts[group] = counts.get(group, 0) + 1

    def remove(self, key: Key, seq: int, token: Any) -> None:
        if token is _IRREGULAR:
            self.irregular.discard(key)
            return
        pkey, group = token
        counts = self.counts[pkey]
        counts[group] -= 1
        if not counts[group]:
            del counts[group]
            if not counts:
                del self.counts[pkey]


# -- the store -----------------------------------------------------------------------------------

Plan = tuple[int, Callable[[], Iterable[Key]]]


class IndexedCollectionStore(mm_store.CollectionStore):
    """mongomock's store of one collection, with the structures above kept up to date."""

    def __init__(self, name: str) -> None:
        self._structures: dict[tuple[Any, ...], _Structure] = {}
        self._hash: dict[str, _HashIndex] = {}
        self._sorted: list[_SortedIndex] = []
        self._uniques: list[_UniqueIndex] = []
        self._ttls: list[_TTLIndex] = []
        self._groups: list[_GroupCounts] = []
        self._seq: dict[Key, int] = {}
        self._by_seq: dict[int, Key] = {}
        self._counter = itertools.count()
        self._index_specs: dict[str, Any] = {}
        self.just_filed: Any = None  # the document `__setitem__` filed last
        super().__init__(name)
        self._sync_structures()

    # mongomock assigns `indexes` directly (drop_indexes), so it is a property here.
    @property
    def indexes(self) -> dict[str, Any]:
        return self._index_specs

    @indexes.setter
    def indexes(self, value: dict[str, Any]) -> None:
        self._index_specs = value
        if hasattr(self, "_ttl_indexes"):
            self._sync_structures()

    def _wanted(self) -> dict[tuple[Any, ...], Callable[[], _Structure]]:
        """Every structure the defaults and the created indexes call for."""
        wanted: dict[tuple[Any, ...], Callable[[], _Structure]] = {}
        hash_fields = list(DEFAULT_HASH_FIELDS)
        sorted_specs = list(DEFAULT_SORTED_INDEXES)
        ttl_names = set(getattr(self, "_ttl_indexes", {}))
        for name, spec in self._index_specs.items():
            keys = [(field, -1 if direction == -1 else 1) for field, direction in spec["key"]]
            if spec.get("unique"):
                wanted[("unique", name, repr(spec))] = functools.partial(_UniqueIndex, name, spec)
                hash_fields += [field for field, _ in keys]
            if name in ttl_names or any("." in field for field, _ in keys):
                continue
            hash_fields.append(keys[0][0])
            split = 0
            while split < len(keys) and keys[split][0] in CATEGORICAL_FIELDS:
                split += 1
            if split < len(keys) and not (spec.get("unique") and len(keys) == 1):
                sorted_specs.append((tuple(f for f, _ in keys[:split]), tuple(keys[split:])))
        for field in hash_fields:
            if "." not in field and field != "_id":
                wanted[("hash", field)] = functools.partial(_HashIndex, field)
        for partition, order in sorted_specs:
            wanted[("sorted", partition, order)] = functools.partial(_SortedIndex, partition, order)
        for name, spec in getattr(self, "_ttl_indexes", {}).items():
            if len(spec["key"]) != 1:
                continue  # mongomock ignores compound TTL indexes
            try:
                seconds = int(spec["expireAfterSeconds"])
            except (TypeError, ValueError):
                continue
            field = spec["key"][0][0]
            wanted[("ttl", name, field, seconds)] = functools.partial(_TTLIndex, field, seconds)
        for partition, field in DEFAULT_GROUP_COUNTS:
            wanted[("group", partition, field)] = functools.partial(_GroupCounts, partition, field)
        return wanted

    def _sync_structures(self) -> None:
        """Build the structures newly called for (one pass over the documents), drop the rest."""
        wanted = self._wanted()
        structures = {}
        for spec, make in wanted.items():
            structure = self._structures.get(spec)
            if structure is None:
                structure = make()
                for key, doc in self._documents.items():
                    structure.refile(key, self._seq[key], doc)
            structures[spec] = structure
        self._structures = structures
        self._hash = {s.field: s for s in structures.values() if isinstance(s, _HashIndex)}
        self._sorted = [s for s in structures.values() if isinstance(s, _SortedIndex)]
        self._ttls = [s for s in structures.values() if isinstance(s, _TTLIndex)]
        self._groups = [s for s in structures.values() if isinstance(s, _GroupCounts)]
        uniques = {s.name: s for s in structures.values() if isinstance(s, _UniqueIndex)}
        self._uniques = [uniques[name] for name in self._index_specs if name in uniques]

    # -- mongomock's store interface --

    def create_index(self, index_name: str, index_dict: dict[str, Any]) -> None:
        super().create_index(index_name, index_dict)
        self._sync_structures()

    def drop_index(self, index_name: str) -> None:
        super().drop_index(index_name)
        self._sync_structures()

    def drop(self) -> None:
        super().drop()
        self._structures = {}
        self._seq.clear()
        self._by_seq.clear()
        self._sync_structures()

    def __setitem__(self, key: Key, val: Any) -> None:
        is_new = key not in self._documents
        super().__setitem__(key, val)
        if is_new:
            seq = next(self._counter)
            self._seq[key] = seq
            self._by_seq[seq] = key
        self.refile(key)
        self.just_filed = val

    def __delitem__(self, key: Key) -> None:
        super().__delitem__(key)
        seq = self._seq.pop(key)
        del self._by_seq[seq]
        for structure in self._structures.values():
            structure.discard(key, seq)

    def _remove_expired_documents(self) -> None:
        if not self._ttls:
            return
        now = mongomock.utcnow()  # type: ignore[attr-defined]
        for ttl in self._ttls:
            while ttl.due and ttl.due[0][0] <= now:
                del self[self._by_seq[ttl.due[0][1]]]

    # -- indexing --

    def refile(self, key: Key) -> None:
        """File the document stored under `key` by its current values (it may have changed in place)."""
        doc = self._documents.get(key)
        if doc is None:
            return
        seq = self._seq[key]
        for structure in self._structures.values():
            structure.refile(key, seq, doc)

    def in_order(self, keys: Iterable[Key]) -> list[Key]:
        """Distinct `keys` in insertion order, mongomock's order of unsorted results."""
        return sorted(set(keys), key=self._seq.__getitem__)

    # -- planning --

    def _sorted_choices(self, spec: Mapping[str, Any]) -> Iterator[tuple[_SortedIndex, list[tuple[Any, ...]], Any, bool]]:
        """Sorted indexes whose partition the filter pins: (index, partitions, range, exact)."""
        for index in self._sorted:
            if index.irregular:
                continue
            values = []
            exact = True
            for field in index.partition:
                found = _eq_values(spec[field]) if field in spec else None
                if found is None:
                    break
                values.append(found[0])
                exact = exact and found[1]
            else:
                first = index.order[0][0]
                rng = _range(spec[first]) if first in spec else None
                used = set(index.partition) | ({first} if rng is not None else set())
                exact = exact and set(spec) == used and (rng is None or rng is _EMPTY_RANGE or rng[4])
                pkeys = list(dict.fromkeys(itertools.product(*values)))
                yield index, pkeys, rng, exact

    def _plans(self, spec: Any) -> list[Plan]:
        """Every index plan for `spec`: (number of candidates, candidates)."""
        plans: list[Plan] = []
        if not isinstance(spec, dict):
            return plans
        for field, search in spec.items():
            if not isinstance(field, str):
                continue
            if field == "$and" and isinstance(search, list):
                plans.extend(p for p in (self._best(sub) for sub in search) if p is not None)
                continue
            if field == "$or" and isinstance(search, list) and search:
                branches = [self._best(sub) for sub in search]
                if all(b is not None for b in branches):
                    plans.append((
                        sum(b[0] for b in branches if b is not None),
                        functools.partial(_chain_plans, branches),
                    ))
                continue
            if field.startswith("$"):
                continue
            found = _eq_values(search)
            if found is None:
                continue
            values = found[0]
            if field == "_id":
                documents = self._documents
                plans.append((len(values), functools.partial(_present, values, documents)))
            elif field in self._hash:
                hashed = self._hash[field]
                plans.append((hashed.size(values), functools.partial(hashed.keys, values)))
        for index, pkeys, rng, _ in self._sorted_choices(spec):
            plans.append(self._sorted_plan(index, pkeys, rng))
        return plans

    def _sorted_plan(self, index: _SortedIndex, pkeys: list[tuple[Any, ...]], rng: Any) -> Plan:
        windows = []
        for pkey in pkeys:
            part = index.parts.get(pkey)
            if part is not None:
                i, j = index.window(part, rng)
                if j > i:
                    windows.append((part, i, j))
        by_seq = self._by_seq

        def keys() -> Iterator[Key]:
            for part, i, j in windows:
                for entry in part.islice(i, j):
                    yield by_seq[entry[-1]]

        return sum(j - i for _, i, j in windows), keys

    def _best(self, spec: Any) -> Plan | None:
        plans = self._plans(spec)
        return min(plans, key=lambda p: p[0]) if plans else None

    def candidates(self, spec: Any) -> list[Key] | None:
        """The keys of the documents that may match `spec`, in insertion order; None for all."""
        best = self._best(spec)
        if best is None or best[0] >= len(self._documents):
            return None
        return self.in_order(best[1]())

    def ordered(self, spec: Any, sort: Any, skip: int) -> tuple[Iterator[Key], int] | None:
        """Keys of candidates in the order of `sort` (ties in insertion order) from a sorted index,
        and how many matches of `skip` were already passed over; None if no index serves."""
        if not isinstance(spec, dict):
            return None
        try:
            order = tuple((k, -1 if d < 0 else 1) for k, d in sort)
        except (TypeError, ValueError):
            return None
        if any(not isinstance(k, str) or k.startswith("$") for k, _ in order):
            return None
        choices = [
            (self._sorted_plan(index, pkeys, rng)[0], index, pkeys, rng, exact)
            for index, pkeys, rng, exact in self._sorted_choices(spec)
            if index.order == order
        ]
        if not choices:
            return None
        size, index, pkeys, rng, exact = min(choices, key=lambda c: c[0])
        best = self._best(spec)
        if best is not None and best[0] <= SMALL_PLAN and best[0] < size:
            return None  # sort the few candidates as mongomock does
        iterators = []
        skipped = 0
        for pkey in pkeys:
            part = index.parts.get(pkey)
            if part is None:
                continue
            i, j = index.window(part, rng)
            if exact and len(pkeys) == 1:
                skipped = min(skip, j - i)
                i += skipped
            iterators.append(part.islice(i, j))
        merged = iterators[0] if len(iterators) == 1 else heapq.merge(*iterators)
        by_seq = self._by_seq
        return (by_seq[entry[-1]] for entry in merged), skipped

    def exact_count(self, spec: Any) -> int | None:
        """The number of matches when an index answers `spec` exactly, else None."""
        if not isinstance(spec, dict):
            return None
        if not spec:
            return len(self._documents)
        if len(spec) == 1:
            field, search = next(iter(spec.items()))
            hashed = self._hash.get(field) if isinstance(field, str) else None
            found = _eq_values(search)
            if hashed is not None and not hashed.wild and found is not None and found[1]:
                return hashed.size(found[0])
        for index, pkeys, rng, exact in self._sorted_choices(spec):
            if exact:
                return self._sorted_plan(index, pkeys, rng)[0]
        return None

    def group_counts(self, pipeline: list[Any]) -> list[dict[str, Any]] | None:
        """`[{"$match": {f: v}}?, {"$group": {"_id": "$g", name: {"$sum": 1}}}]` from the counts."""
        if not 1 <= len(pipeline) <= 2 or not all(isinstance(s, dict) and len(s) == 1 for s in pipeline):
            return None
        match: Any = pipeline[0].get("$match", {}) if len(pipeline) == 2 else {}
        group = pipeline[-1].get("$group")
        if not isinstance(match, dict) or not isinstance(group, dict) or len(group) != 2:
            return None
        group_id = group.get("_id")
        if not isinstance(group_id, str) or not group_id.startswith("$") or "." in group_id:
            return None
        (name, accumulator), = ((k, v) for k, v in group.items() if k != "_id")
        if accumulator != {"$sum": 1} or type(accumulator["$sum"]) is not int or name.startswith("$"):
            return None
        values = []
        for field, search in match.items():
            found = _eq_values(search) if isinstance(field, str) else None
            if found is None or not found[1] or len(found[0]) != 1:
                return None
            values.append((field, found[0][0]))
        for counts in self._groups:
            if counts.field != group_id[1:] or set(counts.partition) != {f for f, _ in values}:
                continue
            if counts.irregular:
                return None
            pkey = tuple(dict(values)[f] for f in counts.partition)
            groups = counts.counts.get(pkey, {})
            if not all(g is None or isinstance(g, str) for g in groups):
                return None
            ordered = sorted(groups.items(), key=lambda item: (item[0] is not None, item[0] or ""))
            return [{name: n, "_id": g} for g, n in ordered]
        return None


def _present(values: list[Any], documents: Mapping[Key, Any]) -> list[Key]:
    return [v for v in values if v in documents]


def _chain_plans(plans: list[Plan | None]) -> Iterator[Key]:
    for plan in plans:
        if plan is not None:
            yield from plan[1]()


# -- client, database, collection, cursor ------------------------------------------------------


class IndexedCursor(Cursor):
    """mongomock's cursor, computing only `skip + limit` results when a limit is set."""

    _window: list[Any] | None = None
    _window_of: Any = None

    def _compute_results(self, with_limit_and_skip: bool = False) -> list[Any]:
        if not (with_limit_and_skip and self._limit):
            return super()._compute_results(with_limit_and_skip)
        signature = (self._factory, self._skip, self._limit)
        if self._window is None or self._window_of != signature:
            found = self.collection._dataset(self._spec, self._sort, self._projection, dict, self._skip)
            results = list(itertools.islice(found, abs(self._limit)))
            if self.collection.codec_options.tz_aware:
                results = [helpers.make_datetime_timezone_aware_in_document(x) for x in results]
            self._window, self._window_of = results, signature
        return self._window

    def clone(self) -> IndexedCursor:
        cursor = super().clone()
        cursor.__class__ = IndexedCursor
        return cursor


class IndexedCollection(Collection):
    """mongomock's `Collection` reading candidates from `IndexedCollectionStore`'s indexes."""

    _touched: list[Key] | None = None
    _refiled: set[Key] | None = None

    @property
    def _store(self) -> IndexedCollectionStore:
        return self._db_store[self._name]

    def _iter_documents(self, filter: Any) -> Iterator[dict[str, Any]]:  # noqa: A002 - mongomock's name
        store = self._store
        if store.is_empty:
            filter_applies(filter, {})  # mongomock validates the filter even on no document
            return iter(())
        keys = store.candidates(filter)
        documents = store._documents
        pairs = list(documents.items()) if keys is None else [(k, documents[k]) for k in keys]
        touched = self._touched

        def matching() -> Iterator[dict[str, Any]]:
            for key, doc in pairs:
                if filter_applies(filter, doc):
                    if touched is not None:
                        touched.append(key)
                    yield doc

        return matching()

    def _update(self, spec: Any, document: Any, *args: Any, **kwargs: Any) -> Any:
        # mongomock updates documents in place; refile every one it matched afterwards.
        outer = self._touched
        touched: list[Key] = []
        refiled: set[Key] = set()
        self._touched, self._refiled = touched, refiled
        store = self._store
        store.just_filed = None
        try:
            return super()._update(spec, document, *args, **kwargs)
        finally:
            self._touched, self._refiled = outer, None
            for key in touched:
                if key not in refiled:  # unchanged as Python compares, yet 1 may have become True
                    store.refile(key)

    def _ensure_uniques(self, new_data: Any) -> None:
        store = self._store
        key = _store_key(new_data.get("_id"))
        if store.just_filed is not new_data and store._documents.get(key) is new_data:
            store.refile(key)  # changed in place by an update
            if self._refiled is not None:
                self._refiled.add(key)
        store.just_filed = None
        for unique in store._uniques:
            if unique.violated(self, key, new_data):
                raise DuplicateKeyError("E11000 Duplicate Key Error", 11000)

    def find(self, *args: Any, **kwargs: Any) -> IndexedCursor:
        cursor = super().find(*args, **kwargs)
        cursor.__class__ = IndexedCursor
        return cursor

    def find_one(self, filter: Any = None, *args: Any, **kwargs: Any) -> Any:  # noqa: A002
        if filter is None:
            filter = {}
        if not isinstance(filter, Mapping):
            filter = {"_id": filter}
        cursor = self.find(filter, *args, **kwargs).limit(1)  # as pymongo: limit(-1)
        try:
            return next(cursor)
        except StopIteration:
            return None

    def _get_dataset(self, spec: Any, sort: Any, fields: Any, as_class: Any) -> Iterator[Any]:
        return self._dataset(spec, sort, fields, as_class, 0)

    def _dataset(self, spec: Any, sort: Any, fields: Any, as_class: Any, skip: int) -> Iterator[Any]:
        """The results after `skip` matches, lazily when a sorted index gives the order."""
        store = self._store
        if sort and not store.is_empty:
            ordered = store.ordered(spec, sort.items() if isinstance(sort, dict) else sort, skip)
            if ordered is not None:
                keys, skipped = ordered
                return self._matching(spec, keys, fields, as_class, skip - skipped)
        found = super()._get_dataset(spec, sort, fields, as_class)
        return itertools.islice(found, skip, None) if skip else found

    def _matching(self, spec: Any, keys: Iterator[Key], fields: Any, as_class: Any, skip: int) -> Iterator[Any]:
        documents = self._store._documents
        for key in keys:
            doc = documents.get(key)
            if doc is None or not filter_applies(spec, doc):
                continue
            if skip:
                skip -= 1
                continue
            yield self._copy_only_fields(doc, fields, as_class)

    def count_documents(self, filter: Any, **kwargs: Any) -> int:  # noqa: A002
        store = self._store
        store._remove_expired_documents()
        extra = set(kwargs) - {"skip", "limit", "maxTimeMS", "hint"}
        if not kwargs.get("collation") and not kwargs.get("session") and not extra:
            count = store.exact_count(helpers.patch_datetime_awareness_in_document(filter))
            if count is not None and store._documents:
                skip = kwargs.get("skip", 0)
                limit = kwargs.get("limit")
                if limit is None or (isinstance(limit, (int, float)) and limit > 0):
                    count = max(count - skip, 0)
                    return count if limit is None else min(count, int(limit))
        return super().count_documents(filter, **kwargs)

    def aggregate(self, pipeline: Any, session: Any = None, **unused_kwargs: Any) -> Any:
        pipeline = list(pipeline)
        if session is None:
            self._store._remove_expired_documents()
            counts = self._store.group_counts(pipeline)
            if counts is not None:
                return CommandCursor(counts)
        first = pipeline[0] if pipeline else None
        if isinstance(first, dict) and len(first) == 1 and isinstance(first.get("$match"), dict):
            in_collection = list(self.find(first["$match"]))  # the $match stage runs again on these
        else:
            in_collection = list(self.find())
        return mm_aggregate.process_pipeline(in_collection, self.database, pipeline, session)

    def with_options(self, *args: Any, **kwargs: Any) -> Any:
        collection = super().with_options(*args, **kwargs)
        if type(collection) is Collection:
            collection.__class__ = IndexedCollection
        return collection


class IndexedDatabaseStore(mm_store.DatabaseStore):
    def __getitem__(self, col_name: str) -> IndexedCollectionStore:
        try:
            return self._collections[col_name]
        except KeyError:
            col = self._collections[col_name] = IndexedCollectionStore(col_name)
            return col

    def rename(self, name: str, new_name: str) -> None:
        col = self._collections.pop(name, None) or IndexedCollectionStore(new_name)
        col.name = new_name
        self._collections[new_name] = col


class IndexedServerStore(mm_store.ServerStore):
    def __getitem__(self, db_name: str) -> IndexedDatabaseStore:
        try:
            return self._databases[db_name]
        except KeyError:
            db = self._databases[db_name] = IndexedDatabaseStore()
            return db


class IndexedDatabase(Database):
    """mongomock's `Database` handing out `IndexedCollection`s."""

    def get_collection(self, name: str, codec_options: Any = None, read_preference: Any = None,
                       write_concern: Any = None, read_concern: Any = None) -> Any:
        if name not in self._collection_accesses:
            self._ensure_valid_collection_name(name)
            if read_preference is not None:
                mm_read_preferences.ensure_read_preference_type("read_preference", read_preference)
            mm_codec_options.is_supported(codec_options)
            self._collection_accesses[name] = IndexedCollection(
                self, name=name, read_concern=read_concern, write_concern=write_concern,
                read_preference=read_preference or self.read_preference,
                codec_options=codec_options or self._codec_options, _db_store=self._store,
            )
            return self._collection_accesses[name]
        return super().get_collection(name, codec_options, read_preference, write_concern, read_concern)

    def with_options(self, *args: Any, **kwargs: Any) -> Any:
        database = super().with_options(*args, **kwargs)
        if type(database) is Database:
            database.__class__ = IndexedDatabase
        return database


class IndexedMongoClient(MongoClient):
    """mongomock's `MongoClient` whose databases hold indexed collections."""

    def __init__(self, host: Any = None, port: Any = None, document_class: Any = dict, tz_aware: bool = False,
                 connect: bool = True, _store: Any = None, read_preference: Any = None, **kwargs: Any) -> None:
        super().__init__(host, port, document_class, tz_aware, connect, _store or IndexedServerStore(),
                         read_preference, **kwargs)

    def get_database(self, name: str | None = None, codec_options: Any = None, read_preference: Any = None,
                     write_concern: Any = None, read_concern: Any = None) -> Any:
        if name is None or name in self._database_accesses:
            return super().get_database(name, codec_options, read_preference, write_concern, read_concern)
        db = self._database_accesses[name] = IndexedDatabase(
            self, name, read_preference=read_preference or self.read_preference,
            codec_options=codec_options or self._codec_options, _store=self._store[name],
            read_concern=read_concern,
        )
        return db
