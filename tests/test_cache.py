"""The client's chunk cache: bounded, LRU, pinned while in use, never poisoned."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tether import IntegrityError, InvalidInput, Registry
from tether._store import FileEntry
from tether._store.blobs import LocalBlobs, make_temp, scratch_root
from tether._store.cache import DEFAULT_MAX_BYTES, ChunkCache, configured_max_bytes, parse_size
from tether._store.chunkstore import ChunkStore
from tether.cli import cli


class RemoteLike(LocalBlobs):
    """A folder the store treats as remote: reads go through the chunk cache."""

    is_local = False
    tmp_dir: Path | None = None

    def temp_file(self) -> tuple[int, Path]:
        return make_temp(self.tmp_dir or scratch_root(), "upload")

    def local_path(self, key: str) -> Path | None:
        return None


def remote_store(tmp_path: Path, max_bytes: int, cache: str = "cache") -> ChunkStore:
    return ChunkStore(RemoteLike(tmp_path / "store"), cache_dir=tmp_path / cache,
                      cache_max_bytes=max_bytes, pack_target=4 << 20)


def ingest(store: ChunkStore, tmp_path: Path, name: str, size: int = 1 << 20) -> FileEntry:
    folder = tmp_path / "src" / name
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(os.urandom(size))
    return store.ingest(folder, ["w.bin"]).files[0]


def load(store: ChunkStore, tmp_path: Path, entry: FileEntry, tag: str) -> None:
    out = tmp_path / "out" / tag
    store.materialize([entry], out, label=tag)
    assert (out / "w.bin").stat().st_size == entry.size


def cached(store: ChunkStore, entry: FileEntry) -> int:
    assert store.cache is not None
    return sum(store.cache.has(c.digest) for c in entry.chunks)


def cache_bytes(store: ChunkStore) -> int:
    assert store.cache is not None
    return int(store.cache.stats()["bytes"])


def test_the_bound_holds_and_least_recently_used_chunks_go_first(tmp_path: Path) -> None:
    bound = (5 << 20) // 2
    store = remote_store(tmp_path, bound)
    a, b, c = (ingest(store, tmp_path, n) for n in "abc")
    load(store, tmp_path, a, "a1")
    load(store, tmp_path, b, "b1")
    assert cached(store, a) == len(a.chunks) and cached(store, b) == len(b.chunks)
    load(store, tmp_path, a, "a2")  # a hit: a is now more recent than b
    load(store, tmp_path, c, "c1")
    assert cache_bytes(store) <= bound
    assert cached(store, a) == len(a.chunks)  # recently used: kept
    assert cached(store, b) < len(b.chunks)  # least recently used: evicted first
    assert cached(store, c) == len(c.chunks)
    for entry, tag in ((b, "b2"), (a, "a3"), (c, "c2")):
        load(store, tmp_path, entry, tag)
        assert cache_bytes(store) <= bound


def test_a_load_larger_than_the_cache_still_loads_within_the_bound(tmp_path: Path) -> None:
    store = remote_store(tmp_path, 512 << 10)
    big = ingest(store, tmp_path, "big", 3 << 20)
    load(store, tmp_path, big, "big")
    assert 0 < cache_bytes(store) <= 512 << 10


def test_chunks_in_use_survive_eviction(tmp_path: Path) -> None:
    bound = (3 << 20) // 2
    store = remote_store(tmp_path, bound)
    assert store.cache is not None
    a, b, c = (ingest(store, tmp_path, n) for n in "abc")
    load(store, tmp_path, a, "a1")
    with store.cache.in_use(x.digest for x in a.chunks):  # as a running load holds them
        load(store, tmp_path, b, "b1")
        load(store, tmp_path, c, "c1")
        assert cached(store, a) == len(a.chunks)
        assert cache_bytes(store) <= bound
        assert store.cache.stats()["pinned_chunks"] == len(a.chunks)
    assert not list((tmp_path / "cache" / "pins").iterdir())  # the pin went with the load
    load(store, tmp_path, b, "b2")
    load(store, tmp_path, c, "c2")
    assert cached(store, a) < len(a.chunks)  # unpinned: evictable again


PINNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tether._store.cache import ChunkCache
    digests = Path(sys.argv[2]).read_text().split()
    with ChunkCache(Path(sys.argv[1])).in_use(digests):
        print("pinned", flush=True)
        time.sleep(120)
    """
)


