"""Datasets: versioned like models, on the same chunk store.

A dataset version is a folder (or one file) cut into the store's content-defined
chunks, so a CSV grown by appending rows stores about the appended bytes only.
It has the same three identities as a model version:

- a sequence number per dataset (``ds@3``),
- a semantic version proposed from the change against the newest version:

  ========  ===============================================================
  major     a file removed, or a table lost a column or changed its type:
            a reader of the previous version may break
  minor     files added or changed (rows appended, values edited), columns
            added: readers keep working, results may differ
  patch     the same bytes with other notes or tags
  ========  ===============================================================

  (the first version is 1.0.0; a caller may ask for more, never less),
- a content digest: BLAKE3 over the canonical manifest (every path, size,
  digest and chunk list), re-hashed whenever a version is resolved, so a
  manifest changed in the database is refused before a byte is read.

Aliases move with an audit event each (``dataset.alias.set``). Adding the same
bytes again returns the existing version. Audit events name the dataset as
``data:NAME`` in the model column (a ``:`` never appears in a model name).

Lineage: ``log_model(data={"train": "ds@2"})`` records the dataset version in
the model's ``data`` (bound by the model's digest) and a row in
``dataset_links``, so ``get_dataset`` lists the models trained on a version.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._digest import canonical_json, digest_of
from .._errors import (
    AmbiguousReference,
    Conflict,
    IntegrityError,
    InvalidInput,
    InvalidReference,
    MissingChunks,
    NotFound,
    UnknownField,
    UnknownName,
)
from .._identity import (
    check_manifest,
    check_one_file_each,
    check_relative_path,
    manifest_digest,
)
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._metadata.clock import now_iso
from .._metadata.schema import (
    dataset_alias_moves,
    dataset_aliases,
    dataset_links,
    dataset_versions,
    datasets,
    models,
    versions,
)
from .._records import AliasMove, ModelVersion, check_file_digest, file_in
from .._reference import (
    Reference,
    SelectorKind,
    parse_reference,
    validate_alias_name,
    validate_model_name,
)
from .._semver import BumpLevel, SemVer, resolve_bump
from .._store.base import FileEntry
from .._warnings import LeftOut, warn_caller
from . import reads
from .access import may
from .aliases import refuse_a_look_alike, require_role_to_move
from .lineage import capture_git, digest_data
from .manifest_limits import check_loadable, check_reason, check_tags, check_text
from .previous import previous_chunks
from .resolve import range_numbers, shown_number, version_number
from .stat_cache import StatCache, stat_key

if TYPE_CHECKING:
    from .._contract import RegistryAPI
    from .registry import Registry

_RACE_RETRIES = 5
#: Folders never taken into a dataset.
_SKIP_DIRS = frozenset({".git", ".tether", "__pycache__", ".ipynb_checkpoints"})
#: Read size when counting the lines of a CSV file.
_BLOCK = 8 * 1024 * 1024
TABULAR_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


def audit_subject(name: str) -> str:
    """How audit events name a dataset in their model column."""
    return f"data:{name}"


# -- records -------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetVersion:
    """One immutable dataset version, with its aliases and the models trained on it."""

    name: str
    seq: int
    semver: str
    digest: str
    files_digest: str
    files: tuple[FileEntry, ...]
    tables: dict[str, dict[str, Any]]
    source: dict[str, Any]
    tags: dict[str, str]
    notes: str
    author: str
    created_at: str
    status: str
    aliases: tuple[str, ...] = ()
    used_by: tuple[dict[str, Any], ...] = ()
    bump_reasons: tuple[str, ...] = ()
    id: int = 0

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.semver}"

    @property
    def short_digest(self) -> str:
        return f"sha:{self.digest[:12]}"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        """The entry of ``path`` in this version (NotFound listing its files)."""
        return file_in(self.files, path, ref=self.ref)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetVersion:
        """The inverse of ``to_dict`` (with files), e.g. for what a server sent."""
        return cls(
            name=str(data["name"]),
            seq=int(data["seq"]),
            semver=str(data["semver"]),
            digest=str(data["digest"]).removeprefix("sha:"),
            files_digest=str(data["files_digest"]),
            files=tuple(FileEntry.from_dict(f) for f in data.get("files", [])),
            tables=dict(data.get("tables") or {}),
            source=dict(data.get("source") or {}),
            tags=dict(data.get("tags") or {}),
            notes=str(data.get("notes", "")),
            author=str(data.get("author", "")),
            created_at=str(data.get("created_at", "")),
            status=str(data.get("status", "ready")),
            aliases=tuple(data.get("aliases") or ()),
            used_by=tuple(dict(u) for u in data.get("used_by") or ()),
            bump_reasons=tuple(data.get("bump_reasons") or ()),
        )

    def to_dict(self, *, with_files: bool = True, brief_lists: bool = False,
                ) -> dict[str, Any]:
        """``brief_lists``: large chunk lists as their lengths (``FileEntry.to_dict``)."""
        data: dict[str, Any] = {
            "name": self.name,
            "ref": self.ref,
            "seq": self.seq,
            "semver": self.semver,
            "digest": f"sha:{self.digest}",
            "files_digest": self.files_digest,
            "size": self.size,
            "file_count": len(self.files),
            "tables": self.tables,
            "source": self.source,
            "tags": self.tags,
            "notes": self.notes,
            "author": self.author,
            "created_at": self.created_at,
            "status": self.status,
            "aliases": list(self.aliases),
            "used_by": [dict(u) for u in self.used_by],
        }
        if self.bump_reasons:
            data["bump_reasons"] = list(self.bump_reasons)
        if with_files:
            data["files"] = [f.to_dict(brief=brief_lists) for f in self.files]
        return data


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    created_at: str
    updated_at: str
    version_count: int = 0
    latest: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- identity --------------------------------------------------------------------


def dataset_digest(files_digest: str) -> str:
    """A dataset version's content digest (never equal to a model's over the same bytes)."""
    return digest_of({"kind": "dataset", "files": files_digest})


def require_intact(version: DatasetVersion) -> DatasetVersion:
    """``version`` if its manifest still hashes to its recorded digest; else refuse."""
    try:
        check_manifest(version.files, reserved=True)
        files_digest = manifest_digest(version.files)
    except (InvalidInput, KeyError, TypeError, ValueError, IndexError, OverflowError) as error:
        raise IntegrityError(
            f"dataset {version.ref}'s recorded manifest is unusable: {error}",
            hint="the database was changed outside Tether; restore it from a backup",
        ) from error
    digest = dataset_digest(files_digest)
    if files_digest != version.files_digest or digest != version.digest:
        raise IntegrityError(
            f"dataset {version.ref} is recorded as sha:{version.digest[:12]} but its manifest "
            f"hashes to sha:{digest[:12]}",
            hint="its manifest was changed outside Tether; nothing was read. Restore the "
            "database and run `tether audit verify`",
        )
    return version


# -- tabular facts (cheap, at add time) -----------------------------------------------


def table_facts(path: Path) -> dict[str, Any] | None:
    """Format, columns and rows of a CSV/TSV or Parquet file; None for other files.

    CSV rows are lines after the header (a quoted field spanning lines counts
    once per line); columns are the header's names (CSV has no types).
    """
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _csv_facts(path, "\t" if suffix == ".tsv" else ",")
    if suffix in (".parquet", ".pq"):
        return _parquet_facts(path)
    return None


def column_types(facts: Mapping[str, Any]) -> dict[str, str]:
    """A table's columns in file order, name -> type ('' when the format has none).

    Stored as [name, type] pairs: canonical JSON sorts object keys, and column
    order matters.
    """
    return {str(name): str(kind) for name, kind in facts.get("columns", [])}


#: A CSV header is read up to this many bytes, and kept up to this many columns: a 4 MB
#: header of two million columns took 510 MB to add and stored 18 MB of facts that every
#: lookup of the version loaded; a 200 MB file with no newline was read whole.
_HEADER_BYTES = 1 << 20
_MAX_COLUMNS = 10_000
#: ... and the names are kept only from a header line of at most this many bytes.
_HEADER_KEPT = 64 * 1024


def _csv_facts(path: Path, delimiter: str) -> dict[str, Any]:
    import csv

    with path.open("rb") as handle:
        first = handle.readline(_HEADER_BYTES)
        lines = 1 if first.endswith(b"\n") else 0
        last = first[-1:] if first else b"\n"
        while block := handle.read(_BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    if first and last != b"\n":
        lines += 1  # a last line without its newline
    whole = (first.endswith(b"\n") or len(first) < _HEADER_BYTES) and len(first) <= _HEADER_KEPT
    columns: list[list[str]] = []
    if whole:
        csv.field_size_limit(max(csv.field_size_limit(), _HEADER_BYTES))
        try:
            header = next(csv.reader([first.decode("utf-8", "replace").rstrip("\r\n")],
                                     delimiter=delimiter), [])
        except csv.Error:
            header = []  # not a header Tether can read: no columns, the rows still count
        if len(header) <= _MAX_COLUMNS:
            columns = [[name, ""] for name in header]
    return {
        "format": "tsv" if delimiter == "\t" else "csv",
        "columns": columns,
        "rows": max(lines - 1, 0),
    }


def _parquet_facts(path: Path) -> dict[str, Any] | None:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is optional
        return {"format": "parquet", "columns": [], "rows": None}
    try:
        meta = pq.ParquetFile(path)
    except Exception:  # not a Parquet file after all: no facts, still stored
        return None
    schema = meta.schema_arrow
    return {
        "format": "parquet",
        "columns": [[f.name, str(f.type)] for f in schema],
        "rows": meta.metadata.num_rows,
    }


# -- semantic versions ---------------------------------------------------------------


def required_bump(
    previous: DatasetVersion | None,
    files: Sequence[FileEntry],
    tables: Mapping[str, Mapping[str, Any]],
    metadata: Mapping[str, Any],
) -> tuple[BumpLevel, list[str]]:
    """The smallest bump from ``previous`` to the new contents, and why."""
    if previous is None:
        return BumpLevel.MAJOR, ["first version"]
    major: list[str] = []
    minor: list[str] = []
    old = {f.path: f for f in previous.files}
    new = {f.path: f for f in files}
    removed = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    changed = sorted(p for p in set(old) & set(new) if old[p].digest != new[p].digest)
    if removed:
        major.append(_some("file(s) removed", removed))
    if added:
        minor.append(_some("file(s) added", added))
    for path in changed:
        before, after = previous.tables.get(path), tables.get(path)
        if before and after:
            old_columns, new_columns = column_types(before), column_types(after)
            lost = [c for c in old_columns if c not in new_columns]
            retyped = [
                c
                for c, kind in old_columns.items()
                if c in new_columns and kind and new_columns[c] != kind
            ]
            gained = [c for c in new_columns if c not in old_columns]
            if lost:
                major.append(f"{path}: column(s) removed: {', '.join(lost)}")
            if retyped:
                major.append(f"{path}: column type(s) changed: {', '.join(retyped)}")
            if gained:
                minor.append(f"{path}: column(s) added: {', '.join(gained)}")
            rows_before, rows_after = before.get("rows"), after.get("rows")
            if rows_before is not None and rows_after is not None and rows_before != rows_after:
                minor.append(f"{path}: rows {rows_before} -> {rows_after}")
            elif not (lost or retyped or gained):
                minor.append(f"{path}: values changed")
        else:
            minor.append(f"{path} changed")
    if major:
        return BumpLevel.MAJOR, major + minor
    if minor:
        return BumpLevel.MINOR, minor
    if {"notes": previous.notes, "tags": previous.tags} != dict(metadata):
        return BumpLevel.PATCH, ["metadata only: notes/tags"]
    return BumpLevel.PATCH, ["nothing changed"]


def _some(what: str, paths: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"{len(paths)} {what}: {shown}{more}"


# -- rows and resolving --------------------------------------------------------------


def _loads(text: str | None, default: Any) -> Any:
    import json

    return json.loads(text) if text else default


def row_to_version(
    row: sa.Row[Any],
    name: str,
    alias_names: Sequence[str] = (),
    used_by: Sequence[dict[str, Any]] = (),
    records: bytes | repo.DatabaseRecords | repo.DeferredRecords | None = None,
) -> DatasetVersion:
    """The dataset version ``row`` records; ``records``: its chunk records, read apart
    (``repository.stored_records``), for one version resolved for a load."""
    return DatasetVersion(
        id=row.id,
        name=name,
        seq=row.seq,
        semver=row.semver,
        digest=row.digest,
        files_digest=row.files_digest,
        files=repo.manifest_files(row.manifest, f"dataset {name}@{row.semver}",
                                  getattr(row, "chunk_records", None) if records is None
                                  else records,
                                  in_file=records is not None),
        tables=_loads(row.tables, {}),
        source=_loads(row.source, {}),
        tags=_loads(row.tags, {}),
        notes=row.notes,
        author=row.author,
        created_at=row.created_at,
        status=row.status,
        aliases=tuple(alias_names),
        used_by=tuple(used_by),
    )


def dataset_id(conn: sa.Connection, name: str) -> int | None:
    query = sa.select(datasets.c.id).where(datasets.c.name == name, datasets.c.deleted.is_(False))
    return conn.execute(query).scalar()


def require_dataset(conn: sa.Connection, name: str) -> int:
    did = dataset_id(conn, name)
    if did is None:
        names = list(
            conn.execute(
                sa.select(datasets.c.name)
                .where(datasets.c.deleted.is_(False))
                .order_by(datasets.c.name)
                .limit(1000)
            ).scalars()
        )
        raise UnknownName(f"no dataset named {name!r}", kind="datasets", names=names,
                          hint_tail=" (add one with `tether data add PATH NAME`)")
    return did


def _rows(conn: sa.Connection, did: int, *, records: bool = True,
          listed: bool = False) -> list[sa.Row[Any]]:
    """The dataset's live versions by sequence number; ``records=False``: without their
    chunk records (40 MB a million chunks each), for choosing one; ``listed``: with
    ``repo.listed_columns`` instead, for a list of versions."""
    columns = (repo.listed_columns(dataset_versions) if listed
               else repo.version_columns(records=records, table=dataset_versions))
    query = (
        sa.select(*columns)
        .where(dataset_versions.c.dataset_id == did, dataset_versions.c.status != "deleted")
        .order_by(dataset_versions.c.seq)
    )
    return list(conn.execute(query))


def _alias_targets(conn: sa.Connection, did: int) -> dict[str, str]:
    query = (
        sa.select(dataset_aliases.c.name, dataset_versions.c.semver)
        .join(dataset_versions, dataset_versions.c.id == dataset_aliases.c.version_id)
        .where(dataset_aliases.c.dataset_id == did)
        .order_by(dataset_aliases.c.name)
    )
    return {row.name: row.semver for row in conn.execute(query)}


def _aliases_by_version(conn: sa.Connection, did: int) -> dict[int, list[str]]:
    result: dict[int, list[str]] = {}
    query = (
        sa.select(dataset_aliases.c.name, dataset_aliases.c.version_id)
        .where(dataset_aliases.c.dataset_id == did)
        .order_by(dataset_aliases.c.name)
    )
    for row in conn.execute(query):
        result.setdefault(row.version_id, []).append(row.name)
    return result


def resolve_row(conn: sa.Connection, ref: Reference) -> tuple[int, sa.Row[Any]]:
    """The dataset id and version row ``ref`` names (same grammar as model references)."""
    did = require_dataset(conn, ref.name)
    rows = _rows(conn, did, records=False)  # every version's lists were read to pick one

    def missing(what: str) -> NotFound:
        newest = ", ".join(f"{r.semver} (#{r.seq})" for r in rows[-8:]) or "no versions"
        aliases = ", ".join(f"{a} -> {v}" for a, v in _alias_targets(conn, did).items())
        return NotFound(
            f"dataset {ref.name} has no {what}",
            hint=f"versions: {newest}; aliases: {aliases or 'no aliases'}",
        )

    if ref.kind is SelectorKind.ALIAS:
        alias = conn.execute(
            sa.select(dataset_aliases.c.version_id).where(
                dataset_aliases.c.dataset_id == did, dataset_aliases.c.name == ref.value
            )
        ).scalar()
        found = [r for r in rows if r.id == alias]
        if not found:
            raise missing(f"alias {ref.value!r}")
        return did, found[0]
    if not rows:
        raise missing("versions")
    if ref.kind is SelectorKind.LATEST:
        return did, rows[-1]
    if ref.kind is SelectorKind.SEQUENCE:
        seq = version_number(ref.value)
        found = [r for r in rows if r.seq == seq]
        what = f"version number {shown_number(ref.value)}"
    elif ref.kind is SelectorKind.SEMVER:
        found = [r for r in rows if r.semver == ref.value]
        what = f"version {ref.value}"
    elif ref.kind is SelectorKind.SEMVER_RANGE:
        parts = range_numbers(ref.value)
        found = [] if parts is None else sorted(
            (r for r in rows if [r.major, r.minor, r.patch][: len(parts)] == parts),
            key=lambda r: (r.major, r.minor, r.patch),
        )[-1:]
        what = f"version matching ~{shown_number(ref.value)}"
    else:
        found = [r for r in rows if r.digest.startswith(ref.value)]
        what = f"version with digest sha:{ref.value}"
        if len(found) > 1 and len({r.digest for r in found}) == 1:
            found = [max(found, key=lambda r: r.seq)]  # the same content: the newest
        if len(found) > 1:
            raise AmbiguousReference(
                f"sha:{ref.value} matches {len(found)} versions of dataset {ref.name}",
                hint="give more digits of the digest",
            )
    if not found:
        raise missing(what)
    return did, found[0]


def resolve(conn: sa.Connection, ref: str | Reference) -> DatasetVersion:
    """The dataset version ``ref`` names, re-hashed to its digest, with the models using it."""
    parsed = parse_reference(ref) if isinstance(ref, str) else ref
    did, row = resolve_row(conn, parsed)
    # As a model version's: its large lists read a file at a time into scratch files.
    version = row_to_version(
        row,
        parsed.name,
        _aliases_by_version(conn, did).get(row.id, []),
        models_using(conn, row.id),
        records=repo.stored_records(conn, dataset_versions, row.id),
    )
    return require_intact(version)


# -- use cases -------------------------------------------------------------------------


def _files_under(path: Path) -> tuple[Path, list[str]]:
    """(root, relative paths) of what ``path`` (a file or a folder) holds."""
    if path.is_file():
        return path.parent, [path.name]
    if not path.is_dir():
        raise InvalidInput(f"{path} does not exist", hint="give a file or a folder")
    found = []
    skipped = []
    for item in sorted(path.rglob("*")):
        rel = item.relative_to(path)
        if any(part.lower() in _SKIP_DIRS for part in rel.parts):
            continue
        if item.is_symlink() or not (item.is_file() or item.is_dir()):
            # A link's target is not the folder's to give: a repository committing
            # data/leak.txt -> ~/.ssh/id_ed25519 had the user's push upload the key.
            # (rglob does not walk into a linked folder: nothing under one is listed.)
            # Nor is a pipe's or a device's endless stream. Said, not silently dropped.
            skipped.append(rel.as_posix())
            continue
        if not item.is_file():
            continue
        if item.suffix == ".tether" and item.name != ".tether":
            continue  # pointer files describe data, they are not data
        name = rel.as_posix()
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            # Undecodable bytes in a name (Python keeps them as surrogates) ended the add
            # in a traceback from the stat cache (a review); a manifest names files in UTF-8.
            raise InvalidInput(
                f"{os.fsencode(item)!r} is not named in UTF-8: a dataset's file names are",
                hint="rename the file (convmv converts whole trees), or move it out") from None
        check_relative_path(name, what="file")  # before its bytes are chunked
        found.append(name)
    if skipped:
        shown = ", ".join(repr(name) for name in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warn_caller(f"{path}: not added, as a dataset holds only regular files (not links, "
                    f"pipes or devices): {shown}{more}", LeftOut)
    if not found:
        raise InvalidInput(f"{path} holds no files", hint="a dataset needs at least one file")
    return path, found


def prepare_dataset(
    store: Any, path: str | Path, *, author: str, notes: str = "",
    tags: Mapping[str, str] | None = None, progress: bool = False,
    newest: Callable[[], Sequence[FileEntry]] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Chunk a file or folder into ``store``: (values to commit, the ingest's pin).

    The same code runs in the embedded registry and in a remote client (whose
    store uploads through the server's blob gateway); only the commit differs.
    ``newest()``: the files of the dataset's newest version, asked for only when
    a large file changed: cutting follows their chunks (see _store/following.py).
    """
    source_path = Path(path).expanduser().absolute()
    root, paths = _files_under(source_path)
    tables: dict[str, Any] = {}
    # Files whose stat has not changed since they were stored are not read again.
    cache = StatCache.for_store(store)
    unchanged: dict[str, FileEntry] = {}
    for rel in paths:
        hit = cache.lookup(root / rel, rel) if cache is not None else None
        if hit is not None:
            unchanged[rel] = hit[0]
            if hit[1] is not None:
                tables[rel] = hit[1]
    if unchanged:  # only while the store still holds their chunks
        gone = store.missing_of(e.chunks for e in unchanged.values())
        for rel in [r for r, e in unchanged.items()
                    if gone and any(d in gone for d in e.chunks.digests())]:
            del unchanged[rel]
            tables.pop(rel, None)
    todo = [rel for rel in paths if rel not in unchanged]
    # Each file's stat before it is read: remembered with what it was cut into only if
    # still the same after (a file rewritten while the ingest ran was remembered with
    # its new stat and its old bytes, registered again at every later add: a review).
    seen = {rel: stat_key(root / rel) for rel in todo} if cache is not None else {}
    for rel in todo:
        facts = table_facts(root / rel)
        if facts is not None:
            tables[rel] = facts
    report = store.ingest(root, todo, progress=progress,
                          pin_also=list(unchanged.values()),
                          previous=previous_chunks(root, todo, newest, renamed=False)
                          if newest is not None else {})
    if cache is not None:
        for entry in report.files:
            cache.remember(root / entry.path, entry, tables.get(entry.path),
                           seen=seen.get(entry.path))
        cache.close()
    files = tuple(sorted([*report.files, *unchanged.values()], key=lambda f: f.path))
    values = {
        "files": files,
        "tables": tables,
        "source": {
            "path": str(source_path),
            "kind": "file" if source_path.is_file() else "folder",
            "git": capture_git(source_path if source_path.is_dir() else source_path.parent),
            "stored_bytes": report.stored_bytes,
            "new_chunks": report.new_chunks,
            "reused_chunks": report.reused_chunks,
            "unchanged_files": len(unchanged),
        },
        "tags": {str(k): str(v) for k, v in (tags or {}).items()},
        "notes": notes,
        "author": author,
    }
    return values, report.pin


