"""The census: a store's index entries and its live chunks as numpy columns (gc, store
stats and store verify at any store size)."""

from __future__ import annotations

import json
import os
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import blake3
import pytest

import tether
from tether._store import open_store
from tether._store.base import FileEntry
from tether._store.census import Census, LiveChunks, keys_of, rows_as_lists
from tether._store.chunklist import ChunkList
from tether._store.chunkstore import RAW
from tether._store.midx import MergedIndex, build

from .conftest import on_a_terminal


def _digest(i: int, tail: bytes = b"") -> str:
    """A 64-digit hex digest, unique per ``i``, ending in ``tail``."""
    head = i.to_bytes(8, "big") + os.urandom(24 - len(tail))
    return (head + tail).hex()


def _pack(i: int) -> str:
    return f"{i:032x}"


def test_a_digest_ending_in_zero_bytes_comes_back_whole() -> None:
    """numpy drops an S32 value's trailing zero bytes: one digest in 256 ends in one. A
    census that lost them would repack and check chunks under a wrong digest."""
    entries = [[_digest(i, b"\0" * (i % 3)), 100 * i, 100, 120, 1] for i in range(6)]
    index = MergedIndex("m", build({_pack(1): (600, entries)}, ()))
    census = Census([index], {_pack(1): 600})
    [rows] = census.entries_of([0]).values()
    assert rows_as_lists(rows) == sorted(entries, key=lambda e: e[1])
    live = LiveChunks()
    live.add_digests([entries[1][0], entries[2][0]])
    tally = census.tally(live)
    assert tally.single_live[0] == 2 and tally.single_live_bytes[0] == 200
    assert tally.single_chunks == 6 and tally.single_unused == 4


def test_live_chunks_hold_every_chunk_added_however_they_came(monkeypatch: Any) -> None:
    monkeypatch.setattr(LiveChunks, "_MERGE_PENDING", 5)  # merged many times over
    digests = [_digest(i) for i in range(40)]
    live = LiveChunks()
    live.add_files([FileEntry("a", 1, "0" * 64, ChunkList.of([(d, 10) for d in digests[:20]]))])
    live.add_digests([*digests[15:30], "not hex", 7, "ab"])  # junk from a pin is skipped
    assert len(live) == 30
    held = live.holds(keys_of([bytes.fromhex(d) for d in digests]))
    assert held.tolist() == [True] * 30 + [False] * 10


def test_an_entry_listed_twice_counts_once_and_a_chunk_in_two_packs_is_handed_over() -> None:
    """A pack indexed in a merged file and again in the journal (a merge being published)
    counts once, its chunks handed over claim by claim, as is a chunk two packs hold;
    an entry naming a pack no longer in use (gc dropped it) counts nowhere."""
    shared = _digest(99)
    first = [[_digest(i), 100 * i, 100, 100, 0] for i in range(5)]
    second = [[_digest(10 + i), 100 * i, 50, 50, 0] for i in range(3)] + [
        [shared, 300, 50, 50, 0]]
    older = MergedIndex("a", build({_pack(1): (500, first), _pack(2): (350, second),
                                    _pack(3): (100, [[_digest(50), 0, 100, 100, 0]])}, ()))
    journal = MergedIndex("j", build({_pack(1): (500, [*first, [shared, 500, 100, 100, 0]])},
                                     ()))
    census = Census([older, journal], {_pack(1): 600, _pack(2): 350})  # pack 3 is gone
    live = LiveChunks()
    live.add_digests([shared, first[0][0], second[0][0]])
    tally = census.tally(live)
    assert tally.entries.tolist() == [6, 4] and tally.bytes.tolist() == [600, 200]
    assert tally.live_bytes.tolist() == [200, 100]
    assert sorted((c.pack, c.offset, c.live) for c in tally.claims) == [
        (0, 0, True), (0, 100, False), (0, 200, False), (0, 300, False), (0, 400, False),
        (0, 500, True), (1, 300, True)]
    assert tally.single_chunks == 3 and tally.single_unused == 2  # pack 2's others
    entries = census.entries_of([0, 1])
    assert [e[1] for e in rows_as_lists(entries[0])] == [0, 100, 200, 300, 400, 500]
    live_only = census.entries_of([0, 1], live=live, skip=tally.repeated)
    assert list(live_only) == [1]  # pack 1's chunks are all handed over as claims
    assert rows_as_lists(live_only[1]) == [second[0]]


