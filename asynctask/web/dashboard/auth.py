"""Sign-in, the session cookie, the CSRF proof and the security headers of the dashboard.

- Session: when any task type of the app has an `api_token`, the dashboard asks for one. The
  session cookie holds one proof `<expiry>.<HMAC-SHA256(token, expiry)>` per token signed in
  with (dot-joined, at most MAX_SESSION_TOKENS): any process that knows the token can check
  it, so it works across gunicorn workers and restarts without a shared secret, each proof
  expires, and it stops working when the token changes. The session sees and acts on the
  types whose token it proves (and the types without a token), as the API would.
- CSRF: a random value in an HttpOnly, SameSite=Strict cookie that each form repeats in a
  hidden field (double submit); a POST whose field does not match, or which the browser marks
  as cross-site (Sec-Fetch-Site, Origin), is refused with 403 before anything changes. This
  holds with or without a token.
- Headers: a Content-Security-Policy that allows only the dashboard's own scripts and styles,
  no framing, no sniffing, no referrer to other sites, and no caching of task data.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import abort, current_app, g, request
from werkzeug.wrappers import Response

if TYPE_CHECKING:
    from ...task import AsyncTask

SESSION_COOKIE = "asynctask_dashboard_session"
CSRF_COOKIE = "asynctask_dashboard_csrf"
CSRF_FIELD = "csrf_token"
#: How long a sign-in lasts.
SESSION_SECONDS = 12 * 3600
#: Most tokens one session proves (each adds 77 characters to the cookie).
MAX_SESSION_TOKENS = 8

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def tokens() -> list[str]:
    """The API tokens of the app's task types; any one of them signs in."""
    tasks: list[tuple[AsyncTask, str]] = current_app.extensions.get("asynctask", [])
    return [task.api_token for task, _ in tasks if task.api_token]


def cookie_path() -> str:
    """The dashboard's path, which its cookies are limited to."""
    return f"{request.script_root}/dashboard"


def _signature(token: str, expires: int) -> str:
    return hmac.new(token.encode(), f"asynctask-dashboard:{expires}".encode(), hashlib.sha256).hexdigest()


def session_value(token: str, now: float | None = None) -> str:
    """A session cookie value (one proof) for `token`, valid for SESSION_SECONDS."""
    expires = int(now if now is not None else time.time()) + SESSION_SECONDS
    return f"{expires}.{_signature(token, expires)}"


#: What a session cookie looks like: proofs `<expiry>.<SHA-256 HMAC>`, joined by dots.
_PROOF = r"[0-9]{1,12}\.[0-9a-f]{64}"
_SESSION = re.compile(rf"{_PROOF}(?:\.{_PROOF}){{0,{MAX_SESSION_TOKENS - 1}}}")


def _proofs(value: str) -> list[tuple[int, str]]:
    """The unexpired (expiry, signature) proofs of a session cookie; none if it is malformed."""
    if not _SESSION.fullmatch(value):
        return []
    parts, now = value.split("."), time.time()
    proofs = zip(parts[::2], parts[1::2], strict=True)  # the pattern makes them pairs
    return [(int(expires), signature) for expires, signature in proofs if int(expires) >= now]


def _proven() -> dict[str, int]:
    """The known tokens this request's session proves, each with the expiry of its proof."""
    cached = g.get("dashboard_proven")
    if cached is None:
        cached = {}
        for expires, signature in _proofs(request.cookies.get(SESSION_COOKIE, "")):
            for token in tokens():
                if hmac.compare_digest(signature.encode(), _signature(token, expires).encode()):
                    cached[token] = max(expires, cached.get(token, 0))
        g.dashboard_proven = cached
    return cached


def session_tokens() -> set[str] | None:
    """The tokens whose session the request carries (the types it may see and act on), or
    None when no task type of the app has a token (the dashboard is open). A missing,
    expired, forged or malformed cookie is the empty set: the sign-in page, never an error."""
    if not tokens():
        return None
    return set(_proven())


def signed_in() -> bool:
    """Whether the request may use the dashboard: no token is set, or its session cookie is valid."""
    allowed = session_tokens()
    return allowed is None or bool(allowed)


def may_see(task: AsyncTask) -> bool:
    """Whether this session may see and act on `task`'s type: it has no token, or the session
    was signed in with its token (as the API asks that token of its routes)."""
    allowed = session_tokens()
    return allowed is None or not task.api_token or task.api_token in allowed


def check_token(given: str) -> str | None:
    """The known token equal to `given` (compared in constant time), or None."""
    given_bytes = given.encode()
    for token in tokens():
        if hmac.compare_digest(given_bytes, token.encode()):
            return token
    return None


def set_session(response: Response, token: str) -> None:
    """Sign the session in with `token` too: a new proof of it, next to the proofs the session
    holds for other tokens (each keeps its own expiry; the oldest go beyond MAX_SESSION_TOKENS)."""
    kept = sorted((expires, other) for other, expires in _proven().items() if other != token)
    proofs = [f"{expires}.{_signature(other, expires)}" for expires, other in kept[1 - MAX_SESSION_TOKENS:]]
    response.set_cookie(
        SESSION_COOKIE, ".".join([*proofs, session_value(token)]), max_age=SESSION_SECONDS, path=cookie_path(),
        httponly=True, samesite="Strict", secure=request.is_secure,
    )


def clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=cookie_path(), httponly=True, samesite="Strict", secure=request.is_secure)


def csrf_token() -> str:
    """This browser's CSRF value, for the hidden field of every form (made on first use)."""
    value = g.get("dashboard_csrf")
    if value is None:
        value = request.cookies.get(CSRF_COOKIE, "")
        if len(value) < 32:
            value = secrets.token_urlsafe(32)
            g.dashboard_new_csrf = value
        g.dashboard_csrf = value
    return value


def check_csrf() -> None:
    """403 unless a state-changing request comes from the dashboard's own page."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        abort(403, "cross-site requests are refused")
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        abort(403, "cross-origin requests are refused")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = request.form.get(CSRF_FIELD, "")
    if len(cookie) < 32 or not hmac.compare_digest(cookie.encode(), given.encode()):
        abort(403, "the form's CSRF proof is missing or wrong: reload the page and try again")


def secure(response: Response) -> Response:
    """Add the security headers, and the CSRF cookie if this request made one."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint and not request.endpoint.endswith(".static"):
        response.headers["Cache-Control"] = "no-store"
    new = g.get("dashboard_new_csrf")
    if new:
        response.set_cookie(
            CSRF_COOKIE, new, path=cookie_path(), httponly=True, samesite="Strict", secure=request.is_secure,
        )
    return response
