"""A small MongoDB wire-protocol server backed by asynctask's in-memory store, for tests.

No real MongoDB is available on the test machines, yet multi-process tests need
several processes to share one database through genuine pymongo connections.
This module serves OP_MSG (plus the legacy OP_QUERY handshake) on 127.0.0.1 and
executes every command against the databases of asynctask's embedded store.

Run it with ``python tests/mongo_wire.py --port 0``; it prints ``PORT <n>`` once
listening.  Tests normally use :func:`running_server` instead.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import logging
import os
import random
import select
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from mongomock.filtering import filter_applies
from pymongo.errors import CollectionInvalid, OperationFailure

log = logging.getLogger(__name__)

OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013
FLAG_CHECKSUM_PRESENT = 1 << 0
FLAG_MORE_TO_COME = 1 << 1
QUERY_FAILURE = 1 << 1

MAX_WIRE_VERSION = 17  # MongoDB 6.0
MAX_BSON_SIZE = 16 * 1024 * 1024
MAX_MESSAGE_SIZE = 48_000_000
DEFAULT_FIRST_BATCH = 101

_HEADER = struct.Struct("<iiii")
_INT32 = struct.Struct("<i")
_UINT32 = struct.Struct("<I")
_OP_REPLY_PREFIX = struct.Struct("<iqii")
# Naive datetimes are what mongomock stores natively; they are UTC by convention.
_DECODE_OPTIONS: CodecOptions = CodecOptions(tz_aware=False)

Document = dict[str, Any]

_CODE_NAMES = {
    1: "InternalError",
    2: "BadValue",
    9: "FailedToParse",
    14: "TypeMismatch",
    20: "IllegalOperation",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    43: "CursorNotFound",
    48: "NamespaceExists",
    59: "CommandNotFound",
    238: "NotImplemented",
    352: "UnsupportedOpQueryCommand",
    11000: "DuplicateKey",
}


class CommandError(Exception):
    """A command failure to be reported to the client as ``ok: 0``."""

    def __init__(self, code: int, errmsg: str) -> None:
        super().__init__(errmsg)
        self.code = code
        self.errmsg = errmsg

    def reply(self) -> Document:
        return error_reply(self.code, self.errmsg)


def error_reply(code: int, errmsg: str) -> Document:
    """Build the ``ok: 0`` reply a real server sends, so pymongo picks the right exception."""
    return {"ok": 0.0, "errmsg": errmsg, "code": code, "codeName": _CODE_NAMES.get(code, "UnknownError")}


def _failure_code(exc: OperationFailure) -> int:
    return exc.code or 2


def _error_from(exc: Exception, command: str) -> tuple[int, str]:
    """Map an exception raised while running ``command`` to a server error (code, errmsg).

    mongomock reports bad input with plain Python exceptions, so those get the
    codes a real server would use; they are logged because they may also be
    mongomock gaps that a test author needs to hear about.
    """
    if isinstance(exc, CommandError):
        return exc.code, exc.errmsg
    if isinstance(exc, CollectionInvalid):
        return 48, str(exc)
    if isinstance(exc, OperationFailure):
        return _failure_code(exc), str(exc)
    log.warning("%s failed inside mongomock", command, exc_info=exc)
    if isinstance(exc, NotImplementedError):
        return 238, f"{command}: not supported by the mongo_wire test server: {exc}"
    code = {TypeError: 14, ValueError: 2, KeyError: 2}.get(type(exc), 1)
    return code, f"{command} failed in the mongo_wire test server: {type(exc).__name__}: {exc}"


def _duplicate_message(ns: str, exc: Exception) -> str:
    return f"E11000 duplicate key error collection: {ns} ({exc})"


def _sort_spec(sort: Any) -> list[tuple[str, Any]] | None:
    if not sort:
        return None
    return list(sort.items())


def _is_operator_update(update: Any) -> bool:
    return isinstance(update, dict) and bool(update) and next(iter(update)).startswith("$")


class _Cursors:
    """Server-side cursors: the remaining documents of each open find/aggregate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[str, deque[Document]]] = {}

    def first_batch(self, ns: str, docs: list[Document], batch_size: int | None, single_batch: bool) -> Document:
        size = DEFAULT_FIRST_BATCH if batch_size is None else int(batch_size)
        first, rest = docs[:size], docs[size:]
        cursor_id = 0
        if rest and not single_batch:
            with self._lock:
                cursor_id = random.randint(1, 2**63 - 1)
                while cursor_id in self._open:
                    cursor_id = random.randint(1, 2**63 - 1)
                self._open[cursor_id] = (ns, deque(rest))
        return {"cursor": {"firstBatch": first, "id": Int64(cursor_id), "ns": ns}, "ok": 1.0}

    def get_more(self, cursor_id: int, batch_size: int | None) -> Document:
        with self._lock:
            entry = self._open.get(cursor_id)
            if entry is None:
                raise CommandError(43, f"cursor id {cursor_id} not found")
            ns, remaining = entry
            count = len(remaining) if not batch_size else min(int(batch_size), len(remaining))
            batch = [remaining.popleft() for _ in range(count)]
            if not remaining:
                del self._open[cursor_id]
                cursor_id = 0
        return {"cursor": {"nextBatch": batch, "id": Int64(cursor_id), "ns": ns}, "ok": 1.0}

    def kill(self, cursor_ids: list[int]) -> Document:
        killed, not_found = [], []
        with self._lock:
            for cursor_id in cursor_ids:
                (killed if self._open.pop(cursor_id, None) else not_found).append(Int64(cursor_id))
        return {"cursorsKilled": killed, "cursorsNotFound": not_found, "cursorsAlive": [], "cursorsUnknown": [], "ok": 1.0}