@pytest.fixture()
def large_store(tmp_path: Path) -> tuple[Any, list[list[str]]]:
    """A store whose merged index lists 300,000 chunks in 300 packs (index only: gc's and
    stats' plans read no pack)."""
    packs: dict[str, tuple[int, list[list[Any]]]] = {}
    digests = []
    for p in range(300):
        entries = [[_digest(p * 1000 + i), 65536 * i, 65536, 65536, 0] for i in range(1000)]
        packs[_pack(p)] = (65_536_000, entries)  # not small: small ones are compacted
        digests.append([e[0] for e in entries])
    (tmp_path / "store" / "index").mkdir(parents=True)
    (tmp_path / "store" / "index" / f"{'f' * 32}.idx").write_bytes(build(packs, ()))
    for p in range(300):
        (tmp_path / "store" / "packs").mkdir(exist_ok=True)
        # Sparse, at the size the index gives (gc checks the listing against it).
        (tmp_path / "store" / "packs" / f"{_pack(p)}.pack").write_bytes(b"")
        os.truncate(tmp_path / "store" / "packs" / f"{_pack(p)}.pack", 65_536_000)
        os.utime(tmp_path / "store" / "packs" / f"{_pack(p)}.pack", (1, 1))  # old
    return open_store(f"file://{tmp_path / 'store'}"), digests


def test_gc_and_stats_of_a_large_store_hold_columns_not_lists(
        large_store: tuple[Any, list[list[str]]]) -> None:
    """Read as lists and sets of hex digests, 300,000 entries took gc's plan and stats
    over 75 MB of Python objects (a 1 TB store: GBs); as columns, a few MB whatever
    the store's size. The answers are those the lists gave."""
    store, digests = large_store
    def file(name: str, chunks: list[str]) -> FileEntry:
        return FileEntry(name, 65536 * len(chunks), "0" * 64,
                         ChunkList.of([(d, 65536) for d in chunks]))

    live = [file(f"f{p}", digests[p]) for p in range(100)]  # 100 packs wholly live
    live.append(file("most", digests[100][:600]))  # mostly live: stays
    live.append(file("some", digests[101][:300]))  # mostly dead: its live part moves
    tracemalloc.start()
    try:
        stats = store.stats(iter(live))
        _, stats_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        report = store.gc(iter(live), grace_seconds=0, dry_run=True)
        _, gc_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.chunks == 300_000 and stats.packs == 300
    assert stats.extra["unreferenced_chunks"] == 300_000 - 100_900
    assert report.kept_chunks == 100_900 and report.removed_chunks == 198_700
    assert report.removed["unreferenced_chunks"]["bytes"] == 198_700 * 65536
    assert report.repacked_packs == 1
    # The live chunk lists themselves are 4 MB; 300,000 entries as lists were 75 MB.
    assert stats_peak < 24e6, stats_peak
    assert gc_peak < 24e6, gc_peak


