"""Files in a local store's folder that Tether did not write the way it writes them: a
journal index of numbers out of range or nested without end, an index file of 8 GB, a
named pipe in place of a pack, a merged index cut short, a merged index that lies
about which pack holds what, a lease dated in the future. Each was found by a review
to end a command in a traceback, hang it, take memory without bound, or lose data."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tether import Registry
from tether._store.blobs import MAX_SMALL_READ, MalformedObject
from tether._store.chunkstore import ChunkStore
from tether._store.locking import LEASE_SECONDS, Lease
from tether._store.midx import build
from tether.cli import cli

from .conftest import tether_exe


def _logged(registry: Registry, tmp_path: Path, name: str, size: int = 300_000) -> str:
    folder = tmp_path / f"src-{name}"
    folder.mkdir()
    (folder / "w.bin").write_bytes(os.urandom(size))
    return registry.log_model(str(folder), name).ref


def _objects(registry: Registry) -> Path:
    store = registry.store
    assert isinstance(store, ChunkStore)
    return Path(store.blobs.root)  # type: ignore[attr-defined]


def _fresh(registry: Registry) -> Registry:
    """The same registry opened again: a new process's view of the store."""
    import tether

    return tether.open(registry.location.root)


@pytest.mark.parametrize("claims", [
    '{"pack": "%s", "size": 1e999, "chunks": []}',
    '{"pack": "%s", "size": 10, "chunks": [["%s", 1e999, 1, 1, 0]]}',
    '{"pack": "%s", "size": 1, "chunks": ' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_a_malformed_journal_index_claims_nothing_and_breaks_no_command(
        registry: Registry, tmp_path: Path, claims: str) -> None:
    """``int(1e999)`` (OverflowError) and 100,000 nested arrays (RecursionError) ended
    load, verify, gc and `store verify` in a traceback."""
    ref = _logged(registry, tmp_path, "m")
    name = "f" * 32
    text = claims % ((name, "0" * 64) if claims.count("%s") == 2 else name)
    (_objects(registry) / "index" / f"{name}.idx").write_text(text)
    reader = _fresh(registry)
    assert reader.verify(ref) == []
    reader.download(ref, tmp_path / "out")
    report = reader.store.verify_packs(dry_run=True)  # type: ignore[attr-defined]
    assert [bad.pack for bad in report.bad] == [name]


def test_an_index_file_too_large_for_any_index_is_not_read(
        registry: Registry, tmp_path: Path) -> None:
    """A sparse 8 GB file under index/ was read whole (a MemoryError, or 8 GB taken);
    now refused past the size of anything the store writes there, as over S3."""
    ref = _logged(registry, tmp_path, "m")
    planted = _objects(registry) / "index" / f"{'e' * 32}.idx"
    with open(planted, "wb") as handle:
        handle.truncate(MAX_SMALL_READ + 1)  # sparse: no disk, no memory
    with pytest.raises(MalformedObject, match="over 256 MB"):
        registry.store.blobs.get_bytes(f"index/{'e' * 32}.idx")  # type: ignore[attr-defined]
    reader = _fresh(registry)
    assert reader.verify(ref) == []
    report = reader.store.verify_packs(dry_run=False)  # type: ignore[attr-defined]
    assert any("over 256 MB" in problem for problem in report.unusable)
    assert planted.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_in_place_of_a_pack_is_reported_not_waited_on(
        registry: Registry, tmp_path: Path) -> None:
    """Opening a named pipe waits for a writer: `tether verify` and `store verify` hung
    for good on one planted in place of a pack (run in a child, bounded here)."""
    ref = _logged(registry, tmp_path, "m")
    [pack] = list((_objects(registry) / "packs").iterdir())
    pack.unlink()
    os.mkfifo(pack)
    for args in (["verify", ref], ["store", "verify", "--dry-run"]):
        done = subprocess.run(
            [tether_exe(), "--registry", str(registry.location.root), *args],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert "is not a regular file" in done.stdout + done.stderr
        assert "Traceback" not in done.stderr


def test_store_verify_leaves_a_merged_index_cut_short_in_place_and_says_so(
        registry: Registry, tmp_path: Path) -> None:
    """A merged index one byte short was read as a pack's malformed index: `store
    verify` moved it to quarantine/ as if it were one, leaving the store no index at
    all (every version unloadable, gc refusing for good). It is now left where it is,
    named, and the command fails."""
    _logged(registry, tmp_path, "m")
    registry.store.consolidate()  # type: ignore[attr-defined]
    [merged] = list((_objects(registry) / "index").iterdir())
    merged.write_bytes(merged.read_bytes()[:-1])
    result = CliRunner().invoke(cli, ["--registry", str(registry.location.root),
                                      "store", "verify"])
    assert result.exit_code == 1, result.output
    assert "a merged index that cannot be read" in result.output
    assert "restore it from a backup" in result.output
    assert merged.exists()
    assert not (_objects(registry) / "quarantine").exists() or not any(
        (_objects(registry) / "quarantine").rglob("*.idx"))


def _planted_cover(registry: Registry, victim_ref: str) -> tuple[Path, str, str]:
    """A merged index sorting first that covers the pack of ``victim_ref`` and claims
    its chunks are in the other pack, at that pack's true size: (file, victim, other)."""
    objects = _objects(registry)
    sizes = {p.stem: p.stat().st_size for p in (objects / "packs").iterdir()}
    victim_chunks = {c.digest for f in registry.get(victim_ref).files for c in f.chunks}
    victim = next(p for p in sizes if any(
        c[0] in victim_chunks
        for c in json.loads((objects / "index" / f"{p}.idx").read_text())["chunks"]))
    other = next(p for p in sizes if p != victim)
    own = json.loads((objects / "index" / f"{victim}.idx").read_text())["chunks"]
    lie = build({other: (sizes[other], [[c[0], 0, 16, c[3], 0] for c in own])}, [victim])
    planted = objects / "index" / f"{'0' * 32}.idx"
    planted.write_bytes(lie)
    return planted, victim, other


def test_a_merged_index_covering_a_live_pack_makes_gc_delete_nothing(
        registry: Registry, tmp_path: Path) -> None:
    """gc took a pack whose journal a planted merged file claimed to cover as a pack
    without an index, and deleted it: the version's bytes were gone for good. A pack
    a journal index file is named for is never such a leftover."""
    first = _logged(registry, tmp_path, "a")
    _logged(registry, tmp_path, "b")
    _planted, victim, _other = _planted_cover(registry, first)
    reader = _fresh(registry)
    reader.gc(grace_seconds=0)
    assert (_objects(registry) / "packs" / f"{victim}.pack").exists()
    assert _fresh(registry).verify(first) == []


def test_store_verify_quarantines_the_lying_index_not_the_honest_pack(
        registry: Registry, tmp_path: Path) -> None:
    """Every index's claims about a pack were checked together: the planted file's lie
    about an honest pack had that pack quarantined, with its true index, and its
    version could no longer load. Now each file's claims are checked on their own: the
    pack stays, and the lying merged file is named (not moved: a merged file holds
    other packs' entries, often their only ones)."""
    _logged(registry, tmp_path, "a")
    second = _logged(registry, tmp_path, "b")
    planted, _victim, other = _planted_cover(registry, registry.get("a@1.0.0").ref)
    report = _fresh(registry).store.verify_packs(dry_run=False)  # type: ignore[attr-defined]
    assert report.bad == []
    assert any(f"claims chunks pack {other} does not hold" in p for p in report.unusable)
    assert planted.exists()
    assert (_objects(registry) / "packs" / f"{other}.pack").exists()
    assert (_objects(registry) / "index" / f"{other}.idx").exists()
    assert _fresh(registry).verify(second) == []


def test_a_merged_index_written_meanwhile_is_not_called_unreadable(
        registry: Registry, tmp_path: Path) -> None:
    """A merged file another process wrote after `store verify` took its census landed
    in the "cannot be read" branch, and verify said to restore a good file from backup
    (a review): one that reads is skipped until the next run. And a missing object's
    error names no folder (a server passes it on to its clients)."""
    from tether._store.pack_verify import _why_unreadable

    _logged(registry, tmp_path, "m")
    registry.store.consolidate()  # type: ignore[attr-defined]
    [merged] = list((_objects(registry) / "index").iterdir())
    assert _why_unreadable(merged.stem, merged.read_bytes()) is None
    assert _why_unreadable(merged.stem, merged.read_bytes()[:-1]) is not None
    from tether import NotFound

    with pytest.raises(NotFound) as missing:
        registry.store.blobs.get_bytes(f"packs/{'a' * 32}.pack")  # type: ignore[attr-defined]
    assert str(_objects(registry)) not in str(missing.value)


def test_a_lease_dated_in_the_future_is_stale() -> None:
    """A lease with a future mtime (a clock ahead on a shared folder, a restored backup)
    was never stale: gc refused to start for good, and its dry run listed nothing."""
    now = time.time()
    assert Lease("locks/ingest-x", 10, now + 2 * LEASE_SECONDS, None).stale(now)
    assert not Lease("locks/ingest-x", 10, now + 5, None).stale(now)
    assert Lease("locks/ingest-x", 10, now - 2 * LEASE_SECONDS, None).stale(now)
