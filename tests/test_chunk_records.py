"""Large files' chunk lists are stored as packed records beside the manifest.

A version row keeps the chunk list of a file of many chunks in its binary
``chunk_records`` column (repository.stored_parts), not as JSON in the
manifest. The identity digest does not change; what the database holds is
still hostile until it hashes to that digest; rows written in the older forms
(JSON lists, or the REST API's base64 string) still read.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tether import Registry
from tether import _packed_manifest as packed
from tether._errors import IntegrityError
from tether._identity import require_intact
from tether._metadata import repository as repo
from tether._store import base

LISTED = 8  # chunk lists longer than this go to chunk_records in these tests


@pytest.fixture(autouse=True)
def _few_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "LISTED_CHUNKS", LISTED)
    monkeypatch.setattr(base, "LISTED_CHUNKS", LISTED)


def _model(tmp_path: Path, name: str = "m") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(3 << 20))  # ~48 chunks at 64 KiB
    (folder / "small.txt").write_text("tiny")
    return folder


def _raw_row(registry: Registry, version_id: int) -> Any:
    with registry.read() as conn:
        return repo.version_by_id(conn, version_id)


def _update(registry: Registry, version_id: int, **values: Any) -> None:
    with registry.engine.begin() as conn:  # the attacker writes the database directly
        conn.execute(sa.text("UPDATE versions SET " + ", ".join(f"{k} = :{k}" for k in values)
                             + " WHERE id = :id"), {**values, "id": version_id})


def test_a_large_files_chunks_are_stored_as_records_and_read_back(
        any_registry: Registry, tmp_path: Path) -> None:
    registry = any_registry
    version = registry.log_model(str(_model(tmp_path)), "m", flavor="files")
    big = version.file("weights.bin")
    assert len(big.chunks) > LISTED
    row = _raw_row(registry, version.id)
    manifest = {f["path"]: f for f in json.loads(row.manifest)}
    assert manifest["weights.bin"]["stored_chunks"] == [0, len(big.chunks)]
    assert "chunks" not in manifest["weights.bin"] and "chunks" in manifest["small.txt"]
    assert bytes(row.chunk_records) == big.chunks.records
    again = registry.get(version.ref)
    assert again.files == version.files and require_intact(again) is again
    out = registry.download(version.ref, tmp_path / "out", progress=False)
    assert (out / "weights.bin").read_bytes() == (tmp_path / "m" / "weights.bin").read_bytes()


def test_rows_in_the_older_forms_still_read(registry: Registry, tmp_path: Path) -> None:
    version = registry.log_model(str(_model(tmp_path)), "m", flavor="files")
    listed = [{"path": f.path, "size": f.size, "digest": f.digest,
               "chunks": [[c.digest, c.size] for c in f.chunks]} for f in version.files]
    packed = [f.to_dict() for f in version.files]  # a base64 string past LISTED
    assert any(isinstance(f["chunks"], str) for f in packed)
    for manifest in (listed, packed):
        _update(registry, version.id, manifest=json.dumps(manifest), chunk_records=None)
        assert registry.get(version.ref).files == version.files
        assert registry.verify(version.ref) == []


@pytest.fixture(params=["fetched", "blob"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How a resolved version's records are read: fetched as a column, or (``blob``: a
    list past chunklist.SPILL_BYTES) a range at a time into scratch files."""
    from tether._store import chunklist

    if request.param == "blob":
        monkeypatch.setattr(chunklist, "SPILL_BYTES", 8 * chunklist.RECORD_SIZE)
    return str(request.param)


