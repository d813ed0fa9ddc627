"""Whether a document matches a filter, as MongoDB decides.

The general engine is mongomock's `filter_applies`. The filters the task store writes on its
hot path (equalities on strings and integers, time ranges: the claim, the finish, a lookup by
id) are decided here first without it, for plain top-level values; anything else (arrays,
sub-documents, nulls, other operators) goes to the general engine, so the two never disagree.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bson import ObjectId
from mongomock.filtering import filter_applies

from .values import MISSING

_RANGES = {"$lt": operator.lt, "$lte": operator.le, "$gt": operator.gt, "$gte": operator.ge}
#: The document values the quick path decides on: exactly these types (no subclass, no array,
#: no sub-document, no other BSON type). Not bool: the general engine takes `false` as equal to 0.
_PLAIN = frozenset({str, int, float, datetime, type(None), ObjectId})


def matches(query: Any, doc: Mapping[str, Any]) -> bool:
    """Whether `doc` matches the filter `query`."""
    quick = _quick(query, doc)
    return bool(filter_applies(query, doc)) if quick is None else quick


def _quick(query: Any, doc: Any) -> bool | None:
    """The answer for a filter of top-level string or integer equalities and datetime ranges
    on a document of plain values; None when the general engine must decide."""
    if type(query) is not dict or type(doc) is not dict:
        return None
    answer = True
    for field, condition in query.items():
        if field.startswith("$") or "." in field:
            return None
        value = doc.get(field, MISSING)
        if value is not MISSING and type(value) not in _PLAIN:
            return None
        kind = type(condition)
        if kind is str:
            answer = answer and type(value) is str and value == condition
        elif kind is int:
            answer = answer and type(value) in (int, float) and value == condition
        elif kind is dict and condition and all(op in _RANGES for op in condition):
            for op, bound in condition.items():
                if type(bound) is not datetime:
                    return None
                answer = answer and type(value) is datetime and _RANGES[op](value, bound)
        else:
            return None
    return answer