class _MemoryClient:
    """Databases of asynctask's embedded store (queries read only the documents an index
    yields), by name."""

    def __init__(self) -> None:
        self._databases: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        from asynctask.store.memory import MemoryDatabase

        if name not in self._databases:
            self._databases[name] = MemoryDatabase(name)
        return self._databases[name]

    def drop_database(self, name: str) -> None:
        self._databases.pop(name, None)

    def list_database_names(self) -> list[str]:
        return sorted(name for name, db in self._databases.items() if db.list_collection_names())


class MockBackend:
    """Executes decoded commands against one mongomock client.

    mongomock is not thread-safe, so data commands run under one lock; commands
    that touch no data (hello, ping, cursor bookkeeping) bypass it so pymongo's
    heartbeats are answered even while a slow command holds the lock.
    """

    def __init__(self) -> None:
        self.client = _MemoryClient()
        self.lock = threading.Lock()
        self.cursors = _Cursors()
        self._connection_ids = itertools.count(1)
        self._lockless: dict[str, Callable[[Document, int], Document]] = {
            "hello": self._hello,
            "isMaster": self._hello,
            "ismaster": self._hello,
            "ping": lambda body, conn: {"ok": 1.0},
            "buildInfo": self._build_info,
            "buildinfo": self._build_info,
            "endSessions": lambda body, conn: {"ok": 1.0},
            "refreshSessions": lambda body, conn: {"ok": 1.0},
            "getMore": lambda body, conn: self.cursors.get_more(int(body["getMore"]), body.get("batchSize")),
            "killCursors": lambda body, conn: self.cursors.kill([int(c) for c in body.get("cursors", [])]),
        }
        self._locked: dict[str, Callable[[Any, Document], Document]] = {
            "insert": self._insert,
            "find": self._find,
            "update": self._update,
            "delete": self._delete,
            "findAndModify": self._find_and_modify,
            "findandmodify": self._find_and_modify,
            "count": self._count,
            "aggregate": self._aggregate,
            "distinct": self._distinct,
            "createIndexes": self._create_indexes,
            "listIndexes": self._list_indexes,
            "dropIndexes": self._drop_indexes,
            "create": self._create,
            "drop": self._drop,
            "dropDatabase": self._drop_database,
            "listCollections": self._list_collections,
            "listDatabases": self._list_databases,
        }

    def next_connection_id(self) -> int:
        return next(self._connection_ids)

    def run(self, body: Document, connection_id: int = 0) -> Document:
        """Execute one command document and return the reply; never raises."""
        if not body:
            return error_reply(9, "empty command document")
        name = next(iter(body))
        try:
            if "startTransaction" in body or "autocommit" in body or name in ("commitTransaction", "abortTransaction"):
                raise CommandError(20, "Transaction numbers are only allowed on a replica set member or mongos "
                                       "(the mongo_wire test server does not support transactions)")
            lockless = self._lockless.get(name)
            if lockless is not None:
                return lockless(body, connection_id)
            handler = self._locked.get(name)
            if handler is None:
                raise CommandError(59, f"no such command: '{name}'")
            db = self.client[body.get("$db", "test")]
            with self.lock:
                return handler(db, body)
        except Exception as exc:
            return error_reply(*_error_from(exc, name))

    def _hello(self, body: Document, connection_id: int) -> Document:
        # No topologyVersion: pymongo then polls instead of streaming awaitable hellos.
        return {
            "helloOk": True,
            "ismaster": True,
            "isWritablePrimary": True,
            "maxBsonObjectSize": MAX_BSON_SIZE,
            "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
            "maxWriteBatchSize": 100_000,
            "localTime": datetime.datetime.now(datetime.timezone.utc),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": connection_id,
            "minWireVersion": 0,
            "maxWireVersion": MAX_WIRE_VERSION,
            "readOnly": False,
            "ok": 1.0,
        }

    def _build_info(self, body: Document, connection_id: int) -> Document:
        return {"version": "6.0.0", "versionArray": [6, 0, 0, 0], "gitVersion": "mongo_wire", "bits": 64,
                "maxBsonObjectSize": MAX_BSON_SIZE, "ok": 1.0}

    @staticmethod
    def _ns(db: Any, coll_name: str) -> str:
        return f"{db.name}.{coll_name}"

    @staticmethod
    def _ensure_collection(db: Any, name: str) -> bool:
        """Create ``name`` explicitly, as a real server does on first write; True if it already existed.

        Without this mongomock forgets a collection once its last document and index are gone.
        """
        if name in db.list_collection_names():
            return True
        db.create_collection(name)
        return False

    @staticmethod
    def _write_error(ns: str, command: str, index: int, exc: Exception) -> Document:
        """One ``writeErrors`` entry; pymongo turns code 11000 there into DuplicateKeyError."""
        code, errmsg = _error_from(exc, command)
        if code == 11000:
            errmsg = _duplicate_message(ns, exc)
        return {"index": index, "code": code, "errmsg": errmsg}

    @staticmethod
    def _write_reply(n: int, errors: list[Document], **extra: Any) -> Document:
        reply: Document = {"n": n, **extra}
        if errors:
            reply["writeErrors"] = errors
        reply["ok"] = 1.0
        return reply

    def _insert(self, db: Any, body: Document) -> Document:
        ns, coll = self._ns(db, body["insert"]), db[body["insert"]]
        self._ensure_collection(db, body["insert"])
        n, errors = 0, []
        for index, doc in enumerate(body.get("documents", [])):
            try:
                if len(bson.encode(doc)) > MAX_BSON_SIZE:
                    raise CommandError(10334, f"object to insert too large; size limit: {MAX_BSON_SIZE}")
                coll.insert_one(doc)
                n += 1
            except Exception as exc:
                errors.append(self._write_error(ns, "insert", index, exc))
                if body.get("ordered", True):
                    break
        return self._write_reply(n, errors)

    @classmethod
    def _apply_update(cls, coll: Any, query: Document, update: Any, *, upsert: bool, multi: bool = False,
                      array_filters: list[Document] | None = None) -> Any:
        """Apply one update; like MongoDB, one whose resulting document is over 16 MiB changes
        nothing and fails. (Only updates that carry over 1 MiB themselves are checked, so the
        many small ones cost no extra read.)"""
        if len(bson.encode({"u": update} if isinstance(update, dict) else {"u": list(update)})) < 1024 * 1024:
            return cls._update_unchecked(coll, query, update, upsert=upsert, multi=multi, array_filters=array_filters)
        before = {doc["_id"]: doc for doc in coll.find(query)}
        result = cls._update_unchecked(coll, query, update, upsert=upsert, multi=multi, array_filters=array_filters)
        touched = [*before, *([result.upserted_id] if result.upserted_id is not None else [])]
        if any(len(bson.encode(doc)) > MAX_BSON_SIZE for doc in coll.find({"_id": {"$in": touched}})):
            for _id in touched:
                if _id in before:
                    coll.replace_one({"_id": _id}, before[_id])
                else:
                    coll.delete_one({"_id": _id})
            raise CommandError(17419, f"Resulting document after update is larger than {MAX_BSON_SIZE}")
        return result

    @staticmethod
    def _update_unchecked(coll: Any, query: Document, update: Any, *, upsert: bool, multi: bool,
                          array_filters: list[Document] | None) -> Any:
        if _is_operator_update(update):
            method = coll.update_many if multi else coll.update_one
            return method(query, update, upsert=upsert, array_filters=array_filters)
        if not isinstance(update, dict):
            raise CommandError(238, "pipeline-style updates are not supported by the mongo_wire test server")
        if multi:
            raise CommandError(9, "multi update is not supported for replacement-style update")
        return coll.replace_one(query, update, upsert=upsert)

    def _update(self, db: Any, body: Document) -> Document:
        ns, coll = self._ns(db, body["update"]), db[body["update"]]
        if any(stmt.get("upsert") for stmt in body.get("updates", [])):
            self._ensure_collection(db, body["update"])
        n = modified = 0
        upserted: list[Document] = []
        errors: list[Document] = []
        for index, stmt in enumerate(body.get("updates", [])):
            try:
                result = self._apply_update(coll, stmt.get("q") or {}, stmt["u"], upsert=stmt.get("upsert", False),
                                            multi=stmt.get("multi", False), array_filters=stmt.get("arrayFilters"))
            except Exception as exc:
                errors.append(self._write_error(ns, "update", index, exc))
                if body.get("ordered", True):
                    break
                continue
            if result.upserted_id is not None:
                n += 1
                upserted.append({"index": index, "_id": result.upserted_id})
            else:
                n += result.matched_count
                modified += result.modified_count
        extra: Document = {"nModified": modified}
        if upserted:
            extra["upserted"] = upserted
        return self._write_reply(n, errors, **extra)

    def _delete(self, db: Any, body: Document) -> Document:
        ns, coll = self._ns(db, body["delete"]), db[body["delete"]]
        n, errors = 0, []
        for index, stmt in enumerate(body.get("deletes", [])):
            try:
                method = coll.delete_one if stmt.get("limit", 0) else coll.delete_many
                n += method(stmt.get("q") or {}).deleted_count
            except Exception as exc:
                errors.append(self._write_error(ns, "delete", index, exc))
                if body.get("ordered", True):
                    break
        return self._write_reply(n, errors)

    def _find_and_modify(self, db: Any, body: Document) -> Document:
        """findAndModify done as find-then-write; atomic because the whole backend lock is held."""
        name = body.get("findAndModify", body.get("findandmodify"))
        ns, coll = self._ns(db, name), db[name]
        query = body.get("query") or {}
        fields = body.get("fields") or None
        update = body.get("update")
        upsert = bool(body.get("upsert", False))
        return_new = bool(body.get("new", False))
        if body.get("remove") and (update is not None or upsert):
            raise CommandError(9, "Cannot specify both an update and remove=true")
        if not body.get("remove") and update is None:
            raise CommandError(9, "Either an update or remove=true must be specified")
        if upsert:
            self._ensure_collection(db, name)
        cursor = coll.find(query, projection={"_id": 1})
        sort = _sort_spec(body.get("sort"))
        if sort:
            cursor = cursor.sort(sort)
        match = next(iter(cursor.limit(1)), None)
        try:
            if body.get("remove"):
                if match is None:
                    return {"lastErrorObject": {"n": 0}, "value": None, "ok": 1.0}
                value = coll.find_one({"_id": match["_id"]}, fields)
                coll.delete_one({"_id": match["_id"]})
                return {"lastErrorObject": {"n": 1}, "value": value, "ok": 1.0}
            if match is not None:
                selector = {"_id": match["_id"]}
                before = None if return_new else coll.find_one(selector, fields)
                self._apply_update(coll, selector, update, upsert=False, array_filters=body.get("arrayFilters"))
                value = coll.find_one(selector, fields) if return_new else before
                last_error: Document = {"n": 1, "updatedExisting": True}
            elif upsert:
                result = self._apply_update(coll, query, update, upsert=True, array_filters=body.get("arrayFilters"))
                value = coll.find_one({"_id": result.upserted_id}, fields) if return_new else None
                last_error = {"n": 1, "updatedExisting": False, "upserted": result.upserted_id}
            else:
                value, last_error = None, {"n": 0, "updatedExisting": False}
        except OperationFailure as exc:
            if _failure_code(exc) == 11000:
                raise CommandError(11000, _duplicate_message(ns, exc)) from exc
            raise
        return {"lastErrorObject": last_error, "value": value, "ok": 1.0}

    def _find(self, db: Any, body: Document) -> Document:
        coll_name = body["find"]
        limit = int(body.get("limit", 0))
        single_batch = bool(body.get("singleBatch", False)) or limit < 0
        cursor = db[coll_name].find(body.get("filter") or {}, projection=body.get("projection") or None,
                                    skip=int(body.get("skip", 0)), limit=abs(limit))
        sort = _sort_spec(body.get("sort"))
        if sort:
            cursor = cursor.sort(sort)
        return self.cursors.first_batch(self._ns(db, coll_name), list(cursor), body.get("batchSize"), single_batch)

    def _aggregate(self, db: Any, body: Document) -> Document:
        coll_name = body["aggregate"]
        if not isinstance(coll_name, str):
            raise CommandError(238, "database-level aggregate is not supported by the mongo_wire test server")
        pipeline = body.get("pipeline", [])
        docs = list(db[coll_name].aggregate(pipeline))
        if pipeline and next(iter(pipeline[-1])) in ("$out", "$merge"):
            docs = []
        batch_size = (body.get("cursor") or {}).get("batchSize")
        return self.cursors.first_batch(self._ns(db, coll_name), docs, batch_size, False)

    def _count(self, db: Any, body: Document) -> Document:
        options = {key: int(body[key]) for key in ("skip", "limit") if body.get(key)}
        return {"n": db[body["count"]].count_documents(body.get("query") or {}, **options), "ok": 1.0}

    def _distinct(self, db: Any, body: Document) -> Document:
        return {"values": db[body["distinct"]].distinct(body["key"], body.get("query") or {}), "ok": 1.0}

    def _create_indexes(self, db: Any, body: Document) -> Document:
        name = body["createIndexes"]
        existed = self._ensure_collection(db, name)
        coll = db[name]
        before = len(coll.index_information())
        for spec in body.get("indexes", []):
            options = {k: v for k, v in spec.items() if k not in ("key", "v", "ns")}
            try:
                coll.create_index(list(spec["key"].items()), **options)
            except OperationFailure as exc:
                if _failure_code(exc) == 11000:
                    raise CommandError(11000, _duplicate_message(self._ns(db, name), exc)) from exc
                raise
        return {"createdCollectionAutomatically": not existed, "numIndexesBefore": before,
                "numIndexesAfter": len(coll.index_information()), "ok": 1.0}

    def _require_collection(self, db: Any, name: str) -> Any:
        if name not in db.list_collection_names():
            raise CommandError(26, f"ns does not exist: {self._ns(db, name)}")
        return db[name]

    def _list_indexes(self, db: Any, body: Document) -> Document:
        name = body["listIndexes"]
        docs = list(self._require_collection(db, name).list_indexes())
        return self.cursors.first_batch(self._ns(db, name), docs, None, True)

    def _drop_indexes(self, db: Any, body: Document) -> Document:
        coll = self._require_collection(db, body["dropIndexes"])
        count = len(coll.index_information())
        index = body.get("index", "*")
        try:
            if index == "*":
                coll.drop_indexes()
            elif isinstance(index, dict):
                coll.drop_index(list(index.items()))
            else:
                for index_name in [index] if isinstance(index, str) else index:
                    coll.drop_index(index_name)
        except OperationFailure as exc:
            raise CommandError(27, str(exc)) from exc
        return {"nIndexesWas": count, "ok": 1.0}

    def _create(self, db: Any, body: Document) -> Document:
        db.create_collection(body["create"])
        return {"ok": 1.0}

    def _drop(self, db: Any, body: Document) -> Document:
        coll = self._require_collection(db, body["drop"])
        count = len(coll.index_information())
        db.drop_collection(body["drop"])
        return {"ns": self._ns(db, body["drop"]), "nIndexesWas": count, "ok": 1.0}

    def _drop_database(self, db: Any, body: Document) -> Document:
        self.client.drop_database(db.name)
        return {"dropped": db.name, "ok": 1.0}

    def _list_collections(self, db: Any, body: Document) -> Document:
        infos = [{"name": name, "type": "collection", "options": {}, "info": {"readOnly": False}}
                 for name in db.list_collection_names()]
        filter_ = body.get("filter") or {}
        docs = [info for info in infos if filter_applies(filter_, info)]
        if body.get("nameOnly"):
            docs = [{"name": info["name"], "type": info["type"]} for info in docs]
        return self.cursors.first_batch(f"{db.name}.$cmd.listCollections", docs, None, True)

    def _list_databases(self, db: Any, body: Document) -> Document:
        names = self.client.list_database_names()
        if body.get("nameOnly"):
            return {"databases": [{"name": name} for name in names], "ok": 1.0}
        return {"databases": [{"name": name, "sizeOnDisk": 0, "empty": False} for name in names],
                "totalSize": 0, "ok": 1.0}


