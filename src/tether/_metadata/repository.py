"""Queries over models, versions, aliases and settings.

Functions take the caller's connection so that a use case composes several of
them in one transaction. Nothing here decides policy: that is the registry's.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from .._digest import canonical_json
from .._environment.record import readable_environment
from .._errors import IntegrityError
from .._lineage_record import readable_lineage
from .._packed_manifest import (
    MAX_RECORDS,
    StoredRecords,
    files_from_entries,
    kept_in_file,
    stored_entries,
    too_many_records,
)
from .._records import AliasMove, ModelVersion, readable_mapping
from .._semver import SemVer
from .._store import chunklist
from .._store.base import FileEntry
from .._store.chunklist import RECORD_SIZE, ChunkList, DeferredChunkList
from .clock import now_iso
from .schema import alias_moves, aliases, models, settings, versions


def _loads(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def stored_parts(files: Iterable[FileEntry | Mapping[str, Any]],
                 ) -> tuple[str, StoredRecords | None]:
    """(manifest JSON, chunk records) as a row stores ``files``: a file of more than
    ``LISTED_CHUNKS`` chunks keeps its list in the row's ``chunk_records`` column as
    packed records, and its manifest entry says where (see _packed_manifest.py)."""
    entries, records = stored_entries(files)
    return canonical_json(entries), records


def _blob_io(conn: sa.Connection) -> Any:
    """The SQLite connection under ``conn`` if it can read and write a blob a piece at a
    time (``blobopen``), else None."""
    raw = conn.connection.dbapi_connection
    return raw if conn.dialect.name == "sqlite" and hasattr(raw, "blobopen") else None


def _in_pieces(conn: sa.Connection) -> bool:
    """Whether large chunk records go to and from this database a piece at a time."""
    return _blob_io(conn) is not None or conn.dialect.name == "postgresql"


#: PostgreSQL's binary COPY format: its signature, flags and header extension; a row's
#: field count and length; the end.
_COPY_HEAD = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_FIELD = struct.Struct("!hi")
_COPY_END = struct.pack("!h", -1)


def insert_with_records(conn: sa.Connection, table: sa.Table, values: dict[str, Any],
                        records: StoredRecords | None) -> int:
    """Insert a row of ``table`` whose ``chunk_records`` are ``records``; its id.

    Records of ``chunklist.SPILL_BYTES`` or more go to the database a piece at a
    time: bound whole, the driver copied them (40 MB a million chunks, 80 MB as
    PostgreSQL's hex text, beside a list kept in a file; see chunklist.py). On
    SQLite they are written into a zero-filled blob of their size (incremental
    blob I/O); on PostgreSQL streamed by COPY into a temporary table of the
    transaction, from which the row takes them.
    """
    if records is not None and len(records) > MAX_RECORDS:
        raise too_many_records(len(records))  # the database would refuse it (DataError)
    pieces = (records is not None and len(records) >= chunklist.SPILL_BYTES
              and _in_pieces(conn))
    if records is None:
        values = {**values, "chunk_records": None}
    elif pieces:
        values = {**values, "chunk_records": (sa.func.zeroblob(len(records))
                                              if conn.dialect.name == "sqlite" else None)}
    else:
        values = {**values, "chunk_records": records.joined()}
    row_id = _new_id(conn.execute(table.insert().values(**values)))
    if pieces:
        assert records is not None
        if conn.dialect.name == "sqlite":
            with _blob_io(conn).blobopen(table.name, "chunk_records", row_id) as blob:
                for piece in records.pieces():
                    blob.write(piece)
        else:
            _copy_records(conn, table, row_id, records)
    return row_id


def _copy_records(conn: sa.Connection, table: sa.Table, row_id: int,
                  records: StoredRecords) -> None:
    """``records`` into row ``row_id``'s ``chunk_records`` on PostgreSQL, by COPY (binary
    format: one row, one field, written a piece at a time), in the caller's transaction."""
    raw: Any = conn.connection.dbapi_connection  # psycopg's, in the caller's transaction
    with raw.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS tether_chunk_records "
                       "(records bytea) ON COMMIT DROP")
        # Uncompressed here too, as in the row (migration 0011): a value compressed in
        # this table stays compressed when the row takes it.
        cursor.execute("ALTER TABLE tether_chunk_records ALTER COLUMN records "
                       "SET STORAGE EXTERNAL")
        cursor.execute("TRUNCATE tether_chunk_records")
        with cursor.copy("COPY tether_chunk_records (records) FROM STDIN "
                         "(FORMAT BINARY)") as copy:
            copy.write(_COPY_HEAD + _COPY_FIELD.pack(1, len(records)))
            for piece in records.pieces():
                copy.write(piece)
            copy.write(_COPY_END)
    conn.execute(table.update().where(table.c.id == row_id).values(
        chunk_records=sa.literal_column("(SELECT records FROM tether_chunk_records)")))


