"""The update operators of the embedded store, applied copy-on-write: an update returns a new
document and shares every untouched value with the old one, which stays as it was.

The operators asynctask and its users write: `$set`, `$unset`, `$inc`, `$min`, `$max`, `$mul`,
`$setOnInsert`, `$push` (with `$each`, `$slice`), `$addToSet` (with `$each`), `$pull` and `$pop`.
Any other is refused with a `WriteError`, as MongoDB refuses an unknown modifier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pymongo.errors import WriteError

from .values import MISSING, encoded, stored

Doc = dict[str, Any]


def check_update(update: Any, array_filters: Any = None) -> None:
    """pymongo's client-side check: an update is a non-empty document of `$` operators (and
    this store has no array filters)."""
    if array_filters:
        raise WriteError("array filters are not supported by the in-memory store", code=2)
    if not isinstance(update, Mapping):
        raise TypeError("update must be an instance of dict, bson.son.SON, or any other type that inherits from "
                        "collections.Mapping")
    if not update:
        raise ValueError("update cannot be empty")
    if not all(isinstance(op, str) and op.startswith("$") for op in update):
        raise ValueError("update only works with $ operators")


def check_replacement(replacement: Any) -> None:
    """pymongo's client-side check: a replacement holds no `$` operator."""
    if not isinstance(replacement, Mapping):
        raise TypeError("replacement must be an instance of dict, bson.son.SON, or any other type that inherits "
                        "from collections.Mapping")
    if any(isinstance(key, str) and key.startswith("$") for key in replacement):
        raise ValueError("replacement can not include $ operators")


def apply_update(doc: Doc, update: Mapping[str, Any], *, inserting: bool,
                 matches: Callable[[Any, Any], bool]) -> Doc:
    """`doc` with `update` applied (`$setOnInsert` only when `inserting`); `matches(query,
    element)` is the query engine, for `$pull` conditions."""
    new = dict(doc)
    checked = touched(update, inserting) is not None
    seen: set[str] = set()
    for op, fields in update.items():
        apply = _OPERATORS.get(op)
        if apply is None:
            raise WriteError(f"Unknown modifier: {op}. Expected a valid update modifier or pipeline-style update",
                             code=9)
        if not isinstance(fields, Mapping):
            raise WriteError(f"Modifiers operate on fields but we found type {type(fields).__name__} instead. "
                             f"For example: {{$mod: {{<field>: ...}}}} not {{{op}: {fields!r}}}", code=9)
        if op == "$setOnInsert" and not inserting:
            continue
        for path, operand in fields.items():
            if not checked:
                _check_path(path, seen, inserting)
            apply(new, path, operand, matches)
    return new


#: Update shapes (operators and paths) seen before -> the top-level fields they may change, or
#: None when their paths are refused. The hot path writes the same few shapes over and over.
_SHAPES: dict[tuple[Any, ...], frozenset[str] | None] = {}


def touched(update: Mapping[str, Any], inserting: bool) -> frozenset[str] | None:
    """The top-level fields `update` may change, or None if its paths are refused (empty,
    conflicting, `_id`) or it has an operator that is not a document of paths."""
    try:
        shape = (inserting, *((op, type(fields), *fields) for op, fields in update.items()))
        known = _SHAPES.get(shape, MISSING)
    except TypeError:  # not a document of paths: `apply_update` says what is wrong
        return None
    if known is not MISSING:
        return known  # type: ignore[return-value]
    tops: frozenset[str] | None
    try:
        seen: set[str] = set()
        for op, fields in update.items():
            if op in _OPERATORS and isinstance(fields, Mapping) and (inserting or op != "$setOnInsert"):
                for path in fields:
                    _check_path(path, seen, inserting)
        tops = frozenset(path.split(".", 1)[0] for path in seen if not path.startswith("\0"))
    except WriteError:
        tops = None
    if len(_SHAPES) > 4096:
        _SHAPES.clear()
    _SHAPES[shape] = tops
    return tops


