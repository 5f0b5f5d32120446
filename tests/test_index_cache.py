"""A network store's merged index files are kept on the client's disk (index_cache.py):
a fresh process fetches only the files merged since it last looked, reads them in
place, and a kept copy is never trusted further than the store's own bytes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether._store import open_store
from tether._store.chunkstore import ChunkStore
from tether._store.midx import is_merged

from .conftest import make_bucket


@pytest.fixture
def bucket(s3_endpoint: str) -> Iterator[str]:
    make_bucket(s3_endpoint, "models")
    yield "s3://models/registry"


def _counting(store: ChunkStore) -> list[str]:
    """The index keys ``store`` reads from its blobs, in order."""
    reads: list[str] = []
    blobs: Any = store.blobs
    for method in ("get_bytes", "get_range", "get_range_into"):
        real = getattr(blobs, method)

        def counted(key: str, *args: Any, real: Any = real) -> Any:
            if key.startswith("index/"):
                reads.append(key)
            return real(key, *args)

        setattr(blobs, method, counted)
    return reads


def _ingest(store: ChunkStore, folder: Path, name: str, size: int) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(os.urandom(size))
    return store.ingest(folder, [name])


def _kept(cache: Path) -> list[Path]:
    return sorted(cache.glob("index/*/*.idx"))


def _one_merged_file_kept(bucket: str, tmp_path: Path, size: int) -> tuple[Any, Path, Path]:
    """A store with one merged file, read once through ``tmp_path/cache``: (the ingest's
    report, the cache folder, the kept copy)."""
    writer = open_store(bucket, cache_dir=tmp_path / "writer-cache")
    report = _ingest(writer, tmp_path / "v", "w.bin", size)
    writer.consolidate()
    cache = tmp_path / "cache"
    open_store(bucket, cache_dir=cache).refresh()
    [kept] = _kept(cache)
    return report, cache, kept


def test_a_fresh_process_reads_merged_files_it_kept_without_fetching_them(
        bucket: str, tmp_path: Path) -> None:
    writer = open_store(bucket, cache_dir=tmp_path / "writer-cache")
    reports = [_ingest(writer, tmp_path / f"v{i}", "w.bin", 300_000 * (i + 1)) for i in range(3)]
    writer.consolidate()  # one merged file covering every pack
    [merged] = [i.key for i in writer.blobs.list("index/")]

    cache = tmp_path / "cache"
    first = open_store(bucket, cache_dir=cache)
    reads = _counting(first)
    first.refresh()
    assert merged in reads  # fetched once ...
    [kept] = _kept(cache)
    assert kept.name == merged.rsplit("/", 1)[-1] and is_merged(kept.read_bytes())

    again = open_store(bucket, cache_dir=cache)
    reads = _counting(again)
    again.refresh()
    assert reads == []  # ... and not by the next process
    assert again.missing(c.digest for r in reports for f in r.files for c in f.chunks) == set()
    again.materialize(reports[2].files, tmp_path / "out", label="v2")
    assert (tmp_path / "out" / "w.bin").read_bytes() == (tmp_path / "v2" / "w.bin").read_bytes()
    assert again.index.segments[kept.stem]._from_file  # read in place, not held in memory

    # A later merge replaces the file: the next process fetches the new one, and the
    # copy of the old one is removed.
    later = _ingest(writer, tmp_path / "v3", "w.bin", 200_000)
    writer.consolidate()
    third = open_store(bucket, cache_dir=cache)
    third.refresh()
    [new] = _kept(cache)
    assert new != kept and not kept.exists()
    third.materialize(later.files, tmp_path / "out3", label="v3")
    assert (tmp_path / "out3" / "w.bin").read_bytes() == (tmp_path / "v3" / "w.bin").read_bytes()


def test_a_large_merged_file_is_streamed_to_disk(bucket: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Past _INDEX_IN_MEMORY a merged file is fetched in pieces into the cache, never
    whole into memory (as get_bytes would)."""
    from tether._store import chunk_index, index_cache

    writer = open_store(bucket, cache_dir=tmp_path / "writer-cache", pack_target=1 << 20)
    report = _ingest(writer, tmp_path / "v", "w.bin", 6 << 20)
    writer.consolidate()
    [merged] = writer.blobs.list("index/")
    monkeypatch.setattr(chunk_index, "_INDEX_IN_MEMORY", 100)
    monkeypatch.setattr(index_cache, "_PIECE", 1000)
    reader = open_store(bucket, cache_dir=tmp_path / "cache")
    whole: list[str] = []
    real = reader.blobs.get_bytes
    monkeypatch.setattr(reader.blobs, "get_bytes",
                        lambda key: whole.append(key) or real(key))
    reader.refresh()
    assert merged.key not in whole and merged.size > 3000  # in pieces of 1,000 bytes
    [kept] = _kept(tmp_path / "cache")
    assert kept.stat().st_size == merged.size
    assert reader.verify(report.files, label="v") == []


