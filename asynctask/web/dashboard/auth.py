"""Sign-in, the session cookie, the CSRF proof and the security headers of the dashboard.

- Session: when any task type of the app has an `api_token`, the dashboard asks for one. The
  session cookie is `<expiry>.<HMAC-SHA256(token, expiry)>`: any process that knows the token
  can check it, so it works across gunicorn workers and restarts without a shared secret,
  it expires, and it stops working when the token changes.
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
    """A session cookie value for `token`, valid for SESSION_SECONDS."""
    expires = int(now if now is not None else time.time()) + SESSION_SECONDS
    return f"{expires}.{_signature(token, expires)}"


def signed_in() -> bool:
    """Whether the request may use the dashboard: no token is set, or its session cookie is valid."""
    known = tokens()
    if not known:
        return True
    expires_text, _, signature = request.cookies.get(SESSION_COOKIE, "").partition(".")
    if not expires_text.isdigit() or int(expires_text) < time.time():
        return False
    expires = int(expires_text)
    return any(hmac.compare_digest(signature, _signature(token, expires)) for token in known)


def check_token(given: str) -> str | None:
    """The known token equal to `given` (compared in constant time), or None."""
    given_bytes = given.encode()
    for token in tokens():
        if hmac.compare_digest(given_bytes, token.encode()):
            return token
    return None


def set_session(response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, session_value(token), max_age=SESSION_SECONDS, path=cookie_path(),
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
