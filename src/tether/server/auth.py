"""Who is calling and what they may do, per request."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from .._errors import PermissionDenied
from .._policy import role_rank
from .._registry.registry import Registry
from .._registry.roles import roles_of
from .._registry.tokens import authenticate


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-tether-token")


#: Alias reads are the hot path: tokens and roles are remembered this long, so a
#: revoked token or role stops working within this many seconds.
CACHE_SECONDS = 5.0
_cache: dict[tuple[Any, ...], tuple[float, Any]] = {}


def _cached(key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    value = compute()
    if len(_cache) > 10000:
        _cache.clear()
    _cache[key] = (now + CACHE_SECONDS, value)
    return value


def principal_for(registry: Registry, request: Request, *, open_access: bool) -> str:
    token = bearer(request)
    if open_access and not token:
        return "anonymous"
    if not token:
        return authenticate(registry, token)  # raises with the explanation
    return str(
        _cached(("token", id(registry.engine), token), lambda: authenticate(registry, token))
    )


def require(
    registry: Registry,
    principal: str,
    role: str,
    model: str | None,
    *,
    action: str,
    open_access: bool,
) -> None:
    """Refuse with the missing permission spelled out."""
    if open_access:
        return

    def roles() -> tuple[str, ...]:
        with registry.read() as conn:
            return roles_of(conn, principal, model)

    held = _cached(("roles", id(registry.engine), principal, model), roles)
    if any(role_rank(r) >= role_rank(role) for r in held):
        return
    have = ", ".join(held) or "no role"
    scope = f" on model {model}" if model else ""
    raise PermissionDenied(
        f"{action} needs role {role}{scope}; {principal} has {have}",
        hint=f"an admin can run `tether role grant {principal} {role}"
        + (f" --model {model}`" if model else "`"),
    )
