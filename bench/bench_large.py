"""Large-model benchmark: log and load a 2 GB file (10 GB with --huge), locally,
through `tether server`, and against S3 (moto's server), next to their anchors.

    .venv/bin/python bench/bench_large.py [--size-gb 2] [--huge] [--only local,server,s3,server-s3]
                                          [--no-kill] [--repeat N] [--json]

For each target, in fresh processes whose peak RSS (VmHWM) is read from /proc:
log v1 (all bytes new), log v2 (the same file with 5% rewritten in 1 MB pieces
scattered through it), load v1 (a verified download into an empty folder, the
chunk cache empty) and load v2. Targets:

    local      an embedded registry, local store (SQLite)
    server     `tether server` over SQLite and a local store, on loopback
    s3         an embedded registry whose store is a bucket on `python -m moto.server`
    server-s3  `tether server` whose store is that bucket (clients get presigned URLs)

Then an upload killed at 50% (the client process SIGKILLed once a counting TCP
proxy saw half the file go by) and run again: the bytes sent beyond one upload
of the file, through the server and to S3 (goal: under 5% of the file).

Anchors measured in the same run: `dd conv=fsync` write speed of the disk, a plain
`cp` of the file, `dd` reading it from the disk (its cached pages dropped first: a
large log writes its packs around the page cache, so load v1 reads them from the
disk; load v2 finds most of them cached by load v1), boto3's `upload_file` of the
same file to the same moto server; and the compute floor: the CPU seconds per GB of
each step no ingest or load can skip (cutting, BLAKE3, reading from and writing to
the page cache), one thread each on the same file, and from them the most each local
operation could reach on this machine's cores with those steps spread perfectly and
nothing else done (its "compute ceiling"). Goals (issue 17): peak RSS < 300 MB;
all-new ingest at the disk's synced write speed; mostly-stored ingest and verified
load >= 1.5 GB/s; through the server at least half the local figures (each round is
also set against the local round run just before it: the median of those shares is
the figure least moved by the machine's slower spells); to S3 at least boto3's
`upload_file`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

MB = 1 << 20
GB = 1 << 30
WARM_BYTES = 0  # set by main: 1.25 x the file (see warm_pages)
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
          "AWS_DEFAULT_REGION": "us-east-1"}

# One operation in a fresh process: prints seconds and peak RSS.
CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    def peak_mb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def workers_peak_mb():
        # Cutting workers (tether._store.cutting) are separate processes: their own peaks.
        from tether._store import cutting
        peaks = [0.0]
        for worker in (cutting._pool.all if cutting._pool else []):
            try:
                status = Path(f"/proc/{worker.proc.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        return max(peaks)

    op, target, arg, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    import tether
    reg = tether.connect(target) if target.startswith("http") else tether.open(target)
    start = time.perf_counter()
    if op == "log":
        version = reg.log_model(arg, extra, progress=False)
        out = {"ref": version.ref}
    else:
        reg.download(arg, extra)
        out = {}
    out.update(seconds=time.perf_counter() - start, peak_mb=peak_mb(),
               worker_peak_mb=workers_peak_mb())
    print(json.dumps(out), flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update(extra)
    return out


def warm_pages(folder: Path, size: int) -> None:
    """Write and delete ``size`` bytes, so the step timed next reuses memory pages.

    This VM (KVM, virtio-balloon) hands unused guest memory back to the host:
    the first step to touch fresh pages paid for it, whatever it was (a 2 GB
    load took 4.3 s right after the logs, 1.6 s after 3 GB were written and
    deleted). Every timed step and anchor is preceded by this, alike.
    """
    block = bytes(8 * MB)
    target = folder / "warm.bin"
    with open(target, "wb", buffering=0) as handle:
        for _ in range(0, size, len(block)):
            handle.write(block)
    target.unlink()


def child(op: str, target: str, arg: str, extra: str, cache: Path,
          **more: str) -> dict[str, Any]:
    # What earlier steps left for the kernel to write out (the input files, a
    # load's output) is theirs: flushed before the clock starts, not during.
    warm_pages(cache.parent, WARM_BYTES)
    os.sync()
    done = subprocess.run([sys.executable, "-c", CHILD, op, target, arg, extra],
                          capture_output=True, text=True,
                          env=env(TETHER_CACHE_DIR=str(cache), **more), check=False)
    if done.returncode != 0:
        raise SystemExit(f"{op} on {target} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- the files -----------------------------------------------------------------------


def make_files(folder: Path, size: int) -> tuple[Path, Path]:
    """v1: incompressible bytes; v2: v1 with 5% rewritten in 1 MB pieces spread through it."""
    rng = np.random.default_rng(17)
    v1, v2 = folder / "v1" / "big.bin", folder / "v2" / "big.bin"
    v1.parent.mkdir()
    v2.parent.mkdir()
    with open(v1, "wb") as handle:
        left = size
        while left:
            block = rng.bytes(min(left, 64 * MB))
            handle.write(block)
            left -= len(block)
    shutil.copyfile(v1, v2)
    pieces = size // MB
    with open(v2, "r+b") as handle:
        for i in sorted(rng.choice(pieces, size=max(1, pieces // 20), replace=False)):
            handle.seek(int(i) * MB)
            handle.write(rng.bytes(MB))
    return v1, v2


# -- anchors -------------------------------------------------------------------------


def dd_fsync(folder: Path, size: int) -> float:
    target = folder / "dd.bin"
    warm_pages(folder, WARM_BYTES)
    start = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=8M", f"count={size // (8 * MB)}",
                    "conv=fsync"], capture_output=True, check=True)
    speed = size / (time.perf_counter() - start)
    target.unlink()
    return speed


# The CPU each step that no ingest or load can skip costs, one thread each, on the
# same file in the same run: resource's user + system seconds around each step.
FLOOR = textwrap.dedent(
    """
    import json, mmap, os, resource, sys
    import blake3
    from pyfastcdc.cy import FastCDC
    from tether._store import native
    from tether._store.ingest import AVG_CHUNK
    from tether._store.fileio import aligned_buffer

    path, scratch = sys.argv[1], sys.argv[2]
    size = os.path.getsize(path)
    step = 8 << 20

    def cpu():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    with open(path, "rb") as handle:
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(data)
    out = {}
    start = cpu()
    if native.available:  # Tether's own cutter (the lanes: _native.c), windows as ingest's
        for offset in range(0, size, step):
            native.cut(view[offset:offset + step], AVG_CHUNK, keep_last=True, hash=False)
    else:
        for _ in FastCDC(avg_size=AVG_CHUNK).cut_buf(view):
            pass
    out["cut"] = cpu() - start
    start = cpu()
    blake3.blake3(view).hexdigest()
    out["hash"] = cpu() - start
    buffer, fd = aligned_buffer(step), os.open(path, os.O_RDONLY)
    start = cpu()
    for offset in range(0, size, step):
        os.preadv(fd, [buffer], offset)
    out["read"] = cpu() - start
    os.close(fd)
    target = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    start = cpu()
    for offset in range(0, size, step):
        os.write(target, view[offset:offset + step])
    out["write"] = cpu() - start
    os.close(target)
    os.unlink(scratch)
    print(json.dumps({k: v * (1 << 30) / size for k, v in out.items()}))
    """
)


def compute_floor(path: Path, folder: Path) -> dict[str, float]:
    """CPU seconds per GB of cutting, hashing (BLAKE3, one thread), reading from the page
    cache into a buffer, and writing a new file's pages, measured on ``path``."""
    warm_pages(folder, WARM_BYTES)
    done = subprocess.run([sys.executable, "-c", FLOOR, str(path), str(folder / "floor.bin")],
                          capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


def ceilings(floor: dict[str, float], cores: int) -> dict[str, float]:
    """The fastest each operation could be on ``cores`` with nothing but its unavoidable
    steps, spread perfectly over them (MB/s). An ingest hashes every chunk and the
    whole file (two BLAKE3 passes); an all-new one also cuts and writes every byte, a
    mostly-stored one cuts and writes only what changed (5%: the rest follows the
    previous version's chunks, see following.py); a verified load reads every byte
    from a pack, checks each chunk's digest, computes the file's and writes it."""
    cut, hash_, read, write = floor["cut"], floor["hash"], floor["read"], floor["write"]
    per_gb = {"log v1 (new)": cut + 2 * hash_ + write,
              "log v2 (5% changed)": 2 * hash_ + (cut + write) / 20,
              "load v1": read + 2 * hash_ + write,
              "load v2": read + 2 * hash_ + write}
    return {op: 1024 * cores / seconds for op, seconds in per_gb.items()}


def cold_read(path: Path, folder: Path) -> float:
    """Reading the file from the disk: its pages dropped from the cache first (a hint
    any user may give for a file's clean pages), then `dd` in 8 MB blocks. A large
    log writes its packs around the page cache, so a load right after it reads them
    from the disk, as this does."""
    warm_pages(folder, WARM_BYTES)
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=8M"], capture_output=True,
                   check=True)
    return path.stat().st_size / (time.perf_counter() - start)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plain_cp(path: Path, folder: Path) -> float:
    target = folder / "cp.bin"
    warm_pages(folder, WARM_BYTES)
    start = time.perf_counter()
    subprocess.run(["cp", str(path), str(target)], check=True)
    speed = path.stat().st_size / (time.perf_counter() - start)
    target.unlink()
    return speed


