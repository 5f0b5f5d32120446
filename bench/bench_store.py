"""Storage benchmark: many versions of a large checkpoint cost the bytes that changed.

    .venv/bin/python bench/bench_store.py [--size-mb 256] [--versions 5] [--rewrite 0.2]
                                          [--from-scratch] [--store-url URL] [--json]

Workload: a single-file checkpoint of 4 MiB "tensors" (random float32 from
numpy, fixed seed). Each new version rewrites a random 20% (``--rewrite``) of
the tensors and inserts a small 64 KiB tensor in the middle, shifting every
later byte. Later versions are stored following the previous one's chunks, as
``log_model`` does (``--from-scratch``: cut with FastCDC, the same chunks).

Prints: the sum of all versions' bytes, the floor (the bytes that are actually
new: the first version, plus each later version's rewritten and inserted
tensors), the bytes the store holds and their ratio to the floor (goal: within
10%); ingest throughput of the first version (all chunks new; goal >= 300 MB/s)
and of later versions (mostly stored; goal >= 1 GB/s); and loading a version
(every chunk verified) against copying the same file (read it from a warm page
cache and write a new one, which loading must do too) and against reading it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tether._store import open_store

MB = 1 << 20
TENSOR = 4 * MB
INSERT = 64 * 1024


def make_versions(size_mb: int, versions: int, seed: int = 0,
                  share: float = 0.2) -> tuple[list[bytes], int]:
    rng = np.random.default_rng(seed)
    count = max(1, size_mb * MB // TENSOR)

    def tensor(size: int) -> bytes:
        return rng.random(size // 4, dtype=np.float32).tobytes()

    parts = [tensor(TENSOR) for _ in range(count)]
    blobs = [b"".join(parts)]
    floor = len(blobs[0])
    for _ in range(versions - 1):
        for i in rng.choice(len(parts), size=max(1, round(len(parts) * share)), replace=False):
            parts[i] = tensor(TENSOR)
            floor += TENSOR
        parts.insert(len(parts) // 2, tensor(INSERT))
        floor += INSERT
        blobs.append(b"".join(parts))
    return blobs, floor


def copy_throughput(path: Path, dest: Path) -> float:
    """Reading the file and writing a new copy: what loading has to do at least."""
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as src, open(dest, "wb", buffering=0) as out:
        while block := src.read(8 * MB):
            out.write(block)
    seconds = time.perf_counter() - start
    dest.unlink()
    return path.stat().st_size / seconds


def read_throughput(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.read(8 * MB):
            pass
    return path.stat().st_size / (time.perf_counter() - start)


def run(size_mb: int, versions: int, store_url: str | None,
        from_scratch: bool = False, share: float = 0.2) -> dict[str, Any]:
    blobs, floor = make_versions(size_mb, versions, share=share)
    sizes = [len(b) for b in blobs]
    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        tmp = Path(folder)
        sources = []
        for number, blob in enumerate(blobs):
            src = tmp / f"v{number}"
            src.mkdir()
            (src / "checkpoint.bin").write_bytes(blob)
            sources.append(src)
        del blobs  # the files hold them now; keep the bench's own memory out of the way
        # Let the kernel finish writing the inputs out, then read them into the page
        # cache: the timings are the ingests' own work, on a warm cache.
        os.sync()
        for src in sources:
            read_throughput(src / "checkpoint.bin")
        store = open_store(store_url or f"file://{tmp / 'store'}", cache_dir=tmp / "cache")
        ingests = []
        reports: list[Any] = []
        for number, src in enumerate(sources):
            start = time.perf_counter()
            # As log_model does: a new version follows the previous one's chunks
            # (--from-scratch: cut every version with FastCDC; the same chunks).
            previous = ({"checkpoint.bin": reports[-1].files[0].chunks}
                        if reports and not from_scratch else None)
            report = store.ingest(src, ["checkpoint.bin"], progress=False, previous=previous)
            seconds = time.perf_counter() - start
            reports.append(report)
            ingests.append(
                {
                    "version": number + 1,
                    "seconds": seconds,
                    "mb_per_s": sizes[number] / MB / seconds,
                    "new_chunks": report.new_chunks,
                    "reused_chunks": report.reused_chunks,
                }
            )
        stats = store.stats([f for r in reports for f in r.files])
        last = sources[-1] / "checkpoint.bin"
        read_bps = max(read_throughput(last) for _ in range(3))
        copy_bps = max(copy_throughput(last, tmp / "copy.bin") for _ in range(3))
        loads = []
        for attempt in range(2):
            out = tmp / f"out{attempt}"
            start = time.perf_counter()
            store.materialize(reports[-1].files, out, label="checkpoint@latest", progress=False)
            loads.append(sizes[-1] / (time.perf_counter() - start))
            assert (out / "checkpoint.bin").read_bytes() == last.read_bytes()
    total = sum(sizes)
    later = [i["mb_per_s"] for i in ingests[1:]]
    return {
        "size_mb": size_mb,
        "versions": versions,
        "store": store_url or "file://(temp)",
        "logical_bytes": total,
        "floor_bytes": floor,
        "stored_bytes": stats.stored_bytes,
        "stored_over_floor": stats.stored_bytes / floor,
        "stored_over_sum": stats.stored_bytes / total,
        "ingest_first_mb_s": ingests[0]["mb_per_s"],
        "ingest_later_mb_s": sum(later) / len(later) if later else None,
        "load_mb_s": max(loads) / MB,
        "plain_read_mb_s": read_bps / MB,
        "plain_copy_mb_s": copy_bps / MB,
        "ingests": ingests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--store-url", help="e.g. s3://bucket/prefix (default: a temp folder)")
    parser.add_argument("--rewrite", type=float, default=0.2,
                        help="share of the tensors each new version rewrites (default 0.2)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="cut every version with FastCDC instead of following the previous")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.size_mb, args.versions, args.store_url, args.from_scratch, args.rewrite)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    gib = 1 << 30
    print(
        f"{args.versions} versions of a {args.size_mb} MiB checkpoint, store {result['store']}, "
        f"{os.cpu_count()} CPUs, each version rewriting {args.rewrite:.0%} of it"
    )
    print(f"sum of versions   {result['logical_bytes'] / gib:8.3f} GiB")
    print(f"floor (new bytes) {result['floor_bytes'] / gib:8.3f} GiB")
    print(
        f"stored            {result['stored_bytes'] / gib:8.3f} GiB   "
        f"= {result['stored_over_floor']:.3f} x floor, {result['stored_over_sum']:.3f} x sum"
    )
    for row in result["ingests"]:
        print(
            f"ingest v{row['version']}         {row['mb_per_s']:8.0f} MB/s   "
            f"({row['new_chunks']} new chunks, {row['reused_chunks']} reused)"
        )
    print(f"ingest, all new   {result['ingest_first_mb_s']:8.0f} MB/s   (goal >= 300)")
    if result["ingest_later_mb_s"]:
        how = "cut from scratch" if args.from_scratch else "following the previous version"
        print(f"ingest, mostly old{result['ingest_later_mb_s']:8.0f} MB/s   (goal >= 1000; {how})")
    print(
        f"load (verified)   {result['load_mb_s']:8.0f} MB/s   "
        f"vs plain copy {result['plain_copy_mb_s']:.0f} MB/s (read + write a new file), "
        f"plain read {result['plain_read_mb_s']:.0f} MB/s"
    )


if __name__ == "__main__":
    main()
