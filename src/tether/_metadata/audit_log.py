"""Appending to and reading the hash-chained audit log."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._audit import GENESIS, event_content, event_hash, verify_chain
from .._digest import canonical_json
from .._records import Event
from .clock import now_iso
from .schema import audit_head, audit_signatures, events

if TYPE_CHECKING:  # cryptography loads when a head is signed or checked, not to read events
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .._audit_signing import SignedHead

#: Key in ``Connection.info`` of the newest head appended in this transaction.
PENDING_HEAD = "tether.pending_audit_head"
#: Key in ``Connection.info`` of the head this transaction's first event was appended to.
BASE_HEAD = "tether.audit_head_before"


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
    conn.info.setdefault(BASE_HEAD, (last_id, last_hash))
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
    # The registry signs the newest head when the transaction commits (Registry.write).
    conn.info[PENDING_HEAD] = (content["id"], digest)
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
        before=_column(row.before) if row.before is not None else None,
        after=_column(row.after) if row.after is not None else None,
        details=_column(row.details),
    )


def _column(text: Any) -> Any:
    """A JSON column's value; one that is not JSON Tether could have written (edited to
    ``{bad``, or nested 100,000 deep) is shown as ``{"(unreadable)": ...}``, which hashes
    to nothing stored: `tether audit verify` names the event instead of ending in a
    traceback, and `tether audit log` shows it (a review)."""
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return {"(unreadable)": str(text)[:1000]}


#: Most events a server answers at once; clients ask for the next page (``before``).
AUDIT_PAGE = 10_000


def list_events(
    conn: sa.Connection,
    *,
    model: str | None = None,
    models: Collection[str] | None = None,
    action: str | None = None,
    limit: int | None = None,
    before: int | None = None,
) -> list[Event]:
    """Events newest first, optionally for one model (or among ``models``) or action
    prefix, and only those older than event ``before`` (a page after a page)."""
    query = sa.select(events).order_by(events.c.id.desc())
    if before is not None:
        query = query.where(events.c.id < before)
    if model:
        query = query.where(events.c.model == model)
    if models is not None:
        query = query.where(events.c.model.in_(sorted(models)))
    if action:
        # Escaped: "_" or "%" in a filter are characters, not LIKE wildcards (every event).
        query = query.where(events.c.action.startswith(action, autoescape=True))
    if limit:
        query = query.limit(limit)
    return [_event(_row_content(row), row.prev_hash, row.hash) for row in conn.execute(query)]


def events_about(conn: sa.Connection, *, model: str, ref: str, semver: str,
                 digest: str, limit: int | None = None) -> list[Event]:
    """Model ``model``'s events that may concern its version ``ref`` (``semver``, content
    ``digest``), newest first: a superset of those ``event_concerns`` keeps, found by
    the database among the model's events (its index) rather than decoded one by one."""
    query = (
        sa.select(events)
        .where(events.c.model == model)
        .where(sa.or_(
            events.c.subject == ref,
            events.c.subject.startswith(ref + " for ", autoescape=True),
            sa.and_(events.c.action.startswith("alias.", autoescape=True),
                    sa.or_(events.c.before == canonical_json(semver),  # stored as JSON
                           events.c.after == canonical_json(semver))),
            events.c.details.contains(f"sha:{digest}", autoescape=True),
        ))
        .order_by(events.c.id.desc())
        .limit(limit)
    )
    return [_event(_row_content(row), row.prev_hash, row.hash) for row in conn.execute(query)]


def event_concerns(event: Event, ref: str, semver: str, digest: str) -> bool:
    """Whether ``event`` is about version ``ref``: names it (or an approval of it ``for``
    an alias), moves an alias to or from it, or cites its digest."""
    subject = event.subject or ""
    if subject == ref or subject.startswith(ref + " for "):
        return True
    if event.action.startswith("alias.") and semver in (event.before, event.after):
        return True
    details = event.details if isinstance(event.details, dict) else {}
    return bool(details.get("digest") == f"sha:{digest}")


def record_signed_head(conn: sa.Connection, head: SignedHead) -> None:
    conn.execute(
        audit_signatures.insert().values(
            event_id=head.event_id, hash=head.hash, key_id=head.key_id, signature=head.signature
        )
    )


def newest_signed_head(conn: sa.Connection) -> SignedHead | None:
    row = conn.execute(
        sa.select(audit_signatures).order_by(audit_signatures.c.event_id.desc()).limit(1)
    ).first()
    from .._audit_signing import SignedHead

    return SignedHead(row.event_id, row.hash, row.key_id, row.signature) if row else None


def newest_valid_head(conn: sa.Connection, public: Ed25519PublicKey) -> SignedHead | None:
    """The newest head ``public``'s key signed whose signature holds and whose event the
    chain still has with that hash; None if none does. Not merely the top row, nor the
    top thousand: planted garbage rows above the real ones stopped every later signature
    (reviews); rows past the chain's head are not looked at at all."""
    from .._audit_signing import SignedHead, head_is_valid
    from .._signing import key_id

    last = conn.execute(sa.select(audit_head.c.last_id)).scalar() or 0
    rows = conn.execute(  # streamed, newest first; none past the chain's own head
        sa.select(audit_signatures).where(audit_signatures.c.key_id == key_id(public),
                                          audit_signatures.c.event_id <= last)
        .order_by(audit_signatures.c.event_id.desc()))
    for row in rows:
        head = SignedHead(row.event_id, row.hash, row.key_id, row.signature)
        if head_is_valid(head, public) and chain_holds(conn, head.event_id, head.hash):
            return head
    return None