def test_another_processes_pins_hold_until_it_dies(tmp_path: Path) -> None:
    store = remote_store(tmp_path, 8 << 20)
    assert store.cache is not None
    a = ingest(store, tmp_path, "a")
    b = ingest(store, tmp_path, "b")
    load(store, tmp_path, a, "a")
    load(store, tmp_path, b, "b")
    (tmp_path / "digests").write_text("\n".join(c.digest for c in a.chunks))
    (tmp_path / "pinner.py").write_text(PINNER)
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "pinner.py"), str(tmp_path / "cache"),
         str(tmp_path / "digests")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "pinned"
        pruned = store.cache.prune(0)  # empty the cache, except what a live load uses
        assert cached(store, a) == len(a.chunks) and cached(store, b) == 0
        assert pruned["chunks"] == len(a.chunks)
    finally:
        proc.kill()
        proc.wait()
    stats = store.cache.stats()
    assert stats["leftovers"]["pins"]["count"] == 1  # the dead process's pin
    pruned = store.cache.prune(0)
    assert pruned["removed_pins"]["count"] == 1 and pruned["chunks"] == 0
    assert not list((tmp_path / "cache" / "pins").iterdir())


def test_a_corrupt_chunk_never_enters_the_cache_and_a_repair_is_seen(tmp_path: Path) -> None:
    store = remote_store(tmp_path, 64 << 20)
    entry = ingest(store, tmp_path, "a")
    victim = entry.chunks[3]
    loc = store.locate(victim.digest)
    assert loc is not None
    pack = tmp_path / "store" / "packs" / f"{loc.pack}.pack"
    good = pack.read_bytes()
    bad = bytearray(good)
    bad[loc.offset + 10] ^= 0xFF
    pack.write_bytes(bytes(bad))

    reader = remote_store(tmp_path, 64 << 20, cache="reader-cache")
    assert reader.cache is not None
    with pytest.raises(IntegrityError, match=victim.digest[:16]):
        load(reader, tmp_path, entry, "bad")
    assert not reader.cache.has(victim.digest)  # verified before it is kept: nothing kept

    pack.write_bytes(good)  # repaired
    load(reader, tmp_path, entry, "good")
    assert reader.cache.has(victim.digest)
    assert reader.cache.path(victim.digest).read_bytes() == good[loc.offset:loc.offset + loc.length]


def test_a_poisoned_cache_entry_is_dropped_and_refetched(tmp_path: Path) -> None:
    store = remote_store(tmp_path, 64 << 20)
    assert store.cache is not None
    entry = ingest(store, tmp_path, "a")
    load(store, tmp_path, entry, "first")
    victim = entry.chunks[0]
    store.cache.path(victim.digest).write_bytes(b"not the chunk")
    load(store, tmp_path, entry, "second")
    loc = store.locate(victim.digest)
    assert loc is not None
    stored = (tmp_path / "store" / "packs" / f"{loc.pack}.pack").read_bytes()
    assert store.cache.path(victim.digest).read_bytes() == stored[
        loc.offset:loc.offset + loc.length]


def test_the_bound_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    assert configured_max_bytes() == DEFAULT_MAX_BYTES == 10 << 30
    monkeypatch.setenv("TETHER_CACHE_MAX_BYTES", "1.5MiB")
    assert ChunkCache(tmp_path).max_bytes == 3 << 19
    assert remote_store(tmp_path, None).cache.max_bytes == 3 << 19  # type: ignore[arg-type, union-attr]
    assert [parse_size(t) for t in ("10GiB", "500MB", "1k", "7")] == [10 << 30, 500 * 10**6,
                                                                       1000, 7]
    with pytest.raises(InvalidInput, match="not a size"):
        parse_size("lots")


def test_temporary_files_stay_in_the_cache_never_in_tmp(
    registry: Registry, tmp_path: Path
) -> None:
    system_tmp = Path(tempfile.gettempdir())

    def ours() -> set[str]:
        return {p.name for p in system_tmp.iterdir()
                if p.name.startswith(("tether-log-", "tether-upload-", "tether-load-"))}

    before = ours()
    store = remote_store(tmp_path, 64 << 20)
    entry = ingest(store, tmp_path, "a", 3 << 20)
    load(store, tmp_path, entry, "a")
    folder = tmp_path / "src" / "m"
    folder.mkdir()
    (folder / "w.bin").write_bytes(os.urandom(1 << 20))
    registry.log_model(str(folder), "m")
    assert ours() == before
    assert registry.store.scratch_args("log")["dir"].startswith(str(registry.cache_dir))


