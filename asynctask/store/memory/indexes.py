"""The structures the embedded store keeps up to date from every document it holds.

- hash indexes, field value -> documents: a top-level equality or `$in` on that field;
- sorted indexes: per partition (the values of a few equality fields, e.g. `(type, status)`),
  a `SortedList` ordered by a sort key, then insertion number. They serve a sort equal to
  their key when the filter pins the partition (the claim's priority/run_at order, the list's
  created_at/task_id order), walked in order until `skip + limit` documents matched, and a
  `$lt/$lte/$gt/$gte` range on their first sort field (time windows, due tasks) by bisection;
- unique indexes, key -> documents, so a unique key is checked in O(1);
- TTL indexes ordered by expiry time, so expiry costs nothing until a document is due;
- per-partition counts by `status`, which answer a `$group` count by status without reading
  documents.

A document whose indexed values are not plain scalars (lists, sub-documents, NaN, bytes) is
always a candidate of a hash index and makes a sorted index decline queries, so an index never
drops a document the query engine would match.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from sortedcontainers import SortedList

from .values import HIGH, LOW, MISSING, Marker, descending, dotted, encoded, is_simple

Key = Any  # a stored document's `_id`, made hashable
#: A stored document's number, given at insertion: what every structure files it by (an int
#: hashes and compares at C speed, where an `ObjectId` goes through Python on each set and dict
#: operation), and its place in insertion order.
Seq = int

WILD = Marker("WILD")  # a value no hash bucket holds: the document is always a candidate
IRREGULAR = Marker("IRREGULAR")  # a value a sorted or unique index cannot place
SKIP = Marker("SKIP")  # a sparse unique index ignores the document
ABSENT = Marker("ABSENT")
EMPTY_RANGE = Marker("EMPTY_RANGE")


def hash_key(value: Any) -> Any:
    """The bucket of a document's value (missing and null share `None`), or `WILD`."""
    return value if is_simple(value) else WILD


def is_operators(search: Any) -> bool:
    return isinstance(search, dict) and bool(search) and all(
        isinstance(k, str) and k.startswith("$") for k in search
    )


def eq_values(search: Any) -> tuple[list[Any], bool] | None:
    """Values an equality or `$in` condition can only match, and whether the condition is
    nothing else; None if the condition is no such thing."""
    if isinstance(search, dict):
        if not is_operators(search):
            return None
        if "$eq" in search:
            value = search["$eq"]
            return ([value], len(search) == 1) if is_simple(value) else None
        values = search.get("$in")
        if isinstance(values, (list, tuple)) and all(is_simple(v) for v in values):
            return list(dict.fromkeys(values)), len(search) == 1
        return None
    return ([search], True) if is_simple(search) else None


RANGE_OPS = {"$gt": (True, False), "$gte": (True, True), "$lt": (False, False), "$lte": (False, True)}


def range_of(search: Any) -> Any:
    """`(lo, lo_inclusive, hi, hi_inclusive, exact)` in `encoded` space for the `$gt/$gte/$lt/$lte`
    of a condition (values of another BSON type never match: type bracketing), `EMPTY_RANGE`,
    or None if the condition has no usable bound."""
    if not is_operators(search):
        return None
    lo = hi = None
    lo_incl = hi_incl = True
    rank = None
    only = True
    for op, operand in search.items():
        if op not in RANGE_OPS:
            only = False
            continue
        bound = encoded(operand)
        if bound is None:
            return None
        if rank is None:
            rank = bound[0]
        elif rank != bound[0]:
            return EMPTY_RANGE
        is_low, inclusive = RANGE_OPS[op]
        if is_low:
            if lo is None or bound > lo or (bound == lo and not inclusive):
                lo, lo_incl = bound, inclusive
        elif hi is None or bound < hi or (bound == hi and not inclusive):
            hi, hi_incl = bound, inclusive
    if rank is None:
        return None
    if lo is None:
        lo, lo_incl = (rank, LOW), True
    if hi is None:
        hi, hi_incl = (rank, HIGH), True
    # A missing field ranks like null but matches no bound: only non-null ranges are exact.
    return lo, lo_incl, hi, hi_incl, only and rank != 5


# -- the structures kept per document ---------------------------------------------------------


