"""Cutting along the previous version's chunks finds exactly FastCDC's chunks.

``following.py`` skips FastCDC where a file repeats its previous version; that
is only worth having if deduplication cannot tell: every edit below (in place,
inserted, deleted, at a boundary, at either end, runs of zeros longer than the
largest chunk) must give the chunks of cutting the whole file at once, with
windows small enough that edits straddle them. A hostile hint (wrong digests,
absurd lengths) must change nothing but the time taken.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest
from pyfastcdc.cy import FastCDC

from tether._errors import StoreError
from tether._store import following, native, open_store
from tether._store.base import ChunkRef
from tether._store.following import Hint, followed_windows

AVG = 4096  # small chunks: many boundaries in little data
WINDOW = 64 * 1024


@pytest.fixture(autouse=True, params=["native", "python"])
def small_steps(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps and windows a few chunks long, so edits straddle them (the smallest allowed:
    a step is twice FastCDC's largest chunk, a window two steps); every test twice,
    following with the native core (one call a window) and without it (pyfastcdc, and
    blake3 in batches shared with the pool)."""
    if request.param == "native" and not native.available:
        pytest.skip("the native core is not built here (or TETHER_NATIVE=0)")
    if request.param == "python":
        monkeypatch.setattr(native, "available", False)
    monkeypatch.setattr(following, "STEP", 2 * FastCDC(avg_size=AVG).max_size)


def cdc(data: bytes) -> list[ChunkRef]:
    return [ChunkRef(blake3.blake3(data[c.offset:c.offset + c.length]).hexdigest(), c.length)
            for c in FastCDC(avg_size=AVG).cut_buf(data)]


def follow(path: Path, hint: Hint, *, give_up: bool = False) -> tuple[list[ChunkRef], int]:
    chunks: list[ChunkRef] = []

    with open(path, "rb", buffering=0) as handle, ThreadPoolExecutor(2) as pool:
        windows = followed_windows(
            handle.fileno(), path.stat().st_size, hint, avg_size=AVG, window=WINDOW,
            buffer=lambda n, _at: memoryview(bytearray(n)), pool=pool, give_up=give_up)
        while True:
            try:
                _view, cuts, end, digests = next(windows)
            except StopIteration as stop:
                return chunks, stop.value
            assert digests is not None and end == sum(n for _, n in cuts)
            chunks += [ChunkRef(d, n) for (_, n), d in zip(cuts, digests, strict=True)]


def edits(rng: random.Random, data: bytes) -> list[tuple[str, bytes]]:
    size = len(data)
    at = rng.randrange(size // 4, 3 * size // 4)
    boundary = sum(c.size for c in cdc(data)[:40])  # exactly where a chunk starts
    zeros = bytes(20 * AVG)
    return [
        ("unchanged", data),
        ("overwrite", data[:at] + os.urandom(3000) + data[at + 3000:]),
        ("one byte", data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]),
        ("at a boundary", data[:boundary] + bytes([data[boundary] ^ 0xFF]) + data[boundary + 1:]),
        ("before a boundary", data[:boundary - 1] + b"\0x" + data[boundary + 1:]),
        ("insert", data[:at] + os.urandom(777) + data[at:]),
        ("delete", data[:at] + data[at + 5000:]),
        ("prepend", os.urandom(10) + data),
        ("append", data + os.urandom(9000)),
        ("truncate", data[: size - 12345]),
        ("truncate at a boundary", data[:boundary]),
        ("zeros", data[:at] + zeros + data[at + len(zeros):]),
        ("many", b"".join(
            part if rng.random() < 0.8 else os.urandom(len(part))
            for part in (data[i:i + 7000] for i in range(0, size, 7000)))),
    ]


@pytest.mark.parametrize("seed", range(4))
def test_following_finds_exactly_the_chunks_of_cutting_from_scratch(tmp_path: Path,
                                                                     seed: int) -> None:
    rng = random.Random(seed)
    old = os.urandom(600_000) + bytes(150_000) + os.urandom(300_000)  # zeros: forced cuts
    hint = Hint.of(cdc(old))
    assert hint is not None
    for name, new in edits(rng, old):
        path = tmp_path / "f.bin"
        path.write_bytes(new)
        got, stopped = follow(path, hint)
        assert stopped == len(new)
        assert got == cdc(new), name


