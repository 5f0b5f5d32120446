"""The newest audit head an audit key signed for a registry, kept beside the key.

The signatures live in the database; whoever can write it can delete the newest
events with their signatures, empty the log, or fake the state a migration starts
from, and the next honest write (or `tether db upgrade`) signed on from there (a
review: a rewritten history was signed that way). The key's holder therefore keeps
its own record of how far it signed, outside the database like the key: a head is
signed only over a chain that still passes through that mark (``passes_through``),
and `tether audit verify` reports a chain that does not. One file per registry
(the key may serve several), moved only forward, except by an admin's `tether
audit accept` (a database restored from a backup).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import sqlalchemy as sa

from ._digest import blake3_hex
from ._metadata.schema import events

Head = tuple[int, str]


def mark_path(key_path: Path, registry: str) -> Path:
    """Where ``key_path``'s mark for the registry named ``registry`` (its URL) lives."""
    return key_path.with_name(key_path.name + ".heads") / (
        blake3_hex(registry.encode())[:24] + ".json")


def read_mark(path: Path) -> Head | None:
    """The mark, or None (none yet; an unreadable one reads as none)."""
    try:
        data = json.loads(path.read_text())
        return int(data["event_id"]), str(data["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_mark(path: Path, head: Head, *, force: bool = False) -> None:
    """Record ``head``; only forward unless ``force``. Best effort (a mark not moved
    forward protects less, never refuses more: the chain still passes through it)."""
    if not force:
        now = read_mark(path)
        if now is not None and now[0] >= head[0]:
            return
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=".mark-", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump({"event_id": head[0], "hash": head[1]}, handle)
        os.replace(name, path)


def passes_through(conn: sa.Connection, mark: Head | None) -> bool:
    """Whether the stored chain still holds ``mark``'s event with its hash."""
    if mark is None or mark[0] == 0:
        return True
    stored = conn.execute(sa.select(events.c.hash).where(events.c.id == mark[0])).scalar()
    return stored == mark[1]
