"""Turning a reference into a stored version, with errors that list what exists."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .._errors import AmbiguousReference, NotFound, UnknownName
from .._identity import require_intact
from .._metadata import repository as repo
from .._metadata.schema import versions
from .._records import ModelVersion
from .._reference import Reference, SelectorKind, parse_reference

#: The largest number a version's columns hold (64-bit integers, SQLite and PostgreSQL).
LARGEST_NUMBER = 2**63 - 1


def version_number(digits: str) -> int | None:
    """A selector's number (decimal digits), or None when no version can have it: past
    what the database holds (SQLite raised OverflowError; from 4,300 digits ``int``
    raised ValueError)."""
    if len(digits) > len(str(LARGEST_NUMBER)):
        return None
    number = int(digits)
    return number if number <= LARGEST_NUMBER else None


def range_numbers(value: str) -> list[int] | None:
    """The numbers of a range selector's value (``1.4`` of ``~1.4``), or None when no
    version can match it."""
    numbers = [version_number(part) for part in value.split(".")]
    return None if None in numbers else [n for n in numbers if n is not None]


def shown_number(text: str) -> str:
    """A selector as an answer shows it: a number of 5,000 digits, shortened."""
    return text if len(text) <= 40 else f"{text[:24]}... ({len(text)} characters)"


def _semver_key(row: sa.Row[Any]) -> tuple[int, int, int]:
    return (row.major, row.minor, row.patch)


def require_model(conn: sa.Connection, name: str, *, lock: bool = False) -> int:
    mid = repo.model_id(conn, name, lock=lock)
    if mid is None:
        raise UnknownName(f"no model named {name!r}", kind="models",
                          names=repo.model_names(conn))
    return mid


def _listing(conn: sa.Connection, mid: int) -> str:
    newest = list(
        conn.execute(
            sa.select(versions.c.semver, versions.c.seq)
            .where(versions.c.model_id == mid, versions.c.status != "deleted")
            .order_by(versions.c.seq.desc())
            .limit(8)
        )
    )[::-1]
    aliases = repo.alias_targets(conn, mid)
    listed = ", ".join(f"{r.semver} (#{r.seq})" for r in newest) or "no versions"
    alias_text = ", ".join(f"{a} -> {v}" for a, v in aliases.items()) or "no aliases"
    return f"versions: {listed}; aliases: {alias_text}"


def _matching(conn: sa.Connection, mid: int, *conditions: Any,
              records: bool = True) -> list[sa.Row[Any]]:
    """The model's live versions meeting ``conditions``, by sequence number (an indexed
    lookup: resolving must not read every version of a model with thousands)."""
    query = sa.select(*repo.version_columns(records=records)).where(
        versions.c.model_id == mid, versions.c.status != "deleted", *conditions
    )
    return list(conn.execute(query.order_by(versions.c.seq)))


def resolve_row(conn: sa.Connection, ref: Reference, *,
                records: bool = True) -> tuple[int, sa.Row[Any]]:
    """The model id and version row ``ref`` names; raises NotFound or AmbiguousReference.
    ``records=False``: the row without its chunk records (see ``resolve_version``)."""
    mid = require_model(conn, ref.name)

    def missing(what: str) -> NotFound:
        if ref.kind is not SelectorKind.ALIAS and repo.newest_live_version(
                conn, mid, records=False) is None:
            return NotFound(f"{ref.name} has no versions yet", hint="log one with tether.log_model")
        return NotFound(f"{ref.name} has no {what}", hint=_listing(conn, mid))

    if ref.kind is SelectorKind.ALIAS:
        alias = repo.alias_row(conn, mid, ref.value)
        if alias is None:
            raise missing(f"alias {ref.value!r}")
        row = repo.version_by_id(conn, alias.version_id, records=records)
        if row is None or row.status == "deleted":
            raise missing(f"live version behind alias {ref.value!r}")
        return mid, row
    if ref.kind is SelectorKind.LATEST:
        newest = repo.newest_live_version(conn, mid, records=records)
        if newest is None:
            raise missing("versions")
        return mid, newest
    if ref.kind is SelectorKind.SEQUENCE:
        seq = version_number(ref.value)
        found = ([] if seq is None
                 else _matching(conn, mid, versions.c.seq == seq, records=records))
        if not found:
            raise missing(f"version number {shown_number(ref.value)}")
        return mid, found[0]
    if ref.kind is SelectorKind.SEMVER:
        found = _matching(conn, mid, versions.c.semver == ref.value, records=records)
        if not found:
            raise missing(f"version {ref.value}")
        return mid, found[0]
    if ref.kind is SelectorKind.SEMVER_RANGE:
        parts = range_numbers(ref.value)
        columns = (versions.c.major, versions.c.minor, versions.c.patch)
        found = [] if parts is None else _matching(
            conn, mid, *(c == p for c, p in zip(columns, parts, strict=False)), records=records)
        if not found:
            raise missing(f"version matching ~{shown_number(ref.value)}")
        return mid, max(found, key=_semver_key)
    # SelectorKind.DIGEST: a prefix of lowercase hex, as a range the digest index serves.
    prefix = ref.value.lower()
    found = repo.live_versions_by_digest(
        conn, mid, versions.c.digest >= prefix, versions.c.digest < prefix + "g",
        records=records,
    )
    if not found:
        raise missing(f"version with digest sha:{ref.value}")
    if len(found) > 1 and len({r.digest for r in found}) == 1:
        # Versions with one digest hold the same content (logged again with other notes or
        # tags, which the digest leaves out): the newest. Resolving by the full digest,
        # as serving, lock pins and `check` do, refused them as ambiguous.
        return mid, max(found, key=lambda r: r.seq)
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
    # A Reference passes as itself; anything else (None, a number) is parsed, which
    # says what is wrong with it.
    parsed = ref if isinstance(ref, Reference) else parse_reference(ref)
    # Chosen without the chunk records (a range like ~1 matched every 1.x row, each
    # with its lists), whose are then read a file at a time into scratch files: one
    # version is held for a whole load.
    mid, row = resolve_row(conn, parsed, records=False)
    alias_names = repo.aliases_by_version(conn, mid).get(row.id, [])
    records = repo.stored_records(conn, versions, row.id)
    return require_intact(repo.row_to_version(row, parsed.name, alias_names,
                                              lists_in_file=True, records=records))