class DatabaseRecords:
    """A row's chunk records left in the database, read a range at a time: fetched as a
    column, a million chunks came out as 40 MB of ``bytes`` plus the driver's own copy
    (on PostgreSQL, 80 MB of hex text), all in the process before the list could go to
    a scratch file (``stored_records``)."""

    def __init__(self, conn: sa.Connection, table: sa.Table, row_id: int,
                 length: int) -> None:
        self._conn, self._table, self._row_id, self._length = conn, table, row_id, length

    def __len__(self) -> int:
        return self._length

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Callable[[int, int], bytes]]:
        """``read(offset, size)`` over the records, while the context lasts."""
        raw = _blob_io(self._conn)
        if raw is not None:  # SQLite: incremental blob I/O
            with raw.blobopen(self._table.name, "chunk_records", self._row_id,
                              readonly=True) as blob:
                def read_blob(offset: int, size: int) -> bytes:
                    blob.seek(offset)
                    return bytes(blob.read(size))
                yield read_blob
            return
        column, key = self._table.c.chunk_records, self._table.c.id

        def read_range(offset: int, size: int) -> bytes:  # PostgreSQL: substr of the bytea
            query = sa.select(sa.func.substr(column, offset + 1, size)).where(
                key == self._row_id)
            return bytes(self._conn.execute(query).scalar() or b"")
        yield read_range

    def chunk_list(self, start: int, end: int, *, in_file: bool) -> ChunkList:
        """The list of records [start, end) (bytes), in a scratch file if ``in_file``
        and one can be made, else in memory."""
        with self._reader() as read:
            def pieces() -> Iterator[bytes]:
                at = start
                while at < end:
                    piece = read(at, min(end - at, chunklist.PIECE_RECORDS * RECORD_SIZE))
                    if not piece:
                        raise ValueError("the row's chunk records ended early")
                    at += len(piece)
                    yield piece

            return (kept_in_file(pieces) if in_file
                    else ChunkList(b"".join(pieces()), adopt=True))


def stored_records(conn: sa.Connection, table: sa.Table, row_id: int,
                   ) -> bytes | DatabaseRecords | None:
    """The ``chunk_records`` of row ``row_id`` of ``table``: left in the database where
    it can be read a range at a time (large ones), else fetched."""
    column = table.c.chunk_records
    length = conn.execute(sa.select(sa.func.length(column)).where(table.c.id == row_id)).scalar()
    if length is None:
        return None
    if int(length) >= chunklist.SPILL_BYTES and _in_pieces(conn):
        return DatabaseRecords(conn, table, row_id, int(length))
    records: bytes | None = conn.execute(sa.select(column).where(table.c.id == row_id)).scalar()
    return records