class Structure:
    """Something kept up to date from every document; `tokens` is what each document was
    filed under, so a document changed in place can be refiled."""

    def __init__(self, reads: Iterable[str] = ()) -> None:
        self.tokens: dict[Seq, Any] = {}
        #: The top-level fields the token is made of: a write that changes none of them
        #: leaves the document filed where it was.
        self.reads = frozenset(path.split(".")[0] for path in reads)

    def token(self, doc: Mapping[str, Any], seq: Seq) -> Any:
        raise NotImplementedError

    def add(self, seq: Seq, token: Any) -> None:
        raise NotImplementedError

    def remove(self, seq: Seq, token: Any) -> None:
        raise NotImplementedError

    def refile(self, seq: Seq, doc: Mapping[str, Any]) -> None:
        new = self.token(doc, seq)
        old = self.tokens.get(seq, ABSENT)
        if old is not ABSENT:
            if type(old) is type(new) and old == new:
                return
            self.remove(seq, old)
        self.add(seq, new)
        self.tokens[seq] = new

    def discard(self, seq: Seq) -> None:
        old = self.tokens.pop(seq, ABSENT)
        if old is not ABSENT:
            self.remove(seq, old)


class HashIndex(Structure):
    def __init__(self, field: str) -> None:
        super().__init__([field])
        self.field = field
        self.buckets: dict[Any, set[Seq]] = {}
        self.wild: set[Seq] = set()

    def token(self, doc: Mapping[str, Any], seq: Seq) -> Any:
        return hash_key(doc.get(self.field))

    def add(self, seq: Seq, token: Any) -> None:
        if token is WILD:
            self.wild.add(seq)
        else:
            self.buckets.setdefault(token, set()).add(seq)

    def remove(self, seq: Seq, token: Any) -> None:
        if token is WILD:
            self.wild.discard(seq)
            return
        bucket = self.buckets[token]
        bucket.discard(seq)
        if not bucket:
            del self.buckets[token]

    def size(self, values: list[Any]) -> int:
        return sum(len(self.buckets.get(v, ())) for v in values) + len(self.wild)

    def seqs(self, values: list[Any]) -> Iterator[Seq]:
        for value in values:
            yield from self.buckets.get(value, ())
        yield from self.wild


class SortedIndex(Structure):
    """Documents per partition in sort order; with `only` (a partition field and the values
    it files), the documents of other partitions are not kept at all."""

    def __init__(self, partition: tuple[str, ...], order: tuple[tuple[str, int], ...],
                 only: tuple[str, frozenset[Any]] | None = None, sparse: bool = False) -> None:
        super().__init__([*partition, *(field for field, _ in order)])
        self.partition = partition
        self.order = order
        self.only = only
        #: Documents whose first sort field is null or missing are not kept: the index serves
        #: only a range on that field of another type (which never matches null).
        self.sparse = sparse
        self._only_at = partition.index(only[0]) if only else -1
        self.parts: dict[tuple[Any, ...], SortedList] = {}
        self.irregular: set[Seq] = set()

    def files(self, pkey: tuple[Any, ...]) -> bool:
        """Whether documents of partition `pkey` are kept here."""
        return self.only is None or pkey[self._only_at] in self.only[1]

    def token(self, doc: Mapping[str, Any], seq: Seq) -> Any:
        if self.only is not None:
            kept = hash_key(doc.get(self.only[0]))
            if kept is not WILD and kept not in self.only[1]:
                return SKIP  # not kept here (decided before the partition: most writes move a task out)
        pkey = []
        for field in self.partition:
            value = hash_key(doc.get(field))
            if value is WILD:
                return IRREGULAR
            pkey.append(value)
        if self.sparse and doc.get(self.order[0][0]) is None:
            return SKIP
        entry: list[Any] = []
        for field, direction in self.order:
            value = encoded(doc.get(field))
            if value is None:
                return IRREGULAR
            entry.append(value if direction > 0 else descending(value))
        entry.append(seq)
        return tuple(pkey), tuple(entry)

    def add(self, seq: Seq, token: Any) -> None:
        if token is IRREGULAR:
            self.irregular.add(seq)
            return
        if token is SKIP:
            return
        pkey, entry = token
        part = self.parts.get(pkey)
        if part is None:
            part = self.parts[pkey] = SortedList()
        part.add(entry)

    def remove(self, seq: Seq, token: Any) -> None:
        if token is IRREGULAR:
            self.irregular.discard(seq)
            return
        if token is SKIP:
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
        if rng is EMPTY_RANGE:
            return 0, 0
        lo, lo_incl, hi, hi_incl, _ = rng
        if self.order[0][1] > 0:
            i = part.bisect_left((lo,) if lo_incl else (lo, HIGH))
            j = part.bisect_left((hi, HIGH) if hi_incl else (hi,))
        else:
            i = part.bisect_left((descending(hi),) if hi_incl else (descending(hi), HIGH))
            j = part.bisect_left((descending(lo), HIGH) if lo_incl else (descending(lo),))
        return i, max(i, j)


