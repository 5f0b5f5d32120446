"""Adding a folder again reads only the files whose stat changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether import Registry
from tether._store.chunkstore import ChunkStore


def _folder(root: Path, count: int = 50) -> Path:
    root.mkdir()
    for i in range(count):
        (root / f"f{i:03}.txt").write_bytes(os.urandom(2048))
    return root


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
    monkeypatch.setattr(ChunkStore, "missing_of",
                        lambda self, lists: {d for chunks in lists for d in chunks.digests()})
    reads = _count_reads(monkeypatch)
    registry.add_dataset(folder, "corpus")
    assert reads == [sorted(p.name for p in folder.iterdir())]
