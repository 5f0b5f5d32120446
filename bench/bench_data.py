"""Data-versioning benchmark: a CSV grown by appending rows costs about the new rows.

    .venv/bin/python bench/bench_data.py [--size-mb 100] [--gb] [--steps 10] [--grow 0.02] [--json]

Workload: a CSV of random rows (id, two floats, an int, a category, a
timestamp; fixed seed) of ``--size-mb`` (100 MB by default, ``--gb`` for
1 GB), added as dataset version 1; then ``--steps`` times 2% more rows are
appended to the file and the file is added again (a new version each time).

Prints per step: the bytes appended, the raw bytes of the chunks the new
version added (the appended bytes plus the re-cut last chunk), the bytes the
store grew by (packs, zstd where it pays), its ratio to the appended bytes, and
the add time; then totals: the
bytes of all versions, the floor (the first file plus every appended byte),
what the store holds, and the stored/floor ratio (goal: within 10% of the new
bytes; a store that keeps each changed file whole, as DVC does, holds the sum
of all versions). Then `tether data diff` of the last two versions (rows
counted from the changed chunks only), and streaming reads through
``tether.open_dataset`` against reading the plain file (both from a warm
page cache).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import tether

MB = 1 << 20


def rows(start: int, count: int, rng: random.Random) -> bytes:
    cats = ["alpha", "beta", "gamma", "delta", "epsilon"]
    out = []
    for i in range(start, start + count):
        out.append(
            f"{i},{rng.random():.8f},{rng.gauss(0, 1):.6f},{rng.randint(0, 10_000)},"
            f"{rng.choice(cats)},2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z\n"
        )
    return "".join(out).encode()


def write_csv(path: Path, size: int, rng: random.Random) -> int:
    """Write about ``size`` bytes of CSV; returns the number of rows."""
    header = b"id,x,z,count,category,ts\n"
    with path.open("wb") as handle:
        handle.write(header)
        written, n = len(header), 0
        while written < size:
            block = rows(n, 20_000, rng)
            handle.write(block)
            written += len(block)
            n += 20_000
    return n


def stored(reg: Any) -> int:
    return int(reg.store_stats().stored_bytes)


def read_throughput(reg: Any, ref: str, name: str, path: Path) -> dict[str, float]:
    size = path.stat().st_size
    path.read_bytes()  # warm the page cache for both readers
    start = time.perf_counter()
    with path.open("rb") as handle:
        while handle.read(MB):
            pass
    plain = size / (time.perf_counter() - start) / MB
    start = time.perf_counter()
    with reg.open_dataset(ref, name) as handle:
        while handle.read(MB):
            pass
    streamed = size / (time.perf_counter() - start) / MB
    start = time.perf_counter()
    with reg.open_dataset(ref, name) as handle:
        handle.seek(size // 2)
        handle.read(4096)
        fetched = handle.fetched_bytes
    seek_ms = (time.perf_counter() - start) * 1000
    return {"plain_mb_s": plain, "open_dataset_mb_s": streamed,
            "seek_middle_read_4k_ms": seek_ms, "seek_middle_fetched_bytes": fetched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--gb", action="store_true", help="a 1 GB CSV (same as --size-mb 1024)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--grow", type=float, default=0.02, help="rows appended per step")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = (1024 if args.gb else args.size_mb) * MB
    rng = random.Random(0)

    with tempfile.TemporaryDirectory(prefix="tether-bench-data-") as tmp:
        root = Path(tmp)
        reg = tether.init(root / ".tether", actor="bench@tether")
        csv = root / "events.csv"
        count = write_csv(csv, size, rng)
        start = time.perf_counter()
        reg.add_dataset(csv, "events")
        first_add = time.perf_counter() - start
        first_size = csv.stat().st_size
        steps: list[dict[str, Any]] = []
        total_logical = first_size
        floor = first_size
        before = stored(reg)
        first_stored = before
        previous = reg.get_dataset("events@1")
        for _ in range(args.steps):
            new_rows = max(1, int(count * args.grow))
            block = rows(count, new_rows, rng)
            count += new_rows
            with csv.open("ab") as handle:
                handle.write(block)
            start = time.perf_counter()
            version = reg.add_dataset(csv, "events")
            seconds = time.perf_counter() - start
            after = stored(reg)
            known = {c.digest for f in previous.files for c in f.chunks}
            raw_new = sum(c.size for f in version.files for c in f.chunks if c.digest not in known)
            previous = version
            steps.append({
                "version": version.semver,
                "appended_bytes": len(block),
                "new_chunk_bytes": raw_new,
                "stored_growth": after - before,
                "ratio": (after - before) / len(block),
                "add_seconds": seconds,
                "file_bytes": csv.stat().st_size,
            })
            before = after
            total_logical += csv.stat().st_size
            floor += len(block)
        total_stored = stored(reg)
        start = time.perf_counter()
        diff = reg.diff_datasets(f"events@{args.steps}", f"events@{args.steps + 1}")
        diff_seconds = time.perf_counter() - start
        table = diff["changed"][0]["table"]
        reads = read_throughput(reg, "events@latest", "events.csv", csv)
        reg.close()

    result = {
        "file_bytes_first": first_size,
        "first_add_seconds": first_add,
        "first_stored": first_stored,
        "steps": steps,
        "all_versions_bytes": total_logical,
        "floor_bytes": floor,
        "stored_bytes": total_stored,
        "stored_over_floor": total_stored / floor,
        "appended_total": floor - first_size,
        "stored_growth_total": total_stored - first_stored,
        "growth_over_appended": (total_stored - first_stored) / (floor - first_size),
        "new_chunk_bytes_total": sum(s["new_chunk_bytes"] for s in steps),
        "diff": {"seconds": diff_seconds, "rows_added": table.get("rows_added"),
                 "rows_removed": table.get("rows_removed"),
                 "bytes_read": table.get("bytes_read")},
        "reads": reads,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"first version: {first_size / MB:.1f} MB CSV, stored {first_stored / MB:.1f} MB "
          f"in {first_add:.2f} s ({first_size / MB / first_add:.0f} MB/s)")
    print(f"{'version':>8} {'appended':>11} {'new chunks':>11} {'store grew':>11} "
          f"{'ratio':>6} {'add':>7}")
    for s in steps:
        print(f"{s['version']:>8} {s['appended_bytes'] / MB:>8.2f} MB "
              f"{s['new_chunk_bytes'] / MB:>8.2f} MB {s['stored_growth'] / MB:>8.2f} MB "
              f"{s['ratio']:>6.2f} {s['add_seconds']:>6.2f}s")
    print(f"all {args.steps + 1} versions: {total_logical / MB:.0f} MB of files; "
          f"new bytes (floor) {floor / MB:.1f} MB; store holds {total_stored / MB:.1f} MB "
          f"({total_stored / floor:.3f} x floor)")
    print(f"appended {result['appended_total'] / MB:.1f} MB over {args.steps} steps; new chunks "
          f"(before compression) {result['new_chunk_bytes_total'] / MB:.1f} MB "
          f"({result['new_chunk_bytes_total'] / result['appended_total']:.3f} x); "
          f"the store grew {result['stored_growth_total'] / MB:.1f} MB "
          f"({result['growth_over_appended']:.3f} x)")
    print(f"diff of the last two versions: +{table.get('rows_added')} / "
          f"-{table.get('rows_removed')} rows, read {table.get('bytes_read', 0) / MB:.2f} MB, "
          f"{diff_seconds:.2f} s")
    print(f"streaming read: open_dataset {reads['open_dataset_mb_s']:.0f} MB/s, plain file "
          f"{reads['plain_mb_s']:.0f} MB/s; seek to the middle + 4 KiB read "
          f"{reads['seek_middle_read_4k_ms']:.1f} ms, fetched "
          f"{reads['seek_middle_fetched_bytes'] / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
