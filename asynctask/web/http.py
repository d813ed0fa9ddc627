"""What every JSON route shares, the API's and the remote workers': the envelope every answer
uses, the request body as JSON (size-limited, strict about numbers and Unicode), and the
bearer-token check.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from flask import Response, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge, Unauthorized

from ..errors import BadRequest
from ..jsonable import jsonable


def envelope(data: Any = None, status: int = 200, *, error_msg: str = "", error_data: list | None = None) -> Response:
    """The JSON response every route answers with."""
    body = {
        "status": "error" if error_msg else "ok",
        "data": jsonable(data),
        "error_data": jsonable(error_data or []),
        "error_msg": error_msg,
    }
    response = jsonify(body)
    response.status_code = status
    return response


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one too large for a float (`1e400`) is not taken as infinity."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


#: A JSON escape of a UTF-16 surrogate: the body may hold a lone one, which is not Unicode.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _read_body() -> bytes:
    """The request body, whole: 413 when it is over the size limit, even without Content-Length.

    werkzeug cuts a body sent without Content-Length (chunked) at `max_content_length`
    rather than refuse it; a body cut short is never parsed.
    """
    raw = request.get_data(cache=True)
    limit = g.get("asynctask_max_content_length") or request.max_content_length
    if limit is None:
        return raw
    if len(raw) > limit:
        raise RequestEntityTooLarge()
    if request.content_length is None and len(raw) == limit and request.input_stream.read(1):
        raise RequestEntityTooLarge()
    return raw


def json_body(required: bool) -> dict[str, Any] | None:
    """The request body as a JSON object; None when absent and not `required`.

    Refused (400): not JSON, NaN/Infinity, a number too large for a float (`1e400`), a string
    or key that is not valid Unicode (a lone surrogate such as "\\ud800"), and anything but an
    object at the top.
    """
    from ..validation import unsafe_value

    raw = _read_body()
    if not raw.strip():
        if required:
            raise BadRequest("request body must be a JSON object")
        return None
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise BadRequest("request body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(body).__name__}")
    if _SURROGATE_ESCAPE.search(raw):
        problem = unsafe_value(body, "request body", max_depth=None)
        if problem:
            raise BadRequest(problem)
    return body


def check_token(tokens: list[str]) -> None:
    """401 unless the request carries `Authorization: Bearer <one of tokens>` (constant time)."""
    if not tokens:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given_bytes = given.strip().encode()
    if scheme.lower() == "bearer" and any(hmac.compare_digest(given_bytes, t.encode()) for t in tokens):
        return
    raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
