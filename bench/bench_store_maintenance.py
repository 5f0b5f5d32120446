"""Time and peak memory of `tether store stats`, `gc` and `store verify` on a store of many chunks.

    .venv/bin/python bench/bench_store_maintenance.py [--size-mb 1150] [--average 1024]
        [--changed 5] [--dir D]

A file of incompressible bytes is cut at a small average (1 KiB: 1.15 GB gives
about 967,000 chunks, as many as 63 GB at the usual 64 KiB, or a store of that
size), logged, then logged again with 5% of it changed (``--changed``). Each
command then runs in a fresh process; its peak resident memory is the kernel's
(``wait4``), its time the wall clock. Anchors measured in the same run: reading every index
entry as Python lists (what these commands did before: their memory grew
with the store) and reading every pack's bytes with ``cat`` (the floor of
``store verify``, which reads them all). The real ``gc`` comes last: it expires
the first version (``--keep-last 1 --grace 0``) and repacks what died.
Goal (issue 17): peak under 300 MB whatever the store's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

LOG = textwrap.dedent(
    """
    import sys
    import tether
    from tether._store import chunkstore, ingest

    ingest.AVG_CHUNK = int(sys.argv[2])
    home = sys.argv[1]
    with tether.init(home + "/reg") as registry:
        for name in ("v1.bin", "v2.bin"):
            version = registry.log_model(home + "/" + name, "big", progress=False)
        print(len(version.files[0].chunks))
    """)

FILES = textwrap.dedent(
    """
    import os, sys
    home, size_mb, percent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    size = size_mb << 20
    with open(home + "/v1.bin", "wb") as out:
        for _ in range(size_mb):
            out.write(os.urandom(1 << 20))
    data = bytearray(open(home + "/v1.bin", "rb").read())
    for at in range(0, size, size // 20):  # changed in 20 places
        data[at:at + size * percent // 2000] = os.urandom(size * percent // 2000)
    open(home + "/v2.bin", "wb").write(data)
    """)

AS_LISTS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tether._store.midx import MergedIndex, is_merged

    entries = []
    for path in sorted(Path(sys.argv[1]).iterdir()):
        data = path.read_bytes()
        if is_merged(data[:8]):
            for digest, pack, offset, length, raw, codec in MergedIndex(path.stem,
                                                                        data).entries():
                entries.append([digest, offset, length, raw, codec])
        else:
            entries.extend(json.loads(data)["chunks"])
    print(len(entries))
    """)


def run(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak resident MB, stdout) of one fresh process."""
    started = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode not in (0, 1):
        sys.exit(f"{' '.join(args)} failed:\n{err.decode()}")
    return seconds, usage.ru_maxrss / 1024, out.decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1150)
    parser.add_argument("--average", type=int, default=1024, help="average chunk size")
    parser.add_argument("--changed", type=int, default=5,
                        help="percent of the file the second version changes (gc drops "
                        "the first version's chunks: with more changed, packs are mostly "
                        "dead and gc repacks them)")
    parser.add_argument("--dir", help="work folder (default: a temp folder)")
    args = parser.parse_args()
    tether = [str(Path(sys.executable).with_name("tether"))]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        home = Path(tmp)
        # Made in a child: a child's peak (wait4) starts from its parent's at the fork.
        run([sys.executable, "-c", FILES, str(home), str(args.size_mb), str(args.changed)])
        seconds, peak, out = run([sys.executable, "-c", LOG, str(home), str(args.average)])
        chunks = int(out)
        objects = home / "reg" / "objects"
        print(f"two versions of {args.size_mb} MB ({args.changed}% changed) at "
              f"{args.average} B chunks: "
              f"{chunks:,} chunks each, logged in {seconds:.0f} s")
        rows = []
        seconds, peak, out = run([sys.executable, "-c", AS_LISTS, str(objects / "index")])
        rows.append(("anchor: index entries as lists", seconds, peak, f"{int(out):,} entries"))
        packs = sorted(str(p) for p in (objects / "packs").iterdir())
        started = time.perf_counter()
        subprocess.run(["cat", *packs], stdout=subprocess.DEVNULL, check=True)
        stored = sum(os.path.getsize(p) for p in packs)
        rows.append(("anchor: cat every pack", time.perf_counter() - started, 0.0,
                     f"{stored / 2**20:,.0f} MB in {len(packs)} packs"))
        registry = [*tether, "--registry", str(home / "reg")]
        for label, command in (("store stats", ["store", "stats", "--json"]),
                               ("gc --dry-run", ["gc", "--dry-run", "--keep-last", "1",
                                                 "--grace", "0", "--json"]),
                               ("store verify --dry-run", ["store", "verify", "--dry-run",
                                                           "--json"]),
                               ("gc", ["gc", "--keep-last", "1", "--grace", "0", "--json"])):
            seconds, peak, out = run([*registry, *command])
            answer = json.loads(out)
            if label == "store stats":
                note = f"{answer['chunks']:,} chunks"
            elif label.startswith("gc"):
                note = (f"{len(answer['expired_versions'])} version expired: "
                        f"{answer['removed_chunks']:,} chunks go, "
                        f"{answer['repacked_packs']} packs repacked")
            else:
                note = f"{answer['chunks']:,} chunks checked, {len(answer['bad'])} bad"
            rows.append((label, seconds, peak, note))
        print(f"{'':32} {'seconds':>8} {'peak MB':>8}  goal: peak under 300 MB")
        for label, seconds, peak, note in rows:
            shown = f"{peak:8.0f}" if peak else f"{'':>8}"
            print(f"{label:32} {seconds:8.2f} {shown}  {note}")


if __name__ == "__main__":
    main()
