"""The HTTP layer: routes and the response envelope, the OpenAPI document, the dashboard.

- `routes`: the task routes of one type (a blueprint), the service routes of an app.
- `openapi`: the OpenAPI 3.1 document, its params schema taken from `main`'s signature.
- `dashboard`: the operators' web page at `/dashboard`.
"""

from .routes import create_app, create_blueprint, envelope, init_app

__all__ = ["create_app", "create_blueprint", "envelope", "init_app"]
