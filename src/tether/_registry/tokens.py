"""API tokens: created for a principal, stored hashed, checked per request."""

from __future__ import annotations

import hashlib
import math
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._errors import InvalidInput, NotFound, PermissionDenied
from .._metadata.audit_log import append_event
from .._metadata.clock import iso, now_iso, parse_iso
from .._metadata.schema import tokens
from .manifest_limits import check_reason
from .roles import check_grant, grant, require_role

if TYPE_CHECKING:
    from .registry import Registry

TOKEN_PREFIX = "tth_"


class Unauthenticated(PermissionDenied):
    code = "unauthenticated"
    http_status = 401


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


#: Longest token lifetime: a century (past some ten thousand years, no date holds it).
MAX_LIFETIME = timedelta(days=36500)
_DURATION_HINT = "e.g. 90d, 12h, 30m; at most 36500d"


def parse_duration(text: str) -> timedelta:
    """A token's lifetime: a positive number and a unit (s, m, h, d), at most a century."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    shown = repr(text) if len(text) <= 40 else repr(text[:40] + "...")
    try:
        seconds = float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError) as error:
        raise InvalidInput(f"cannot read duration {shown}", hint=_DURATION_HINT) from error
    if seconds <= 0 or math.isnan(seconds):
        raise InvalidInput(f"duration {shown} is not a positive length of time",
                           hint=_DURATION_HINT)
    if seconds > MAX_LIFETIME.total_seconds():  # infinity too
        raise InvalidInput(f"duration {shown} is longer than {MAX_LIFETIME.days} days",
                           hint=_DURATION_HINT)
    return timedelta(seconds=seconds)


def create_token(
    registry: Registry,
    principal: str,
    *,
    role: str | None = None,
    model: str | None = None,
    expires_in: str | None = None,
    description: str = "",
) -> dict[str, Any]:
    """A new token for ``principal`` (granting ``role`` too, when given). Admin only."""
    check_reason(description, "the description")
    with registry.read() as conn:
        require_role(conn, registry.actor, "admin", None)
    check_grant(principal, model)
    lifetime = parse_duration(expires_in) if expires_in else None  # refused before a grant
    if role:
        grant(registry, principal, role, model)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = iso(datetime.now(UTC) + lifetime) if lifetime is not None else None
    with registry.write() as conn:
        conn.execute(
            tokens.insert().values(
                token_hash=_hash(secret),
                prefix=secret[:10],
                principal=principal,
                description=description,
                created_by=registry.actor,
                created_at=now_iso(),
                expires_at=expires,
                revoked=False,
            )
        )
        append_event(
            conn,
            actor=registry.actor,
            action="token.created",
            subject=principal,
            details={"prefix": secret[:10], "expires_at": expires, "role": role, "model": model},
        )
    return {"token": secret, "principal": principal, "prefix": secret[:10], "expires_at": expires}


def authenticate(registry: Registry, secret: str | None) -> str:
    """The principal a token belongs to; Unauthenticated when missing, wrong or expired."""
    if not secret:
        raise Unauthenticated(
            "this registry needs an API token",
            hint="pass token= to tether.connect, or set TETHER_TOKEN",
        )
    with registry.read() as conn:
        row = conn.execute(sa.select(tokens).where(tokens.c.token_hash == _hash(secret))).first()
    if row is None or row.revoked:
        raise Unauthenticated(
            "the API token is not valid (unknown or revoked)",
            hint="ask an admin for a new one: tether token create",
        )
    if not str(row.principal).strip():  # made before principals were checked
        raise Unauthenticated(
            f"the API token {row.prefix}… names no principal",
            hint="an admin revokes it (tether token revoke) and creates one for a named user",
        )
    try:
        expires = parse_iso(row.expires_at) if row.expires_at else None
    except (TypeError, ValueError):  # a row written by another hand: no page fails on it
        raise Unauthenticated(f"the API token {row.prefix}… has an unreadable expiry",
                              hint="an admin revokes it and creates a new one") from None
    if expires is not None and expires < datetime.now(UTC):
        raise Unauthenticated(
            f"the API token {row.prefix}… expired at {row.expires_at}",
            hint="ask an admin for a new one: tether token create",
        )
    return str(row.principal)


def revoke_token(registry: Registry, prefix: str) -> None:
    with registry.write() as conn:
        require_role(conn, registry.actor, "admin", None)
        result = conn.execute(tokens.update().where(tokens.c.prefix == prefix).values(revoked=True))
        if result.rowcount == 0:
            raise NotFound(f"no token starting {prefix}")
        append_event(conn, actor=registry.actor, action="token.revoked", details={"prefix": prefix})


def list_tokens(registry: Registry) -> list[dict[str, Any]]:
    with registry.read() as conn:
        return [
            {
                "prefix": r.prefix,
                "principal": r.principal,
                "created_by": r.created_by,
                "created_at": r.created_at,
                "expires_at": r.expires_at,
                "revoked": r.revoked,
                "description": r.description,
            }
            for r in conn.execute(sa.select(tokens).order_by(tokens.c.id))
        ]