def parse_op_msg(payload: bytes) -> tuple[int, Document]:
    """Decode an OP_MSG payload (after the header) into (flag bits, command document).

    Kind-1 document sequences are merged into the body under their identifier,
    which is how a server sees e.g. ``documents`` of an insert.
    """
    (flags,) = _UINT32.unpack_from(payload, 0)
    end = len(payload) - (4 if flags & FLAG_CHECKSUM_PRESENT else 0)
    pos = 4
    body: Document | None = None
    sequences: dict[str, list[Document]] = {}
    while pos < end:
        kind = payload[pos]
        pos += 1
        (size,) = _INT32.unpack_from(payload, pos)
        if kind == 0:
            body = bson.decode(payload[pos:pos + size], codec_options=_DECODE_OPTIONS)
        elif kind == 1:
            name_end = payload.index(b"\x00", pos + 4)
            identifier = payload[pos + 4:name_end].decode()
            docs = bson.decode_all(payload[name_end + 1:pos + size], codec_options=_DECODE_OPTIONS)
            sequences.setdefault(identifier, []).extend(docs)
        else:
            raise ValueError(f"unknown OP_MSG section kind {kind}")
        pos += size
    if body is None:
        raise ValueError("OP_MSG without a body section")
    for identifier, docs in sequences.items():
        body.setdefault(identifier, []).extend(docs)
    return flags, body


