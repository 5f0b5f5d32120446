"""ChunkList: a file's chunks as packed 40-byte records, in manifests and the identity digest.

The identity digest must not move: it is checked here against the old definition
(``digest_of`` over the nested lists) for manifests past every piece boundary.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import blake3
import pytest

from tether import InvalidInput
from tether._digest import digest_of
from tether._identity import check_manifest, manifest_digest
from tether._store.base import LISTED_CHUNKS, FileEntry
from tether._store.chunklist import RECORD_SIZE, ChunkList, ChunkListBuilder, ChunkRef

D0, D1, D2 = "00" * 32, "0123456789abcdef" * 4, "ff" * 32


def refs(n: int, seed: int = 0) -> list[ChunkRef]:
    rng = random.Random(seed)
    raw = rng.randbytes(32 * n).hex()
    return [ChunkRef(raw[64 * i:64 * i + 64], rng.randrange(1, 1 << 20)) for i in range(n)]


# 1. A Sequence[ChunkRef]


def test_sequence_behaviour() -> None:
    chunks = [*refs(7), ChunkRef(D2, 0), ChunkRef(D1, (1 << 63) - 1)]
    cl = ChunkList.of(chunks)
    assert len(cl) == 9 and len(ChunkList()) == 0 and not ChunkList() and cl
    assert list(cl) == chunks and all(type(c) is ChunkRef for c in cl)
    for i in range(-9, 9):
        assert cl[i] == chunks[i]
    for bad in (9, -10, 1 << 40):
        with pytest.raises(IndexError):
            cl[bad]
    with pytest.raises(IndexError):
        ChunkList()[0]
    for sl in (slice(None), slice(2, 5), slice(-3, None), slice(5, 2), slice(0, 100),
               slice(None, None, 2), slice(1, 8, 3), slice(None, None, -1), slice(7, 1, -2),
               slice(100, 200), slice(-100, 3)):
        part = cl[sl]
        assert isinstance(part, ChunkList) and list(part) == chunks[sl], sl
    assert cl.total() == sum(c.size for c in chunks)
    assert ChunkList().total() == 0
    assert list(cl.digests()) == [c.digest for c in chunks]
    assert list(cl.sizes()) == [c.size for c in chunks]
    rows = cl.rows()
    assert rows["digest"].tobytes() == b"".join(bytes.fromhex(c.digest) for c in chunks)
    assert rows["size"].tolist() == [c.size for c in chunks]
    assert cl.index(chunks[4]) == 4 and chunks[3] in cl and ChunkRef(D0, 1) not in cl
    assert list(reversed(cl)) == chunks[::-1]


def test_equality_hash_and_pickle() -> None:
    chunks = refs(5, seed=1)
    cl = ChunkList.of(chunks)
    same = [ChunkList.of((c.digest, c.size) for c in chunks), ChunkList(cl.records),
            ChunkList.from_text(cl.to_text()), ChunkList.of(chunks + refs(3))[:5],
            ChunkList.of(chunks[::-1])[::-1]]
    for other in same:
        assert other == cl and cl == other and (cl != other) is False
        assert hash(other) == hash(cl)
    assert list(cl) == chunks and cl != tuple(chunks) and tuple(chunks) != cl
    assert len({cl, *same}) == 1
    different = [chunks[:4], [*chunks, chunks[0]], [*chunks[:4], ChunkRef(chunks[4].digest, 1)],
                 [(c.digest, c.size) for c in chunks], ChunkList.of(chunks[1:])]
    for other in different:
        assert cl != other and (cl == other) is False
    assert cl != "x" and cl != None and cl != cl.records  # noqa: E711
    assert list(ChunkList()) == [] and ChunkList() != ()
    for value in (cl, ChunkList(), ChunkList.of(refs(5000))):
        back = pickle.loads(pickle.dumps(value))
        assert type(back) is ChunkList and back == value and hash(back) == hash(value)
    entry = FileEntry("a", cl.total(), D0, chunks)
    assert pickle.loads(pickle.dumps(entry)) == entry and hash(entry) == hash(
        FileEntry("a", cl.total(), D0, cl))


def test_a_chunk_list_equals_only_chunk_lists() -> None:
    # Equal to a tuple, it would need the tuple's hash too (sets and dicts rely on it).
    cl = ChunkList.of(refs(3))
    assert cl != tuple(cl) and cl != list(cl)
    assert cl == ChunkList.of(tuple(cl)) and hash(cl) == hash(ChunkList.of(tuple(cl)))


# 2. What is not a chunk


@pytest.mark.parametrize("digest", [
    "g" * 64, "0" * 63, "0" * 65, "AB" * 32, "aB" * 32, "00 " * 21 + "0", " " + "0" * 63,
    "0" * 62 + " 0", "0" * 30 + " " + "0" * 32 + " ", "", 0, None, b"0" * 64, bytes(32), "é" * 64,
])
def test_refuses_digests(digest: object) -> None:
    with pytest.raises(ValueError):
        ChunkListBuilder().append(digest, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ChunkList.of([(digest, 1)])


@pytest.mark.parametrize("size", [-1, -(1 << 63), 1 << 63, 1 << 64, "x", "", "1.5", "-1"])
def test_refuses_sizes(size: object) -> None:
    with pytest.raises(ValueError):
        ChunkListBuilder().append(D1, size)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ChunkList.of([ChunkRef(D1, size)])  # type: ignore[arg-type]


def test_size_conversions_the_code_allows() -> None:
    # int() of a bool or numeric string is a count; the stored value is the int.
    assert list(ChunkList.of([(D1, True), (D1, "12"), (D1, False)])) == [
        ChunkRef(D1, 1), ChunkRef(D1, 12), ChunkRef(D1, 0)]
    assert ChunkList.of([(D1, (1 << 63) - 1)])[0].size == (1 << 63) - 1
    with pytest.raises(TypeError):
        ChunkList.of([(D1, None)])


def test_builder_refusal_leaves_it_unchanged() -> None:
    builder = ChunkListBuilder()
    builder.append(D1, 5)
    for digest, size in ((D1.upper(), 5), (D1, -1), (D1[:-1] + " ", 5)):
        with pytest.raises(ValueError):
            builder.append(digest, size)
    assert len(builder) == 1
    builder.append(D2, 3)
    builder.append(D0, 4)
    assert list(builder.build()) == [ChunkRef(D1, 5), ChunkRef(D2, 3), ChunkRef(D0, 4)]
    assert builder.build() == ChunkList()


@pytest.mark.parametrize("text", [
    "not base64!", "AAAA AAAA", "AAA", "AAAA\n", "é", "A" * 40, "A" * 56,
    ChunkList.of(refs(2)).to_text()[:-4], b"AAAA", None,
])
def test_from_text_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        ChunkList.from_text(text)  # type: ignore[arg-type]


def test_from_text_round_trip_and_bad_lengths() -> None:
    for n in (0, 1, 3, 1000):
        cl = ChunkList.of(refs(n, seed=n))
        assert ChunkList.from_text(cl.to_text()) == cl and cl.to_text().isascii()
    for length in (1, 39, 41, 79):
        with pytest.raises(ValueError):
            ChunkList(bytes(length))


# 3. FileEntry's two forms


@pytest.mark.parametrize("n", [0, 1, LISTED_CHUNKS, LISTED_CHUNKS + 1, 50_000])
def test_file_entry_round_trip(n: int) -> None:
    assert LISTED_CHUNKS == 4096
    chunks = refs(n, seed=n)
    entry = FileEntry("dir/ü.bin", sum(c.size for c in chunks), D2, chunks)
    assert isinstance(entry.chunks, ChunkList) and list(entry.chunks) == chunks
    data = entry.to_dict()
    if n <= LISTED_CHUNKS:
        assert data["chunks"] == [[c.digest, c.size] for c in chunks]
    else:
        assert isinstance(data["chunks"], str)
        assert list(ChunkList.from_text(data["chunks"])) == chunks
    back = FileEntry.from_dict(data)
    assert back == entry and list(back.chunks) == chunks and hash(back) == hash(entry)
    assert FileEntry.from_dict({**entry.to_dict(), "size": str(entry.size)}) == entry


def test_a_reader_expecting_pairs_refuses_the_packed_form() -> None:
    # An older Tether reads chunks as pairs; a packed list must fail there, not read as
    # no chunks (a version registered without them would lose its bytes to gc).
    entry = FileEntry("a", 4097 * 3, D0, [(D1, 3)] * 4097)
    data = entry.to_dict()
    with pytest.raises(ValueError):
        tuple(ChunkRef(d, int(s)) for d, s in data.get("chunks", []))  # the old reader
    assert FileEntry.from_dict(data) == entry


def reference_digest(files: list[tuple[str, int, str, list[list]]]) -> str:
    return digest_of(sorted([[p, s, d, c] for p, s, d, c in files], key=lambda f: f[0]))


PATHS = ["a", "a/b", "a-b", "A", "é/ß.bin", "日本語/モデル.pt", "🙂.json", 'q"uote', "back\\slash",
         "tab\there", "line\u2028sep", "z" * 300, "ñ", "a/b/c/d/e.safetensors"]


@pytest.mark.parametrize("seed", range(6))
def test_manifest_digest_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    counts = [0, 1, 2, 4096, 4097, 65535, 65536, 65537, 140_000]
    files = []
    for k, path in enumerate(rng.sample(PATHS, rng.randint(1, 5))):
        n = counts[seed + 3] if k == 0 else rng.choice(counts[:6])
        chunks = [[c.digest, c.size] for c in refs(n, seed=seed * 100 + k)]
        files.append((path, sum(s for _, s in chunks), rng.randbytes(32).hex(), chunks))
    expected = reference_digest(files)
    entries = [FileEntry(p, s, d, [tuple(c) for c in cs]) for p, s, d, cs in files]
    listed = [{"path": p, "size": s, "digest": d, "chunks": cs} for p, s, d, cs in files]
    assert manifest_digest(entries) == expected
    assert manifest_digest(entries[::-1]) == expected
    assert manifest_digest(listed) == expected
    assert manifest_digest([e.to_dict() for e in entries]) == expected
    packed = [{**e.to_dict(), "chunks": e.chunks.to_text()} for e in entries]
    assert manifest_digest(packed) == expected
    if any(cs for *_, cs in files):  # the chunks count
        moved = [(p, s, d, cs[1:] if cs else cs) for p, s, d, cs in files]
        assert manifest_digest(
            [FileEntry(p, s, d, [tuple(c) for c in cs]) for p, s, d, cs in moved]) != expected


def test_manifest_digest_boundaries_and_golden() -> None:
    assert manifest_digest([]) == reference_digest([]) == blake3.blake3(b"[]").hexdigest()
    cs = refs(140_000, seed=7)
    listed = [[c.digest, c.size] for c in cs]
    entry = FileEntry("big", sum(c.size for c in cs), D0, cs)
    assert manifest_digest([entry, FileEntry("empty", 0, D2)]) == reference_digest(
        [("big", entry.size, D0, listed), ("empty", 0, D2, [])])
    text = f'[["é",3,"{D0}",[["{D1}",1],["{D2}",2]]],["ö",0,"{D2}",[]]]'
    golden = [{"path": "ö", "size": 0, "digest": D2, "chunks": []},
              {"path": "é", "size": 3, "digest": D0, "chunks": [[D1, 1], [D2, 2]]}]
    assert manifest_digest(golden) == blake3.blake3(text.encode()).hexdigest()


# 5. Chunks that do not add up


@pytest.mark.parametrize("n", [1, 3, LISTED_CHUNKS + 1])
def test_check_manifest_refuses_wrong_totals(n: int) -> None:
    entry = FileEntry("m/w.bin", 0, D0, refs(n, seed=n))
    total = entry.chunks.total()
    good = FileEntry(entry.path, total, D0, entry.chunks)
    listed = {"path": good.path, "size": total, "digest": D0,
              "chunks": [[c.digest, c.size] for c in good.chunks]}
    packed = {"path": good.path, "size": total, "digest": D0,
              "chunks": good.chunks.to_text()}
    for form in (good, listed, packed, good.to_dict()):
        check_manifest([form])
    for size in (total - 1, total + 1, 0):
        for form in (FileEntry(good.path, size, D0, good.chunks), {**listed, "size": size},
                     {**packed, "size": size}):
            with pytest.raises(InvalidInput, match="do not add up"):
                check_manifest([form])
    for bad in ({**listed, "chunks": [[D1.upper(), total]]},
                {**packed, "chunks": "***"},
                {**packed, "chunks": good.chunks.to_text()[:-8]}):
        with pytest.raises(InvalidInput, match="malformed"):
            check_manifest([bad])
    # No chunks recorded is allowed (an entry kept without them).
    check_manifest([FileEntry("x", 10, D0), {"path": "y", "size": 5, "digest": D0}])


@pytest.mark.parametrize("count", [3, 5000])  # a set below 4,096 chunks, numpy above
def test_known_chunks_counts_shared_bytes_as_a_set_would(count: int) -> None:
    from tether._store.chunklist import KnownChunks

    rng = random.Random(count)
    # Digests ending in zero bytes too (numpy's fixed-width strings pad with them).
    pool = [rng.randbytes(30) + b"\x00" * 2 if i % 7 == 0 else rng.randbytes(32)
            for i in range(2 * count)]
    old_lists = [ChunkList.of((d.hex(), rng.randrange(1, 1 << 20)) for d in pool[:count]),
                 ChunkList.of((d.hex(), 5) for d in pool[count // 2:count])]
    new = ChunkList.of((rng.choice(pool).hex(), rng.randrange(1, 1 << 20))
                       for _ in range(count))
    known = {c.digest for chunks in old_lists for c in chunks}
    expected = sum(c.size for c in new if c.digest in known)
    assert 0 < expected < new.total()
    assert KnownChunks(old_lists).shared_bytes(new) == expected
    assert KnownChunks(()).shared_bytes(new) == 0
    assert KnownChunks(old_lists).shared_bytes(ChunkList()) == 0
    # What storing ``new`` beside them adds: its distinct chunks not known, once each
    # (at their first size: the random sizes here differ where real ones cannot).
    unknown: dict[str, int] = {}
    every: dict[str, int] = {}
    for c in new:
        every.setdefault(c.digest, c.size)
        if c.digest not in known:
            unknown.setdefault(c.digest, c.size)
    assert 0 < len(unknown) < len(new)
    assert KnownChunks(old_lists).unknown_bytes(new) == sum(unknown.values())
    assert KnownChunks(()).unknown_bytes(new) == sum(every.values())
    assert KnownChunks(old_lists).unknown_bytes(ChunkList()) == 0


def test_a_builder_past_its_spill_size_builds_a_list_kept_in_a_file(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The records go to the scratch file as they come (the builder holds at most a
    write's worth), the list built maps it (the file is unlinked at once), and it reads,
    compares, slices and pickles as a list in memory does."""
    import os

    from tether._store import chunklist

    monkeypatch.setattr(chunklist, "SPILL_BYTES", 100 * RECORD_SIZE)
    monkeypatch.setattr(chunklist, "_WRITE_BYTES", 64 * RECORD_SIZE)
    made: list[Path] = []

    def scratch() -> tuple[int, Path]:
        path = tmp_path / f"list-{len(made)}"
        made.append(path)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), path

    refs = [ChunkRef(os.urandom(32).hex(), 1000 + i) for i in range(1000)]
    builder, plain = ChunkListBuilder(scratch), ChunkListBuilder()
    for ref in refs:
        builder.append(ref.digest, ref.size)
        plain.append(ref.digest, ref.size)
        assert len(builder._records) < 100 * RECORD_SIZE + RECORD_SIZE
    # Unlinked as soon as it was made: a process killed mid-ingest leaves nothing.
    assert len(builder) == 1000 and made and not made[0].exists()
    kept, held = builder.build(), plain.build()
    assert kept.in_file and not held.in_file
    assert kept == held and held == kept and list(kept) == refs
    assert list(kept.digests()) == [r.digest for r in refs]
    assert kept.total() == sum(r.size for r in refs) and kept[10:20] == held[10:20]
    assert kept[-1] == refs[-1] and kept.digest_at(7) == refs[7].digest
    assert b"".join(bytes(p) for p in kept.pieces(64)) == bytes(held.records)
    assert pickle.loads(pickle.dumps(kept)) == held and hash(kept) == hash(held)
    assert kept != ChunkList(held.records[:-RECORD_SIZE])
    for _ in kept.pieces(64):  # each piece's pages let go
        pass
    assert list(kept) == refs  # the pages come back from the page cache


