"""Who is calling, per request: the server's only say in permissions.

What the caller may then do is the registry's decision (``_registry/access.py``);
tokens are remembered as long as roles are, so a revoked one stops working
within ``access.CACHE_SECONDS``.
"""

from __future__ import annotations

from starlette.requests import Request

from .._registry.access import cached
from .._registry.registry import Registry
from .._registry.tokens import authenticate


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-tether-token")


def principal_for(registry: Registry, request: Request, *, open_access: bool) -> str:
    token = bearer(request)
    if open_access and not token:
        return "anonymous"
    if not token:
        return authenticate(registry, token)  # raises with the explanation
    return str(
        cached(("token", id(registry.engine), token), lambda: authenticate(registry, token))
    )