def test_registry_gc_and_stats_stream_every_version_on_both_databases(
        any_registry: Any, tmp_path: Path) -> None:
    """The registry hands gc and stats its versions' files as it reads them (a server-side
    cursor on PostgreSQL): an expired version's chunks go, the kept ones' stay."""
    reg = any_registry
    paths = []
    for i in range(3):
        path = tmp_path / f"v{i}.bin"
        path.write_bytes(os.urandom(300_000))
        reg.log_model(str(path), "m", progress=False)
        paths.append(path)
    before = reg.store_stats()
    assert before.logical_bytes == 900_000 and before.extra["unreferenced_chunks"] == 0
    result = reg.gc(keep_last=1, grace_seconds=0)
    assert len(result.expired) == 2, result
    assert result.store.removed_chunks == before.chunks - len(reg.get("m@latest").files[0].chunks)
    after = reg.store_stats()
    assert after.logical_bytes == 300_000 and after.extra["unreferenced_chunks"] == 0
    assert reg.verify("m@latest") == []
    out = tmp_path / "out"
    reg.download("m@latest", out, progress=False)
    assert (out / "v2.bin").read_bytes() == paths[2].read_bytes()


def test_retention_keeps_what_an_alias_ever_named_and_what_is_young(
        registry: Any, tmp_path: Path) -> None:
    """keep_last=1 expires old versions, except one an alias pointed at (and left), and
    nothing younger than the grace period (the default hour)."""
    refs = []
    for i in range(4):
        path = tmp_path / f"v{i}.bin"
        path.write_bytes(os.urandom(50_000))
        refs.append(registry.log_model(str(path), "m", progress=False).ref)
    registry.promote(refs[0], "production", create=True)
    registry.promote(refs[2], "production")  # 1.0.0 was production once
    young = registry.gc(keep_last=1, dry_run=True)  # the default grace: all are minutes old
    assert young.expired == [] and young.grace_seconds > 0
    result = registry.gc(keep_last=1, grace_seconds=0)
    assert sorted(result.expired) == [refs[1]], result.reasons
    assert registry.verify(refs[0]) == [] and registry.verify(refs[2]) == []
    assert registry.verify(refs[3]) == []