def seal_dataset(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with their manifest digest and content digest (re)computed here."""
    check_manifest(values["files"], reserved=True)
    check_one_file_each(f["path"] if isinstance(f, dict) else f.path for f in values["files"])
    files_digest = manifest_digest(values["files"])
    return {**values, "files_digest": files_digest, "digest": dataset_digest(files_digest)}


def add_dataset(
    registry: Registry,
    path: str | Path,
    name: str,
    *,
    notes: str = "",
    bump: str | None = None,
    tags: Mapping[str, str] | None = None,
    progress: bool = False,
) -> DatasetVersion:
    """Store a file or folder as the next version of dataset ``name``."""
    validate_model_name(name)
    values, pin = prepare_dataset(registry.store, path, author=registry.actor, notes=notes,
                                  tags=tags, progress=progress,
                                  newest=lambda: registry.get_dataset(name).files)
    try:
        return commit_dataset(registry, name, values, bump)
    finally:
        registry.store.release_pin(pin)  # committed: the version keeps its chunks alive


def commit_dataset(
    registry: Registry, name: str, values: dict[str, Any], bump: str | None
) -> DatasetVersion:
    """Number and record a dataset version whose bytes are already in the store (checked:
    a local add takes unchanged files' chunks from its stat cache, and a gc in another
    process could remove them before the ingest pinned them: a version was recorded
    whose bytes were gone, a review)."""
    validate_model_name(name)
    check_tags(values.get("tags"), what="tags")
    check_text(values.get("notes"), "the notes")
    missing = registry.store.missing_of(f.chunks for f in values["files"])
    if missing:
        raise MissingChunks(
            f"{len(missing)} chunk(s) of this dataset version are not in the store",
            hint="run it again (files whose chunks are gone are read again; a client "
            "uploads them); nothing was registered")
    values = seal_dataset(values)  # never trust a digest computed elsewhere
    for attempt in range(_RACE_RETRIES):
        try:
            return _insert(registry, name, values, bump)
        except sa.exc.IntegrityError as error:
            if attempt == _RACE_RETRIES - 1:
                raise Conflict(
                    f"could not add dataset {name}: other writers kept winning the race",
                    hint="retry; the bytes are stored, so a retry is cheap",
                ) from error
    raise AssertionError("unreachable")


# -- a remote client's commit (the server validates, re-seals and checks the bytes) -------

_REMOTE_FIELDS: dict[str, type] = {
    "manifest": list, "tables": dict, "source": dict, "tags": dict, "notes": str,
}
_SOURCE_NUMBERS = ("stored_bytes", "new_chunks", "reused_chunks")


def _remote_values(values: Any) -> dict[str, Any]:
    """What a client sent, checked field by field; InvalidInput naming the bad one."""
    if not isinstance(values, dict):
        raise InvalidInput("values must be a JSON object")
    unknown = set(values) - set(_REMOTE_FIELDS) - {"author", "digest", "files_digest"}
    if unknown:
        raise UnknownField(f"unknown field(s) in values: {', '.join(sorted(unknown))}",
                           hint=f"fields: {', '.join(sorted(_REMOTE_FIELDS))}")
    for key, kind in _REMOTE_FIELDS.items():
        if key not in values:
            raise InvalidInput(f"values.{key} is missing")
        if not isinstance(values[key], kind):
            raise InvalidInput(f"values.{key} has the wrong type")
    files = []
    for raw in values["manifest"]:
        if isinstance(raw, FileEntry):  # read from a packed body (server/packed.py)
            files.append(raw)
            continue
        if not isinstance(raw, dict):
            raise InvalidInput("each manifest entry must be an object")
        try:
            files.append(FileEntry.from_dict(raw))
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise InvalidInput(f"manifest entry {raw.get('path')!r} is malformed: {error}") \
                from error
    if not files:
        raise InvalidInput("a dataset version needs at least one file")
    for entry in files:  # a ChunkList's chunks are digests and sizes already
        check_file_digest(entry)
    check_manifest(files, reserved=True)  # paths inside, no duplicates, sizes add up
    check_one_file_each(f.path for f in files)  # new versions only: old ones still read
    check_loadable(files)  # paths a file system holds; no chunks is no bytes
    paths = {f.path for f in files}
    for path, facts in values["tables"].items():
        columns = facts.get("columns") if isinstance(facts, dict) else None
        rows = facts.get("rows") if isinstance(facts, dict) else None
        if (
            path not in paths
            or not isinstance(facts.get("format"), str)  # type: ignore[union-attr]
            or not isinstance(columns, list)
            or not all(isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c)
                       for c in columns)
            or not (rows is None or (isinstance(rows, int) and not isinstance(rows, bool)))
        ):
            raise InvalidInput(f"values.tables.{path} is malformed",
                               hint="a file of the manifest: {format, columns: [[name, type]], "
                               "rows}")
    for key, value in values["tags"].items():
        if not isinstance(value, str):
            raise InvalidInput(f"values.tags.{key} must be a string")
    source = dict(values["source"])
    for key in _SOURCE_NUMBERS:
        if not isinstance(source.get(key, 0), int):
            raise InvalidInput(f"values.source.{key} must be an integer")
    return {
        "files": tuple(sorted(files, key=lambda f: f.path)),
        "tables": values["tables"],
        "source": source,
        "tags": values["tags"],
        "notes": values["notes"],
    }


def commit_remote_dataset(
    registry: Registry, name: str, values: Any, bump: str | None, principal: str
) -> DatasetVersion:
    """Commit the dataset version a remote client chunked and uploaded.

    Checked like a remote model version: every field validated, the digests
    recomputed here (whatever the client sent is ignored), every chunk present
    in the store before anything is numbered, the author taken from the token.
    Adding the same bytes and metadata again returns the version already
    registered, so a retry after a lost answer never makes a second one.
    """
    validate_model_name(name)
    checked = _remote_values(values)
    checked["author"] = principal
    return commit_dataset(registry, name, checked, bump)


def _ensure_dataset(conn: sa.Connection, name: str) -> int:
    existing = conn.execute(
        sa.select(datasets.c.id)
        .where(datasets.c.name == name, datasets.c.deleted.is_(False))
        .with_for_update()
    ).scalar()
    if existing is not None:
        return int(existing)
    now = now_iso()
    result = conn.execute(
        datasets.insert().values(name=name, description="", created_at=now, updated_at=now)
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _insert(
    registry: Registry, name: str, values: dict[str, Any], bump: str | None
) -> DatasetVersion:
    metadata = {"notes": values["notes"], "tags": values["tags"]}
    with registry.write() as conn:
        did = _ensure_dataset(conn, name)
        rows = _rows(conn, did)
        for row in rows:
            if row.digest == values["digest"] and {
                "notes": row.notes,
                "tags": _loads(row.tags, {}),
            } == metadata:
                return row_to_version(
                    row, name, _aliases_by_version(conn, did).get(row.id, []),
                    models_using(conn, row.id),
                )
        previous = row_to_version(rows[-1], name) if rows else None
        level, reasons = required_bump(previous, values["files"], values["tables"], metadata)
        highest = max((SemVer.parse(r.semver) for r in rows), default=None)
        semver = resolve_bump(highest, level, bump, reasons)
        seq = max((r.seq for r in rows), default=0) + 1
        manifest, records = repo.stored_parts(values["files"])
        new_id = repo.insert_with_records(
            conn, dataset_versions, dict(
                dataset_id=did,
                seq=seq,
                semver=str(semver),
                major=semver.major,
                minor=semver.minor,
                patch=semver.patch,
                digest=values["digest"],
                files_digest=values["files_digest"],
                manifest=manifest,
                tables=canonical_json(values["tables"]),
                source=canonical_json(values["source"]),
                tags=canonical_json(values["tags"]),
                notes=values["notes"],
                author=values["author"],
                created_at=now_iso(),
                status="ready",
            ), records,
        )
        conn.execute(
            datasets.update().where(datasets.c.id == did).values(updated_at=now_iso())
        )
        append_event(
            conn,
            actor=values["author"],
            action="dataset.added",
            model=audit_subject(name),
            subject=f"{name}@{semver}",
            after={"seq": seq, "semver": str(semver), "digest": f"sha:{values['digest']}"},
            details={
                "bump_reasons": reasons,
                "files": len(values["files"]),
                "bytes": sum(f.size for f in values["files"]),
                "stored_bytes": values["source"].get("stored_bytes"),
            },
        )
        row = conn.execute(
            sa.select(dataset_versions).where(dataset_versions.c.id == new_id)
        ).one()
        created = row_to_version(row, name)
        return replace(created, bump_reasons=tuple(reasons))


def list_datasets(registry: Registry) -> list[DatasetInfo]:
    with registry.read() as conn:
        found = []
        for row in conn.execute(
            sa.select(datasets).where(datasets.c.deleted.is_(False)).order_by(datasets.c.name)
        ):
            count, latest = _count_and_latest(conn, row.id)
            found.append(
                DatasetInfo(
                    name=row.name,
                    created_at=row.created_at,
                    updated_at=row.updated_at,
                    version_count=count,
                    latest=latest,
                    aliases=_alias_targets(conn, row.id),
                )
            )
        return found


def _count_and_latest(conn: sa.Connection, did: int) -> tuple[int, str | None]:
    """How many live versions the dataset has, and the newest one's semver: two small
    queries, where every version's whole manifest and chunk records were read to count
    them (about 4 MB a version of a 20,000-file dataset: a review)."""
    live = sa.and_(dataset_versions.c.dataset_id == did, dataset_versions.c.status != "deleted")
    count = conn.execute(
        sa.select(sa.func.count()).select_from(dataset_versions).where(live)).scalar_one()
    latest = conn.execute(
        sa.select(dataset_versions.c.semver).where(live)
        .order_by(dataset_versions.c.seq.desc()).limit(1)).scalar()
    return int(count), latest


def dataset_versions_of(registry: Registry, name: str) -> list[DatasetVersion]:
    validate_model_name(name)
    with registry.read() as conn:
        did = require_dataset(conn, name)
        return _listed(conn, name, did, _rows(conn, did, listed=True))


def dataset_versions_page(registry: Registry, name: str, *, after: int = 0,
                          ) -> tuple[list[DatasetVersion], int | None]:
    """One page of ``dataset_versions_of`` (``repo.version_page``)."""
    validate_model_name(name)
    with registry.read() as conn:
        did = require_dataset(conn, name)
        rows, next_after = repo.version_page(conn, dataset_versions,
                                             dataset_versions.c.dataset_id == did, after=after)
        return _listed(conn, name, did, rows), next_after


def _listed(conn: sa.Connection, name: str, did: int, rows: Iterable[sa.Row[Any]],
            ) -> list[DatasetVersion]:
    """``rows`` of dataset ``name`` (id ``did``), selected with ``repo.listed_columns``,
    as versions with their aliases, each one's chunk records read when used."""
    by_version = _aliases_by_version(conn, did)
    return [row_to_version(r, name, by_version.get(r.id, []),
                           records=repo.listed_records(conn, dataset_versions, r)) for r in rows]


def get_dataset(registry: Registry, ref: str) -> DatasetVersion:
    with registry.read() as conn:
        return resolve(conn, ref)


def promote_dataset(
    registry: Registry, ref: str, alias: str, *, reason: str = ""
) -> AliasMove:
    """Point ``NAME@alias`` at ``ref``: one alias row, one move, one audit event."""
    check_reason(reason, "the reason")
    validate_alias_name(alias)
    parsed = parse_reference(ref)
    actor = registry.actor
    with registry.write() as conn:
        # Who may move which alias, first: the rule model aliases follow (approver for a
        # protected alias, else contributor), with grants scoped by the dataset's name.
        # Resolving first told anyone the dataset's versions and aliases (a review).
        require_role_to_move(conn, actor, parsed.name, alias)
        did, row = resolve_row(conn, parsed)
        current = conn.execute(
            sa.select(dataset_aliases).where(
                dataset_aliases.c.dataset_id == did, dataset_aliases.c.name == alias
            )
        ).first()
        before = None
        if current is not None:
            before = conn.execute(
                sa.select(dataset_versions.c.semver).where(
                    dataset_versions.c.id == current.version_id
                )
            ).scalar()
            if current.version_id == row.id:
                return AliasMove(parsed.name, alias, row.semver, before, "unchanged", actor,
                                 reason, current.updated_at)
        now = now_iso()
        if current is None:
            refuse_a_look_alike(conn, alias)  # as a model's: 'Production' beside 'production'
            conn.execute(
                dataset_aliases.insert().values(
                    dataset_id=did, name=alias, version_id=row.id, updated_at=now,
                    updated_by=actor, generation=1,
                )
            )
        else:
            conn.execute(
                dataset_aliases.update()
                .where(dataset_aliases.c.dataset_id == did, dataset_aliases.c.name == alias)
                .values(version_id=row.id, updated_at=now, updated_by=actor,
                        generation=current.generation + 1)
            )
        conn.execute(
            dataset_alias_moves.insert().values(
                dataset_id=did, alias=alias, version_id=row.id,
                previous_version_id=current.version_id if current is not None else None,
                action="set", actor=actor, reason=reason, moved_at=now,
            )
        )
        event = append_event(
            conn,
            actor=actor,
            action="dataset.alias.set",
            model=audit_subject(parsed.name),
            subject=f"{parsed.name}@{alias}",
            before=before,
            after=row.semver,
            details={"digest": f"sha:{row.digest}", "reason": reason},
        )
        return AliasMove(parsed.name, alias, row.semver, before, "set", actor, reason, event.ts)


# -- lineage ---------------------------------------------------------------------------------


def _as_dataset_ref(
    registry: RegistryAPI, value: Any, dataset_names: Callable[[], set[str]]
) -> DatasetVersion | None:
    """The dataset version ``value`` names, if it is a dataset reference; else None.

    A string is a dataset reference when it has an ``@``, is not an existing
    path, and its name is a dataset of this registry. Asked through the
    registry's own interface, so that it works the same through a server (it
    used ``registry.read()``, which a server's client does not have: logging
    with ``data={"train": "ds@2"}`` through a server failed with a traceback).
    """
    if isinstance(value, DatasetVersion):
        return registry.get_dataset(f"{value.name}@sha:{value.digest}")
    if not isinstance(value, str) or "@" not in value or Path(value).exists():
        return None
    try:
        parsed = parse_reference(value)
    except InvalidReference:
        return None
    try:
        return registry.get_dataset(value)
    except NotFound:
        if parsed.name in dataset_names():
            raise  # a dataset of this registry, and no such version of it
        return None


def data_entry(version: DatasetVersion) -> dict[str, Any]:
    """What a model version records about a dataset version it was trained on."""
    return {
        "dataset": version.name,
        "version": version.semver,
        "seq": version.seq,
        "ref": version.ref,
        "digest": version.digest,
        "size": version.size,
        "files": len(version.files),
    }


def data_inputs(registry: RegistryAPI, data: Any) -> dict[str, dict[str, Any]]:
    """``log_model``'s ``data=``: dataset references become links, the rest digests.

    ``{"train": "ds@2"}`` (or a DatasetVersion) records the dataset version;
    a single reference or a list of them is named by the dataset's name. Paths,
    arrays and frames are digested as before.
    """
    if data is None:
        return {}
    single = isinstance(data, (str, DatasetVersion))
    items: list[tuple[str | None, Any]]
    if single:
        items = [(None, data)]
    elif isinstance(data, Mapping):
        items = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, Sequence) and not isinstance(data, (bytes, bytearray)):
        items = [(None, v) for v in data]
    else:
        return digest_data(data)
    resolved: dict[str, dict[str, Any]] = {}
    rest: Any
    names: set[str] | None = None

    def dataset_names() -> set[str]:
        nonlocal names
        if names is None:
            names = {info.name for info in registry.list_datasets()}
        return names

    found = [(key, value, _as_dataset_ref(registry, value, dataset_names))
             for key, value in items]
    if not any(version for _, _, version in found):
        return digest_data(data)
    if isinstance(data, Mapping):
        rest = {key: value for key, value, version in found if version is None}
    else:
        rest = [value for _, value, version in found if version is None]
    for key, _value, version in found:
        if version is not None:
            resolved[key or version.name] = data_entry(version)
    others = digest_data(rest) if rest else {}
    clash = set(resolved) & set(others)
    if clash:
        raise InvalidInput(f"data names {', '.join(sorted(clash))} twice",
                           hint='name each input: data={"train": "ds@2", "test": "test.csv"}')
    return {**others, **resolved}


