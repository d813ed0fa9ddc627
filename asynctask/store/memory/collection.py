"""`MemoryCollection`: a thread-safe, pymongo-like collection held in this process's memory.

Every call runs under one re-entrant lock shared by the collections of its database, so the
atomic operations the task store relies on (`find_one_and_update` against a unique index)
hold. A query runs the query engine only on the candidates an index yields (`documents.py`);
updates are copy-on-write (`updates.py`), and what a caller gets back is a copy.

The query engine is mongomock's `filter_applies` (the semantics of MongoDB's filters, as the
differential tests check), after a quick path for the task store's own filters (`filters.py`);
nothing else of mongomock is used on the hot path. What this store
does not implement itself (aggregation stages other than a `$match` and a `$group` count) runs
on a throwaway mongomock collection through its public API.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from bson import ObjectId
from bson.son import SON
from mongomock.filtering import resolve_sort_key
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, CollectionInvalid, DuplicateKeyError, OperationFailure
from pymongo.results import DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

from .documents import Documents, changed_fields
from .filters import matches
from .indexes import Seq
from .updates import apply_update, check_replacement, check_update, touched, upserted
from .values import MISSING, copied, dotted, store_key, stored

__all__ = ["MemoryCollection", "MemoryDatabase"]


class MemoryDatabase:
    """The in-memory database of a `MemoryCollection`: `get_collection(name)` and `db[name]`
    give thread-safe collections of the same kind, sharing its data and its lock."""

    def __init__(self, name: str = "asynctask") -> None:
        self.name = name
        self._lock = threading.RLock()
        self._collections: dict[str, Documents] = {}
        self._created: set[str] = set()

    def get_collection(self, name: str, **options: Any) -> MemoryCollection:
        if not isinstance(name, str) or not name or "$" in name or name.startswith(".") or name.endswith("."):
            raise ValueError(f"invalid collection name: {name!r}")
        return MemoryCollection(name, _database=self)

    def __getitem__(self, name: str) -> MemoryCollection:
        return self.get_collection(name)

    def list_collection_names(self, **unused: Any) -> list[str]:
        with self._lock:
            return sorted(self._created)

    def create_collection(self, name: str, **unused: Any) -> MemoryCollection:
        with self._lock:
            if name in self._created:
                raise CollectionInvalid(f"collection {name} already exists")
            collection = self.get_collection(name)
            self._created.add(name)
            return collection

    def drop_collection(self, name: Any) -> None:
        name = getattr(name, "name", name)
        with self._lock:
            if name in self._collections:
                self._collections[name].clear()
            self._created.discard(name)

    def with_options(self, **unused: Any) -> MemoryDatabase:
        return self

    def _documents(self, name: str) -> Documents:
        with self._lock:
            docs = self._collections.get(name)
            if docs is None:
                docs = self._collections[name] = Documents()
            return docs

    def __repr__(self) -> str:
        return f"MemoryDatabase({self.name!r})"


class MemoryCollection:
    """A pymongo-like `Collection` held in this process's memory; nothing is persisted.

    `.name` is its name; `.database` is its in-memory database, where companion
    collections (`coll.database["tasks.workers"]`) live next to it.

    Args:
        name: the collection's name.
    """

    def __init__(self, name: str = "tasks", *, _database: MemoryDatabase | None = None) -> None:
        self.name = name
        self.database = _database if _database is not None else MemoryDatabase()
        self._lock = self.database._lock
        self._docs = self.database._documents(name)

    @property
    def full_name(self) -> str:
        return f"{self.database.name}.{self.name}"

    def with_options(self, **unused: Any) -> MemoryCollection:
        """The same collection (write and read concerns mean nothing in one process)."""
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemoryCollection) and other.database is self.database and other.name == self.name

    def __hash__(self) -> int:
        return hash((id(self.database), self.name))

    def __repr__(self) -> str:
        return f"MemoryCollection({self.full_name!r})"

    # -- reads -------------------------------------------------------------------------------

    def find(self, filter: Any = None, projection: Any = None, skip: int = 0, limit: int = 0,  # noqa: A002
             sort: Any = None, **unused: Any) -> Cursor:
        return Cursor(self, _filter(filter), projection, skip, limit, sort)

    def find_one(self, filter: Any = None, *args: Any, **kwargs: Any) -> Any:  # noqa: A002
        if filter is not None and not isinstance(filter, Mapping):
            filter = {"_id": filter}
        kwargs.pop("limit", None)
        return next(iter(self.find(filter, *args, **kwargs).limit(-1)), None)

    def count_documents(self, filter: Any, skip: int = 0, limit: int = 0, **unused: Any) -> int:  # noqa: A002
        query = _filter(filter)
        with self._lock:
            self._docs.expire()
            count = self._docs.exact_count(query)
            if count is None:
                count = sum(1 for _ in self._matching(query))
        count = max(count - skip, 0)
        return min(count, limit) if limit else count

    def estimated_document_count(self, **unused: Any) -> int:
        with self._lock:
            self._docs.expire()
            return len(self._docs.docs)

    def distinct(self, key: str, filter: Any = None, **unused: Any) -> list[Any]:  # noqa: A002
        values: list[Any] = []
        for doc in self.find(filter, {key: 1}):
            value = dotted(doc, key)
            for item in (value if isinstance(value, list) else [value]):
                if item is not MISSING and not any(type(item) is type(v) and item == v for v in values):
                    values.append(item)
        return values

    def aggregate(self, pipeline: Iterable[Any], **unused: Any) -> Iterator[dict[str, Any]]:
        stages = list(pipeline)
        with self._lock:
            self._docs.expire()
            counts = self._docs.group_counts(stages)
        if counts is not None:
            return iter(counts)
        first = stages[0] if stages else None
        match = first.get("$match") if isinstance(first, dict) and len(first) == 1 else None
        docs = list(self.find(match if isinstance(match, dict) else None))
        import mongomock  # only here: the stages this store does not implement

        scratch: Any = mongomock.MongoClient(tz_aware=True).get_database(self.database.name).get_collection(self.name)
        if docs:
            scratch.insert_many(docs)
        return iter(list(scratch.aggregate(stages)))

    # -- writes -------------------------------------------------------------------------------

    def insert_one(self, document: Any, **unused: Any) -> InsertOneResult:
        if not isinstance(document, Mapping):
            raise TypeError("document must be an instance of dict, bson.son.SON, bson.raw_bson.RawBSONDocument, "
                            "or a type that inherits from collections.MutableMapping")
        if "_id" not in document:
            document["_id"] = ObjectId()  # type: ignore[index]  # as pymongo, the caller's document gets its _id
        doc = stored(document)
        with self._lock:
            self._docs.expire()
            self._insert(doc)
        return InsertOneResult(document["_id"], True)

    def insert_many(self, documents: Iterable[Any], ordered: bool = True, **unused: Any) -> InsertManyResult:
        documents = list(documents)
        if not documents:
            raise TypeError("documents must be a non-empty list")
        ids = []
        with self._lock:
            self._docs.expire()
            for n, document in enumerate(documents):
                if "_id" not in document:
                    document["_id"] = ObjectId()
                try:
                    self._insert(stored(document))
                except DuplicateKeyError as exc:
                    raise BulkWriteError({
                        "writeErrors": [{"index": n, "code": 11000, "errmsg": str(exc), "op": document}],
                        "nInserted": n, "nUpserted": 0, "nMatched": 0, "nModified": 0, "nRemoved": 0,
                        "upserted": [], "writeConcernErrors": [],
                    }) from None
                ids.append(document["_id"])
        return InsertManyResult(ids, True)

    def update_one(self, filter: Any, update: Any, upsert: bool = False, array_filters: Any = None,  # noqa: A002
                   **unused: Any) -> UpdateResult:
        check_update(update, array_filters)
        return self._update(_filter(filter), update, upsert, many=False)

    def update_many(self, filter: Any, update: Any, upsert: bool = False, array_filters: Any = None,  # noqa: A002
                    **unused: Any) -> UpdateResult:
        check_update(update, array_filters)
        return self._update(_filter(filter), update, upsert, many=True)

    def replace_one(self, filter: Any, replacement: Any, upsert: bool = False, **unused: Any) -> UpdateResult:  # noqa: A002
        check_replacement(replacement)
        return self._update(_filter(filter), replacement, upsert, many=False, replace=True)

    def find_one_and_update(self, filter: Any, update: Any, projection: Any = None, sort: Any = None,  # noqa: A002
                            upsert: bool = False, return_document: bool = ReturnDocument.BEFORE,
                            **unused: Any) -> Any:
        check_update(update)
        return self._find_and_modify(_filter(filter), update, projection, sort, upsert, return_document)

    def find_one_and_replace(self, filter: Any, replacement: Any, projection: Any = None, sort: Any = None,  # noqa: A002
                             upsert: bool = False, return_document: bool = ReturnDocument.BEFORE,
                             **unused: Any) -> Any:
        check_replacement(replacement)
        return self._find_and_modify(_filter(filter), replacement, projection, sort, upsert, return_document,
                                     replace=True)

    def find_one_and_delete(self, filter: Any, projection: Any = None, sort: Any = None,  # noqa: A002
                            **unused: Any) -> Any:
        query = _filter(filter)
        with self._lock:
            self._docs.expire()
            for seq, doc in self._ordered(query, _sort_spec(sort)):
                self._docs.delete(seq)
                return project(doc, projection)
        return None

    def delete_one(self, filter: Any, **unused: Any) -> DeleteResult:  # noqa: A002
        return self._delete(_filter(filter), many=False)

    def delete_many(self, filter: Any, **unused: Any) -> DeleteResult:  # noqa: A002
        return self._delete(_filter(filter), many=True)

    # -- indexes -----------------------------------------------------------------------------

    def create_index(self, keys: Any, **options: Any) -> str:
        key = _index_key(keys)
        name = options.pop("name", None) or "_".join(f"{field}_{direction}" for field, direction in key)
        spec = {"key": key, **{k: v for k, v in options.items() if k not in ("session", "comment", "background")}}
        with self._lock:
            existing = self._docs.index_specs.get(name)
            if existing is not None:
                if existing != spec:
                    raise OperationFailure(f"An index with the same name {name!r} but other options exists "
                                           "(IndexOptionsConflict)", code=85)
                return name
            if any(s["key"] == key and s != spec for s in self._docs.index_specs.values()):
                raise OperationFailure(f"An equivalent index with other options exists: {key}", code=85)
            self._docs.create_index(name, spec)
            if spec.get("unique") and any(self._docs.duplicate(seq, d, self._count_matching)
                                          for seq, d in self._docs.docs.items()):
                self._docs.drop_index(name)
                raise self._duplicate_key(name)
            self.database._created.add(self.name)
        return name

    def index_information(self) -> dict[str, Any]:
        with self._lock:
            info: dict[str, Any] = {"_id_": {"key": [("_id", 1)], "v": 2}}
            for name, spec in self._docs.index_specs.items():
                info[name] = {"v": 2, **spec, "key": list(spec["key"])}
            return info

    def list_indexes(self, **unused: Any) -> Iterator[dict[str, Any]]:
        return iter([{**spec, "name": name, "key": SON(spec["key"])} for name, spec in self.index_information().items()])

    def drop_index(self, index_or_name: Any, **unused: Any) -> None:
        with self._lock:
            name = index_or_name
            if not isinstance(name, str):
                key = _index_key(index_or_name)
                name = next((n for n, s in self._docs.index_specs.items() if s["key"] == key), None)
            if name not in self._docs.index_specs:
                raise OperationFailure(f"index not found with name [{index_or_name}]", code=27)
            self._docs.drop_index(name)

    def drop_indexes(self, **unused: Any) -> None:
        with self._lock:
            for name in list(self._docs.index_specs):
                self._docs.drop_index(name)

    def drop(self, **unused: Any) -> None:
        self.database.drop_collection(self.name)

    # -- the engine ---------------------------------------------------------------------------

    def _matching(self, query: Any, seqs: Iterable[Seq] | None = None) -> Iterator[tuple[Seq, dict[str, Any]]]:
        """(number, document) of the stored documents matching `query`, in insertion order
        (among the numbers `seqs` if given). Call under the lock."""
        docs = self._docs.docs
        if seqs is None:
            if not docs:
                matches(query, {})  # the filter is checked even on no document
                return iter(())
            seqs = self._docs.candidates(query)
        pairs = docs.items() if seqs is None else ((s, docs[s]) for s in seqs if s in docs)
        return ((s, d) for s, d in pairs if matches(query, d))

    def _count_matching(self, query: Any, seqs: Iterable[Seq] | None) -> int:
        return sum(1 for _ in self._matching(query, seqs))

    def _ordered(self, query: Any, sort: list[tuple[str, int]] | None, skip: int = 0
                 ) -> Iterator[tuple[Seq, dict[str, Any]]]:
        """Matching (number, document) in the order of `sort` (ties in insertion order), after
        `skip` matches; lazily when a sorted index gives the order. Call under the lock."""
        if not sort or not self._docs.docs:
            found = self._matching(query)
            if sort:
                found = iter(_sorted(list(found), sort))
            return itertools.islice(found, skip, None) if skip else found
        ordered = self._docs.ordered(query, sort, skip)
        if ordered is not None:
            seqs, skipped = ordered
            found = self._matching(query, seqs)
            skip -= skipped
        else:
            found = iter(_sorted(list(self._matching(query)), sort))
        return itertools.islice(found, skip, None) if skip else found

    def _insert(self, doc: dict[str, Any]) -> None:
        key = store_key(doc["_id"])
        if key in self._docs.ids:
            raise self._duplicate_key("_id_")
        seq = self._docs.insert(key, doc)
        name = self._docs.duplicate(seq, doc, self._count_matching)
        if name is not None:
            self._docs.delete(seq)
            raise self._duplicate_key(name)
        self.database._created.add(self.name)

    def _replace(self, seq: Seq, old: dict[str, Any], new: dict[str, Any], changed: set[str]) -> None:
        """Store `new` in place of `old` (`changed`: the top-level fields that differ), unless it
        breaks a unique index."""
        self._docs.put(seq, new, changed)
        name = self._docs.duplicate(seq, new, self._count_matching, changed)
        if name is not None:
            self._docs.put(seq, old)
            raise self._duplicate_key(name)

    def _duplicate_key(self, index: str) -> DuplicateKeyError:
        """MongoDB's error for a write that would give unique index `index` a second document."""
        return DuplicateKeyError(f"E11000 duplicate key error collection: {self.full_name} index: {index}", 11000)

    def _changed(self, doc: dict[str, Any], update: Any, replace: bool) -> dict[str, Any]:
        if replace:
            new = stored(update)
            if "_id" in new and new["_id"] != doc["_id"]:
                raise OperationFailure("The _id field cannot be changed", code=66)
            return {"_id": doc["_id"], **new}
        return apply_update(doc, update, inserting=False, matches=matches)

    def _upsert(self, query: Any, update: Any, replace: bool) -> dict[str, Any]:
        base = upserted(query)
        if replace:
            doc = {**({"_id": base["_id"]} if "_id" in base else {}), **stored(update)}
        else:
            doc = apply_update(base, update, inserting=True, matches=matches)
        if "_id" not in doc:
            doc = {"_id": ObjectId(), **doc}
        self._insert(doc)
        return doc

    def _update(self, query: Any, update: Any, upsert: bool, *, many: bool, replace: bool = False) -> UpdateResult:
        matched = modified = 0
        with self._lock:
            self._docs.expire()
            found = list(itertools.islice(self._matching(query), None if many else 1))  # update_one reads one
            for seq, doc in found:
                matched += 1
                new = self._changed(doc, update, replace)
                changed = changed_fields(doc, new, None if replace else touched(update, False))
                if _differs(doc, new, changed):
                    self._replace(seq, doc, new, changed)
                    modified += 1
            if not matched and upsert:
                doc = self._upsert(query, update, replace)
                return UpdateResult({"n": 1, "nModified": 0, "upserted": doc["_id"]}, True)
        return UpdateResult({"n": matched, "nModified": modified}, True)

    def _find_and_modify(self, query: Any, update: Any, projection: Any, sort: Any, upsert: bool,
                         return_document: bool, replace: bool = False) -> Any:
        with self._lock:
            self._docs.expire()
            for seq, doc in self._ordered(query, _sort_spec(sort)):
                new = self._changed(doc, update, replace)
                changed = changed_fields(doc, new, None if replace else touched(update, False))
                if _differs(doc, new, changed):
                    self._replace(seq, doc, new, changed)
                return project(new if return_document else doc, projection)
            if not upsert:
                return None
            doc = self._upsert(query, update, replace)
            return project(doc, projection) if return_document else None

    def _delete(self, query: Any, *, many: bool) -> DeleteResult:
        with self._lock:
            self._docs.expire()
            found = [seq for seq, _ in itertools.islice(self._matching(query), None if many else 1)]
            for seq in found:
                self._docs.delete(seq)
        return DeleteResult({"n": len(found)}, True)


