"""The OpenAPI document of /api/v1 names exactly the routes the server mounts."""

from __future__ import annotations

import re

from starlette.routing import Mount, Route

from tether import Registry
from tether.server.app import create_app
from tether.server.openapi import openapi_document

METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def _mounted(registry: Registry) -> set[tuple[str, str]]:
    """(path, method) of every route under /api/v1, ``{x:path}`` written ``{x}``."""
    app = create_app(registry)
    (v1,) = [r for r in app.routes if isinstance(r, Mount) and r.path == "/api/v1"]
    found = set()
    for route in v1.routes:
        assert isinstance(route, Route), route
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in route.methods or ():
            if method != "HEAD":  # implicit for GET
                found.add((path, method.lower()))
    return found


def _documented() -> set[tuple[str, str]]:
    paths = openapi_document()["paths"]
    return {(path, method) for path, ops in paths.items() for method in ops if method in METHODS}


def test_every_documented_operation_is_a_route(registry: Registry) -> None:
    assert _documented() - _mounted(registry) == set()


def test_every_route_is_documented(registry: Registry) -> None:
    assert _mounted(registry) - _documented() == set()


def test_path_parameters_match_the_path() -> None:
    for path, ops in openapi_document()["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, op in ops.items():
            given = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert given == names, (path, method)
