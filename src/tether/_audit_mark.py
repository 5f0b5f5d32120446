"""The newest audit head an audit key signed for a registry, kept beside the key.

The signatures live in the database; whoever can write it can delete the newest
events with their signatures, empty the log, or fake the state a migration starts
from, and the next honest write (or `tether db upgrade`) signed on from there (a
review: a rewritten history was signed that way). The key's holder therefore keeps
its own record of how far it signed, outside the database like the key: a head is
signed only over a chain that still passes through that mark (``passes_through``),
and `tether audit verify` reports a chain that does not. One file per registry
(the key may serve several), moved only forward, except by an admin's `tether
audit accept` (a database restored from a backup): an accepted event signed by the
key after a mark was written stands in for it on every host holding the key.
Beside the key, or in ``TETHER_AUDIT_MARK_DIR`` where the key's folder is read-only
(a Kubernetes secret).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ._digest import blake3_hex
from ._metadata.audit_log import authentic_events, chain_holds, signed_by
from ._metadata.schema import events

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

Head = tuple[int, str]
#: A mark: the head, when it was written (seconds since the epoch), and the chain's
#: origin (``chain_origin``; None in a mark from before origins).
Mark = tuple[int, str, float, str | None]


def mark_path(key_path: Path, registry: str) -> Path:
    """Where ``key_path``'s mark for the registry named ``registry`` (its URL) lives."""
    folder = os.environ.get("TETHER_AUDIT_MARK_DIR")
    base = Path(folder).expanduser() if folder else key_path.with_name(key_path.name + ".heads")
    return base / (blake3_hex(f"{key_path.name}\0{registry}".encode())[:24] + ".json")


def registry_tag(registry: str) -> str:
    """What an ``audit.accepted`` event records of the registry (its URL) it was made on.

    An accept stands in for a mark only on the registry it was made on: two registries
    may share a key (servers on one host do by default), and an insider who copied one's
    accepted log into the other's database had the other's cut history pass `tether
    audit verify` (a review). Made on: the same URL, or the same chain, by its first
    event (``chain_origin``, which marks record): one database reached by two URLs (two
    hostnames, a link) is one registry (a review of that fix)."""
    return blake3_hex(f"registry\0{registry}".encode())[:24]


def chain_origin(conn: sa.Connection) -> str | None:
    """The hash of the log's first event: which chain this is (None: an empty log)."""
    found = conn.execute(sa.select(events.c.hash).order_by(events.c.id).limit(1)).scalar()
    return None if found is None else str(found)


def read_mark(path: Path) -> Mark | None:
    """The mark, or None (none yet; an unreadable one reads as none)."""
    try:
        data = json.loads(path.read_text())
        origin = data.get("origin")
        return (int(data["event_id"]), str(data["hash"]), float(data.get("at", 0.0)),
                origin if isinstance(origin, str) else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_mark(path: Path, head: Head, *, force: bool = False,
               origin: str | None = None) -> bool:
    """Record ``head``; only forward unless ``force``. Whether the mark holds it now
    (False: the folder cannot be written; the caller warns)."""
    if not force:
        now = read_mark(path)
        if now is not None and now[0] >= head[0]:
            return True
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=".mark-", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump({"event_id": head[0], "hash": head[1], "at": time.time(),
                       **({"origin": origin} if origin else {})}, handle)
        os.replace(name, path)
    except OSError:
        return False
    return True


def passes_through(conn: sa.Connection, mark: Mark | None,
                   public: Ed25519PublicKey | None = None, registry: str = "") -> bool:
    """Whether the stored chain still holds ``mark``'s event with its hash, or (with the
    key's ``public`` half) an admin accepted the log on this registry (``registry``: its
    ``registry_tag``; or on the chain the mark recorded as its origin), under a
    signature of this key, after the mark was written."""
    if mark is None or mark[0] == 0:
        return True
    if chain_holds(conn, mark[0], mark[1]):
        return True
    return public is not None and _accepted_since(conn, mark[2], public, registry, mark[3])


def _accepted_since(conn: sa.Connection, when: float, public: Ed25519PublicKey,
                    registry: str, origin: str | None = None) -> bool:
    """Whether an ``audit.accepted`` event newer than ``when`` is signed by the key: its
    content hashed again to its hash, and that hash signed. The columns alone said
    nothing: an old signed row relabelled as an accept dated 2099 passed, and a cut
    history was signed on (a review)."""
    rows = conn.execute(sa.select(events.c.id).where(events.c.action == "audit.accepted")
                        .order_by(events.c.id.desc())).scalars().all()  # no window to fill
    for event_id in rows:
        checked = authentic_events(conn, event_id - 1, event_id)
        if not checked:
            continue
        content, _prev, digest = checked[0]
        if content["action"] != "audit.accepted":
            continue
        details = content.get("details")
        details = details if isinstance(details, dict) else {}
        made_on = details.get("registry")  # (older accepts name none)
        if made_on is not None and made_on != registry and (
                origin is None or details.get("origin") != origin):
            continue  # an accept made on another registry sharing the key
        try:
            at = datetime.fromisoformat(str(content["ts"]).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        if at > when and signed_by(conn, event_id, digest, public):
            return True
    return False