def test_gc_repacks_in_batches_what_it_reads_of_the_indexes(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The live entries of the packs gc drops are gathered a batch at a time (here one
    pack's worth) in one pass over the indexes, spilled to scratch files meanwhile;
    after the real run every live chunk is listed, its bytes check out, and no scratch
    file is left."""
    from tether._store import chunk_gc, ingest

    monkeypatch.setattr(chunk_gc, "_REPACK_BATCH", 1)
    monkeypatch.setattr(ingest, "AVG_CHUNK", 1024)
    store = open_store(f"file://{tmp_path / 'store'}", pack_target=64 * 1024,
                       cache_dir=tmp_path / "cache")
    (tmp_path / "src").mkdir()
    reports = []
    for i in range(4):
        (tmp_path / "src" / f"f{i}.bin").write_bytes(os.urandom(200_000))
        reports.append(store.ingest(tmp_path / "src", [f"f{i}.bin"]))
    # Keep every third chunk of each file: every pack is mostly dead.
    live = [FileEntry(f.path, 0, f.digest, ChunkList.of(list(f.chunks)[::3]))
            for r in reports for f in r.files]
    batches: list[int] = []
    passes: list[int] = []
    real_by_batch, real_rows = Census.entries_by_batch, Census._wanted_rows

    def by_batch(self: Any, wanted: Any, *args: Any, **kwargs: Any) -> Any:
        for batch, rows in real_by_batch(self, wanted, *args, **kwargs):
            batches.append(len(batch))
            yield batch, rows

    def wanted_rows(self: Any, *args: Any) -> Any:
        passes.append(1)
        return real_rows(self, *args)

    monkeypatch.setattr(Census, "entries_by_batch", by_batch)
    monkeypatch.setattr(Census, "_wanted_rows", wanted_rows)
    for r in reports:
        store.release_pin(r.pin)
    report = store.gc(iter(live), grace_seconds=0, dry_run=False)
    assert report.repacked_packs > 2 and batches == [1] * report.repacked_packs, batches
    assert passes == [1]  # one pass over the indexes for all the batches
    assert not list((tmp_path / "cache" / "tmp").glob("gc-*"))
    fresh = open_store(f"file://{tmp_path / 'store'}")
    assert fresh.missing([c.digest for f in live for c in f.chunks]) == set()
    checked = fresh.verify_packs(dry_run=True)  # every entry's bytes match its digest
    assert checked.bad == [] and checked.chunks >= len({c.digest for f in live
                                                        for c in f.chunks})


def test_verify_reads_the_indexes_once_for_all_its_batches(
        tmp_path: Path, monkeypatch: Any) -> None:
    """store verify checks every pack against entries gathered in batches from one pass."""
    from tether._store import ingest, pack_verify

    monkeypatch.setattr(pack_verify, "_VERIFY_BATCH_ENTRIES", 10)
    monkeypatch.setattr(ingest, "AVG_CHUNK", 1024)
    store = open_store(f"file://{tmp_path / 'store'}", pack_target=64 * 1024)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.bin").write_bytes(os.urandom(400_000))
    report = store.ingest(tmp_path / "src", ["f.bin"])
    store.consolidate()
    passes: list[int] = []
    real_rows = Census._wanted_rows
    monkeypatch.setattr(Census, "_wanted_rows",
                        lambda self, *a: passes.append(1) or real_rows(self, *a))
    fresh = open_store(f"file://{tmp_path / 'store'}")
    checked = fresh.verify_packs(dry_run=True)
    assert checked.bad == [] and checked.packs > 3 and passes == [1]
    assert checked.chunks == len({c.digest for f in report.files for c in f.chunks})


def _registry_of_small_versions(tmp_path: Path, count: int = 10):
    reg = tether.init(str(tmp_path / "reg"))
    for i in range(count):
        path = tmp_path / f"m{i}.bin"
        path.write_bytes(os.urandom(5000))
        reg.log_model(str(path), f"m{i}", progress=False)
    return reg, Path(reg.location.store_url.removeprefix("file://"))


def test_one_journal_index_with_an_unbuildable_size_must_not_hide_the_journal(
        tmp_path: Path) -> None:
    """One malformed journal file (a pack size no block can hold) once made the census
    go on without the whole journal: gc took the small packs for empty, compacted them
    without repacking, and every version lost its bytes (the dry run said 0 removed)."""
    reg, store_dir = _registry_of_small_versions(tmp_path)
    bad = uuid.uuid4().hex
    (store_dir / "packs" / f"{bad}.pack").write_bytes(b"x" * 10)
    (store_dir / "index" / f"{bad}.idx").write_text(json.dumps(
        {"pack": bad, "size": -1, "chunks": [["ab" * 32, 0, 10, 10, 0]]}))
    assert reg.store_stats().chunks >= 10
    reg.gc(grace_seconds=0)
    assert [reg.verify(f"m{i}@latest") for i in range(10)] == [[]] * 10


def test_verify_still_checks_the_journal_after_one_bad_pack_size(tmp_path: Path) -> None:
    """The same file once hid every journal pack from `store verify`: a lying one passed."""
    root = tmp_path / "store"
    (root / "packs").mkdir(parents=True)
    (root / "index").mkdir()
    good = os.urandom(100)
    digest = blake3.blake3(good).hexdigest()
    liar = uuid.uuid4().hex
    (root / "packs" / f"{liar}.pack").write_bytes(os.urandom(100))
    (root / "index" / f"{liar}.idx").write_text(json.dumps(
        {"pack": liar, "size": 100, "chunks": [[digest, 0, 100, 100, RAW]]}))
    bad = uuid.uuid4().hex
    (root / "packs" / f"{bad}.pack").write_bytes(good)
    (root / "index" / f"{bad}.idx").write_text(json.dumps(
        {"pack": bad, "size": -1, "chunks": [[digest, 0, 100, 100, RAW]]}))
    report = open_store(f"file://{root}").verify_packs(dry_run=True)
    assert {b.pack for b in report.bad} == {liar, bad}


def test_verify_reports_a_journal_entry_outside_its_pack(tmp_path: Path) -> None:
    """An entry no block can hold (a negative offset) claims nothing, so gc and stats
    leave it out; `store verify` still names the pack."""
    root = tmp_path / "store"
    (root / "packs").mkdir(parents=True)
    (root / "index").mkdir()
    body = os.urandom(100)
    pack = uuid.uuid4().hex
    (root / "packs" / f"{pack}.pack").write_bytes(body)
    (root / "index" / f"{pack}.idx").write_text(json.dumps(
        {"pack": pack, "size": 100,
         "chunks": [[blake3.blake3(body).hexdigest(), -1, 100, 100, RAW]]}))
    report = open_store(f"file://{root}").verify_packs(dry_run=True)
    assert [b.pack for b in report.bad] == [pack]


def test_a_young_lying_copy_does_not_stand_in_for_an_honest_one(tmp_path: Path) -> None:
    """A young pack lying about a live chunk (its bytes do not match) once counted as
    that chunk's copy: the honest copy, in an old mostly-dead pack, was dropped with it
    and only the lie was left. Now the honest one is repacked."""
    root = tmp_path / "store"
    (root / "packs").mkdir(parents=True)
    (root / "index").mkdir()

    def plant(pack: str, body: bytes, chunks: list, old: bool) -> None:
        (root / "packs" / f"{pack}.pack").write_bytes(body)
        (root / "index" / f"{pack}.idx").write_text(json.dumps(
            {"pack": pack, "size": len(body), "chunks": chunks}))
        if old:
            os.utime(root / "packs" / f"{pack}.pack", (1, 1))

    live, dead, other = os.urandom(5000), os.urandom(50000), os.urandom(9000)
    d, e, o = (blake3.blake3(b).hexdigest() for b in (live, dead, other))
    plant("1" * 32, live + dead, [[d, 0, 5000, 5000, RAW], [e, 5000, 50000, 50000, RAW]], True)
    plant("f" * 32, os.urandom(5000) + other,
          [[d, 0, 5000, 5000, RAW], [o, 5000, 9000, 9000, RAW]], False)
    store = open_store(f"file://{root}")
    files = [FileEntry("a", 5000, d, ChunkList.of([(d, 5000)])),
             FileEntry("b", 9000, o, ChunkList.of([(o, 9000)]))]
    assert store.verify(files, label="v") == []
    store.gc(iter(files), grace_seconds=3600, dry_run=False)
    assert open_store(f"file://{root}").verify(files, label="v") == []


def _on_a_terminal(registry: Path, *args: str) -> str:
    """What `tether --registry REGISTRY ARGS` draws on stderr when stderr is a terminal."""
    import sys

    code, drawn = on_a_terminal([str(Path(sys.executable).with_name("tether")), "--registry",
                                 str(registry), *args])
    assert code == 0, drawn
    return drawn


def test_store_verify_and_gc_show_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    """Reading a large store's every pack, or repacking much of it, takes a while: a
    terminal sees a bar (on stderr); --json sees none."""
    reg = tether.init(str(tmp_path / "reg"))
    first = os.urandom(40 << 20)  # the live part it repacks: over the 8 MiB a bar needs
    (tmp_path / "big.bin").write_bytes(first)
    reg.log_model(str(tmp_path / "big.bin"), "big", progress=False)
    changed = bytearray(first)
    for at in range(0, len(changed), 1 << 20):  # 60% of every MB rewritten
        changed[at:at + 600_000] = os.urandom(600_000)
    (tmp_path / "big.bin").write_bytes(changed)
    reg.log_model(str(tmp_path / "big.bin"), "big", progress=False)
    reg.close()
    root = tmp_path / "reg"
    assert "verifying" in _on_a_terminal(root, "store", "verify", "--dry-run")
    assert "verifying" not in _on_a_terminal(root, "store", "verify", "--dry-run", "--json")
    drawn = _on_a_terminal(root, "gc", "--keep-last", "1", "--grace", "0")
    assert "repacking" in drawn and "repacked 1 packs" not in drawn, drawn
    with tether.open(root) as again:
        assert again.verify("big@latest") == []