def chain_holds(conn: sa.Connection, event_id: int, digest: str) -> bool:
    """Whether the stored chain has event ``event_id`` with hash ``digest``."""
    stored = conn.execute(sa.select(events.c.hash).where(events.c.id == event_id)).scalar()
    return bool(stored == digest)


def signed_by(conn: sa.Connection, event_id: int, digest: str,
              public: Ed25519PublicKey) -> bool:
    """Whether ``public``'s key validly signed ``digest`` as the head at ``event_id``."""
    from .._audit_signing import SignedHead, head_is_valid
    from .._signing import key_id

    row = conn.execute(sa.select(audit_signatures).where(
        audit_signatures.c.event_id == event_id,
        audit_signatures.c.key_id == key_id(public))).first()
    return row is not None and row.hash == digest and head_is_valid(
        SignedHead(row.event_id, row.hash, row.key_id, row.signature), public)


def authentic_events(conn: sa.Connection, after: int, through: int | None = None,
                     ) -> list[tuple[dict[str, Any], str, str]] | None:
    """(content, prev_hash, hash) of the events after ``after`` (through ``through``), each
    read from its columns and hashed again, each linked to the one before; None when any
    is not (a column edited: its action or time then says nothing)."""
    query = sa.select(events).where(events.c.id > after).order_by(events.c.id)
    if through is not None:
        query = query.where(events.c.id <= through)
    out: list[tuple[dict[str, Any], str, str]] = []
    prev = None
    for row in conn.execute(query):
        content = _row_content(row)
        if event_hash(row.prev_hash, content) != row.hash or (
                prev is not None and row.prev_hash != prev):
            return None
        out.append((content, row.prev_hash, row.hash))
        prev = row.hash
    return out


def continues_signed_chain(conn: sa.Connection, base: tuple[int, str],
                           public: Ed25519PublicKey) -> bool:
    """Whether events appended to the head ``base`` may be signed by ``public``'s key: the
    log was empty, or ``base`` is the newest head that key validly signed. Anything else
    means events no signature of the key covers lie before them (written by something
    without the key, or rewritten and recomputed), and signing the new head would vouch
    for them (a review: the next honest write signed a forged history)."""
    if base == (0, GENESIS):
        return True
    newest = newest_valid_head(conn, public)
    return newest is not None and (newest.event_id, newest.hash) == base


def verify_events(
    conn: sa.Connection,
    *,
    keys: Sequence[Ed25519PublicKey] = (),
    checkpoint: SignedHead | None = None,
) -> tuple[int, list[str]]:
    """Recompute the whole chain and check its signed heads. Returns (events, problems).

    ``keys`` are registry audit keys known from outside the database (the
    local key file, a checkpoint's key). With a key, every head it signed
    must match the chain and the newest event must carry its signature;
    a ``checkpoint`` must still be in the chain, unchanged.
    """
    from .._audit_signing import SignedHead, check_against_checkpoint
    rows = list(conn.execute(sa.select(events).order_by(events.c.id)))
    head_row = conn.execute(sa.select(audit_head.c.last_id, audit_head.c.last_hash)).first()
    head = (head_row[0], head_row[1]) if head_row else None
    triples = [(_row_content(row), row.prev_hash, row.hash) for row in rows]
    problems = verify_chain(triples, head)
    hashes = {int(row.id): str(row.hash) for row in rows}
    if keys:
        signed = [
            SignedHead(r.event_id, r.hash, r.key_id, r.signature)
            for r in conn.execute(sa.select(audit_signatures).order_by(audit_signatures.c.event_id))
        ]
        problems += check_signed_heads(signed, hashes, keys)
    if checkpoint is not None:
        problems += check_against_checkpoint(checkpoint, hashes)
    return len(rows), problems


def check_signed_heads(
    signed: Sequence[SignedHead], hashes: dict[int, str], keys: Sequence[Ed25519PublicKey]
) -> list[str]:
    from .._audit_signing import head_is_valid
    from .._signing import key_id

    by_id = {key_id(k): k for k in keys}
    problems: list[str] = []
    newest_valid = 0
    for head in signed:
        key = by_id.get(head.key_id)
        if key is None:
            continue  # another key's head (an older key, or a forger's): it proves nothing
        if not head_is_valid(head, key):
            problems.append(f"event {head.event_id}: its signed head has a bad signature (forged)")
        elif hashes.get(head.event_id) != head.hash:
            problems.append(
                f"event {head.event_id}: the chain no longer matches the head the registry "
                "signed (history was rewritten and recomputed)"
            )
        else:
            newest_valid = max(newest_valid, head.event_id)
    last = max(hashes, default=0)
    if last and newest_valid < last:
        since = f"after event {newest_valid}" if newest_valid else "at all"
        problems.append(
            f"events are not covered by the registry key's signature {since} (newest is "
            f"{last}): they were appended or rewritten by something that does not hold the key"
        )
    return problems
