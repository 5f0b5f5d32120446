"""Appending to and reading the hash-chained audit log."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from .._audit import GENESIS, event_content, event_hash, verify_chain
from .._digest import canonical_json
from .._records import Event
from .clock import now_iso
from .schema import audit_head, events


def append_event(
    conn: sa.Connection,
    *,
    actor: str,
    action: str,
    model: str | None = None,
    subject: str | None = None,
    before: Any = None,
    after: Any = None,
    details: dict[str, Any] | None = None,
) -> Event:
    """Append one event inside the caller's transaction.

    The head row is read with FOR UPDATE (a no-op on SQLite, whose writers are
    already serialised), so concurrent appenders queue and the chain stays linear.
    """
    head = conn.execute(
        sa.select(audit_head.c.last_id, audit_head.c.last_hash)
        .where(audit_head.c.id == 1)
        .with_for_update()
    ).first()
    last_id, last_hash = (head[0], head[1]) if head else (0, GENESIS)
    content = event_content(
        id=last_id + 1,
        ts=now_iso(),
        actor=actor,
        action=action,
        model=model,
        subject=subject,
        before=before,
        after=after,
        details=details or {},
    )
    digest = event_hash(last_hash, content)
    conn.execute(
        events.insert().values(
            id=content["id"],
            ts=content["ts"],
            actor=actor,
            action=action,
            model=model,
            subject=subject,
            before=canonical_json(before),
            after=canonical_json(after),
            details=canonical_json(content["details"]),
            prev_hash=last_hash,
            hash=digest,
        )
    )
    if head is None:
        conn.execute(audit_head.insert().values(id=1, last_id=content["id"], last_hash=digest))
    else:
        conn.execute(
            audit_head.update()
            .where(audit_head.c.id == 1)
            .values(last_id=content["id"], last_hash=digest)
        )
    return _event(content, last_hash, digest)


def _event(content: dict[str, Any], prev_hash: str, digest: str) -> Event:
    return Event(prev_hash=prev_hash, hash=digest, **content)


def _row_content(row: sa.Row[Any]) -> dict[str, Any]:
    return event_content(
        id=row.id,
        ts=row.ts,
        actor=row.actor,
        action=row.action,
        model=row.model,
        subject=row.subject,
        before=json.loads(row.before) if row.before is not None else None,
        after=json.loads(row.after) if row.after is not None else None,
        details=json.loads(row.details),
    )


def list_events(
    conn: sa.Connection,
    *,
    model: str | None = None,
    action: str | None = None,
    limit: int | None = None,
) -> list[Event]:
    """Events newest first, optionally for one model or action prefix."""
    query = sa.select(events).order_by(events.c.id.desc())
    if model:
        query = query.where(events.c.model == model)
    if action:
        query = query.where(events.c.action.startswith(action))
    if limit:
        query = query.limit(limit)
    return [_event(_row_content(row), row.prev_hash, row.hash) for row in conn.execute(query)]


def verify_events(conn: sa.Connection) -> tuple[int, list[str]]:
    """Recompute the whole chain. Returns (events checked, problems)."""
    rows = list(conn.execute(sa.select(events).order_by(events.c.id)))
    head_row = conn.execute(sa.select(audit_head.c.last_id, audit_head.c.last_hash)).first()
    head = (head_row[0], head_row[1]) if head_row else None
    triples = [(_row_content(row), row.prev_hash, row.hash) for row in rows]
    return len(rows), verify_chain(triples, head)