def encode_op_msg(doc: Document, request_id: int, response_to: int) -> bytes:
    """Encode a reply as an OP_MSG with a single kind-0 section and no flags."""
    payload = _UINT32.pack(0) + b"\x00" + bson.encode(doc)
    return _HEADER.pack(16 + len(payload), request_id, response_to, OP_MSG) + payload


def parse_op_query(payload: bytes) -> tuple[str, Document]:
    """Decode an OP_QUERY payload into (full collection name, query document)."""
    name_end = payload.index(b"\x00", 4)
    collection = payload[4:name_end].decode()
    pos = name_end + 1 + 8
    (size,) = _INT32.unpack_from(payload, pos)
    query = bson.decode(payload[pos:pos + size], codec_options=_DECODE_OPTIONS)
    if "$query" in query:
        query = query["$query"]
    return collection, query


def encode_op_reply(doc: Document, request_id: int, response_to: int, flags: int = 0) -> bytes:
    """Encode a single-document OP_REPLY, the only answer legacy OP_QUERY clients accept."""
    payload = _OP_REPLY_PREFIX.pack(flags, 0, 0, 1) + bson.encode(doc)
    return _HEADER.pack(16 + len(payload), request_id, response_to, OP_REPLY) + payload


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """Read exactly ``size`` bytes; None on a clean EOF before the first byte."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return None
            raise ConnectionError("connection closed mid-message")
        got += n
    return bytes(buf)


class _ConnectionHandler(socketserver.BaseRequestHandler):
    """Serves one client connection: read a message, run it, write the reply, repeat."""

    server: MongoWireServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        backend = self.server.backend
        connection_id = backend.next_connection_id()
        try:
            while True:
                header = _recv_exact(sock, 16)
                if header is None:
                    return
                length, request_id, _, opcode = _HEADER.unpack(header)
                if not 16 <= length <= MAX_MESSAGE_SIZE:
                    log.warning("connection %d: bad message length %d, closing", connection_id, length)
                    return
                payload = _recv_exact(sock, length - 16) if length > 16 else b""
                if payload is None:
                    return
                reply = self._dispatch(backend, connection_id, request_id, opcode, payload)
                if reply is None:
                    log.warning("connection %d: unsupported opcode %d, closing", connection_id, opcode)
                    return
                if reply:
                    sock.sendall(reply)
        except OSError as exc:
            log.debug("connection %d closed: %s", connection_id, exc)
        except Exception:
            log.exception("connection %d: unexpected failure", connection_id)

    def _dispatch(self, backend: MockBackend, connection_id: int, request_id: int, opcode: int,
                  payload: bytes) -> bytes | None:
        response_id = next(self.server.request_ids)
        if opcode == OP_MSG:
            flags = _UINT32.unpack_from(payload, 0)[0] if len(payload) >= 4 else 0
            try:
                _, body = parse_op_msg(payload)
                doc = backend.run(body, connection_id)
            except Exception as exc:
                log.exception("connection %d: malformed OP_MSG", connection_id)
                doc = error_reply(9, f"malformed OP_MSG: {exc}")
            if flags & FLAG_MORE_TO_COME:
                return b""
            try:
                return encode_op_msg(doc, response_id, request_id)
            except Exception as exc:
                log.exception("connection %d: cannot encode the reply", connection_id)
                return encode_op_msg(error_reply(1, f"cannot encode the reply: {exc}"), response_id, request_id)
        if opcode == OP_QUERY:
            try:
                collection, query = parse_op_query(payload)
                name = next(iter(query), "")
                if collection.endswith(".$cmd") and name in ("isMaster", "ismaster", "hello"):
                    return encode_op_reply(backend.run(query, connection_id), response_id, request_id)
                doc = error_reply(352, f"Unsupported OP_QUERY command: {name}. Only the handshake is supported")
            except Exception as exc:
                log.exception("connection %d: malformed OP_QUERY", connection_id)
                doc = error_reply(9, f"malformed OP_QUERY: {exc}")
            doc["$err"] = doc["errmsg"]
            return encode_op_reply(doc, response_id, request_id, flags=QUERY_FAILURE)
        return None


class MongoWireServer(socketserver.ThreadingTCPServer):
    """A threaded TCP server speaking the MongoDB wire protocol over a :class:`MockBackend`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, backend: MockBackend | None = None) -> None:
        self.backend = backend or MockBackend()
        self.request_ids = itertools.count(1)
        super().__init__((host, port), _ConnectionHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]