def test_a_damaged_or_foreign_copy_is_fetched_again(bucket: str, tmp_path: Path) -> None:
    """A kept copy is used only under its name and with the size the store lists: a
    truncated one is fetched again, and the copies of two stores never meet."""
    report, cache, kept = _one_merged_file_kept(bucket, tmp_path, 500_000)
    writer = open_store(bucket)
    kept.write_bytes(kept.read_bytes()[:-56])  # one entry short
    fresh = open_store(bucket, cache_dir=cache)
    reads = _counting(fresh)
    fresh.refresh()
    assert reads  # fetched again
    assert fresh.verify(report.files, label="v") == []
    assert _kept(cache)[0].stat().st_size == writer.blobs.list("index/")[0].size

    # Another store (another prefix of the bucket) under the same cache folder.
    other = open_store(bucket + "-other", cache_dir=cache)
    _ingest(other, tmp_path / "o", "w.bin", 100_000)
    other.consolidate()
    open_store(bucket + "-other", cache_dir=cache).refresh()
    assert len({p.parent for p in _kept(cache)}) == 2  # a folder each


def test_the_server_gateway_client_keeps_the_servers_merged_files(tmp_path: Path) -> None:
    """Through ``tether server``: the client cannot merge (the server does), and reads
    the server's merged files once per cache, not once per process."""
    from .servers import start_server, stop

    server = start_server(f"sqlite:///{tmp_path / 'meta.db'}",
                          f"file://{tmp_path / 'objects'}", tmp_path)
    try:
        from tether.remote import connect

        store = connect(server.url, token=server.admin_token,
                        cache_dir=tmp_path / "writer-cache").store  # through the gateway
        reports = [_ingest(store, tmp_path / f"v{i}", "w.bin", 200_000) for i in range(3)]
        open_store(f"file://{tmp_path / 'objects'}").consolidate()  # as the server's tidy does
        cache = tmp_path / "client-cache"
        first = connect(server.url, token=server.admin_token, cache_dir=cache).store
        first.refresh()
        second = connect(server.url, token=server.admin_token, cache_dir=cache).store
        reads = _counting(second)
        second.refresh()
        assert reads == [] and len(_kept(cache)) == 1
        second.materialize(reports[1].files, tmp_path / "out", label="v1")
        assert (tmp_path / "out" / "w.bin").read_bytes() == (tmp_path / "v1" / "w.bin").read_bytes()
    finally:
        stop(server)


def test_a_hostile_merged_file_claims_nothing_and_breaks_nothing(bucket: str, tmp_path: Path,
                                                                 s3_endpoint: str) -> None:
    """A merged file the store serves may be anything: a bare magic number, or a header
    claiming four billion covers. With the cache as without it, refresh goes on, the
    file claims nothing, and every honest chunk is found."""
    import boto3

    from tether._store.midx import _HEAD, MAGIC

    writer = open_store(bucket, cache_dir=tmp_path / "writer-cache")
    report = _ingest(writer, tmp_path / "v", "w.bin", 300_000)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for name, body in ((f"{'a' * 32}", MAGIC + b"\0" * 4),
                       (f"{'b' * 32}", _HEAD.pack(MAGIC, 0, 0, 0xFFFFFFFF, 0) + bytes(64))):
        s3.put_object(Bucket="models", Key=f"registry/index/{name}.idx", Body=body)
    for cache in (tmp_path / "cache", None):
        reader = open_store(bucket, cache_dir=cache)
        reader.refresh()
        assert reader.missing(c.digest for f in report.files for c in f.chunks) == set()
    assert not [p for p in _kept(tmp_path / "cache") if p.stem in ("a" * 32, "b" * 32)]