class Cursor:
    """The results of a `find`: `sort`, `skip` and `limit` chain until the first document is
    read; then the window of results is read at once, under the lock, as copies."""

    def __init__(self, collection: MemoryCollection, query: Any, projection: Any, skip: int, limit: int,
                 sort: Any) -> None:
        self.collection = collection
        self._query, self._projection = query, projection
        self._skip, self._limit, self._sort = skip, limit, _sort_spec(sort)
        self._results: Iterator[dict[str, Any]] | None = None

    def sort(self, key_or_list: Any, direction: Any = None) -> Cursor:
        self._check_unread()
        self._sort = _sort_spec(key_or_list if direction is None else [(key_or_list, direction)])
        return self

    def skip(self, skip: int) -> Cursor:
        self._check_unread()
        if not isinstance(skip, int) or skip < 0:
            raise ValueError("skip must be a non-negative int")
        self._skip = skip
        return self

    def limit(self, limit: int) -> Cursor:
        self._check_unread()
        if not isinstance(limit, int):
            raise TypeError("limit must be an integer")
        self._limit = limit
        return self

    def batch_size(self, batch_size: int) -> Cursor:
        return self

    def clone(self) -> Cursor:
        return Cursor(self.collection, self._query, self._projection, self._skip, self._limit, self._sort)

    def close(self) -> None:
        self._results = iter(())

    def _check_unread(self) -> None:
        if self._results is not None:
            raise OperationFailure("cannot set options after executing query")

    def _read(self) -> Iterator[dict[str, Any]]:
        collection = self.collection
        with collection._lock:
            collection._docs.expire()
            found: Iterable[tuple[Seq, dict[str, Any]]] = collection._ordered(self._query, self._sort, self._skip)
            if self._limit:
                found = itertools.islice(found, abs(self._limit))
            return iter([project(doc, self._projection) for _, doc in found])

    def __iter__(self) -> Cursor:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._results is None:
            self._results = self._read()
        return next(self._results)

    next = __next__

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- helpers ---------------------------------------------------------------------------------


