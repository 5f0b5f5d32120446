"""Turning a reference into a stored version, with errors that list what exists."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .._errors import AmbiguousReference, NotFound
from .._identity import require_intact
from .._metadata import repository as repo
from .._records import ModelVersion
from .._reference import Reference, SelectorKind, parse_reference


def _semver_key(row: sa.Row[Any]) -> tuple[int, int, int]:
    return (row.major, row.minor, row.patch)


def require_model(conn: sa.Connection, name: str, *, lock: bool = False) -> int:
    mid = repo.model_id(conn, name, lock=lock)
    if mid is None:
        names = repo.model_names(conn)
        listing = ", ".join(names[:20]) if names else "none yet"
        raise NotFound(
            f"no model named {name!r}",
            hint=f"models in this registry: {listing}",
        )
    return mid


def _listing(rows: list[sa.Row[Any]], aliases: dict[str, str]) -> str:
    newest = sorted(rows, key=lambda r: r.seq)[-8:]
    versions = ", ".join(f"{r.semver} (#{r.seq})" for r in newest) or "no versions"
    alias_text = ", ".join(f"{a} -> {v}" for a, v in aliases.items()) or "no aliases"
    return f"versions: {versions}; aliases: {alias_text}"


def resolve_row(conn: sa.Connection, ref: Reference) -> tuple[int, sa.Row[Any]]:
    """The model id and version row ``ref`` names; raises NotFound or AmbiguousReference."""
    mid = require_model(conn, ref.name)
    rows = repo.version_rows(conn, mid)

    def missing(what: str) -> NotFound:
        return NotFound(
            f"{ref.name} has no {what}",
            hint=_listing(rows, repo.alias_targets(conn, mid)),
        )

    if ref.kind is SelectorKind.ALIAS:
        alias = repo.alias_row(conn, mid, ref.value)
        if alias is None:
            raise missing(f"alias {ref.value!r}")
        row = repo.version_by_id(conn, alias.version_id)
        if row is None or row.status == "deleted":
            raise missing(f"live version behind alias {ref.value!r}")
        return mid, row
    if not rows:
        raise NotFound(f"{ref.name} has no versions yet", hint="log one with tether.log_model")
    if ref.kind is SelectorKind.LATEST:
        return mid, rows[-1]
    if ref.kind is SelectorKind.SEQUENCE:
        found = [r for r in rows if r.seq == int(ref.value)]
        if not found:
            raise missing(f"version number {ref.value}")
        return mid, found[0]
    if ref.kind is SelectorKind.SEMVER:
        found = [r for r in rows if r.semver == ref.value]
        if not found:
            raise missing(f"version {ref.value}")
        return mid, found[0]
    if ref.kind is SelectorKind.SEMVER_RANGE:
        parts = [int(p) for p in ref.value.split(".")]
        found = [r for r in rows if list(_semver_key(r))[: len(parts)] == parts]
        if not found:
            raise missing(f"version matching ~{ref.value}")
        return mid, max(found, key=_semver_key)
    # SelectorKind.DIGEST
    found = [r for r in rows if r.digest.startswith(ref.value)]
    if not found:
        raise missing(f"version with digest sha:{ref.value}")
    if len(found) > 1:
        candidates = ", ".join(f"{r.semver} (sha:{r.digest[:16]})" for r in found)
        raise AmbiguousReference(
            f"sha:{ref.value} matches {len(found)} versions of {ref.name}: {candidates}",
            hint="give more digits of the digest",
        )
    return mid, found[0]


def resolve_version(conn: sa.Connection, ref: str | Reference) -> ModelVersion:
    """The version ``ref`` names, after re-hashing it to its recorded digest.

    Everything that loads, verifies, pins, signs or serves a version gets it
    from here, so a manifest changed in the database is refused before use.
    """
    parsed = parse_reference(ref) if isinstance(ref, str) else ref
    mid, row = resolve_row(conn, parsed)
    alias_names = repo.aliases_by_version(conn, mid).get(row.id, [])
    return require_intact(repo.row_to_version(row, parsed.name, alias_names))