def _exit_on_stdin_eof() -> None:
    """Stop the server when the parent closes our stdin, so a killed test run leaves no orphan."""
    while sys.stdin.buffer.read1(4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, after printing ``PORT <n>`` once listening."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches EOF")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="mongo_wire %(levelname)s %(threadName)s: %(message)s")

    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before any thread starts so every thread inherits the mask and only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = MongoWireServer(args.host, args.port)
    threading.Thread(target=server.serve_forever, args=(0.1,), name="serve", daemon=True).start()
    if args.watch_stdin:
        threading.Thread(target=_exit_on_stdin_eof, name="stdin-watch", daemon=True).start()
    print(f"PORT {server.port}", flush=True)
    received = signal.sigwait(stop_signals)
    log.info("received %s, shutting down", signal.Signals(received).name)
    server.shutdown()
    server.server_close()
    return 0


@contextlib.contextmanager
def running_server(startup_timeout: float = 10.0) -> Iterator[str]:
    """Run the server in a subprocess and yield its ``mongodb://`` URI; stop it on exit."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--port", "0", "--watch-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        port = _read_port(proc, startup_timeout)
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        _stop(proc)


def _read_port(proc: subprocess.Popen, timeout: float) -> int:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"mongo_wire server did not report its port within {timeout:.0f}s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"mongo_wire server exited before listening (exit code {proc.wait(5)})")
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith("PORT "):
        raise RuntimeError(f"mongo_wire server printed {line!r} instead of 'PORT <n>'")
    return int(line.split()[1])


def _stop(proc: subprocess.Popen) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