class DeferredRecords:
    """A listed row's chunk records, read (``DatabaseRecords``, on a connection of its own)
    only when one of its lists is used (``chunklist.DeferredChunkList``): a list of a
    model's versions read every version's records, 40 MB a million chunks each."""

    def __init__(self, engine: sa.Engine, table: sa.Table, row_id: int, length: int) -> None:
        self._engine, self._table, self._row_id, self._length = engine, table, row_id, length

    def __len__(self) -> int:
        return self._length

    def chunk_list(self, start: int, end: int, *, in_file: bool) -> ChunkList:
        def load() -> ChunkList:
            with self._engine.connect() as conn:
                return DatabaseRecords(conn, self._table, self._row_id, self._length
                                       ).chunk_list(start, end, in_file=in_file)
        return DeferredChunkList((end - start) // RECORD_SIZE, load)


def listed_columns(table: sa.Table = versions) -> list[Any]:
    """The columns of ``table`` for a list of its rows: all but ``chunk_records``, and its
    length as ``records_length`` (``listed_records``)."""
    return [*version_columns(records=False, table=table),
            sa.func.length(table.c.chunk_records).label("records_length")]


def listed_records(conn: sa.Connection, table: sa.Table, row: sa.Row[Any],
                   ) -> DeferredRecords | None:
    """The chunk records of a row selected with ``listed_columns``, to be read when used."""
    length = row.records_length
    return None if length is None else DeferredRecords(conn.engine, table, row.id, int(length))


def manifest_files(text: str | None, what: str,
                   records: bytes | DatabaseRecords | DeferredRecords | None = None,
                   *, in_file: bool = False) -> tuple[FileEntry, ...]:
    """The files a stored manifest records (``stored_parts``'s two parts);
    IntegrityError naming ``what`` when it is not a manifest (the database is not
    trusted: its digest is checked after this). ``in_file``: see
    ``_packed_manifest.files_from_entries``.
    """
    try:
        return files_from_entries(_loads(text, []), records, in_file=in_file)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
        raise IntegrityError(
            f"{what}'s recorded manifest is unusable: {error}",
            hint="the registry's database was changed outside Tether; "
            "restore it from a backup and run `tether audit verify`",
        ) from None


# -- models -------------------------------------------------------------------


def model_id(conn: sa.Connection, name: str, *, lock: bool = False) -> int | None:
    query = sa.select(models.c.id).where(models.c.name == name, models.c.deleted.is_(False))
    if lock:
        query = query.with_for_update()
    return conn.execute(query).scalar()


def ensure_model(conn: sa.Connection, name: str) -> tuple[int, bool]:
    """The model's id, creating it if needed; locks its row. Returns (id, created)."""
    existing = model_id(conn, name, lock=True)
    if existing is not None:
        return existing, False
    now = now_iso()
    result = conn.execute(
        models.insert().values(
            name=name, description="", owners="[]", tags="{}", created_at=now, updated_at=now
        )
    )
    return _new_id(result), True


def model_names(conn: sa.Connection) -> list[str]:
    query = sa.select(models.c.name).where(models.c.deleted.is_(False)).order_by(models.c.name)
    return list(conn.execute(query).scalars())


def update_model(conn: sa.Connection, mid: int, **fields: Any) -> None:
    values = {k: canonical_json(v) if k in ("owners", "tags") else v for k, v in fields.items()}
    conn.execute(models.update().where(models.c.id == mid).values(updated_at=now_iso(), **values))


# -- versions -----------------------------------------------------------------


def row_to_version(row: sa.Row[Any], name: str, alias_names: Sequence[str] = (), *,
                   files: Sequence[FileEntry] | None = None,
                   lists_in_file: bool = False,
                   records: bytes | DatabaseRecords | DeferredRecords | None = None,
                   ) -> ModelVersion:
    """The version a row records. ``files``: its manifest when the caller already
    holds it (decoding tens of thousands of chunk entries again costs 0.1 s), or
    ``()`` when only the rest is wanted; ``lists_in_file``: see ``manifest_files``;
    ``records``: its chunk records, for a row selected without them
    (``stored_records``)."""
    return ModelVersion(
        id=row.id,
        name=name,
        seq=row.seq,
        semver=row.semver,
        digest=row.digest,
        files=(tuple(files) if files is not None
               else manifest_files(row.manifest, f"{name}@{row.semver}",
                                   records if records is not None
                                   else getattr(row, "chunk_records", None),
                                   in_file=lists_in_file)),
        flavor=_loads(row.flavor, {}),
        signature=_loads(row.signature, None),
        input_example=_loads(row.input_example, None),
        params=_loads(row.params, {}),
        metrics=readable_mapping(_loads(row.metrics, {})),
        data=_loads(row.data, {}),
        lineage=readable_lineage(_loads(row.lineage, {})),
        environment=readable_environment(_loads(row.environment, {})),
        tags=readable_mapping(_loads(row.tags, {})),
        notes=row.notes,
        author=row.author,
        created_at=row.created_at,
        status=row.status,
        files_digest=row.files_digest,
        aliases=tuple(alias_names),
    )


def listed_versions(conn: sa.Connection, name: str, mid: int, rows: Iterable[sa.Row[Any]],
                    ) -> list[ModelVersion]:
    """``rows`` of model ``name`` (id ``mid``), selected with ``listed_columns``, as
    versions with their aliases, each one's chunk records read when used."""
    by_version = aliases_by_version(conn, mid)
    return [row_to_version(row, name, by_version.get(row.id, []),
                           records=listed_records(conn, versions, row)) for row in rows]


def version_rows(
    conn: sa.Connection, mid: int, *, include_deleted: bool = False, files: bool = True,
) -> list[sa.Row[Any]]:
    """All versions of a model, by sequence number, with ``listed_columns``; without
    their manifests (``row_to_version(files=())``) when ``files`` is False."""
    columns = [c for c in listed_columns() if files or getattr(c, "name", "") != "manifest"]
    query = (sa.select(*columns).where(versions.c.model_id == mid)
             .order_by(versions.c.seq))
    if not include_deleted:
        query = query.where(versions.c.status != "deleted")
    return list(conn.execute(query))


#: Most versions in one page of a REST listing (a model of 100,000 versions, each
#: listing thousands of files, was one answer of gigabytes: a review) ...
VERSION_PAGE = 1000
#: ... and most bytes of their stored text (manifests, tags, params...): a page ends
#: before the version that would cross it (one version always fits; its size has its
#: own limits).
VERSION_PAGE_BYTES = 64 << 20
#: The header of a page over HTTP saying that another page follows: the sequence
#: number to ask ``?after=`` next.
NEXT_PAGE = "X-Tether-Next-After"


def _listed_octets(conn: sa.Connection, table: sa.Table) -> Any:
    """The bytes a row's listed text columns hold, in SQL: the manifest, and the tags,
    params, metrics, notes and the rest beside it (counting the manifest alone let a
    page of large tags load 25 times its budget; counting characters, not bytes, let
    text outside ASCII through at up to four times it: a review)."""
    def octets(column: Any) -> Any:
        if conn.dialect.name == "postgresql":
            return sa.func.octet_length(column)
        return sa.func.length(sa.cast(column, sa.LargeBinary))  # SQLite: bytes of a BLOB

    texts = [c for c in version_columns(records=False, table=table)
             if isinstance(c.type, sa.String)]
    return sum((sa.func.coalesce(octets(c), 0) for c in texts), sa.literal(0))


def version_page(conn: sa.Connection, table: sa.Table, owner: sa.ColumnElement[bool], *,
                 after: int = 0, include_deleted: bool = False,
                 ) -> tuple[list[sa.Row[Any]], int | None]:
    """One page of the versions of ``table`` that ``owner`` selects (a model's or a
    dataset's), by sequence number after ``after``, with ``listed_columns``; and the
    ``after`` of the next page (None: this is the last). Sizes are read first, so a
    page never loads more than it answers."""
    live = [] if include_deleted else [table.c.status != "deleted"]
    sizes = conn.execute(
        sa.select(table.c.seq, _listed_octets(conn, table))
        .where(owner, table.c.seq > after, *live).order_by(table.c.seq)
        .limit(VERSION_PAGE + 1)).all()
    last, total, count = None, 0, 0
    for seq, length in sizes:
        if count == VERSION_PAGE or (count and total + int(length or 0) > VERSION_PAGE_BYTES):
            break
        last, total, count = int(seq), total + int(length or 0), count + 1
    if last is None:
        return [], None
    rows = list(conn.execute(
        sa.select(*listed_columns(table))
        .where(owner, table.c.seq > after, table.c.seq <= last, *live)
        .order_by(table.c.seq)))
    return rows, (last if count < len(sizes) else None)


def version_columns(*, records: bool = True, table: sa.Table = versions) -> list[Any]:
    """The columns of ``table`` (``versions``, or ``dataset_versions``); ``records=False``:
    all but ``chunk_records`` (40 MB a million chunks), for choosing among rows
    (``stored_records`` reads them after)."""
    return [c for c in table.c if records or c.name != "chunk_records"]


def live_versions_by_digest(
    conn: sa.Connection, mid: int, *conditions: Any, records: bool = True
) -> list[sa.Row[Any]]:
    """The model's versions (not deleted) whose digest meets ``conditions``, by seq.

    Asked by digest alone, then narrowed here: given ``model_id`` too, SQLite
    (no statistics) walks the model's index and reads every version's row.
    """
    query = sa.select(*version_columns(records=records)).where(*conditions)
    rows = [r for r in conn.execute(query) if r.model_id == mid and r.status != "deleted"]
    return sorted(rows, key=lambda r: r.seq)


def newest_live_version(conn: sa.Connection, mid: int, *, records: bool = True,
                        ) -> sa.Row[Any] | None:
    query = sa.select(*version_columns(records=records)).where(
        versions.c.model_id == mid, versions.c.status != "deleted")
    return conn.execute(query.order_by(versions.c.seq.desc()).limit(1)).first()


def highest_seq(conn: sa.Connection, mid: int) -> int:
    """The largest sequence number ever given in the model (deleted versions count)."""
    found = conn.execute(
        sa.select(sa.func.max(versions.c.seq)).where(versions.c.model_id == mid)
    ).scalar()
    return int(found or 0)


def highest_semver(conn: sa.Connection, mid: int) -> str | None:
    """The highest semantic version ever given in the model (deleted versions count)."""
    top = conn.execute(
        sa.select(versions.c.major, versions.c.minor, versions.c.patch)
        .where(versions.c.model_id == mid)
        .order_by(versions.c.major.desc(), versions.c.minor.desc(), versions.c.patch.desc())
        .limit(1)
    ).first()
    if top is None:
        return None
    # Pre-releases share a (major, minor, patch): the full comparison decides among them.
    tied = conn.execute(
        sa.select(versions.c.semver).where(
            versions.c.model_id == mid,
            versions.c.major == top.major,
            versions.c.minor == top.minor,
            versions.c.patch == top.patch,
        )
    ).scalars()
    return str(max(tied, key=SemVer.parse))


def version_by_id(conn: sa.Connection, vid: int, *, files: bool = True,
                  records: bool = True) -> sa.Row[Any] | None:
    """The row of version ``vid``; ``files=False`` leaves out its manifest and chunk records
    (a commit holds them already: the chunk records of a 70 GB file are 45 MB),
    ``records=False`` its chunk records only."""
    columns = [c for c in version_columns(records=records and files)
               if files or c.name != "manifest"]
    return conn.execute(sa.select(*columns).where(versions.c.id == vid)).first()


def insert_version(conn: sa.Connection, mid: int, values: dict[str, Any]) -> int:
    encoded = {
        key: canonical_json(value) if key in _JSON_COLUMNS else value
        for key, value in values.items() if key != "manifest"
    }
    encoded["manifest"], records = stored_parts(values["manifest"])
    return insert_with_records(conn, versions, {"model_id": mid, **encoded}, records)


_JSON_COLUMNS = frozenset(
    {
        "flavor",
        "signature",
        "input_example",
        "params",
        "metrics",
        "data",
        "lineage",
        "environment",
        "tags",
    }
)


def set_version_status(conn: sa.Connection, vid: int, status: str) -> None:
    conn.execute(versions.update().where(versions.c.id == vid).values(status=status))


#: What retention decides by (``brief`` rows): a version's other columns (its
#: environment alone is some 11 KB) would make gc hold the whole registry.
_BRIEF = ("id", "model_id", "seq", "semver", "digest", "status", "created_at")


def all_version_rows(conn: sa.Connection, *, brief: bool = False,
                     ) -> list[tuple[str, sa.Row[Any]]]:
    """(model name, row) of every version not deleted; ``brief``: only the columns of
    ``_BRIEF`` (``version_files`` streams the files)."""
    columns = [getattr(versions.c, name) for name in _BRIEF] if brief else list(versions.c)
    query = (
        sa.select(models.c.name, *columns)
        .join(models, models.c.id == versions.c.model_id)
        .where(versions.c.status != "deleted")
        .order_by(models.c.name, versions.c.seq)
    )
    return [(row.name, row) for row in conn.execute(query)]


def version_files(conn: sa.Connection, *, skip: Iterable[int] = ()
                  ) -> Iterator[FileEntry]:
    """The files of every version not deleted (but those whose id is in ``skip``), read a
    row at a time: gc and store statistics visit every version's chunk list, and a
    registry's worth of them (40 bytes a chunk) need not be held at once."""
    leave_out = set(skip)
    query = (sa.select(versions.c.id, versions.c.semver, versions.c.manifest)
             .where(versions.c.status != "deleted").order_by(versions.c.id))
    yield from streamed_files(conn, versions, query, lambda row: row.id in leave_out,
                              lambda row: f"version {row.id} ({row.semver})")


def streamed_files(conn: sa.Connection, table: sa.Table, query: Any, skip: Any, label: Any,
                   ) -> Iterator[FileEntry]:
    """The files of the rows of ``table`` that ``query`` selects (columns ``id`` and
    ``manifest``), one row's at a time, a large list read from its row a range at a
    time into a scratch file (``stored_records``): fetched with the rows, a million
    chunks were 40 MB a row, and PostgreSQL's cursor fetched several rows at once."""
    rows = conn.execution_options(yield_per=_rows_at_a_time(conn)).execute(query)
    while (row := rows.fetchone()) is not None:
        if skip(row):
            continue
        files = manifest_files(row.manifest, label(row), stored_records(conn, table, row.id),
                               in_file=True)
        del row
        yield from files
        del files


def _rows_at_a_time(conn: sa.Connection) -> int:
    """Rows fetched at once when every version's files are visited: one on SQLite (in the
    process: no round trip to save), a few from PostgreSQL's server-side cursor."""
    return 1 if conn.dialect.name == "sqlite" else 8


# -- aliases ------------------------------------------------------------------


def alias_targets(conn: sa.Connection, mid: int) -> dict[str, str]:
    """alias name -> semver of its target, for one model."""
    query = (
        sa.select(aliases.c.name, versions.c.semver)
        .join(versions, versions.c.id == aliases.c.version_id)
        .where(aliases.c.model_id == mid)
        .order_by(aliases.c.name)
    )
    return {row.name: row.semver for row in conn.execute(query)}


def aliases_by_version(conn: sa.Connection, mid: int) -> dict[int, list[str]]:
    result: dict[int, list[str]] = {}
    query = sa.select(aliases.c.name, aliases.c.version_id).where(aliases.c.model_id == mid)
    for row in conn.execute(query.order_by(aliases.c.name)):
        result.setdefault(row.version_id, []).append(row.name)
    return result


def alias_row(conn: sa.Connection, mid: int, alias: str) -> sa.Row[Any] | None:
    return conn.execute(
        sa.select(aliases).where(aliases.c.model_id == mid, aliases.c.name == alias)
    ).first()


def point_alias(conn: sa.Connection, mid: int, alias: str, vid: int, actor: str) -> None:
    now = now_iso()
    current = alias_row(conn, mid, alias)
    if current is None:
        conn.execute(
            aliases.insert().values(
                model_id=mid,
                name=alias,
                version_id=vid,
                updated_at=now,
                updated_by=actor,
                generation=1,
            )
        )
    else:
        conn.execute(
            aliases.update()
            .where(aliases.c.model_id == mid, aliases.c.name == alias)
            .values(
                version_id=vid, updated_at=now, updated_by=actor, generation=current.generation + 1
            )
        )


def drop_alias(conn: sa.Connection, mid: int, alias: str) -> None:
    conn.execute(aliases.delete().where(aliases.c.model_id == mid, aliases.c.name == alias))


def record_move(
    conn: sa.Connection,
    mid: int,
    alias: str,
    *,
    vid: int | None,
    previous: int | None,
    action: str,
    actor: str,
    reason: str,
) -> None:
    conn.execute(
        alias_moves.insert().values(
            model_id=mid,
            alias=alias,
            version_id=vid,
            previous_version_id=previous,
            action=action,
            undone=False,
            actor=actor,
            reason=reason,
            moved_at=now_iso(),
        )
    )


def live_sets(conn: sa.Connection, mid: int, alias: str) -> list[sa.Row[Any]]:
    """The alias's "set" moves not yet undone by a rollback, newest first."""
    query = (
        sa.select(alias_moves)
        .where(
            alias_moves.c.model_id == mid,
            alias_moves.c.alias == alias,
            alias_moves.c.action == "set",
            alias_moves.c.undone.is_(False),
        )
        .order_by(alias_moves.c.id.desc())
    )
    return list(conn.execute(query))


def mark_undone(conn: sa.Connection, move_id: int) -> None:
    conn.execute(alias_moves.update().where(alias_moves.c.id == move_id).values(undone=True))


def alias_history(conn: sa.Connection, mid: int, name: str, alias: str,
                  limit: int | None = None) -> list[AliasMove]:
    target = versions.alias("target")
    before = versions.alias("before")
    query = (
        sa.select(alias_moves, target.c.semver.label("to"), before.c.semver.label("frm"))
        .outerjoin(target, target.c.id == alias_moves.c.version_id)
        .outerjoin(before, before.c.id == alias_moves.c.previous_version_id)
        .where(alias_moves.c.model_id == mid, alias_moves.c.alias == alias)
        .order_by(alias_moves.c.id.desc())
        .limit(limit)
    )
    return [
        AliasMove(
            model=name,
            alias=alias,
            version=row.to,
            previous=row.frm,
            action=row.action,
            actor=row.actor,
            reason=row.reason,
            moved_at=row.moved_at,
            undone=row.undone,
        )
        for row in conn.execute(query)
    ]


def ever_aliased_version_ids(conn: sa.Connection) -> set[int]:
    """Every version an alias points at now or ever pointed at (kept by gc)."""
    ids = set(conn.execute(sa.select(aliases.c.version_id)).scalars())
    ids |= {v for v in conn.execute(sa.select(alias_moves.c.version_id)).scalars() if v}
    return ids


# -- settings -----------------------------------------------------------------


def get_setting(conn: sa.Connection, key: str) -> str | None:
    return conn.execute(sa.select(settings.c.value).where(settings.c.key == key)).scalar()


def put_setting(conn: sa.Connection, key: str, value: str) -> None:
    if get_setting(conn, key) is None:
        conn.execute(settings.insert().values(key=key, value=value))
    else:
        conn.execute(settings.update().where(settings.c.key == key).values(value=value))


def all_settings(conn: sa.Connection) -> dict[str, str]:
    return {row.key: row.value for row in conn.execute(sa.select(settings))}


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def alias_state(conn: sa.Connection, name: str, alias: str) -> Any:
    """One query for the hot path: an alias's target and generation."""
    query = (
        sa.select(
            aliases.c.generation,
            aliases.c.updated_at,
            aliases.c.updated_by,
            versions.c.semver,
            versions.c.seq,
            versions.c.digest,
            versions.c.status,
        )
        .join(models, models.c.id == aliases.c.model_id)
        .join(versions, versions.c.id == aliases.c.version_id)
        .where(models.c.name == name, models.c.deleted.is_(False), aliases.c.name == alias)
    )
    return conn.execute(query).first()
