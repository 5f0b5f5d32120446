"""Who is calling and what they may do, per request."""

from __future__ import annotations

from starlette.requests import Request

from .._errors import PermissionDenied
from .._registry.governance import has_role, roles_of
from .._registry.registry import Registry
from .._registry.tokens import authenticate

#: Aliases whose moves need the approver role (others need contributor).
DEFAULT_PROTECTED = ("production",)


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-tether-token")


def principal_for(registry: Registry, request: Request, *, open_access: bool) -> str:
    token = bearer(request)
    if open_access and not token:
        return "anonymous"
    return authenticate(registry, token)


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
    with registry.read() as conn:
        if has_role(conn, principal, role, model):
            return
        have = ", ".join(roles_of(conn, principal, model)) or "no role"
    scope = f" on model {model}" if model else ""
    raise PermissionDenied(
        f"{action} needs role {role}{scope}; {principal} has {have}",
        hint=f"an admin can run `tether role grant {principal} {role}"
        + (f" --model {model}`" if model else "`"),
    )


def protected_aliases(registry: Registry) -> tuple[str, ...]:
    configured = registry.get_setting("protected_aliases")
    if configured is None:
        return DEFAULT_PROTECTED
    return tuple(a.strip() for a in configured.split(",") if a.strip())
