"""Memory per chunk of a log and a read, by path: an embedded registry on SQLite, one on
PostgreSQL, and through `tether server` (the client's peaks and the server's).

A file's chunk count, not its size, is what can still move memory: each path keeps
or passes the chunk list (40 bytes a chunk) somewhere. Two files are cut at a 1 KiB
average (as many chunks as files 64 times larger at the usual 64 KiB) and logged,
then read back (get + download) in fresh processes; the slope between the two peaks
is the cost of one more chunk; for a list of versions (``versions()`` of eight
versions of the file), of one more chunk in each version listed. The local SQLite
figure is the anchor: the goal for
every other path is that one more chunk costs no more than it does there. (At 1 KiB
much of the slope is chunks in flight, which is bounded: bench_memory_trace.py follows
one log of 2 million chunks to its peak.)

    .venv/bin/python bench/bench_chunk_memory.py [--sizes-mb 96 288] [--only sqlite,pg,server]

PostgreSQL: 127.0.0.1:5432, trust auth (a database is made and dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_large import Server, env

MB = 1 << 20
#: Slack on the anchor's slope: the same run moves by about this much.
SLACK = 40
#: Versions of the file listed by the "list" step (``versions()``, in a fresh process:
#: the rise of its peak over the call alone).
LISTED_VERSIONS = 8

CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tether._store import chunkstore, ingest
    ingest.AVG_CHUNK = 1024

    def peak_mb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    def rss_mb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    import tether
    step, where, db, home = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    if where.startswith("http"):
        registry = tether.connect(where)
    elif step == "log":
        registry = tether.init(where, db_url=db or None)
    else:
        registry = tether.open(where)
    if step == "log":
        version = registry.log_model(str(home / "big.bin"), "big", progress=False)
    elif step == "more":  # more versions of the same bytes, for the list (not measured)
        for n in range(int(sys.argv[5]) - 1):
            version = registry.log_model(str(home / "big.bin"), "big", params={"n": n},
                                         progress=False)
    elif step == "list":  # the peak's rise over the call alone (VmHWM reset first)
        Path("/proc/self/clear_refs").write_text("5")
        before = rss_mb()
        listed = registry.versions("big")
        version = listed[-1]
        print(json.dumps({"peak": peak_mb() - before, "chunks": len(version.files[0].chunks),
                          "versions": len(listed)}))
        raise SystemExit
    else:
        version = registry.get("big@latest")
        registry.download("big@latest", home / "out", progress=False)
    print(json.dumps({"peak": peak_mb(), "chunks": len(version.files[0].chunks)}))
    """
)


def pg_database() -> tuple[str, str]:
    import psycopg

    name = f"tether_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name, f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                         autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run(path: str, size_mb: int, work: Path, steps: tuple[str, ...] = ("log", "read", "more",
                                                                       "list"),
        ) -> dict[str, float]:
    home = work / f"{path}-{size_mb}"
    home.mkdir(parents=True)
    with open(home / "big.bin", "wb") as out:
        for _ in range(size_mb // 8):
            out.write(os.urandom(8 * MB))
    (home / "child.py").write_text(CHILD)
    server, database, db = None, None, ""
    extra: dict[str, str] = {}
    where = str(home / "reg")
    if path == "pg":
        database, db = pg_database()
    elif path == "server":
        server = Server(home / "srv", f"file://{home / 'store'}", {})
        where, extra = server.url, {"TETHER_TOKEN": server.token}
    found: dict[str, float] = {}
    try:
        for step in steps:
            done = subprocess.run([sys.executable, str(home / "child.py"), step, where, db,
                                   str(home), str(LISTED_VERSIONS)], capture_output=True,
                                  text=True, check=False,
                                  env=env(TETHER_CACHE_DIR=str(home / "cache"), **extra))
            if done.returncode:
                raise SystemExit(f"{path} {step} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if step != "more":
                found[step], found["chunks"] = result["peak"], result["chunks"]
        if server is not None:
            found["server"] = server.peak_mb()
    finally:
        if server is not None:
            server.stop()
        if database is not None:
            drop_database(database)
        shutil.rmtree(home, ignore_errors=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs=2, default=[96, 288])
    parser.add_argument("--only", default="sqlite,pg,server",
                        help="paths to measure, of sqlite, pg, server")
    parser.add_argument("--dir", type=Path, default=None, help="work folder")
    parser.add_argument("--one", type=int, metavar="SIZE_MB", default=None,
                        help="only log and read one file of this size: its peaks")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-chunks-", dir=args.dir))
    paths = [p for p in ("sqlite", "pg", "server") if p in args.only.split(",")]
    if args.one:
        try:
            for path in paths:
                found = run(path, args.one, work, ("log", "read"))
                shown = ", ".join(f"{k} {v:.0f} MB" for k, v in found.items() if k != "chunks")
                print(f"{path}: {args.one} MB cut at 1 KiB, {found['chunks']:.0f} chunks: "
                      f"peak RSS {shown} (goal: each < 300 MB)", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    small, large = args.sizes_mb
    print(f"files of {small} and {large} MB of random bytes cut at a 1 KiB average; "
          f"peak RSS (VmHWM) of fresh processes; bytes per chunk = slope between the two")
    print(f"{'path':8} {'step':7} {'peaks (MB)':>16} {'bytes/chunk':>12}  goal")
    anchor: dict[str, float] = {}
    try:
        for path in paths:
            low, high = run(path, small, work), run(path, large, work)
            extra = high["chunks"] - low["chunks"]
            for step in ("log", "read", "server", "list"):
                if step not in low:
                    continue
                slope = (high[step] - low[step]) * MB / extra
                if step == "list":  # a rise per chunk of each version listed
                    slope /= LISTED_VERSIONS
                    goal = "< 4 bytes a chunk: no version's records held"
                    print(f"{path:8} {'list':7} {low[step]:7.0f} {high[step]:8.0f} "
                          f"{slope:12.1f}  {goal}: "
                          f"{'met' if slope < 4 else 'NOT met'} ({LISTED_VERSIONS} "
                          "versions; peaks are the call's rise)", flush=True)
                    continue
                if path == "sqlite":
                    anchor[step] = slope
                    goal = "(the anchor)"
                elif step in anchor:
                    goal = (f"<= local SQLite's {anchor[step]:.0f} (+{SLACK}): "
                            + ("met" if slope <= anchor[step] + SLACK else "NOT met"))
                else:  # the server: it stores what a client's log cut and hashed
                    goal = (f"<= local SQLite's log, {anchor['log']:.0f} (+{SLACK}): "
                            + ("met" if slope <= anchor["log"] + SLACK else "NOT met"))
                print(f"{path:8} {step:7} {low[step]:7.0f} {high[step]:8.0f} {slope:12.0f}  "
                      f"{goal}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