def _filter(filter: Any) -> Any:  # noqa: A002
    if filter is None:
        return {}
    if not isinstance(filter, Mapping):
        raise TypeError("filter must be an instance of dict, bson.son.SON, or any other type that inherits from "
                        "collections.Mapping")
    return stored(filter)


def _differs(old: dict[str, Any], new: dict[str, Any], changed: set[str]) -> bool:
    """Whether an update changed the document: a top-level value (of the `changed` ones, not
    the same objects) that is not an equal value either."""
    for field in changed:
        before, after = old.get(field, _ABSENT), new.get(field, _ABSENT)
        if before != after:
            return True
    return False


_ABSENT = object()


def _sort_spec(sort: Any) -> list[tuple[str, int]] | None:
    if not sort:
        return None
    if isinstance(sort, str):
        return [(sort, 1)]
    items = sort.items() if isinstance(sort, Mapping) else sort
    spec = []
    for item in items:
        if isinstance(item, str):
            spec.append((item, 1))
            continue
        field, direction = item
        if direction not in (1, -1):
            raise ValueError(f"bad sort direction {direction!r} for {field!r}")
        spec.append((field, int(direction)))
    return spec


def _sorted(pairs: list[tuple[Seq, dict[str, Any]]], sort: list[tuple[str, int]]) -> list[tuple[Seq, dict[str, Any]]]:
    """`pairs` in the order of `sort`, ties in their given order, as MongoDB's BSON order ranks."""
    for field, direction in reversed(sort):
        pairs.sort(key=functools.partial(_sort_key, field), reverse=direction < 0)
    return pairs