def boto3_anchor(endpoint: str, path: Path, folder: Path, times: int = 1) -> dict[str, float]:
    """boto3's own ``upload_file`` of the file to the same server (the median of ``times``)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **{
        "aws_access_key_id": "bench", "aws_secret_access_key": "bench",
        "region_name": "us-east-1"})
    client.create_bucket(Bucket="anchor")
    size = path.stat().st_size
    speeds = []
    for _ in range(times):
        warm_pages(folder, WARM_BYTES)
        start = time.perf_counter()
        client.upload_file(str(path), "anchor", "big.bin")
        speeds.append(size / (time.perf_counter() - start))
        client.delete_object(Bucket="anchor", Key="big.bin")
    return {"boto3_upload_file": sorted(speeds)[len(speeds) // 2]}


# -- processes -----------------------------------------------------------------------


class Moto:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_http(self.url)

    def bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.url, aws_access_key_id="bench",
                     aws_secret_access_key="bench", region_name="us-east-1"
                     ).create_bucket(Bucket=name)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def wait_http(url: str) -> None:
    import httpx

    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1)
            return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


class Server:
    def __init__(self, folder: Path, store: str, extra_env: dict[str, str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env(**extra_env)
        db = f"sqlite:///{folder / 'meta.db'}"
        done = subprocess.run([str(BIN / "tether"), "server-init", "--db", db, "--store", store,
                               "--admin", "root@bench", "--json"], capture_output=True,
                              text=True, env=self.env, check=True)
        self.token = str(json.loads(done.stdout)["token"])
        self.log = open(folder / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(BIN / "tether"), "server", "--db", db, "--port",
                                      str(self.port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=self.env)
        wait_http(f"{self.url}/api/v1/health")

    def peak_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class CountingProxy:
    """A TCP proxy counting the bytes clients send upstream."""

    def __init__(self, upstream_port: int) -> None:
        self.sent = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._upstream = upstream_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
                upstream = socket.create_connection(("127.0.0.1", self._upstream))
            except OSError:
                return
            for sock in (client, upstream):  # no Nagle delay on small requests
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(1 << 20):
                if count:
                    with self._lock:
                        self.sent += len(data)
                dest.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, dest):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def take(self) -> int:
        with self._lock:
            sent, self.sent = self.sent, 0
        return sent

    def close(self) -> None:
        self._sock.close()


# -- the runs ------------------------------------------------------------------------


def progress(name: str, label: str, row: dict[str, Any]) -> None:
    """One figure as soon as it is measured (on stderr; the report comes at the end)."""
    print(f"  {name:<10} {label:<22} " + ", ".join(
        f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float)), file=sys.stderr,
        flush=True)


def run_target(name: str, target: str, v1: Path, v2: Path, work: Path,
               more: dict[str, str]) -> dict[str, Any]:
    size = v1.stat().st_size
    out: dict[str, Any] = {}
    model = f"big-{name}"
    for label, path in (("log v1 (new)", v1), ("log v2 (5% changed)", v2)):
        cache = work / f"cache-{name}-{label[:6].replace(' ', '')}"
        result = child("log", target, str(path), model, cache, **more)
        out[label] = {"MB/s": size / result["seconds"] / MB, "seconds": result["seconds"],
                      "peak_rss_mb": result["peak_mb"],
                      "worker_peak_rss_mb": result["worker_peak_mb"]}
        progress(name, label, out[label])
        shutil.rmtree(cache, ignore_errors=True)
    for label, ref in (("load v1", f"{model}@1"), ("load v2", f"{model}@2")):
        dest = work / f"load-{name}"
        cache = work / f"cache-{name}-load"
        result = child("load", target, ref, str(dest), cache, **more)
        out[label] = {"MB/s": size / result["seconds"] / MB, "seconds": result["seconds"],
                      "peak_rss_mb": result["peak_mb"]}
        progress(name, label, out[label])
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return out


def killed_upload(target: str, upstream_port: int, path: Path, work: Path,
                  more: dict[str, str], rewrite: Any = None) -> dict[str, float]:
    """Kill a logging client once half the file went through a counting proxy; run it
    again; return the bytes sent beyond one upload of the file."""
    size = path.stat().st_size
    fresh = work / "kill" / "big.bin"  # bytes the store has not seen
    fresh.parent.mkdir(exist_ok=True)
    rng = np.random.default_rng(int(time.time()))
    with open(fresh, "wb") as handle:
        left = size
        while left:
            block = rng.bytes(min(left, 64 * MB))
            handle.write(block)
            left -= len(block)
    path = fresh
    proxy = CountingProxy(upstream_port)
    url = rewrite(proxy.url) if rewrite else proxy.url
    try:
        cache = work / "cache-kill-1"
        more = {k: (url if v == "PROXY" else v) for k, v in more.items()}
        where = url if target == "PROXY" else target
        proc = subprocess.Popen([sys.executable, "-c", CHILD, "log", where, str(path),
                                 "killed"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env(TETHER_CACHE_DIR=str(cache), **more))
        while proxy.sent < size // 2:
            if proc.poll() is not None:
                raise SystemExit(f"the client ended early: {proc.communicate()[1][-2000:]!r}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = proxy.take()
        start = time.perf_counter()
        child("log", where, str(path), "killed", work / "cache-kill-2", **more)
        seconds = time.perf_counter() - start
        second = proxy.take()
    finally:
        proxy.close()
        fresh.unlink()
        for folder in ("cache-kill-1", "cache-kill-2"):
            shutil.rmtree(work / folder, ignore_errors=True)
    out = {"sent_before_kill_mb": first / MB, "sent_on_retry_mb": second / MB,
           "resent_pct": 100.0 * (first + second - size) / size, "retry_seconds": seconds}
    progress("killed", "at 50%, rerun", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--huge", action="store_true", help="10 GB instead")
    parser.add_argument("--only", default="local,server,s3,server-s3")
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every target this many times (fresh registries): the median "
                             "throughput and the highest peak RSS are reported")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    args = parser.parse_args()
    size = int((10.0 if args.huge else args.size_gb) * GB) // MB * MB
    global WARM_BYTES
    WARM_BYTES = size * 5 // 4
    targets = [t.strip() for t in args.only.split(",") if t.strip()]
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-large-", dir=args.dir))
    results: dict[str, Any] = {"size_mb": size / MB, "targets": {}, "anchors": {}}
    moto: Moto | None = None
    servers: list[Server] = []
    try:
        v1, v2 = make_files(work, size)
        anchors = results["anchors"]
        anchors["dd conv=fsync write"] = dd_fsync(work, size) / MB
        anchors["plain cp"] = plain_cp(v1, work) / MB
        anchors["dd read, not cached"] = cold_read(v1, work) / MB
        progress("anchors", "", anchors)
        results["floor"] = compute_floor(v1, work)
        results["cores"] = cores()
        progress("floor", "core-s per GB", results["floor"])
        if any(t.startswith("s3") or t == "server-s3" for t in targets):
            moto = Moto()
            anchors.update({k: v / MB for k, v in boto3_anchor(moto.url, v1, work,
                                                                          args.repeat).items()})
            progress("anchors", "", anchors)
            moto.bucket("bench")
        s3_env = {**S3_ENV, "TETHER_S3_ENDPOINT_URL": moto.url} if moto else {}
        rounds: dict[str, list[dict[str, Any]]] = {}
        for round_ in range(args.repeat):
            kill = not args.no_kill and round_ == 0
            for name in targets:
                rounds.setdefault(name, []).append(
                    run_one(name, work, v1, v2, moto, s3_env, servers, kill=kill, round_=round_))
        results["targets"] = {name: combine(runs) for name, runs in rounds.items()}
        results["rounds"] = args.repeat
    finally:
        for server in servers:
            server.stop()
        if moto is not None:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one target: each operation's median throughput, its highest peak RSS."""
    out: dict[str, Any] = dict(runs[0])
    for op, row in runs[0].items():
        if isinstance(row, dict) and "MB/s" in row:
            rows = sorted((r[op] for r in runs), key=lambda r: r["MB/s"])
            median = dict(rows[len(rows) // 2])
            for key in ("peak_rss_mb", "worker_peak_rss_mb"):
                if key in median:
                    median[key] = max(r.get(key) or 0.0 for r in rows)
            median["MB/s all rounds"] = [r["MB/s"] for r in rows]
            median["MB/s by round"] = [r[op]["MB/s"] for r in runs]  # in the order run
            out[op] = median
    if "server peak RSS MB" in runs[0]:
        out["server peak RSS MB"] = max(r["server peak RSS MB"] for r in runs)
    return out


def run_one(name: str, work: Path, v1: Path, v2: Path, moto: Moto | None,
            s3_env: dict[str, str], servers: list[Server], *, kill: bool,
            round_: int) -> dict[str, Any]:
    """One round of one target, in a fresh registry (and store, and server)."""
    if name == "local":
        root = work / "local" / ".tether"
        subprocess.run([str(BIN / "tether"), "init", str(root)], check=True,
                       capture_output=True, env=env(TETHER_USER="bench@x"))
        result = run_target(name, str(root), v1, v2, work, {})
        shutil.rmtree(work / "local")
        return result
    if name == "s3":
        assert moto is not None
        root = work / f"s3reg-{round_}" / ".tether"
        prefix = f"s3://bench/embedded-{round_}"
        subprocess.run([str(BIN / "tether"), "init", str(root), "--store", prefix],
                       check=True, capture_output=True,
                       env=env(TETHER_USER="bench@x", **s3_env))
        result = run_target(name, str(root), v1, v2, work, s3_env)
        if kill:
            result["killed at 50% and rerun"] = killed_upload(
                str(root), moto.port, v1, work, {**s3_env, "TETHER_S3_ENDPOINT_URL": "PROXY"})
        return result
    if name in ("server", "server-s3"):
        store = (f"file://{work / 'server-store'}" if name == "server"
                 else f"s3://bench/served-{round_}")
        server = Server(work / f"srv-{name}-{round_}", store,
                        s3_env if name == "server-s3" else {})
        servers.append(server)
        more = {"TETHER_TOKEN": server.token}
        result = run_target(name, server.url, v1, v2, work, more)
        result["server peak RSS MB"] = server.peak_mb()
        if kill and name == "server":
            result["killed at 50% and rerun"] = killed_upload(
                "PROXY", server.port, v1, work, more)
        server.stop()
        servers.remove(server)
        shutil.rmtree(work / "server-store", ignore_errors=True)
        return result
    raise SystemExit(f"unknown target {name!r}")


def share_by_round(row: dict[str, Any], local: dict[str, Any]) -> str:
    """Each round's figure against the local one of the same round (run minutes apart,
    so a slower spell of the machine moves both): the median share and the spread."""
    mine, theirs = row.get("MB/s by round") or [], local.get("MB/s by round") or []
    if len(mine) < 2 or len(mine) != len(theirs):
        return ""
    shares = sorted(100 * a / b for a, b in zip(mine, theirs, strict=True) if b)
    if not shares:
        return ""
    return (f", {shares[len(shares) // 2]:.0f}% of local round by round "
            f"({shares[0]:.0f}-{shares[-1]:.0f}%)")


def report(results: dict[str, Any]) -> None:
    anchors = results["anchors"]
    print(f"file: {results['size_mb'] / 1024:.1f} GB of incompressible bytes; "
          f"v2 rewrites 5% of it in 1 MB pieces")
    print("anchors (same run): " + ", ".join(f"{k} {v:.0f} MB/s" for k, v in anchors.items()))
    if results.get("rounds", 1) > 1:
        print(f"each figure: the median of {results['rounds']} rounds (fresh registries), "
              "the highest peak RSS")
    disk = anchors["dd conv=fsync write"]
    boto = anchors.get("boto3_upload_file")
    local = results["targets"].get("local", {})
    floor, ceiling = results.get("floor"), {}
    if floor:
        ceiling = ceilings(floor, results["cores"])
        print("compute floor (same run, same file, one thread each, CPU s per GB): "
              + ", ".join(f"{k} {v:.2f}" for k, v in floor.items())
              + f"; so on {results['cores']} cores, every step spread perfectly and nothing "
              "else done, at most: "
              + ", ".join(f"{op} {mbs:.0f} MB/s" for op, mbs in ceiling.items()))
    print(f"{'target':<10} {'operation':<22} {'MB/s':>8} {'peak RSS':>9}  goal")
    for name, ops in results["targets"].items():
        for op, row in ops.items():
            if not isinstance(row, dict) or "MB/s" not in row:
                continue
            if name == "local":
                goal = {"log v1 (new)": f">= disk {disk:.0f} MB/s"}.get(op, ">= 1536 MB/s")
                if op in ceiling:
                    goal += (f" (compute ceiling {ceiling[op]:.0f} MB/s: "
                             f"{100 * row['MB/s'] / ceiling[op]:.0f}% of it)")
            elif name.startswith("server"):
                ref = local.get(op, {}).get("MB/s")
                goal = f">= {ref / 2:.0f} MB/s (half of local)" if ref else ""
                goal += share_by_round(row, local.get(op, {}))
            else:
                goal = (f">= boto3 upload_file {boto:.0f} MB/s"
                        if op.startswith("log") and boto else "")
            workers = row.get("worker_peak_rss_mb") or 0
            extra = f" (+{workers:.0f} MB per cutting worker)" if workers else ""
            spread = row.get("MB/s all rounds") or []
            rounds = f" [rounds {min(spread):.0f}-{max(spread):.0f}]" if len(spread) > 1 else ""
            print(f"{name:<10} {op:<22} {row['MB/s']:>8.0f} {row['peak_rss_mb']:>6.0f} MB  "
                  f"{goal}; RSS < 300 MB{extra}{rounds}")
        if "server peak RSS MB" in ops:
            print(f"{name:<10} {'server process':<22} {'':>8} {ops['server peak RSS MB']:>6.0f} MB"
                  f"  RSS < 300 MB")
        kill = ops.get("killed at 50% and rerun")
        if kill:
            print(f"{name:<10} killed at 50%, rerun: sent {kill['sent_before_kill_mb']:.0f} MB "
                  f"+ {kill['sent_on_retry_mb']:.0f} MB, {kill['resent_pct']:.2f}% sent again "
                  f"(goal < 5%), rerun took {kill['retry_seconds']:.1f} s")


if __name__ == "__main__":
    main()