def _check_path(path: str, seen: set[str], inserting: bool) -> None:
    if not isinstance(path, str) or not path or path.startswith("$") or ".." in path or path.endswith("."):
        raise WriteError(f"The update path '{path}' contains an empty field name, which is not allowed.", code=56)
    top = "\0" + path.split(".", 1)[0]  # marks the top-level fields touched, so most paths need no scan
    if top in seen:
        for other in seen:
            if path == other or path.startswith(other + ".") or other.startswith(path + "."):
                raise WriteError(f"Updating the path '{path}' would create a conflict at '{other}'", code=40)
    seen.add(path)
    seen.add(top)
    if (path == "_id" or path.startswith("_id.")) and not inserting:
        raise WriteError("Performing an update on the path '_id' would modify the immutable field '_id'", code=66)


# -- reaching a path, copy-on-write ------------------------------------------------------------


def _get(doc: Doc, path: str) -> Any:
    current: Any = doc
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part, MISSING)
        elif isinstance(current, list) and part.isdigit():
            index = int(part)
            current = current[index] if index < len(current) else MISSING
        else:
            return MISSING
    return current


def _parent(doc: Doc, path: str, create: bool) -> tuple[Any, str]:
    """The container holding the last part of `path`, copied so that it may be changed, and
    that part; (None, part) when it does not exist and `create` is false."""
    parts = path.split(".")
    current: Any = doc
    for part in parts[:-1]:
        child = _child(current, part)
        if child is MISSING or child is None:
            if not create:
                return None, parts[-1]
            child = {}
        elif isinstance(child, dict):
            child = dict(child)
        elif isinstance(child, list):
            child = list(child)
        else:
            if not create:
                return None, parts[-1]
            raise WriteError(f"Cannot create field '{parts[-1]}' in element {{{part}: {child!r}}}", code=28)
        _put(current, part, child)
        current = child
    return current, parts[-1]


def _child(container: Any, part: str) -> Any:
    if isinstance(container, dict):
        return container.get(part, MISSING)
    if isinstance(container, list) and part.isdigit():
        index = int(part)
        return container[index] if index < len(container) else MISSING
    return MISSING


def _put(container: Any, part: str, value: Any) -> None:
    if isinstance(container, dict):
        container[part] = value
    elif isinstance(container, list):
        if not part.isdigit():
            raise WriteError(f"Cannot create field '{part}' in an array", code=28)
        index = int(part)
        container.extend([None] * (index + 1 - len(container)))
        container[index] = value


def _set_value(doc: Doc, path: str, value: Any) -> None:
    parent, last = _parent(doc, path, create=True)
    _put(parent, last, value)


# -- the operators -------------------------------------------------------------------------------


def _set(doc: Doc, path: str, operand: Any, matches: Any) -> None:
    _set_value(doc, path, stored(operand))


def _unset(doc: Doc, path: str, operand: Any, matches: Any) -> None:
    if _get(doc, path) is MISSING:
        return
    parent, last = _parent(doc, path, create=False)
    if isinstance(parent, dict):
        parent.pop(last, None)
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        parent[int(last)] = None


def _number(operand: Any, op: str) -> None:
    if isinstance(operand, bool) or not isinstance(operand, (int, float)):
        raise WriteError(f"Cannot {op} with non-numeric argument: {operand!r}", code=14)


def _inc(doc: Doc, path: str, operand: Any, matches: Any) -> None:
    _number(operand, "increment")
    current = _get(doc, path)
    if current is MISSING:
        _set_value(doc, path, operand)
    elif isinstance(current, bool) or not isinstance(current, (int, float)):
        raise WriteError(f"Cannot apply $inc to a value of non-numeric type. {{_id: {doc.get('_id')!r}}} has the "
                         f"field '{path}' of non-numeric type {type(current).__name__}", code=14)
    else:
        _set_value(doc, path, current + operand)


def _mul(doc: Doc, path: str, operand: Any, matches: Any) -> None:
    _number(operand, "multiply")
    current = _get(doc, path)
    if current is MISSING:
        _set_value(doc, path, operand * 0)
    elif isinstance(current, bool) or not isinstance(current, (int, float)):
        raise WriteError(f"Cannot apply $mul to a value of non-numeric type: field '{path}'", code=14)
    else:
        _set_value(doc, path, current * operand)