def test_two_endpoints_with_one_bucket_name_keep_apart(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``s3://models/registry`` on two endpoints are two stores: their kept files go in
    two folders (one refresh would otherwise prune the other's copies)."""
    from tether._store.blobs import S3Blobs
    from tether._store.index_cache import IndexCache

    folders = set()
    for endpoint in ("http://127.0.0.1:1", "http://127.0.0.1:2", ""):
        monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", endpoint)
        folders.add(IndexCache(tmp_path, S3Blobs("models", "registry")).folder)  # type: ignore[arg-type]
    assert len(folders) == 3


def test_cache_stats_count_the_index_copies_and_an_emptied_cache_drops_them(
        bucket: str, tmp_path: Path) -> None:
    from tether._store.cache import ChunkCache

    report, cache, kept = _one_merged_file_kept(bucket, tmp_path, 300_000)
    chunks = ChunkCache(cache)
    assert chunks.stats()["index_bytes"] == kept.stat().st_size
    chunks.prune(10 << 20)  # a bound: the copies stay
    assert kept.exists()
    assert chunks.prune(0)["index_bytes"] == 0 and not _kept(cache)
    again = open_store(bucket, cache_dir=cache)
    again.refresh()  # fetched again
    assert len(_kept(cache)) == 1 and again.verify(report.files, label="v") == []


@pytest.mark.parametrize("linked", [True, False])
def test_a_writer_does_not_download_the_merged_file_it_just_wrote(
        bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: bool) -> None:
    """Kept by a hard link where the cache and the upload's temp file share a disk, by a
    synced copy where they do not."""
    if not linked:
        def cross_device(*_args: Any) -> None:
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr("tether._store.index_cache.os.link", cross_device)
    cache = tmp_path / "cache"
    writer = open_store(bucket, cache_dir=cache)
    report = _ingest(writer, tmp_path / "v", "w.bin", 300_000)
    reads = _counting(writer)
    writer.consolidate()  # reads the journal, writes the merged file, then refreshes
    [merged] = [i.key for i in writer.blobs.list("index/")]
    assert reads and merged not in reads  # kept as written, not downloaded back
    [kept] = _kept(cache)
    fresh = open_store(bucket, cache_dir=cache)
    reads = _counting(fresh)
    fresh.refresh()
    assert reads == [] and fresh.verify(report.files, label="v") == []
    assert kept.stat().st_size == fresh.blobs.list("index/")[0].size


def test_a_bound_of_zero_from_the_environment_keeps_the_index_copies(
        bucket: str, tmp_path: Path) -> None:
    """Only an explicit ``prune(0)`` (``--max-bytes 0``) drops the index copies."""
    from tether._store.cache import ChunkCache

    _report, cache, kept = _one_merged_file_kept(bucket, tmp_path, 300_000)
    chunks = ChunkCache(cache, max_bytes=0)
    assert chunks.prune()["removed_index_bytes"] == 0 and kept.exists()
    assert chunks.prune(0)["removed_index_bytes"] > 0 and not kept.exists()


def test_a_merged_file_listed_larger_than_it_says_is_not_fetched(
        bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing gave a merged file's size as 1 PB: it was fetched piece by piece (1 GB in
    8 s) and checked only at the end (a review). Its header is read first now."""
    from tether._store import chunk_index, index_cache
    from tether._store.blobs import BlobInfo

    writer = open_store(bucket, cache_dir=tmp_path / "writer-cache", pack_target=1 << 20)
    _ingest(writer, tmp_path / "v", "w.bin", 2 << 20)
    writer.consolidate()
    [merged] = writer.blobs.list("index/")
    monkeypatch.setattr(chunk_index, "_INDEX_IN_MEMORY", 100)
    monkeypatch.setattr(index_cache, "_PIECE", 1000)
    reader = open_store(bucket, cache_dir=tmp_path / "cache")
    real_list = reader.blobs.list
    monkeypatch.setattr(reader.blobs, "list", lambda prefix: [
        BlobInfo(i.key, 10**15 if i.key == merged.key else i.size, i.mtime)
        for i in real_list(prefix)])
    fetched: list[int] = []
    real_range = reader.blobs.get_range_into
    monkeypatch.setattr(reader.blobs, "get_range_into", lambda key, offset, view: (
        fetched.append(offset), real_range(key, offset, view))[1])
    with contextlib.suppress(Exception):
        reader.refresh()
    assert len(fetched) <= 1  # the first piece, read to see what it says