class UniqueIndex(Structure):
    def __init__(self, name: str, spec: Mapping[str, Any]) -> None:
        self.name = name
        self.fields = [field for field, _ in spec["key"]]
        super().__init__(self.fields)
        self.sparse = bool(spec.get("sparse"))
        self.partial = spec.get("partialFilterExpression")
        self.buckets: dict[tuple[Any, ...], set[Seq]] = {}
        self.irregular: set[Seq] = set()

    def token(self, doc: Mapping[str, Any], seq: Seq) -> Any:
        if self.partial is not None:
            return IRREGULAR
        values = []
        for field in self.fields:
            value = hash_key(dotted(doc, field))
            if value is WILD:
                return IRREGULAR
            values.append(value)
        if self.sparse and all(v is None for v in values):
            return SKIP
        return tuple(values)

    def add(self, seq: Seq, token: Any) -> None:
        if token is IRREGULAR:
            self.irregular.add(seq)
        elif token is not SKIP:
            self.buckets.setdefault(token, set()).add(seq)

    def remove(self, seq: Seq, token: Any) -> None:
        if token is IRREGULAR:
            self.irregular.discard(seq)
        elif token is not SKIP:
            bucket = self.buckets[token]
            bucket.discard(seq)
            if not bucket:
                del self.buckets[token]

    def violated(self, count_matching: Any, seq: Seq, doc: Mapping[str, Any]) -> bool:
        """Whether another document holds the new document's key (taken as an equality query,
        so null and missing collide); `count_matching(query, keys)` counts matches among `keys`
        (None: every document) for what the buckets cannot answer."""
        token = self.tokens.get(seq, ABSENT)
        if token is SKIP:
            return False
        query: dict[str, Any] = {}
        for field in self.fields:
            value = dotted(doc, field)
            query[field] = None if value is MISSING else value
        if token is IRREGULAR or token is ABSENT:
            if self.sparse and set(map(repr, query.values())) == {"None"}:
                return False
            if self.partial is not None:
                query = {"$and": [self.partial, query]}
            return bool(count_matching(query, None) > 1)
        count = len(self.buckets.get(token, ()))
        if self.irregular:
            count += count_matching(query, self.irregular)
        return count > 1


class TTLIndex(Structure):
    def __init__(self, field: str, seconds: int) -> None:
        super().__init__([field])
        self.field = field
        self.seconds = seconds
        self.due: SortedList = SortedList()

    def token(self, doc: Mapping[str, Any], seq: Seq) -> Any:
        value = _earliest(doc.get(self.field))
        if not isinstance(value, datetime) or value.tzinfo is not None or value == datetime.max:
            return None
        try:
            return value + timedelta(seconds=self.seconds), seq
        except OverflowError:
            return None

    def add(self, seq: Seq, token: Any) -> None:
        if token is not None:
            self.due.add(token)

    def remove(self, seq: Seq, token: Any) -> None:
        if token is not None:
            self.due.remove(token)


class GroupCounts(Structure):
    def __init__(self, partition: tuple[str, ...], field: str) -> None:
        super().__init__([*partition, field])
        self.partition = partition
        self.field = field
        self.counts: dict[tuple[Any, ...], dict[Any, int]] = {}
        self.irregular: set[Seq] = set()

    def token(self, doc: Mapping[str, Any], seq: Seq) -> Any:
        group = hash_key(doc.get(self.field))
        pkey = tuple([hash_key(doc.get(f)) for f in self.partition])
        if group is WILD or WILD in pkey:
            return IRREGULAR
        return pkey, group

    def add(self, seq: Seq, token: Any) -> None:
        if token is IRREGULAR:
            self.irregular.add(seq)
            return
        pkey, group = token
        counts = self.counts.setdefault(pkey, {})
        counts[group] = counts.get(group, 0) + 1

    def remove(self, seq: Seq, token: Any) -> None:
        if token is IRREGULAR:
            self.irregular.discard(seq)
            return
        pkey, group = token
        counts = self.counts[pkey]
        counts[group] -= 1
        if not counts[group]:
            del counts[group]
            if not counts:
                del self.counts[pkey]


def _earliest(value: Any) -> Any:
    """The date a TTL index reads: the value, or the earliest date of a list; nothing falsy."""
    if not value:
        return None
    if isinstance(value, list):
        dates = [v for v in value if isinstance(v, datetime) and v.tzinfo is None]
        return min(dates) if dates else None
    return value
