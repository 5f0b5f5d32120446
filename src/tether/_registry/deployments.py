"""Deployment events recorded by serving replicas, through the registry's use cases.

A serving process may run beside an embedded registry or against a server;
either way it records what it did to traffic (a pinned route switched back
after a rule broke) here, so the event lands in the same audited,
hash-chained log as every alias move, with the replica's user as its actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._metadata.audit_log import append_event
from .resolve import require_model
from .roles import require_role

if TYPE_CHECKING:
    from .registry import Registry


def record_route_rollback(
    registry: Registry,
    model: str,
    *,
    endpoint: str,
    route: str,
    before: str,
    after: str | None,
    reason: str,
) -> None:
    """Append ``deployment.rollback`` for a pinned route that a rule switched back."""
    with registry.write() as conn:
        require_model(conn, model)
        require_role(conn, registry.actor, "contributor", model)
        append_event(
            conn,
            actor=registry.actor,
            action="deployment.rollback",
            model=model,
            subject=f"{endpoint}/{route}",
            before=before,
            after=after,
            details={"reason": reason, "endpoint": endpoint, "route": route},
        )
