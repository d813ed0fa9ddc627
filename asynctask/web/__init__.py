"""The HTTP layer: routes and the response envelope, the OpenAPI document, the dashboard.

- `routes`: the task routes of one type (a blueprint), the service routes of an app.
- `http`: the envelope, the JSON body and the token check every JSON route shares.
- `worker_routes`: the routes remote workers use (claim, heartbeat, progress, log, finish).
- `openapi`: the OpenAPI 3.1 document, its params schema taken from `main`'s signature.
- `dashboard`: the operators' web page at `/dashboard`.
"""

from .http import envelope
from .routes import create_app, create_blueprint, init_app

__all__ = ["create_app", "create_blueprint", "envelope", "init_app"]