def test_cli_cache_stats_and_prune(registry: Registry, tmp_path: Path) -> None:
    store = ChunkStore(RemoteLike(tmp_path / "store"), cache_dir=registry.cache_dir)
    a = ingest(store, tmp_path, "a")
    load(store, tmp_path, a, "a")
    root = str(registry.location.root)
    runner = CliRunner()
    stats = json.loads(runner.invoke(cli, ["-r", root, "cache", "stats", "--json"]).output)
    assert stats["chunks"] == len(a.chunks) and stats["bytes"] >= 1 << 20
    assert stats["max_bytes"] == DEFAULT_MAX_BYTES
    text = runner.invoke(cli, ["-r", root, "cache", "stats"])
    assert text.exit_code == 0 and "chunks:" in text.output
    pruned = json.loads(runner.invoke(
        cli, ["-r", root, "cache", "prune", "--max-bytes", "512KiB", "--json"]).output)
    assert pruned["bytes"] <= 512 << 10 and pruned["evicted_chunks"] > 0
    emptied = runner.invoke(cli, ["-r", root, "cache", "prune", "--max-bytes", "0"])
    assert emptied.exit_code == 0 and "evicted" in emptied.output
    assert ChunkCache(registry.cache_dir).stats()["chunks"] == 0
    bad = runner.invoke(cli, ["-r", root, "cache", "prune", "--max-bytes", "lots"])
    assert bad.exit_code == 1 and "not a size" in bad.output


def test_a_cached_chunk_pruned_during_a_large_load_is_fetched_again(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A load of many chunks does not pin them in the cache (the pin of a million was
    300 MB): a chunk the cache said it had, then lost to another process's pruning,
    is read from the store instead, and the load is whole."""
    from tether._store import chunkstore

    monkeypatch.setattr(chunkstore, "_CACHE_PIN_MAX", 0)
    store = remote_store(tmp_path, 64 << 20)
    assert store.cache is not None
    entry = ingest(store, tmp_path, "a")
    load(store, tmp_path, entry, "warm")
    assert cached(store, entry) == len(entry.chunks)
    pinned: list[Any] = []
    real = store.cache.in_use
    monkeypatch.setattr(store.cache, "in_use", lambda d: pinned.append(d) or real(d))
    monkeypatch.setattr(store.cache, "has", lambda digest: True)  # as planned
    shutil.rmtree(store.cache.chunks)  # pruned by someone else after the plan was made
    load(store, tmp_path, entry, "after")
    assert pinned == []


def test_tether_cache_dir_is_the_cache_folder_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TETHER_CACHE_DIR got ``tether/`` appended like XDG_CACHE_HOME, so the Kubernetes
    manifests' /var/cache/tether held everything under /var/cache/tether/tether."""
    from tether._registry.location import default_cache_dir
    from tether._store.blobs import scratch_root

    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "c" and scratch_root() == tmp_path / "c" / "tmp"
    monkeypatch.delenv("TETHER_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "tether"


def test_the_cache_bound_is_a_registry_setting_too(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The faults issue asked for a setting and an environment variable; only the
    variable existed. The variable wins where it is set."""
    root = str(registry.location.root)

    def bound() -> int:
        out = CliRunner().invoke(cli, ["-r", root, "cache", "stats", "--json"])
        assert out.exit_code == 0, out.output
        return int(json.loads(out.output)["max_bytes"])

    monkeypatch.delenv("TETHER_CACHE_MAX_BYTES", raising=False)
    assert bound() == 10 << 30
    registry.set_setting("cache.max_bytes", "2GiB")
    assert bound() == 2 << 30
    monkeypatch.setenv("TETHER_CACHE_MAX_BYTES", "1GiB")
    assert bound() == 1 << 30
    with pytest.raises(InvalidInput, match="not a size"):
        registry.set_setting("cache.max_bytes", "lots")