def test_a_followed_file_is_mostly_hashed_not_cut(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.urandom(2_000_000)
    new = old[:1_000_000] + os.urandom(4000) + old[1_004_000:]
    path = tmp_path / "f.bin"
    path.write_bytes(new)
    cut = []
    real = following._cut_step
    monkeypatch.setattr(following, "_cut_step",
                        lambda walk, *a: cut.append(walk.at) or real(walk, *a))
    hint = Hint.of(cdc(old))
    assert hint is not None
    got, _ = follow(path, hint)
    assert got == cdc(new)
    assert 1 <= len(cut) <= 2  # FastCDC ran only around the change


def test_a_hostile_hint_changes_nothing_but_the_time(tmp_path: Path) -> None:
    """Hints no real cutting gives: the chunks stay FastCDC's (a made-up hint whose digests
    match the bytes may change where chunks end: see following.py; never what is stored)."""
    data = os.urandom(400_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    truth = cdc(data)
    lies = [
        [ChunkRef("0" * 64, c.size) for c in truth],  # right lengths, wrong digests
        [ChunkRef(c.digest, 10**12) for c in truth],  # absurd lengths: never read
        # (A negative size cannot be in a chunk list at all: ChunkList refuses it.)
        [ChunkRef(c.digest, 0) for c in truth] + [ChunkRef(truth[0].digest, (1 << 63) - 1)],
        truth[::-1],  # right chunks, wrong order
        [*truth[:-1], ChunkRef(truth[-1].digest, truth[-1].size + 1)],
    ]
    for lie in lies:
        hint = Hint.of(lie)
        assert hint is not None
        got, _ = follow(path, hint)
        assert got == truth


def test_give_up_hands_back_a_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(following, "GIVE_UP_AFTER", 100_000)
    data = os.urandom(500_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    hint = Hint.of(cdc(os.urandom(500_000)))  # nothing in common
    assert hint is not None
    got, stopped = follow(path, hint, give_up=True)
    assert 100_000 <= stopped < len(data)
    assert got == cdc(data)[:len(got)] and sum(c.size for c in got) == stopped


def test_store_ingest_with_previous_matches_ingest_without(tmp_path: Path) -> None:
    """Through the store: the followed version equals the cut one, new chunks included."""
    v1 = os.urandom(3 << 20)
    v2 = v1[:1 << 20] + os.urandom(100_000) + v1[(1 << 20) + 50_000:]
    for version, data in (("a", v1), ("b", v2)):
        (tmp_path / version).mkdir()
        (tmp_path / version / "m.bin").write_bytes(data)
    plain = open_store(f"file://{tmp_path / 'plain'}")
    followed = open_store(f"file://{tmp_path / 'followed'}")
    first = plain.ingest(tmp_path / "a", ["m.bin"]).files[0]
    assert followed.ingest(tmp_path / "a", ["m.bin"]).files[0] == first
    cut = plain.ingest(tmp_path / "b", ["m.bin"])
    hinted = followed.ingest(tmp_path / "b", ["m.bin"], previous={"m.bin": first.chunks})
    assert hinted.files == cut.files
    assert (hinted.new_chunks, hinted.stored_bytes) == (cut.new_chunks, cut.stored_bytes)


def test_log_model_follows_the_models_newest_version(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``log_model`` hands the store the newest version's chunks (renamed file included),
    and the version is the one cutting from scratch gives."""
    import tether
    from tether._registry import previous
    from tether._store import ingest

    monkeypatch.setattr(previous, "FOLLOW_FROM", 1 << 20)
    cut: list[int] = []
    real = following._cut_step
    monkeypatch.setattr(following, "_cut_step",
                        lambda walk, *a: cut.append(walk.at) or real(walk, *a))
    v1 = os.urandom(4 << 20)
    v2 = v1[:2 << 20] + os.urandom(30_000) + v1[(2 << 20) + 30_000:]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "weights-step1.bin").write_bytes(v1)
    (tmp_path / "b" / "weights-step2.bin").write_bytes(v2)
    reg = tether.init(tmp_path / "reg" / ".tether", actor="tester@example.com")
    scratch = tether.init(tmp_path / "scratch" / ".tether", actor="tester@example.com")
    try:
        reg.log_model(tmp_path / "a" / "weights-step1.bin", "m")
        assert cut == []  # no previous version: cut from scratch, as ever
        followed = reg.log_model(tmp_path / "b" / "weights-step2.bin", "m")
        assert 1 <= len(cut) <= 3
        monkeypatch.setattr(ingest, "_FOLLOW", False)
        scratch.log_model(tmp_path / "a" / "weights-step1.bin", "m")
        plain = scratch.log_model(tmp_path / "b" / "weights-step2.bin", "m")
        assert followed.files == plain.files
        assert reg.load(followed.ref).read_bytes() == v2  # type: ignore[attr-defined]
    finally:
        reg.close()
        scratch.close()


def test_add_dataset_follows_the_datasets_newest_version(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import tether
    from tether._registry import previous

    monkeypatch.setattr(previous, "FOLLOW_FROM", 1 << 20)
    cut: list[int] = []
    real = following._cut_step
    monkeypatch.setattr(following, "_cut_step",
                        lambda walk, *a: cut.append(walk.at) or real(walk, *a))
    data = tmp_path / "data"
    data.mkdir()
    table = os.urandom(4 << 20)
    (data / "table.bin").write_bytes(table)
    (data / "small.txt").write_text("a small file is cut from scratch")
    reg = tether.init(tmp_path / "reg" / ".tether", actor="tester@example.com")
    try:
        reg.add_dataset(data, "ds")
        assert cut == []
        changed = table[:1 << 20] + os.urandom(20_000) + table[(1 << 20) + 20_000:]
        (data / "table.bin").write_bytes(changed)
        second = reg.add_dataset(data, "ds")
        assert 1 <= len(cut) <= 3
        entry = next(f for f in second.files if f.path == "table.bin")
        assert tuple(entry.chunks) == tuple(cdc_with(changed, 64 * 1024))
    finally:
        reg.close()


def cdc_with(data: bytes, avg: int) -> list[ChunkRef]:
    return [ChunkRef(blake3.blake3(data[c.offset:c.offset + c.length]).hexdigest(), c.length)
            for c in FastCDC(avg_size=avg).cut_buf(data)]


def test_a_step_is_never_shorter_than_two_of_the_largest_chunks(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 ) -> None:
    """With a large average size (FastCDC's largest chunk 2 MiB, over the 1 MiB step), a
    step's own end must not cut a chunk (found in review: 10 x 1 MiB instead of 5 x 2 MiB)."""
    monkeypatch.setattr(following, "STEP", 1 << 20)
    avg = 512 * 1024
    data = bytes(10 << 20)  # zeros: FastCDC cuts only at its largest size
    path = tmp_path / "zeros.bin"
    path.write_bytes(data)
    hint = Hint.of([ChunkRef("0" * 64, 1000)])
    assert hint is not None
    got = []
    with open(path, "rb", buffering=0) as handle, ThreadPoolExecutor(2) as pool:
        for _view, cuts, _end, digests in followed_windows(
                handle.fileno(), len(data), hint, avg_size=avg, window=8 << 20,
                buffer=lambda n, _at: memoryview(bytearray(n)), pool=pool, give_up=False):
            assert digests is not None
            got += [ChunkRef(d, n) for (_, n), d in zip(cuts, digests, strict=True)]
    assert got == cdc_with(data, avg)


def test_a_hint_finds_a_digest_by_its_whole_value_not_its_prefix() -> None:
    """``Hint.first`` keeps 8-byte prefixes (12 bytes a chunk, not 40): digests that
    share a prefix are told apart by the whole digest, and the first place wins."""
    same = "ab" * 8
    a, b, c = same + "01" * 24, same + "02" * 24, "cd" * 32
    hint = Hint.of([ChunkRef(b, 5), ChunkRef(c, 6), ChunkRef(a, 7), ChunkRef(b, 8)])
    assert hint is not None
    assert hint.first(a) == 2 and hint.first(b) == 0 and hint.first(c) == 1
    assert hint.first(same + "03" * 24) is None and hint.first("zz") is None
    assert hint.first("ab") is None


def test_windows_read_ahead_are_the_files_bytes_placed_as_the_page_cache_holds_them(
        tmp_path: Path) -> None:
    """Each window is read on a thread while the one before is walked; the bytes the
    last window carried are copied in front of it. Every window is the file's bytes
    from where it starts, at that offset modulo 64 in its buffer, even where what
    was carried is not what the read was for (read again, into the same buffer)."""
    import ctypes

    from tether._store.ingest import _BufferRing

    data = os.urandom(3 << 20)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    ring = _BufferRing()
    with open(path, "rb", buffering=0) as handle:
        reading = following._ReadAhead(handle.fileno(), len(data), 1 << 20, ring.next,
                                       room=64 * 1024)
        try:
            def check(view: memoryview, position: int) -> None:
                assert bytes(view) == data[position:position + len(view)]
                address = ctypes.addressof(ctypes.c_char.from_buffer(view))
                assert address % 64 == position % 64

            first = reading.window_at(0)
            check(first, 0)
            reading.start(len(first))
            reading.carry(first[1_000_003:])  # walked to 1,000,003
            second = reading.window_at(1_000_003)
            check(second, 1_000_003)
            assert len(second) == len(first) - 1_000_003 + (1 << 20)
            end = 1_000_003 + len(second)
            reading.start(end)
            reading.carry(second[-100:])
            third = reading.window_at(end - 300)  # not where the carried bytes start
            check(third, end - 300)
        finally:
            reading.close()


def test_a_file_that_shrinks_under_the_read_ahead_is_refused(tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    hint = Hint.of(cdc(data))
    assert hint is not None
    with open(path, "rb", buffering=0) as handle, ThreadPoolExecutor(2) as pool:
        windows = followed_windows(handle.fileno(), len(data), hint, avg_size=AVG,
                                   window=WINDOW, buffer=lambda n, _at: memoryview(bytearray(n)),
                                   pool=pool, give_up=False)
        next(windows)
        os.truncate(path, 100_000)
        with pytest.raises(StoreError, match="shrank"):
            for _ in windows:
                pass


def test_no_ring_buffer_is_handed_out_again_while_a_followed_window_uses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A followed ingest reads the next window ahead while one is walked, and windows
    wait to be hashed whole and written: every buffer is poisoned as it is handed out,
    and the new version still stores as its own bytes (the ring is large enough). The
    guard for any change to the read-ahead's depth or the ring's count."""
    from tether._store import ingest

    handed = ingest._BufferRing.next

    def poisoned(ring: ingest._BufferRing, size: int, at: int = 0) -> memoryview:
        view = handed(ring, size, at)
        view[:] = b"\xaa" * len(view)
        return view

    v1 = os.urandom(5 * ingest._WINDOW + 12345)
    v2 = bytearray(v1)
    for at in range(1 << 20, len(v2), 3 << 20):  # a change every three windows' worth
        v2[at:at + 70_000] = os.urandom(70_000)
    for version, data in (("a", v1), ("b", bytes(v2))):
        (tmp_path / version).mkdir()
        (tmp_path / version / "m.bin").write_bytes(data)
    store = open_store(f"file://{tmp_path / 'store'}", cache_dir=tmp_path / "cache")
    first = store.ingest(tmp_path / "a", ["m.bin"]).files[0]
    monkeypatch.setattr(ingest._BufferRing, "next", poisoned)
    report = store.ingest(tmp_path / "b", ["m.bin"], previous={"m.bin": first.chunks})
    entry = report.files[0]
    assert entry.digest == blake3.blake3(bytes(v2)).hexdigest()
    assert report.reused_chunks > report.new_chunks  # it did follow
    store.materialize([entry], tmp_path / "out", label="test")
    assert (tmp_path / "out" / "m.bin").read_bytes() == bytes(v2)
