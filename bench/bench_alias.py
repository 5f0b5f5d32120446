"""Alias resolution: `tether server` against `mlflow server`, same machine, same database kind.

    .venv/bin/python bench/bench_alias.py [--duration 10] [--connections 16] [--workers 2]
        [--mlflow /tmp/mlflow-bench/bin/mlflow] [--json]

Both servers run on SQLite with the same number of workers; each has one model
with two versions and an alias `production`. Load comes from `wrk` (apt-get
install -y wrk) in a second process, one thread, N keep-alive connections:

- Tether:  GET /api/v1/models/fraud/aliases/production   (with a reader token)
- Tether, poller with the ETag: the same with If-None-Match (304 Not Modified)
- MLflow:  GET /api/2.0/mlflow/registered-models/alias?name=fraud&alias=production

MLflow is not a Tether dependency; install it for this run in its own venv:

    .venv/bin/uv venv /tmp/mlflow-bench --python .venv/bin/python
    .venv/bin/uv pip install --python /tmp/mlflow-bench/bin/python mlflow "uvicorn[standard]"

uvicorn[standard] (httptools, uvloop) matters: without httptools both servers
suffer ~40 ms delayed-ACK stalls per response on loopback, so compare like with like.

The script prints requests/s and p50/p99 latency side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TETHER = str(ROOT / ".venv" / "bin" / "tether")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def wrk(url: str, *, duration: int, connections: int, headers: dict[str, str]) -> dict[str, Any]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    subprocess.run([*args[:3], "-d2s", *args[4:], url], capture_output=True, check=True)  # warm-up
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if not match:
            return float("nan")
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": latency("50%"),
        "p99_ms": latency("99%"),
        "non_2xx": int(errors[1]) if errors else 0,
    }


def start_tether(tmp: Path, workers: int) -> tuple[subprocess.Popen[bytes], str, str]:
    db = f"sqlite:///{tmp / 'tether.db'}"
    init = subprocess.run(
        [
            TETHER,
            "server-init",
            "--db",
            db,
            "--store",
            f"file://{tmp / 'objects'}",
            "--admin",
            "bench",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(init.stdout)["token"]
    port = free_port()
    proc = subprocess.Popen(
        [TETHER, "server", "--db", db, "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/api/v1/health")
    import tether

    client = tether.connect(url, token=token)
    weights = tmp / "weights.bin"
    for i in range(2):
        weights.write_bytes(os.urandom(1024) + bytes([i]))
        client.log_model(weights, "fraud")
    client.promote("fraud@1.1.0", "production", create=True)
    reader = client.create_token("poller", role="reader")["token"]
    client.close()
    return proc, url, reader


def start_mlflow(mlflow: str, tmp: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            mlflow,
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--default-artifact-root",
            str(tmp / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health", timeout=120)
    import mlflow as mlflow_client

    client = mlflow_client.MlflowClient(tracking_uri=url, registry_uri=url)
    client.create_registered_model("fraud")
    client.create_model_version("fraud", "s3://bucket/fraud/1")
    client.create_model_version("fraud", "s3://bucket/fraud/2")
    client.set_registered_model_alias("fraud", "production", "2")
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mlflow", default="/tmp/mlflow-bench/bin/mlflow")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install -y wrk")
    results: dict[str, Any] = {
        "workers": args.workers,
        "connections": args.connections,
        "duration_s": args.duration,
    }
    with tempfile.TemporaryDirectory(prefix="bench-alias-") as folder:
        tmp = Path(folder)
        proc, url, token = start_tether(tmp, args.workers)
        try:
            alias_url = f"{url}/api/v1/models/fraud/aliases/production"
            auth = {"Authorization": f"Bearer {token}"}
            results["tether"] = wrk(
                alias_url, duration=args.duration, connections=args.connections, headers=auth
            )
            etag = httpx.get(alias_url, headers=auth).headers["etag"]
            results["tether_304"] = wrk(
                alias_url,
                duration=args.duration,
                connections=args.connections,
                headers={**auth, "If-None-Match": etag},
            )
        finally:
            proc.terminate()
            proc.wait()
        if Path(args.mlflow).exists():
            mproc, murl = start_mlflow(args.mlflow, tmp, args.workers)
            try:
                results["mlflow"] = wrk(
                    f"{murl}/api/2.0/mlflow/registered-models/alias?name=fraud&alias=production",
                    duration=args.duration,
                    connections=args.connections,
                    headers={},
                )
            finally:
                mproc.terminate()
                mproc.wait()
        else:
            results["mlflow"] = {"skipped": f"{args.mlflow} not found (see the docstring)"}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"alias resolution, {args.workers} worker(s), wrk -t1 -c{args.connections} "
        f"-d{args.duration}s, SQLite"
    )
    print(f"{'server':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name in ("tether", "tether_304", "mlflow"):
        r = results[name]
        if "skipped" in r:
            print(f"{name:<22}skipped: {r['skipped']}")
            continue
        print(
            f"{name:<22}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['non_2xx']:>10}"
        )
    if "rps" in results["mlflow"]:
        ratio = results["tether"]["rps"] / results["mlflow"]["rps"]
        print(f"tether / mlflow throughput: {ratio:.1f}x")


if __name__ == "__main__":
    main()
