"""The native core cuts exactly as pyfastcdc and hashes exactly as blake3, without the GIL."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import blake3
import pytest
from pyfastcdc.cy import FastCDC

from tether._store import native
from tether._store.chunklist import RECORD
from tether._store.ingest import AVG_CHUNK

pytestmark = pytest.mark.skipif(
    not native.available, reason="the native core is not built (setup.py needs a C compiler)")


def _reference(data: bytes, avg: int, keep_last: bool) -> list[tuple[bytes, int]]:
    cuts = [(c.offset, c.length) for c in FastCDC(avg_size=avg).cut_buf(data)]
    if not keep_last and len(cuts) > 1:
        cuts.pop()
    return [(blake3.blake3(data[o:o + n]).digest(), n) for o, n in cuts]


def _records(data: bytes, avg: int, keep_last: bool) -> list[tuple[bytes, int]]:
    out = native.cut(data, avg, keep_last=keep_last)
    return [RECORD.unpack_from(out, i) for i in range(0, len(out), RECORD.size)]


def _samples(rng: random.Random) -> list[bytes]:
    """Random bytes, zeros (cut at the largest size), short repeats, two-letter
    text (long runs without a cut point), and sizes around the smallest chunk."""
    out = [b"", b"x", bytes(AVG_CHUNK // 4), os.urandom(AVG_CHUNK // 4 + 1), bytes(3_000_000)]
    for _ in range(12):
        size = rng.choice([1000, 70_000, 300_000, 1_500_000])
        out.append(os.urandom(size))
        out.append((os.urandom(rng.randint(1, 9000)) * (size // 1000 + 1))[:size])
        out.append(bytes(rng.choice(b"ab") for _ in range(min(size, 60_000))))
    return out


@pytest.mark.parametrize("avg", [256, 4096, AVG_CHUNK, 1 << 20])
def test_every_boundary_and_digest_is_pyfastcdcs_and_blake3s(avg: int) -> None:
    rng = random.Random(avg)
    for data in _samples(rng):
        for keep_last in (True, False):
            assert _records(data, avg, keep_last) == _reference(data, avg, keep_last)


def test_an_edited_file_cuts_as_pyfastcdc_does() -> None:
    base = bytearray(os.urandom(2_000_000))
    for at in (0, 1, 65_535, 777_777, 1_999_999):
        edited = bytes(base[:at]) + b"inserted" + bytes(base[at + 3:])
        assert _records(edited, AVG_CHUNK, True) == _reference(edited, AVG_CHUNK, True)


def _two_byte_pattern_cut_everywhere() -> bytes:
    """Two bytes, repeated, whose gear hash passes both masks' common bits at every
    other position: the lanes find far too many candidates and cut the plain way."""
    return bytes([98, 56]) * 3_000_000


def test_large_buffers_are_cut_in_lanes_exactly_as_pyfastcdc_does() -> None:
    """Buffers of 16 largest chunks and more are cut from the lanes' candidates
    (_native.c: find_candidates): every boundary is still pyfastcdc's, through random
    bytes, runs without a cut point, lanes that meet mid-chunk, and a pattern with a
    candidate at every other byte (the plain cut, from where it starts)."""
    rng = random.Random(17)
    pattern = _two_byte_pattern_cut_everywhere()
    samples = [
        os.urandom(4 * 1024 * 1024 + 13),
        os.urandom(rng.randint(5_000_000, 9_000_000)),
        os.urandom(3_000_001) + bytes(2_000_000) + os.urandom(3_000_003),
        pattern,
        os.urandom(4_500_000) + pattern[:1_000_001] + os.urandom(2_000_000),
    ]
    for data in samples:
        for keep_last in (True, False):
            assert _records(data, AVG_CHUNK, keep_last) == _reference(data, AVG_CHUNK, keep_last)
    edited = bytearray(samples[1])
    for at in (1, 4_000_000, len(edited) - 70_000):
        edited[at:at + 5] = b"edits"
        assert _records(bytes(edited), AVG_CHUNK, True) == \
            _reference(bytes(edited), AVG_CHUNK, True)


def test_without_hashing_the_digests_are_zero() -> None:
    data = os.urandom(500_000)
    out = native.cut(data, AVG_CHUNK, keep_last=True, hash=False)
    assert [n for _, n in _reference(data, AVG_CHUNK, True)] == native.lengths(out)
    assert all(out[i:i + 32] == bytes(32) for i in range(0, len(out), RECORD.size))


def test_digests_of_spans_and_spans_out_of_bounds() -> None:
    data = os.urandom(100_000)
    spans = [(0, 10), (10, 0), (5_000, 60_000), (99_999, 1)]
    assert native.digests(data, spans) == [
        blake3.blake3(data[o:o + n]).hexdigest() for o, n in spans]
    with pytest.raises(ValueError, match="past the buffer"):
        native.digests(data, [(99_990, 11)])
    with pytest.raises(ValueError, match="past the buffer"):
        native.digests(data, [(2**64 - 1, 2)])  # an offset that would wrap around


def test_bad_tables_and_sizes_are_errors_not_crashes() -> None:
    from tether._store import _native  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match="2048 bytes"):
        _native.cut(b"abc", b"short", b"x" * 2048, 16, 64, 256, 1, 1, True, True)
    with pytest.raises(ValueError, match="min <= avg <= max"):
        _native.cut(b"abc", b"x" * 2048, b"x" * 2048, 64, 16, 256, 1, 1, True, True)


def _beside_a_busy_thread(work: Callable[[], object]) -> tuple[float, float]:
    """Seconds ``work`` takes alone, and beside a thread running Python flat out."""
    alone = time.perf_counter()
    work()
    alone = time.perf_counter() - alone
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        busy = time.perf_counter()
        work()
        busy = time.perf_counter() - busy
    finally:
        stop.set()
        spinner.join()
    return alone, busy


def test_cutting_releases_the_gil_for_the_whole_buffer() -> None:
    """Beside a thread running Python flat out, pyfastcdc and blake3, which take the
    GIL back for every chunk, waited up to a switch interval (5 ms) for each: 64 MB
    took 8.6 s against 0.055 s alone here (that convoy is why Tether cut on worker
    processes; it needs the two threads on two free cores, so it is not asserted
    here). One call for the whole buffer waits once at most."""
    data = os.urandom(32 << 20)
    alone, busy = _beside_a_busy_thread(lambda: native.cut(data, AVG_CHUNK, keep_last=True))
    assert busy < 3 * alone + 0.1  # per chunk, 500 waits of up to 5 ms


def test_turned_off_by_the_environment() -> None:
    code = "from tether._store import native; print(native.available)"
    env = dict(os.environ, TETHER_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_a_loads_run_check_matches_only_raw_chunks_hashing_to_their_digests() -> None:
    """A load checks a run's raw chunks in one call; anything it cannot vouch for
    (a wrong digest, a compressed chunk, a location outside the run, as a hostile
    index could claim) is left to the one-by-one check, never taken as matched."""
    from tether._store.chunk_index import Location
    from tether._store.chunklist import ChunkRef
    from tether._store.chunkstore import RAW, ZSTD, _raw_matches

    data = os.urandom(3000)
    pieces = [(100, 1000), (1100, 900), (2000, 1000)]
    chunks = [ChunkRef(blake3.blake3(data[o:o + n]).hexdigest(), n) for o, n in pieces]
    locs = [Location("p", o, n, n, RAW) for o, n in pieces]
    view = memoryview(data)[100:]
    assert _raw_matches(view, chunks, locs, 100) == [True, True, True]
    tampered = bytearray(data)
    tampered[1500] ^= 1
    assert _raw_matches(memoryview(bytes(tampered))[100:], chunks, locs, 100) == [
        True, False, True]
    squeezed = [locs[0], Location("p", 1100, 900, 900, ZSTD), locs[2]]
    assert _raw_matches(view, chunks, squeezed, 100) == [True, False, True]
    outside = [locs[0], locs[1], Location("p", 2500, 1000, 1000, RAW)]  # past the run
    assert _raw_matches(view, chunks, outside, 100) == [False, False, False]
    before = [Location("p", 50, 1000, 1000, RAW), locs[1], locs[2]]
    assert _raw_matches(view, chunks, before, 100) == [False, False, False]


def test_tether_version_says_whether_the_native_core_is_in_use() -> None:
    code = "from tether.cli import main; main()"
    on = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True,
                        text=True, env=dict(os.environ, TETHER_NATIVE="1"))
    assert "native core: built" in on.stdout, on.stdout + on.stderr
    off = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True,
                         text=True, env=dict(os.environ, TETHER_NATIVE="0"))
    assert "turned off by TETHER_NATIVE=0" in off.stdout, off.stdout + off.stderr


def test_odd_and_tiny_sizes_cut_as_pyfastcdc_would_and_never_overrun() -> None:
    """The records are allocated for the most chunks a buffer can have: with an odd
    smallest size a chunk can be one byte shorter than it (FastCDC's two-byte steps)."""
    from tether._store import _native  # type: ignore[attr-defined]

    data = bytes(range(256)) * 400  # a cut point almost everywhere with a zero mask
    for min_size in (2, 3, 5, 7):
        out = _native.cut(data, native._GEAR, native._GEAR_LS, min_size, min_size,
                          min_size * 4, 0, 0, True, False)
        lengths = native.lengths(out)
        assert sum(lengths) == len(data)
        assert all(n >= (min_size // 2) * 2 for n in lengths[:-1])


def _followed(data: bytes | bytearray, offset: int, records: bytes, first: int,
              longest: int) -> int:
    out = native.follow(data, offset, records, first, longest)
    assert len(out) % RECORD.size == 0
    # What comes back is what was hashed: each record is its bytes' digest and length.
    at = offset
    for digest, size in RECORD.iter_unpack(out):
        assert digest == blake3.blake3(bytes(data[at:at + size])).digest()
        at += size
    return len(out) // RECORD.size


def test_follow_gives_the_records_that_are_the_bytes_and_stops_at_the_first_that_is_not(
        ) -> None:
    data = os.urandom(1_000_000)
    records = native.cut(data, 16384, keep_last=True)
    count = len(records) // RECORD.size
    longest = 4 * 16384
    assert native.follow(data, 0, records, 0, longest) == records
    # From the middle: the offset of record 5 and record 5 itself.
    fifth = sum(n for _, n in RECORD.iter_unpack(records[:5 * RECORD.size]))
    assert _followed(data, fifth, records, 5, longest) == count - 5
    # A byte changed in chunk 7: six match from 1 (chunks 1..6), chunk 7 stops it.
    start_7 = sum(n for _, n in RECORD.iter_unpack(records[:7 * RECORD.size]))
    edited = bytearray(data)
    edited[start_7 + 3] ^= 1
    first = RECORD.unpack_from(records, 0)[1]
    assert _followed(bytes(edited), first, records, 1, longest) == 6
    # Hostile records: a wrong digest, a length of 0, over the largest, past the buffer,
    # the largest u64.
    real = RECORD.unpack_from(records, 0)
    for digest, size in [(bytes(32), real[1]), (real[0], 0), (real[0], longest + 1),
                         (real[0], 1 << 62), (real[0], (1 << 64) - 1)]:
        lie = RECORD.pack(digest, size) + records[RECORD.size:]
        assert native.follow(data, 0, lie, 0, longest) == b""
    # The buffer ends: only the chunks wholly inside it.
    assert _followed(data[:fifth + 1], 0, records, 0, longest) == 5
    assert native.follow(data, len(data), records, count, longest) == b""
    # Many tiny hinted chunks: all followed (the answer grows as it goes).
    tiny = b"".join(RECORD.pack(blake3.blake3(data[i:i + 1]).digest(), 1) for i in range(5000))
    assert _followed(data, 0, tiny, 0, longest) == 5000


def test_follow_refuses_records_and_places_outside_what_it_was_given() -> None:
    data = os.urandom(100_000)
    records = native.cut(data, 16384, keep_last=True)
    count = len(records) // RECORD.size
    for offset, first, recs, longest in [(-1, 0, records, 1 << 20),
                                         (len(data) + 1, 0, records, 1 << 20),
                                         (0, -1, records, 1 << 20),
                                         (0, count + 1, records, 1 << 20),
                                         (0, 0, records[:-1], 1 << 20),
                                         (0, 0, records, 0), (0, 0, records, -1)]:
        with pytest.raises(ValueError):
            native.follow(data, offset, recs, first, longest)
    with pytest.raises((ValueError, BufferError, TypeError)):
        native.follow(memoryview(data)[::2], 0, records, 0, 1 << 20)  # not contiguous


def test_the_hasher_is_blake3_over_every_piece_in_order() -> None:
    pieces = [os.urandom(n) for n in (0, 1, 63, 64, 1023, 1024, 1025, 65536, 100_001)]
    hasher = native.hasher()
    hasher.update_many(pieces[:4])
    hasher.update(memoryview(pieces[4]))
    hasher.update_many([bytearray(p) for p in pieces[5:]])
    whole = blake3.blake3(b"".join(pieces))
    assert hasher.hexdigest() == whole.hexdigest() and hasher.digest() == whole.digest()
    assert native.hasher().hexdigest() == blake3.blake3(b"").hexdigest()
    # A piece that is no buffer: refused before anything is hashed.
    refused = native.hasher()
    with pytest.raises(TypeError):
        refused.update_many([b"x", 3])
    with pytest.raises(TypeError):
        refused.update_many(5)
    assert refused.hexdigest() == blake3.blake3(b"").hexdigest()


def test_a_hasher_made_without_init_still_hashes_right() -> None:
    """``Hasher.__new__(Hasher)`` alone used to leave a zeroed state: wrong digests."""
    if not native.available:
        pytest.skip("the native core is not built")
    kind: Any = type(native.hasher())
    bare = kind.__new__(kind)
    bare.update_many([b"abc", b"def"])
    assert bare.hexdigest() == blake3.blake3(b"abcdef").hexdigest()
    bare.__init__()  # starts again
    assert bare.hexdigest() == blake3.blake3(b"").hexdigest()


def test_the_hasher_releases_the_gil_once_a_call() -> None:
    """A run's chunks in one call: beside a thread running Python, 512 pieces of 64 KB
    wait for the GIL once, not 512 times (blake3's own update takes the GIL back
    after each piece: 8,000 such updates took 3.1 s beside a busy thread, 0.09 alone)."""
    piece = memoryview(os.urandom(64 * 1024))
    alone, busy = _beside_a_busy_thread(lambda: native.hasher().update_many([piece] * 512))
    assert busy < 3 * alone + 0.1  # one at a time: 512 waits of up to 5 ms
