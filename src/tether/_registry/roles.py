"""Role grants: who holds which role, registry-wide or on one model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._errors import InvalidInput, NotFound, PermissionDenied
from .._metadata.audit_log import append_event
from .._metadata.clock import now_iso
from .._metadata.schema import grants
from .._policy import covers, role_rank
from .._reference import validate_model_name

if TYPE_CHECKING:
    from .registry import Registry


#: Longest principal: what the database's principal columns hold.
MAX_PRINCIPAL = 256
_PRINCIPAL_HINT = "a principal is a user name or email: printable text of 1 to 256 characters"


def check_principal(principal: str) -> str:
    """``principal`` if it can name someone; else InvalidInput saying why.

    An empty one was taken, and its token then acted as the server process's own
    user (an empty actor falls back to the local user name); control characters,
    NUL and 100,000 characters were taken too.
    """
    if not isinstance(principal, str) or not principal.strip():
        raise InvalidInput("a principal must not be empty", hint=_PRINCIPAL_HINT)
    if len(principal) > MAX_PRINCIPAL:
        raise InvalidInput(
            f"a principal is at most {MAX_PRINCIPAL} characters, not {len(principal)}",
            hint=_PRINCIPAL_HINT)
    if not principal.isprintable():
        raise InvalidInput(f"a principal must be printable text; {principal!r} is not",
                           hint=_PRINCIPAL_HINT)
    if principal != principal.strip():
        raise InvalidInput(f"a principal must not begin or end with whitespace: {principal!r}",
                           hint=_PRINCIPAL_HINT)
    return principal


def check_grant(principal: str, model: str | None) -> None:
    """The principal and model of a grant, checked (InvalidInput / InvalidReference)."""
    check_principal(principal)
    if model is not None:
        validate_model_name(model)


def roles_of(conn: sa.Connection, principal: str, model: str | None) -> tuple[str, ...]:
    query = sa.select(grants.c.role).where(
        grants.c.principal == principal,
        sa.or_(grants.c.model.is_(None), grants.c.model == model)
        if model
        else grants.c.model.is_(None),
    )
    return tuple(sorted(set(conn.execute(query).scalars()), key=role_rank))


def scoped_roles_of(conn: sa.Connection, principal: str) -> list[tuple[str, str]]:
    """(role, model) for each grant of ``principal`` on one model."""
    query = sa.select(grants.c.role, grants.c.model).where(
        grants.c.principal == principal, grants.c.model.is_not(None))
    return sorted((str(r), str(m)) for r, m in conn.execute(query))


def has_role(conn: sa.Connection, principal: str, role: str, model: str | None) -> bool:
    return covers(roles_of(conn, principal, model), role)


def require_role(conn: sa.Connection, principal: str, role: str, model: str | None) -> None:
    if not has_role(conn, principal, role, model):
        scope = f" on {model}" if model else ""
        have = ", ".join(roles_of(conn, principal, model)) or "none"
        raise PermissionDenied(
            f"{principal} needs role {role}{scope} (has: {have})",
            hint=f"an admin can run `tether role grant {principal} {role}"
            f"{' --model ' + model if model else ''}`",
        )


def grant(
    registry: Registry, principal: str, role: str, model: str | None, *, bootstrap: bool = False
) -> None:
    role_rank(role)
    check_grant(principal, model)
    with registry.write() as conn:
        if not bootstrap:
            require_role(conn, registry.actor, "admin", None)
        exists = conn.execute(
            sa.select(grants.c.id).where(
                grants.c.principal == principal,
                grants.c.role == role,
                grants.c.model.is_(None) if model is None else grants.c.model == model,
            )
        ).first()
        if exists:
            return
        conn.execute(
            grants.insert().values(
                principal=principal,
                role=role,
                model=model,
                granted_by=registry.actor,
                created_at=now_iso(),
            )
        )
        append_event(
            conn,
            actor=registry.actor,
            action="role.granted",
            model=model,
            subject=principal,
            after=role,
        )


def revoke(registry: Registry, principal: str, role: str, model: str | None) -> None:
    check_grant(principal, model)
    with registry.write() as conn:
        require_role(conn, registry.actor, "admin", None)
        result = conn.execute(
            grants.delete().where(
                grants.c.principal == principal,
                grants.c.role == role,
                grants.c.model.is_(None) if model is None else grants.c.model == model,
            )
        )
        if result.rowcount == 0:
            raise NotFound(f"{principal} has no grant {role}" + (f" on {model}" if model else ""))
        append_event(
            conn,
            actor=registry.actor,
            action="role.revoked",
            model=model,
            subject=principal,
            before=role,
        )


def list_grants(registry: Registry) -> list[dict[str, Any]]:
    with registry.read() as conn:
        rows = conn.execute(sa.select(grants).order_by(grants.c.principal, grants.c.role))
        return [
            {
                "principal": r.principal,
                "role": r.role,
                "model": r.model,
                "granted_by": r.granted_by,
                "created_at": r.created_at,
            }
            for r in rows
        ]
