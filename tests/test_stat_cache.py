"""Adding a folder again reads only the files whose stat changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tether import Registry
from tether._store.chunkstore import ChunkStore


def _folder(root: Path, count: int = 50) -> Path:
    root.mkdir()
    for i in range(count):
        (root / f"f{i:03}.txt").write_bytes(os.urandom(2048))
    return root


@pytest.fixture(autouse=True)
def _settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files changed in the last SETTLE_NS are not remembered (two seconds; see
    test_a_file_changed_just_now_is_read_again_next_time): here, at once."""
    from tether._registry import stat_cache

    monkeypatch.setattr(stat_cache, "SETTLE_NS", 0, raising=False)


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    seen: list[list[str]] = []
    original = ChunkStore.ingest

    def spy(self: ChunkStore, root: Path, paths: list[str], **kw: object) -> object:
        seen.append(list(paths))
        return original(self, root, paths, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ChunkStore, "ingest", spy)
    return seen


def test_only_changed_files_are_read_again(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path / "data")
    first = registry.add_dataset(folder, "corpus")
    reads = _count_reads(monkeypatch)
    (folder / "f007.txt").write_bytes(os.urandom(2048))  # same size, new bytes and mtime
    second = registry.add_dataset(folder, "corpus")
    assert reads == [["f007.txt"]]
    assert second.digest != first.digest and second.source["unchanged_files"] == 49
    # The result is exactly what reading everything gives.
    monkeypatch.setenv("TETHER_STAT_CACHE", "off")
    again = registry.add_dataset(folder, "corpus")
    assert reads[-1] == sorted(p.name for p in folder.iterdir())
    assert again.digest == second.digest  # identical content: the same version


def test_a_cached_file_whose_chunks_left_the_store_is_read_again(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path / "data", count=3)
    registry.add_dataset(folder, "corpus")
    store = registry.store
    assert isinstance(store, ChunkStore)
    real = ChunkStore.missing_of
    calls: list[int] = []

    def all_gone_at_first(self: ChunkStore, lists: object) -> set[str]:
        calls.append(1)  # the stat cache's look; the commit's own look sees the truth
        if len(calls) == 1:
            return {d for chunks in lists for d in chunks.digests()}  # type: ignore[attr-defined]
        return real(self, lists)  # type: ignore[arg-type]

    monkeypatch.setattr(ChunkStore, "missing_of", all_gone_at_first)
    reads = _count_reads(monkeypatch)
    registry.add_dataset(folder, "corpus")
    assert reads == [sorted(p.name for p in folder.iterdir())]


def test_a_file_rewritten_while_it_is_stored_is_not_remembered_as_its_old_bytes(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stat was taken after the ingest read the file: one rewritten meanwhile (same
    size) was remembered with its new stat and its old bytes, and every later add of the
    unchanged folder registered the old bytes (a review)."""
    folder = _folder(tmp_path / "data", count=2)
    original = ChunkStore.ingest

    def ingest_then_someone_writes(self: ChunkStore, root: Path, paths: list[str],
                                   **kw: object) -> object:
        report = original(self, root, paths, **kw)  # type: ignore[arg-type]
        (folder / "f000.txt").write_bytes(b"n" * 2048)  # after it was read
        return report

    monkeypatch.setattr(ChunkStore, "ingest", ingest_then_someone_writes)
    registry.add_dataset(folder, "corpus")
    monkeypatch.setattr(ChunkStore, "ingest", original)
    cached = registry.add_dataset(folder, "corpus")
    monkeypatch.setenv("TETHER_STAT_CACHE", "off")
    assert cached.digest == registry.add_dataset(folder, "corpus").digest


def test_a_stat_cache_others_may_write_is_not_used(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user who could write the cache mapped a victim's file and stat to other
    stored bytes; the victim's next add registered those (a review)."""
    import json
    import sqlite3

    from tether._registry.stat_cache import stat_key

    evil = _folder(tmp_path / "evil", count=1)
    registry.add_dataset(evil, "other")
    victim = _folder(tmp_path / "victim", count=1)
    cache = next(Path(registry.cache_dir).glob("stat-*.sqlite"))
    os.chmod(cache.parent, 0o777)  # a cache shared with others
    with sqlite3.connect(cache) as db:
        (entry,) = db.execute("SELECT entry FROM files WHERE path = ?",
                              (str(evil / "f000.txt"),)).fetchone()
        assert json.loads(entry)
        db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, NULL)",
                   (str(victim / "f000.txt"), stat_key(victim / "f000.txt"), entry))
    added = registry.add_dataset(victim, "victim")
    assert added.files[0].digest != registry.get_dataset("other").files[0].digest
    monkeypatch.setenv("TETHER_STAT_CACHE", "off")
    assert added.digest == registry.add_dataset(victim, "victim").digest


def test_chunks_a_gc_removed_before_the_add_pinned_them_fail_the_add(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier add stored and remembered a file, then failed to commit; a gc removed
    its chunks after this add found them in the store but before it pinned them: a
    version was recorded whose bytes were gone (a review). The commit checks them."""
    from tether._errors import MissingChunks
    from tether._registry import datasets

    folder = _folder(tmp_path / "data", count=1)
    (folder / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(Exception, match="tag"):
        registry.add_dataset(folder, "d", tags={"bad\tkey": "x"})
    (folder / "t.csv").write_text("a,b\n1,2\n3,4\n")
    real = datasets.table_facts

    def facts_while_a_gc_runs(path: Path) -> object:
        if path.name == "t.csv":
            registry.gc(grace_seconds=0)
        return real(path)

    monkeypatch.setattr(datasets, "table_facts", facts_while_a_gc_runs)
    with pytest.raises(MissingChunks, match="run it again"):
        registry.add_dataset(folder, "d")
    monkeypatch.setattr(datasets, "table_facts", real)
    added = registry.add_dataset(folder, "d")  # read again: its chunks stored anew
    assert registry.store.verify(added.files, label=added.ref) == []


def test_a_file_changed_just_now_is_read_again_next_time(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a file system's clock ticks coarsely (FAT: 2 s, HFS+: 1 s), a file rewritten
    at the same size in the tick it was read in keeps its whole stat, and a remembered
    entry would stand for bytes it no longer holds. A file changed less than SETTLE_NS
    before it was read is not remembered; once settled it is."""
    from tether._registry import cache_seal, stat_cache

    assert cache_seal.SETTLE_NS >= 2_000_000_000  # the real window: FAT's 2 s mtimes
    monkeypatch.setattr(stat_cache, "SETTLE_NS", 500_000_000, raising=False)  # to wait less
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "fresh.txt").write_bytes(os.urandom(2048))
    registry.add_dataset(folder, "corpus")
    reads = _count_reads(monkeypatch)
    registry.add_dataset(folder, "corpus")
    assert reads == [["fresh.txt"]]  # not taken from the cache: too new to trust
    time.sleep(0.6)
    registry.add_dataset(folder, "corpus")  # read again, and remembered now
    registry.add_dataset(folder, "corpus")
    assert reads == [["fresh.txt"], ["fresh.txt"], []]