def _sort_key(field: str, pair: tuple[Seq, dict[str, Any]]) -> Any:
    return resolve_sort_key(field, pair[1])


def _index_key(keys: Any) -> list[tuple[str, int]]:
    if isinstance(keys, str):
        return [(keys, 1)]
    key = []
    for item in keys.items() if isinstance(keys, Mapping) else keys:
        field, direction = (item, 1) if isinstance(item, str) else item
        key.append((field, direction))
    if not key:
        raise ValueError("key_or_list must not be empty")
    return key


def project(doc: Mapping[str, Any], projection: Any) -> dict[str, Any]:
    """A copy of `doc` with only the fields `projection` asks for."""
    if not projection:
        return copied(doc)
    if not isinstance(projection, Mapping):
        projection = dict.fromkeys(projection, 1)
    with_id = bool(projection.get("_id", 1))
    fields = {k: v for k, v in projection.items() if k != "_id"}
    if fields and any(fields.values()):
        out: dict[str, Any] = {}
        if with_id and "_id" in doc:
            out["_id"] = copied(doc["_id"])
        for path in fields:
            _include(doc, out, path.split("."))
        return out
    out = copied(doc)
    if not with_id:
        out.pop("_id", None)
    for path in fields:
        _exclude(out, path.split("."))
    return out


def _include(doc: Any, out: dict[str, Any], parts: list[str]) -> None:
    if not isinstance(doc, dict) or parts[0] not in doc:
        return
    value = doc[parts[0]]
    if len(parts) == 1:
        out[parts[0]] = copied(value)
    elif isinstance(value, dict):
        _include(value, out.setdefault(parts[0], {}), parts[1:])


def _exclude(out: Any, parts: list[str]) -> None:
    if not isinstance(out, dict):
        return
    if len(parts) == 1:
        out.pop(parts[0], None)
    elif parts[0] in out:
        _exclude(out[parts[0]], parts[1:])
