"""The ASGI app uvicorn's workers import (configuration comes from the environment).

``tether server`` sets TETHER_SERVER_DB, TETHER_SERVER_STORE and
TETHER_SERVER_OPEN, then starts uvicorn on ``tether.server.asgi:app``, so every
worker process builds the same app.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette

from .._registry.registry import Registry


def build_from_env() -> Starlette:
    from .app import create_app

    registry = Registry.open_server(
        os.environ["TETHER_SERVER_DB"], os.environ.get("TETHER_SERVER_STORE") or None
    )
    return create_app(registry, open_access=os.environ.get("TETHER_SERVER_OPEN") == "1")


app = build_from_env() if "TETHER_SERVER_DB" in os.environ else None
