"""The documents of one embedded collection, the structures kept from them, and the planner
that picks, for each filter, the structure yielding the fewest candidates.

Documents are never changed in place: an update stores a new document, so a structure refiles
a document by comparing what it was filed under with the new values. The query engine then
runs only on the candidates (see `collection.py`).
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from .indexes import (
    EMPTY_RANGE,
    GroupCounts,
    HashIndex,
    Key,
    Seq,
    SortedIndex,
    Structure,
    TTLIndex,
    UniqueIndex,
    eq_values,
    range_of,
)
from .values import store_key

#: Fields always hash-indexed, whatever indexes were created.
DEFAULT_HASH_FIELDS: tuple[str, ...] = ("task_id", "status")
#: Sorted indexes that keep only these values of a partition field.
Only = tuple[str, frozenset[Any]] | None
QUEUED: Only = ("status", frozenset({"queued"}))
#: (partition fields, sort key, only, sparse) of the sorted indexes kept whatever indexes were created.
DEFAULT_SORTED_INDEXES: tuple[tuple[tuple[str, ...], tuple[tuple[str, int], ...], Only, bool], ...] = (
    (("type", "status"), (("priority", -1), ("run_at", 1)), QUEUED, False),  # the claim
    (("type", "status"), (("run_at", 1),), QUEUED, False),  # the next due task, due counts
    (("type",), (("created_at", -1), ("task_id", 1)), None, False),  # the list; created_at windows
    (("type", "status"), (("created_at", -1), ("task_id", 1)), None, False),  # the list by status
    (("type",), (("started_at", 1),), None, True),  # started_at windows
    (("type",), (("finished_at", 1),), None, True),  # finished_at windows
)
#: (partition fields, grouped field) of the counts kept for `$group` by status; the counts of
#: the whole collection are their sum.
DEFAULT_GROUP_COUNTS: tuple[tuple[tuple[str, ...], str], ...] = ((("type",), "status"),)
#: Leading fields of a created index taken as the partition of the sorted index derived from it.
CATEGORICAL_FIELDS = frozenset({"type", "status", "owner"})
#: Below this many candidates a hash plan plus a sort beats walking a sorted index.
SMALL_PLAN = 64

Plan = tuple[int, Callable[[], Iterable[Seq]]]
_GONE = object()
_NULL_RANK = 5  # `encoded`'s rank of null and missing


def utcnow() -> datetime:
    """Now, as the store keeps times (naive UTC): the clock of TTL expiry."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Documents:
    """One collection's documents, in insertion order, with their structures. A document is
    known by its number (`Seq`), given when it is inserted; `ids` finds it by its `_id`."""

    def __init__(self) -> None:
        #: The documents by number, in insertion order.
        self.docs: dict[Seq, dict[str, Any]] = {}
        #: The number of each document, by its `_id` made hashable (`values.store_key`).
        self.ids: dict[Key, Seq] = {}
        self.index_specs: dict[str, dict[str, Any]] = {}
        self._structures: dict[tuple[Any, ...], Structure] = {}
        self._hash: dict[str, HashIndex] = {}
        self._sorted: list[SortedIndex] = []
        self._uniques: list[UniqueIndex] = []
        self._ttls: list[TTLIndex] = []
        self._groups: list[GroupCounts] = []
        #: Filed at every write: what the claim, the finish and the unique check read.
        self._eager: list[Structure] = []
        #: Refiled only before a read consults them (`_freshen`): the list's orders, the time
        #: windows and the status counts, which a task's writes would otherwise refile three
        #: times for the few reads the dashboard makes.
        self._lazy: list[Structure] = []
        self._lazy_reads: frozenset[str] = frozenset()
        #: The documents written since the lazy structures were last brought up to date.
        self._stale: set[Seq] = set()
        self._counter = itertools.count()
        self._sync_structures()

    def _wanted(self) -> dict[tuple[Any, ...], Callable[[], Structure]]:
        """Every structure the defaults and the created indexes call for."""
        wanted: dict[tuple[Any, ...], Callable[[], Structure]] = {}
        hash_fields = list(DEFAULT_HASH_FIELDS)
        leading: list[str] = []
        sorted_specs = list(DEFAULT_SORTED_INDEXES)
        for name, spec in self.index_specs.items():
            keys = [(field, -1 if direction == -1 else 1) for field, direction in spec["key"]]
            if spec.get("unique"):
                wanted[("unique", name, repr(spec))] = functools.partial(UniqueIndex, name, spec)
                hash_fields += [field for field, _ in keys]
            if "expireAfterSeconds" in spec:
                if len(keys) == 1 and isinstance(spec["expireAfterSeconds"], int):
                    wanted[("ttl", name, keys[0][0], spec["expireAfterSeconds"])] = functools.partial(
                        TTLIndex, keys[0][0], spec["expireAfterSeconds"])
                continue
            if any("." in field for field, _ in keys) or "partialFilterExpression" in spec:
                continue  # a partial index serves a subset: the defaults cover the task store's
            leading.append(keys[0][0])
            split = 0
            while split < len(keys) and keys[split][0] in CATEGORICAL_FIELDS:
                split += 1
            if split < len(keys) and not (spec.get("unique") and len(keys) == 1):
                sorted_specs.append((tuple(f for f, _ in keys[:split]), tuple(keys[split:]), None, False))
        # A leading field that a whole sorted index is partitioned by alone is served by it.
        partitioned = {p[0] for p, _, only, sparse in sorted_specs if len(p) == 1 and only is None and not sparse}
        hash_fields += [field for field in leading if field not in partitioned]
        for field in hash_fields:
            if "." not in field and field != "_id":
                wanted[("hash", field)] = functools.partial(HashIndex, field)
        served = set()
        for partition, order, only, sparse in sorted_specs:
            if (partition, order) in served:
                continue  # a created index a default of the same order serves already
            served.add((partition, order))
            wanted[("sorted", partition, order, only, sparse)] = functools.partial(
                SortedIndex, partition, order, only, sparse)
        for partition, field in DEFAULT_GROUP_COUNTS:
            wanted[("group", partition, field)] = functools.partial(GroupCounts, partition, field)
        return wanted

    def _sync_structures(self) -> None:
        """Build the structures newly called for (one pass over the documents), drop the rest."""
        self._freshen()
        structures = {}
        for spec, make in self._wanted().items():
            structure = self._structures.get(spec)
            if structure is None:
                structure = make()
                for seq, doc in self.docs.items():
                    structure.refile(seq, doc)
            structures[spec] = structure
        self._structures = structures
        self._hash = {s.field: s for s in structures.values() if isinstance(s, HashIndex)}
        self._sorted = [s for s in structures.values() if isinstance(s, SortedIndex)]
        self._ttls = [s for s in structures.values() if isinstance(s, TTLIndex)]
        self._groups = [s for s in structures.values() if isinstance(s, GroupCounts)]
        uniques = {s.name: s for s in structures.values() if isinstance(s, UniqueIndex)}
        self._uniques = [uniques[name] for name in self.index_specs if name in uniques]
        self._lazy = [s for s in structures.values() if _is_lazy(s)]
        self._eager = [s for s in structures.values() if not _is_lazy(s)]
        self._lazy_reads = frozenset().union(*(s.reads for s in self._lazy))

    # -- indexes --

    def create_index(self, name: str, spec: dict[str, Any]) -> None:
        self.index_specs[name] = spec
        self._sync_structures()

    def drop_index(self, name: str) -> None:
        del self.index_specs[name]
        self._sync_structures()

    def clear(self) -> None:
        """Drop every document and index."""
        self.docs.clear()
        self.ids.clear()
        self.index_specs.clear()
        self._stale.clear()
        self._structures = {}
        self._sync_structures()

    # -- writes --

    def insert(self, key: Key, doc: dict[str, Any]) -> Seq:
        """Store a new document whose `_id` is `key` (made hashable) and file it everywhere;
        returns its number."""
        seq = next(self._counter)
        self.docs[seq] = doc
        self.ids[key] = seq
        for structure in self._eager:
            structure.refile(seq, doc)
        if self._lazy:
            self._stale.add(seq)
        return seq

    def put(self, seq: Seq, doc: dict[str, Any], changed: set[str] | None = None) -> None:
        """Store `doc` in place of document `seq` and refile it where the values it changed
        call for (values left alone are the same objects: copy-on-write; `changed` names the
        top-level fields that differ when the caller knows)."""
        old = self.docs[seq]
        self.docs[seq] = doc
        if changed is None:
            changed = changed_fields(old, doc)
        for structure in self._eager:
            if not structure.reads.isdisjoint(changed):
                structure.refile(seq, doc)
        if not self._lazy_reads.isdisjoint(changed):
            self._stale.add(seq)

    def delete(self, seq: Seq) -> None:
        doc = self.docs.pop(seq)
        del self.ids[store_key(doc["_id"])]
        self._stale.discard(seq)
        for structure in self._structures.values():
            structure.discard(seq)

    def _freshen(self) -> None:
        """Refile the documents written since, in the lazy structures (each document once,
        however many writes it had)."""
        if self._stale:
            docs = self.docs
            for seq in self._stale:
                doc = docs[seq]
                for structure in self._lazy:
                    structure.refile(seq, doc)
            self._stale.clear()

    def duplicate(self, seq: Seq, doc: Mapping[str, Any], count_matching: Any,
                  changed: set[str] | None = None) -> str | None:
        """The name of a unique index the stored `doc` (number `seq`) violates, if any;
        with `changed`, only the indexes a change of those fields may break."""
        for unique in self._uniques:
            if changed is not None and unique.partial is None and unique.reads.isdisjoint(changed):
                continue
            if unique.violated(count_matching, seq, doc):
                return unique.name
        return None

    def expire(self) -> None:
        """Delete the documents whose TTL is over."""
        if not self._ttls:
            return
        now = utcnow()
        for ttl in self._ttls:
            while ttl.due and ttl.due[0][0] <= now:
                self.delete(ttl.due[0][1])

    # -- indexing --

    @staticmethod
    def in_order(seqs: Iterable[Seq]) -> list[Seq]:
        """Distinct document numbers in insertion order, the order of unsorted results."""
        return sorted(set(seqs))

    # -- planning --

    def _sorted_choices(self, spec: Mapping[str, Any], indexes: Iterable[SortedIndex] | None = None,
                        ) -> Iterator[tuple[SortedIndex, list[tuple[Any, ...]], Any, bool]]:
        """Sorted indexes (of `indexes`, else all) whose partition the filter pins: (index,
        partitions, range, exact)."""
        for index in self._sorted if indexes is None else indexes:
            if not all(field in spec for field in index.partition):
                continue
            if self._stale and _is_lazy(index):
                self._freshen()  # (only for a query this index might serve)
            if index.irregular:
                continue
            values = []
            exact = True
            for field in index.partition:
                found = eq_values(spec[field]) if field in spec else None
                if found is None:
                    break
                values.append(found[0])
                exact = exact and found[1]
            else:
                first = index.order[0][0]
                rng = range_of(spec[first]) if first in spec else None
                if index.sparse and (rng is None or (rng is not EMPTY_RANGE and rng[0][0] == _NULL_RANK)):
                    continue  # the index lacks the null values such a filter may match
                used = set(index.partition) | ({first} if rng is not None else set())
                exact = exact and set(spec) == used and (rng is None or rng is EMPTY_RANGE or rng[4])
                pkeys = list(dict.fromkeys(itertools.product(*values)))
                if all(index.files(pkey) for pkey in pkeys):
                    yield index, pkeys, rng, exact

    def _plans(self, spec: Any, with_sorted: bool = True) -> list[Plan]:
        """Every index plan for `spec`: (number of candidates, candidates); only the hash
        plans unless `with_sorted`."""
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
            found = eq_values(search)
            if found is None:
                continue
            values = found[0]
            if field == "_id":
                plans.append((len(values), functools.partial(_present, values, self.ids)))
            elif field in self._hash:
                hashed = self._hash[field]
                plans.append((hashed.size(values), functools.partial(hashed.seqs, values)))
        if not with_sorted or (plans and min(p[0] for p in plans) <= 1):
            return plans  # (with one candidate at most, no range can do better)
        for index, pkeys, rng, _ in self._sorted_choices(spec):
            plans.append(self._sorted_plan(index, pkeys, rng))
        return plans

    def _sorted_plan(self, index: SortedIndex, pkeys: list[tuple[Any, ...]], rng: Any) -> Plan:
        windows = []
        for pkey in pkeys:
            part = index.parts.get(pkey)
            if part is not None:
                i, j = index.window(part, rng)
                if j > i:
                    windows.append((part, i, j))
        def seqs() -> Iterator[Seq]:
            for part, i, j in windows:
                for entry in part.islice(i, j):
                    yield entry[-1]

        return sum(j - i for _, i, j in windows), seqs

    def _best(self, spec: Any, with_sorted: bool = True) -> Plan | None:
        plans = self._plans(spec, with_sorted)
        return min(plans, key=lambda p: p[0]) if plans else None

    def candidates(self, spec: Any) -> list[Seq] | None:
        """The numbers of the documents that may match `spec`, in insertion order; None for all."""
        best = self._best(spec)
        if best is None or best[0] >= len(self.docs):
            return None
        return self.in_order(best[1]())

    def ordered(self, spec: Any, sort: Any, skip: int) -> tuple[Iterator[Seq], int] | None:
        """Numbers of candidates in the order of `sort` (ties in insertion order) from a sorted index,
        and how many matches of `skip` were already passed over; None if no index serves."""
        if not isinstance(spec, dict):
            return None
        try:
            order = tuple((k, -1 if d < 0 else 1) for k, d in sort)
        except (TypeError, ValueError):
            return None
        if any(not isinstance(k, str) or k.startswith("$") for k, _ in order):
            return None
        serving = [index for index in self._sorted if index.order == order]
        choices = [
            (self._sorted_plan(index, pkeys, rng)[0], index, pkeys, rng, exact)
            for index, pkeys, rng, exact in self._sorted_choices(spec, serving)
        ] if serving else []
        if not choices:
            return None
        size, index, pkeys, rng, exact = min(choices, key=lambda c: c[0])
        best = self._best(spec, with_sorted=False)
        if best is not None and best[0] <= SMALL_PLAN and best[0] < size:
            return None  # sort the few candidates instead
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
        return (entry[-1] for entry in merged), skipped

    def exact_count(self, spec: Any) -> int | None:
        """The number of matches when an index answers `spec` exactly, else None."""
        if not isinstance(spec, dict):
            return None
        if not spec:
            return len(self.docs)
        if len(spec) == 1:
            field, search = next(iter(spec.items()))
            hashed = self._hash.get(field) if isinstance(field, str) else None
            found = eq_values(search)
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
            found = eq_values(search) if isinstance(field, str) else None
            if found is None or not found[1] or len(found[0]) != 1:
                return None
            values.append((field, found[0][0]))
        self._freshen()
        for counts in self._groups:
            if counts.field != group_id[1:] or (values and set(counts.partition) != {f for f, _ in values}):
                continue
            if counts.irregular:
                return None
            if values or not counts.partition:
                groups = counts.counts.get(tuple(dict(values)[f] for f in counts.partition), {})
            else:
                groups = {}
                for part in counts.counts.values():
                    for group, n in part.items():
                        groups[group] = groups.get(group, 0) + n
            if not all(g is None or isinstance(g, str) for g in groups):
                return None
            ordered = sorted(groups.items(), key=lambda item: (item[0] is not None, item[0] or ""))
            return [{name: n, "_id": g} for g, n in ordered]
        return None


def _is_lazy(structure: Structure) -> bool:
    """Whether a structure is brought up to date only when read: the sorted indexes that keep
    every status (the queued-only claim and due orders stay eager) and the status counts."""
    return isinstance(structure, GroupCounts) or (isinstance(structure, SortedIndex) and structure.only is None)


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any], among: Iterable[str] | None = None) -> set[str]:
    """The top-level fields (of `among`, if the only ones that may differ are known) whose values
    are not the very same objects in `old` and `new`."""
    fields = old.keys() | new.keys() if among is None else among
    return {field for field in fields if old.get(field, _GONE) is not new.get(field, _GONE)}


def _present(values: list[Any], ids: Mapping[Key, Seq]) -> list[Seq]:
    return [ids[v] for v in values if v in ids]


def _chain_plans(plans: list[Plan | None]) -> Iterator[Seq]:
    for plan in plans:
        if plan is not None:
            yield from plan[1]()