def _extreme(keep_new: Callable[[Any, Any], bool]) -> Callable[[Doc, str, Any, Any], None]:
    def apply(doc: Doc, path: str, operand: Any, matches: Any) -> None:
        value = stored(operand)
        current = _get(doc, path)
        if current is MISSING:
            _set_value(doc, path, value)
            return
        new, old = encoded(value), encoded(current)
        if new is None or old is None:
            raise WriteError(f"$min/$max compare only scalars here, not {current!r} and {value!r}", code=2)
        if keep_new(new, old):
            _set_value(doc, path, value)

    return apply


def _array(doc: Doc, path: str) -> list[Any]:
    """A copy of the array at `path` (empty when missing), to change and set back."""
    current = _get(doc, path)
    if current is MISSING:
        return []
    if not isinstance(current, list):
        raise WriteError(f"The field '{path}' must be an array but is of type {type(current).__name__} in "
                         f"document {{_id: {doc.get('_id')!r}}}", code=2)
    return list(current)


def _each(operand: Any) -> tuple[list[Any], dict[str, Any]]:
    if isinstance(operand, Mapping) and "$each" in operand:
        values = operand["$each"]
        if not isinstance(values, (list, tuple)):
            raise WriteError(f"The argument to $each must be an array but it was {values!r}", code=2)
        return [stored(v) for v in values], {k: v for k, v in operand.items() if k != "$each"}
    return [stored(operand)], {}


def _push(doc: Doc, path: str, operand: Any, matches: Any) -> None:
    array = _array(doc, path)
    values, modifiers = _each(operand)
    unknown = set(modifiers) - {"$slice"}
    if unknown:
        raise WriteError(f"Unrecognized clause in $push: {sorted(unknown)[0]}", code=2)
    array.extend(values)
    if "$slice" in modifiers:
        limit = modifiers["$slice"]
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise WriteError(f"The value for $slice must be an integer value but was given type: {limit!r}", code=2)
        array = array[limit:] if limit < 0 else array[:limit]
        if limit == 0:
            array = []
    _set_value(doc, path, array)


def _add_to_set(doc: Doc, path: str, operand: Any, matches: Any) -> None:
    array = _array(doc, path)
    values, modifiers = _each(operand)
    if modifiers:
        raise WriteError(f"Found unexpected fields after $each in $addToSet: {sorted(modifiers)}", code=2)
    for value in values:
        if not any(_same(value, existing) for existing in array):
            array.append(value)
    _set_value(doc, path, array)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
    )


def _pull(doc: Doc, path: str, operand: Any, matches: Any) -> None:
    current = _get(doc, path)
    if current is MISSING:
        return
    array = _array(doc, path)
    condition = stored(operand)
    if isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition):
        kept = [v for v in array if not matches({"v": condition}, {"v": v})]
    elif isinstance(condition, dict):
        kept = [v for v in array if not (isinstance(v, dict) and matches(condition, v))]
    else:
        kept = [v for v in array if not _same(v, condition)]
    _set_value(doc, path, kept)


def _pop(doc: Doc, path: str, operand: Any, matches: Any) -> None:
    if operand not in (1, -1) or isinstance(operand, bool):
        raise WriteError(f"$pop expects 1 or -1, found: {operand!r}", code=9)
    if _get(doc, path) is MISSING:
        return
    array = _array(doc, path)
    _set_value(doc, path, array[:-1] if operand == 1 else array[1:])


_OPERATORS: dict[str, Callable[[Doc, str, Any, Any], None]] = {
    "$set": _set, "$setOnInsert": _set, "$unset": _unset, "$inc": _inc, "$mul": _mul,
    "$min": _extreme(lambda new, old: new < old), "$max": _extreme(lambda new, old: new > old),
    "$push": _push, "$addToSet": _add_to_set, "$pull": _pull, "$pop": _pop,
}


def upserted(query: Mapping[str, Any]) -> Doc:
    """The document an upsert starts from: the filter's equality conditions (outside `$or`)."""
    doc: Doc = {}
    _equalities(query, doc)
    return doc


def _equalities(query: Mapping[str, Any], doc: Doc) -> None:
    for field, condition in query.items():
        if field == "$and" and isinstance(condition, list):
            for part in condition:
                if isinstance(part, Mapping):
                    _equalities(part, doc)
            continue
        if field.startswith("$"):
            continue
        if isinstance(condition, Mapping) and condition and all(str(k).startswith("$") for k in condition):
            if "$eq" not in condition:
                continue
            condition = condition["$eq"]
        _set_value(doc, field, stored(condition))