def test_changed_chunk_records_are_refused(any_registry: Registry, tmp_path: Path,
                                           read_path: str) -> None:
    version = any_registry.log_model(str(_model(tmp_path)), "m", flavor="files")
    other = any_registry.log_model(str(_model(tmp_path, "other")), "other", flavor="files")
    original = _raw_row(any_registry, version.id)
    records = bytearray(original.chunk_records)

    # The unsafe way: a reader that trusts the column reads another model's bytes.
    evil = _raw_row(any_registry, other.id)
    _update(any_registry, version.id, manifest=evil.manifest, chunk_records=evil.chunk_records)
    row = _raw_row(any_registry, version.id)
    trusted = repo.manifest_files(row.manifest, "m", row.chunk_records)
    assert {f.path: f.chunks for f in trusted}["weights.bin"] == \
        other.file("weights.bin").chunks
    # Tether re-hashes what the row holds before a byte is read.
    with pytest.raises(IntegrityError, match="hashes to"):
        any_registry.load(version.ref)
    with pytest.raises(IntegrityError, match="hashes to"):
        any_registry.download(version.ref, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

    records[5] ^= 1  # one bit of one digest
    _update(any_registry, version.id, manifest=original.manifest, chunk_records=bytes(records))
    with pytest.raises(IntegrityError, match="hashes to"):
        any_registry.load(version.ref)

    _update(any_registry, version.id, chunk_records=bytes(records[:-40]))  # one chunk short
    with pytest.raises(IntegrityError, match="unusable"):
        any_registry.get(version.ref)
    _update(any_registry, version.id, chunk_records=b"\x00" * 7)  # not records at all
    with pytest.raises(IntegrityError, match="unusable"):
        any_registry.get(version.ref)


@pytest.mark.parametrize("stored", [
    "[Infinity, 1]", "[0, 1e400]", '["0", 1]', "[true, 1]", "[-1, 2]", "[0, 0]", "[1, 1]",
    "[0.0, 1]", "[0]", "null"])
def test_hostile_record_ranges_are_refused(registry: Registry, tmp_path: Path,
                                           stored: str) -> None:
    version = registry.log_model(str(_model(tmp_path)), "m", flavor="files")
    row = _raw_row(registry, version.id)
    manifest = row.manifest.replace(
        f'"stored_chunks":[0,{len(version.file("weights.bin").chunks)}]',
        f'"stored_chunks":{stored}')
    assert manifest != row.manifest
    _update(registry, version.id, manifest=manifest)
    with pytest.raises(IntegrityError, match="unusable"):
        registry.get(version.ref)


def test_every_record_must_be_named_once(any_registry: Registry, tmp_path: Path,
                                         read_path: str) -> None:
    """Ranges must tile the column: overlapping ones would make a reader copy it again
    and again before the digest check (memory as the attack)."""
    version = any_registry.log_model(str(_model(tmp_path)), "m", flavor="files")
    row = _raw_row(any_registry, version.id)
    entries = json.loads(row.manifest)
    big = next(e for e in entries if "stored_chunks" in e)
    copies = [{**big, "path": f"copy{i}.bin"} for i in range(5)]  # all the same range
    _update(any_registry, version.id, manifest=json.dumps([*entries, *copies]))
    with pytest.raises(IntegrityError, match="unusable"):
        any_registry.get(version.ref)
    _update(any_registry, version.id, manifest=row.manifest,
            chunk_records=bytes(row.chunk_records) + bytes(40))  # one record nobody names
    with pytest.raises(IntegrityError, match="unusable"):
        any_registry.get(version.ref)
    _update(any_registry, version.id, chunk_records=bytes(row.chunk_records))
    assert any_registry.get(version.ref).files == version.files


def test_a_local_log_never_encodes_its_chunk_lists_as_text(
        registry: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """``log_model`` commits its values as they are (``VersionValues.checked``): the chunk
    list of a large file was encoded as base64 text and decoded again on the way (60 MB
    of text and a second 45 MB list for a 70 GB file), and the commit read back the
    chunk records it had just written."""
    from tether._store import ingest
    from tether._store.chunklist import ChunkList

    monkeypatch.setattr(ingest, "AVG_CHUNK", 1024)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "big.bin").write_bytes(os.urandom(6 << 20))  # > 4,096 chunks

    def refuse(*_args: Any) -> Any:
        raise AssertionError("a chunk list went through its text form")

    monkeypatch.setattr(ChunkList, "to_text", refuse)
    monkeypatch.setattr(ChunkList, "from_text", classmethod(refuse))
    version = registry.log_model(str(tmp_path / "m" / "big.bin"), "big", progress=False)
    assert len(version.files[0].chunks) > 4096
    monkeypatch.undo()
    again = registry.get("big@latest")
    assert again.files == version.files and again.digest == version.digest


def test_a_long_chunk_list_is_kept_in_a_file_and_written_a_piece_at_a_time(
        any_registry: Registry, tmp_path: Path, monkeypatch: Any) -> None:
    """Past chunklist.SPILL_BYTES an ingest's chunk list is a scratch file, mapped (40
    bytes a chunk out of the process), and the row's records go to the database a piece
    at a time rather than bound whole (the driver copied them): into a SQLite blob, by
    COPY on PostgreSQL; read back a range at a time too."""
    from tether._store import chunklist, ingest

    monkeypatch.setattr(ingest, "AVG_CHUNK", 1024)
    monkeypatch.setattr(chunklist, "SPILL_BYTES", 500 * chunklist.RECORD_SIZE)
    joined: list[int] = []
    real_joined = repo.StoredRecords.joined
    monkeypatch.setattr(repo.StoredRecords, "joined",
                        lambda self: joined.append(len(self)) or real_joined(self))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "big.bin").write_bytes(os.urandom(3 << 20))  # ~2,500 chunks
    version = any_registry.log_model(str(tmp_path / "m" / "big.bin"), "big", progress=False)
    chunks = version.files[0].chunks
    assert len(chunks) > 2000 and chunks.in_file
    assert not joined, joined  # never joined into one buffer
    assert bytes(_raw_row(any_registry, version.id).chunk_records) == bytes(chunks.records)
    ranges: list[int] = []
    real_chunk_list = repo.DatabaseRecords.chunk_list
    monkeypatch.setattr(repo.DatabaseRecords, "chunk_list", lambda self, start, end, **kw: (
        ranges.append(end - start) or real_chunk_list(self, start, end, **kw)))
    again = any_registry.get("big@latest")  # read back into a scratch file too
    assert ranges == [len(chunks) * chunklist.RECORD_SIZE]  # from the row, a range at a time
    assert any_registry.store_stats().logical_bytes == 3 << 20  # gc's census reads so too
    assert len(ranges) == 2
    assert again.files == version.files and require_intact(again) is again
    assert again.files[0].chunks.in_file
    out = any_registry.download("big@latest", tmp_path / "out", progress=False)
    assert (out / "big.bin").read_bytes() == (tmp_path / "m" / "big.bin").read_bytes()


