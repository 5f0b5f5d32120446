"""Resident memory through one log and one read of a file of many chunks, by phase.

    .venv/bin/python bench/bench_memory_trace.py [--size-mb 1150] [--average 1024] [--dir D]

A file of incompressible bytes is cut at a small average (1 KiB: 1.15 GB gives
about 967,000 chunks, as many as 63 GB at the usual 64 KiB), so what grows with
the chunk count shows without writing 63 GB. Two fresh processes: one logs the
file into a new embedded registry, one reads it back (get, download, verify).
Each samples its own RSS (VmRSS, mapped files included, as VmHWM counts them)
every 50 ms, with its anonymous and file-backed parts (RssAnon, RssFile), and
marks the phases (the ingest, the commit's check that every chunk is stored,
sealing, the row's insert); printed: each mark with the RSS then, and the peak
with when it came. Goal (issue 17): under 300 MB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path

    import tether
    from tether._metadata import repository
    from tether._registry import log_version
    from tether._store import chunkstore, ingest

    ingest.AVG_CHUNK = int(sys.argv[3])
    started = time.perf_counter()

    def rss():
        # (all, anonymous, file-backed) resident MB: VmRSS and its RssAnon/RssFile parts
        fields = dict(line.split(":", 1) for line in
                      Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return tuple(int(fields.get(k, "0 kB").split()[0]) // 1024
                     for k in ("VmRSS", "RssAnon", "RssFile"))

    samples, marks = [], []

    def sample():
        while True:
            samples.append((time.perf_counter() - started, rss()))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()

    def mark(name):
        marks.append((time.perf_counter() - started, name, rss()))

    def wrap(owner, attr):
        real = getattr(owner, attr)

        def marked(*args, **kwargs):
            mark(f"{attr} starts")
            try:
                return real(*args, **kwargs)
            finally:
                mark(f"{attr} ends")

        setattr(owner, attr, marked)

    for owner, attr in ((chunkstore.ChunkStore, "ingest"), (chunkstore.ChunkStore, "missing_of"),
                        (log_version, "seal"), (repository, "insert_version"),
                        (chunkstore.ChunkStore, "materialize"), (chunkstore.ChunkStore, "verify")):
        wrap(owner, attr)
    step, home = sys.argv[1], Path(sys.argv[2])
    if step == "log":
        registry = tether.init(home / "reg")
        version = registry.log_model(str(home / "big.bin"), "big", progress=False)
    else:
        registry = tether.open(home / "reg")
        version = registry.get("big@latest")
        registry.download("big@latest", home / "out", progress=False)
        assert registry.verify("big@latest") == []
    mark("done")
    time.sleep(0.1)
    print(f"{step}: {len(version.files[0].chunks):,} chunks")
    print(f"  {'':7}    {'':<24} {'RSS':>7} {'anon':>5} {'file':>5}")
    for at, name, (now, anon, mapped) in marks:
        print(f"  {at:7.2f} s  {name:<24} {now:4d} MB {anon:5d} {mapped:5d}")
    at, (peak, anon, mapped) = max(samples, key=lambda s: s[1][0])
    print(f"  peak {peak} MB at {at:.2f} s (anonymous {anon} MB, file-backed {mapped} MB)")
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1150)
    parser.add_argument("--average", type=int, default=1024, help="average chunk size")
    parser.add_argument("--dir", help="work folder (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        home = Path(tmp)
        with open(home / "big.bin", "wb") as out:
            for _ in range(args.size_mb):
                out.write(os.urandom(1 << 20))
        for step in ("log", "read"):
            done = subprocess.run([sys.executable, "-c", CHILD, step, str(home),
                                   str(args.average)], capture_output=True, text=True,
                                  check=False)
            if done.returncode:
                sys.exit(done.stderr)
            print(done.stdout, end="", flush=True)


if __name__ == "__main__":
    main()