def test_a_discarded_builder_closes_its_scratch_file(tmp_path: Path, monkeypatch: Any) -> None:
    import os

    from tether._store import chunklist

    monkeypatch.setattr(chunklist, "SPILL_BYTES", 10 * RECORD_SIZE)
    path = tmp_path / "list"
    builder = ChunkListBuilder(lambda: (os.open(path, os.O_RDWR | os.O_CREAT, 0o600), path))
    for i in range(50):
        builder.append(f"{i:064x}", i)
    fd = builder._fd
    assert fd is not None and not path.exists()
    builder.discard()
    assert len(builder) == 0 and builder._fd is None
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: its blocks are freed


def test_an_anonymous_mapping_is_copied_not_let_go() -> None:
    """Only a list built over a file adopts a mapping: an anonymous one's pages would
    come back as zeros once let go."""
    import mmap

    records = b"".join(bytes.fromhex(f"{i:064x}") + i.to_bytes(8, "little")
                       for i in range(2000))
    anonymous = mmap.mmap(-1, len(records))
    anonymous[:] = records
    chunks = ChunkList(anonymous)
    assert not chunks.in_file
    for _ in chunks.pieces(64):  # a list kept in a file would let these pages go
        pass
    assert bytes(chunks.records) == records and list(chunks)[1999].size == 1999