def test_a_version_reads_with_no_scratch_folder_and_lists_keep_no_files(
        registry: Registry, tmp_path: Path, monkeypatch: Any) -> None:
    """A version's large lists go to scratch files only when one version is read for a
    load, and reading never fails for want of one (an unwritable cache folder, a full
    disk): the list is kept in memory then. Lists of versions keep theirs in memory
    (a file each would keep a descriptor open per version)."""
    from tether._store import chunklist, ingest

    monkeypatch.setattr(ingest, "AVG_CHUNK", 1024)
    monkeypatch.setattr(chunklist, "SPILL_BYTES", 500 * chunklist.RECORD_SIZE)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "big.bin").write_bytes(os.urandom(1 << 20))  # ~900 chunks
    version = registry.log_model(str(tmp_path / "m" / "big.bin"), "big", progress=False)
    assert registry.get("big@latest").files[0].chunks.in_file
    assert not any(v.files[0].chunks.in_file for v in registry.versions("big"))
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setattr(packed, "scratch_root", lambda: tmp_path / "not-a-folder" / "tmp")
    again = registry.get("big@latest")
    assert not again.files[0].chunks.in_file and again.files == version.files


def test_a_dataset_version_is_chosen_without_every_versions_lists(
        registry: Registry, tmp_path: Path, monkeypatch: Any) -> None:
    """Resolving a dataset reference read every version's row, chunk records and all,
    to pick one; now it picks without them and reads the chosen version's large lists
    a file at a time into scratch files, as a model version's."""
    from tether._registry import datasets
    from tether._store import chunklist, ingest

    monkeypatch.setattr(ingest, "AVG_CHUNK", 1024)
    monkeypatch.setattr(chunklist, "SPILL_BYTES", 500 * chunklist.RECORD_SIZE)
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "part.bin").write_bytes(os.urandom(1 << 20))  # ~900 chunks
    first = registry.add_dataset(str(folder), "ds")
    (folder / "part.bin").write_bytes(os.urandom(1 << 20))
    second = registry.add_dataset(str(folder), "ds")
    fetched: list[bool] = []
    real_rows = datasets._rows
    monkeypatch.setattr(datasets, "_rows", lambda conn, did, records=True: (
        fetched.append(records) or real_rows(conn, did, records=records)))
    for ref, version in (("ds@latest", second), (f"ds@{first.semver}", first)):
        got = registry.get_dataset(ref)
        assert got.digest == version.digest and got.files == version.files
        assert got.files[0].chunks.in_file
    assert fetched and not any(fetched)  # never every version's records


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(field)