def read_inputs(
    registry: RegistryAPI, declared: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Links for the dataset versions this process read so far (see ``reads``).

    Returns the entries to add beside ``declared``. A read version ``declared``
    already names is not added twice; one this registry does not hold (the same
    name and digest) is skipped, with a warning the first time: it was read from
    another registry. Each entry is named by its dataset (``name@version`` when
    that name is taken) and says ``"via": "read"`` (a file was opened) or
    ``"use_dataset"``.
    """
    pending = reads.noted()
    if not pending:
        return {}
    have = {(str(e.get("dataset")), str(e.get("digest"))) for e in declared.values()}
    taken = set(declared)
    added: dict[str, dict[str, Any]] = {}
    for read in pending:
        if (read.name, read.digest) in have:
            continue
        here = find_by_digest(registry, read.name, read.digest)
        if here is None:
            if reads.first_warning(registry.describe(), read):
                warn_caller(
                    f"{read.ref} (sha:{read.digest[:12]}) was read in this process but this "
                    f"registry does not hold it (read from another registry?); it is not "
                    f"recorded as this model's data",
                    reads.UnrecordedReadWarning,
                )
            continue
        role = here.name if here.name not in taken else f"{here.name}@{here.semver}"
        taken.add(role)
        have.add((here.name, here.digest))
        added[role] = {**data_entry(here), "via": read.via}
    return added


def find_by_digest(registry: RegistryAPI, name: str, digest: str) -> DatasetVersion | None:
    """Dataset ``name``'s version whose content digest is ``digest``, or None.

    That the answer is the version asked for is checked where every lookup goes: the
    embedded registry resolves the digest itself, a server's client refuses another
    version (``remote._answers``).
    """
    try:
        return registry.get_dataset(f"{name}@sha:{digest}")
    except NotFound:
        return None


def record_links(registry: Registry, version: ModelVersion) -> None:
    """Index the dataset versions ``version`` records, for the reverse look-up (idempotent)."""
    wanted = {role: entry for role, entry in version.data.items() if entry.get("dataset")}
    # Only datasets the logger may read: a link shows the model on the dataset's page (and
    # in its lineage), so naming a dataset one cannot see put a model on it.
    wanted = {role: entry for role, entry in wanted.items()
              if may(registry, "reader", str(entry["dataset"]))}
    if not wanted or not version.id:
        return
    with registry.write() as conn:
        existing = set(
            conn.execute(
                sa.select(dataset_links.c.role).where(
                    dataset_links.c.model_version_id == version.id
                )
            ).scalars()
        )
        for role, entry in wanted.items():
            if role in existing:
                continue
            did = dataset_id(conn, str(entry["dataset"]))
            if did is None:
                continue
            target = conn.execute(
                sa.select(dataset_versions.c.id).where(
                    dataset_versions.c.dataset_id == did,
                    dataset_versions.c.digest == entry["digest"],
                )
            ).scalar()
            if target is None:
                continue
            with contextlib.suppress(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(
                    dataset_links.insert().values(
                        model_version_id=version.id,
                        dataset_version_id=target,
                        role=role,
                        created_at=now_iso(),
                    )
                )


def models_using(conn: sa.Connection, dataset_version_id: int) -> list[dict[str, Any]]:
    """The model versions trained on one dataset version (through ``dataset_links``)."""
    query = (
        sa.select(
            models.c.name,
            versions.c.semver,
            versions.c.seq,
            versions.c.digest,
            versions.c.status,
            dataset_links.c.role,
        )
        .join(versions, versions.c.id == dataset_links.c.model_version_id)
        .join(models, models.c.id == versions.c.model_id)
        .where(dataset_links.c.dataset_version_id == dataset_version_id)
        .order_by(models.c.name, versions.c.seq)
    )
    return [
        {
            "model": row.name,
            "ref": f"{row.name}@{row.semver}",
            "seq": row.seq,
            "digest": f"sha:{row.digest}",
            "role": row.role,
            "status": row.status,
        }
        for row in conn.execute(query)
    ]


# -- retention -----------------------------------------------------------------------


def live_files(conn: sa.Connection) -> Iterator[FileEntry]:
    """Every file of every dataset version gc must keep (all that are not deleted), read
    a few rows at a time (see ``repo.version_files``)."""
    query = sa.select(dataset_versions.c.id, dataset_versions.c.manifest).where(
        dataset_versions.c.status != "deleted")
    yield from repo.streamed_files(conn, dataset_versions, query, lambda row: False,
                                   lambda row: "a dataset version")