def _peak_growth_mb(work: Any) -> float:
    """How far this process's resident set rose above where it was while ``work`` ran
    (its peak, VmHWM, reset first through /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kb("VmRSS")
    work()
    return (_rss_kb("VmHWM") - before) / 1024


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak")
def test_a_large_rows_records_go_to_and_from_the_database_in_pieces(
        any_registry: Registry, tmp_path: Path, monkeypatch: Any) -> None:
    """The chunk records of a 70 GB file (1.25 million chunks, 50 MB) are written to the
    row and read back without ever being in the process whole. Bound whole, the driver
    held them (on PostgreSQL as hex text too): the harm, shown first."""
    from tether._packed_manifest import StoredRecords, scratch
    from tether._store import chunklist
    from tether._store.chunklist import ChunkList

    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path / "cache"))
    count = 1_250_000
    size = count * chunklist.RECORD_SIZE
    piece = 25_000 * chunklist.RECORD_SIZE  # 1 MB

    def random_records() -> Any:
        for _ in range(size // piece):
            block = bytearray(os.urandom(piece))
            for at in range(32, piece, chunklist.RECORD_SIZE):  # sizes under 4 GB
                block[at + 4:at + 8] = bytes(4)
            yield bytes(block)

    big = ChunkList.kept_in_file(random_records(), scratch)
    assert len(big) == count and big.in_file
    version = any_registry.log_model(str(_model(tmp_path)), "m", flavor="files")
    row = _raw_row(any_registry, version.id)._asdict()
    columns = {k: v for k, v in row.items() if k not in ("id", "chunk_records")}

    def insert(seq: int, records: Any) -> int:
        with any_registry.engine.begin() as conn:
            return repo.insert_with_records(
                conn, repo.versions, {**columns, "seq": seq, "semver": f"9.0.{seq}"}, records)

    def bound_whole() -> None:
        insert(100, StoredRecords([ChunkList(bytes(big.records), adopt=True)]))
        with any_registry.engine.connect() as conn:
            fetched = conn.execute(sa.select(repo.versions.c.chunk_records).where(
                repo.versions.c.seq == 100)).scalar()
            assert len(fetched) == size

    unsafe = _peak_growth_mb(bound_whole)
    assert unsafe > 90, unsafe  # the list, the driver's copy, the column fetched whole

    found: list[ChunkList] = []

    def in_pieces() -> None:
        row_id = insert(101, StoredRecords([big]))
        with any_registry.engine.connect() as conn:
            records = repo.stored_records(conn, repo.versions, row_id)
            assert isinstance(records, repo.DatabaseRecords)
            found.append(records.chunk_list(0, size, in_file=True))

    safe = _peak_growth_mb(in_pieces)
    print(f"peak growth: bound whole {unsafe:.0f} MB, in pieces {safe:.0f} MB")  # with -s
    assert safe < 30, (safe, unsafe)
    assert found[0].in_file and found[0] == big


def test_a_list_of_versions_reads_no_chunk_records_until_one_is_used(
        any_registry: Registry, tmp_path: Path, monkeypatch: Any) -> None:
    """``versions()``, the catalog and a dataset's versions read every row's chunk records
    (40 MB a million chunks, for every version at once); now only their lengths, and a
    list is read from its row when it is used."""
    from click.testing import CliRunner

    from tether._registry.catalog import versions_with_deleted
    from tether._store.chunklist import DeferredChunkList

    read: list[int] = []
    real_chunk_list = repo.DatabaseRecords.chunk_list
    monkeypatch.setattr(repo.DatabaseRecords, "chunk_list", lambda self, start, end, **kw: (
        read.append(end - start) or real_chunk_list(self, start, end, **kw)))
    logged = [any_registry.log_model(str(_model(tmp_path, f"m{n}")), "m", flavor="files")
              for n in range(3)]
    listed = any_registry.versions("m")
    everything = versions_with_deleted(any_registry, "m")
    for versions in (listed, everything):
        assert [v.seq for v in versions] == [v.seq for v in logged]
        for version, original in zip(versions, logged, strict=True):
            big = version.file("weights.bin").chunks
            assert isinstance(big, DeferredChunkList) and not big.loaded
            assert len(big) == len(original.file("weights.bin").chunks) > LISTED
    from tether.cli import cli

    for extra in ([], ["--json"], ["--all"]):
        shown = CliRunner().invoke(cli, ["--registry", str(tmp_path / "reg" / ".tether"),
                                         "versions", "m", *extra], catch_exceptions=False)
        assert shown.exit_code == 0, shown.output
    data = json.loads(CliRunner().invoke(
        cli, ["--registry", str(tmp_path / "reg" / ".tether"), "versions", "m", "--json"],
        catch_exceptions=False).output)
    weights = next(f for f in data[0]["files"] if f["path"] == "weights.bin")
    assert weights["chunk_count"] == len(logged[0].file("weights.bin").chunks)
    assert read == []  # nothing read yet
    # Used, a list is read from its row, and is the one the version was logged with.
    assert listed[1].file("weights.bin").chunks == logged[1].file("weights.bin").chunks
    assert listed[1].file("weights.bin").chunks.loaded
    assert read == [len(logged[1].file("weights.bin").chunks) * 40]
    assert require_intact(listed[1]) is listed[1]
    assert not listed[0].file("weights.bin").chunks.loaded


def test_an_ingests_lists_past_the_threshold_in_all_go_to_files(
        registry: Registry, tmp_path: Path, monkeypatch: Any) -> None:
    """Each file's list spilled only past the threshold on its own, so a hundred 5 GB
    shards (80,000 chunks each) held 320 MB; now once the lists in memory pass it in
    all, the next ones go to scratch files (small files' lists stay: a descriptor each
    for thousands of them would run out)."""
    from tether._store import chunklist, ingest

    monkeypatch.setattr(ingest, "AVG_CHUNK", 1024)
    monkeypatch.setattr(ingest, "LISTED_CHUNKS", 40)
    monkeypatch.setattr(chunklist, "SPILL_BYTES", 150 * chunklist.RECORD_SIZE)
    root = tmp_path / "shards"
    root.mkdir()
    names = [f"shard{n}.bin" for n in range(4)] + ["tiny.txt"]
    for seed, name in enumerate(names[:-1]):
        # Seeded: cut at 1 KiB on average, random bytes made 70 to 130 chunks a file, and
        # two short ones in a row stayed under 150 (CI, 2026-11-28). These cut to 81-87.
        (root / name).write_bytes(random.Random(seed).randbytes(100 << 10))
    (root / "tiny.txt").write_text("x")
    report = registry.store.ingest(root, names)
    try:
        kept = [f.chunks.in_file for f in report.files]
        assert all(len(f.chunks) > 40 for f in report.files[:-1])
        assert kept[0] is False and all(kept[1:4]), kept  # 86 held, then past 150
        assert kept[4] is False  # one chunk: stays
        for entry in report.files:
            data = (root / entry.path).read_bytes()
            assert entry.chunks.total() == len(data)
    finally:
        if report.pin:
            registry.store.release_pin(report.pin)


@pytest.mark.parametrize("written", ["bound", "by COPY"])
def test_postgresql_keeps_chunk_records_uncompressed_for_range_reads(
        pg_database: str, tmp_path: Path, monkeypatch: Any, written: str) -> None:
    """A zero-filled file is one chunk repeated: its records are one 40-byte record over
    and over, which PostgreSQL compresses by default. A compressed value is read back
    range by range (DatabaseRecords) by decompressing it from its start each time, so
    every range costs the whole prefix. The harm, shown on a column left at the default
    storage: compressed. Tether's column is EXTERNAL (migration 0011): stored as is,
    also when the records came through the temporary table a COPY fills (large lists:
    a value compressed there stayed compressed in the row)."""
    import tether
    from tether._store import chunklist

    if written == "by COPY":  # the path of lists of SPILL_BYTES or more
        monkeypatch.setattr(chunklist, "SPILL_BYTES", 100 * chunklist.RECORD_SIZE)
    registry = tether.init(tmp_path / "reg" / ".tether", actor="t@example.com",
                           db_url=pg_database)
    try:
        folder = tmp_path / "zeros"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(bytes(64 << 20))  # a zeroed checkpoint
        version = registry.log_model(str(folder), "zeros", flavor="files")
        chunks = version.file("weights.bin").chunks
        assert len(chunks) > 200 and len({c.digest for c in chunks}) == 1
        with registry.engine.begin() as conn:
            stored = conn.execute(sa.text(
                "SELECT pg_column_compression(chunk_records), length(chunk_records) "
                "FROM versions WHERE id = :id"), {"id": version.id}).one()
            conn.execute(sa.text("CREATE TEMP TABLE default_storage (records bytea)"))
            conn.execute(sa.text("INSERT INTO default_storage SELECT chunk_records "
                                 "FROM versions WHERE id = :id"), {"id": version.id})
            default = conn.execute(sa.text(
                "SELECT pg_column_compression(records) FROM default_storage")).scalar()
        assert default is not None  # the harm: compressed where the storage is not set
        assert stored == (None, len(chunks) * 40)  # stored as is
        out = registry.download(version.ref, tmp_path / "out", progress=False)
        assert (out / "weights.bin").stat().st_size == 64 << 20
    finally:
        registry.close()
