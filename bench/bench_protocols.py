"""Protocol benchmark: the Open Inference Protocol route, with and without batching.

    .venv/bin/python bench/bench_protocols.py [--duration 10] [--connections 16,64]
        [--repeat 2]

One `tether serve` process per configuration (the real CLI, one uvicorn
worker each), all serving the same logistic regression on iris, one record per
request, loaded by `wrk` (apt-get install -y wrk; an httpx load generator
otherwise, and the table says so):

- the plain Tether route (`{"records": [...]}`) and the same with a plain
  array (`{"inputs": [[...]]}`), as the reference in the same run;
- MLflow's `/invocations` (`dataframe_split`);
- the Open Inference Protocol (`POST /v2/models/iris/infer`, one FP64 [1, 4]
  tensor, JSON) without batching, with eager batching (`batching: {max_batch:
  64, max_wait_ms: 5}`: a batch closes as soon as no other request is on its
  way in) and with strict batching (`eager: false`: a batch always gathers for
  5 ms unless 64 records arrive first).

Rounds interleave the servers so a busy moment of the machine hurts all alike;
figures are medians over rounds. wrk and the servers share the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import TETHER, Process, free_port, run_httpx, run_wrk

BATCH = "batching: {max_batch: 64, max_wait_ms: 5}"
STRICT = "batching: {max_batch: 64, max_wait_ms: 5, eager: false}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="16,64",
                        help="comma-separated connection counts, each a separate table")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over all servers")
    args = parser.parse_args()

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import tether

    load = run_wrk if shutil.which("wrk") else run_httpx
    tool = "wrk" if load is run_wrk else "httpx threads (wrk not found)"
    X, y = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    record = X.iloc[[0]].to_dict(orient="records")
    row = X.iloc[0].tolist()
    work = Path(tempfile.mkdtemp(prefix="tether-bench-protocols-"))
    env = {**os.environ, "TETHER_URI": str(work / ".tether")}
    servers: list[Process] = []
    counts = [int(c) for c in args.connections.split(",")]
    runs: dict[tuple[int, str], list[dict[str, float]]] = {}
    try:
        registry = tether.init(work / ".tether")
        v1 = registry.log_model(model, "iris", input_example=X.head(5))
        registry.close()
        oip = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": row}]}
        configs = {  # label: (endpoint options, path, body)
            "tether route, records": ("", "/v1/endpoints/iris/predict", {"records": record}),
            "tether route, plain array": ("", "/v1/endpoints/iris/predict", {"inputs": [row]}),
            "mlflow /invocations": ("", "/invocations", {"dataframe_split": {
                "columns": list(X.columns), "data": [row]}}),
            "OIP infer, no batching": ("", "/v2/models/iris/infer", oip),
            "OIP infer, batching (eager)": (BATCH, "/v2/models/iris/infer", oip),
            "OIP infer, batching (strict 5 ms)": (STRICT, "/v2/models/iris/infer", oip),
        }
        targets: dict[str, tuple[str, dict[str, Any]]] = {}
        ports: dict[str, int] = {}
        for label, (options, path, body) in configs.items():
            if options not in ports:
                port = ports[options] = free_port()
                deploy = work / f"deploy-{port}.yaml"
                extra = f", {options}" if options else ""
                deploy.write_text(f"endpoints: {{iris: {{routes: [{v1.ref}]{extra}}}}}\n")
                servers.append(Process([TETHER, "serve", str(deploy), "--port", str(port),
                                        "--log-level", "warning"],
                                       f"http://127.0.0.1:{port}/readyz", env))
            url = f"http://127.0.0.1:{ports[options]}{path}"
            check = httpx.post(url, json=body)
            if check.status_code != 200:
                raise RuntimeError(f"{label}: {check.status_code} {check.text[:300]}")
            targets[label] = (url, body)
        for _ in range(args.repeat):
            for connections in counts:
                for label, (url, body) in targets.items():
                    runs.setdefault((connections, label), []).append(
                        load(url, body, args.duration, connections))
        batches = {}
        for options in (BATCH, STRICT):
            metrics = httpx.get(f"http://127.0.0.1:{ports[options]}/metrics").text
            count = sum(float(line.split()[-1]) for line in metrics.splitlines()
                        if line.startswith("tether_batch_records_count"))
            total = sum(float(line.split()[-1]) for line in metrics.splitlines()
                        if line.startswith("tether_batch_records_sum"))
            batches[options] = total / count if count else 0.0
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nload: {tool}, 1 thread, {args.duration} s x {args.repeat} rounds (medians), "
          f"one record per request; {os.cpu_count()} CPUs")
    for connections in counts:
        print(f"\n{connections} connections{'':22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'non-2xx':>8}")
        figures = {}
        for label in targets:
            samples = runs[(connections, label)]
            figures[label] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
            f = figures[label]
            print(f"{label:36} {f['rps']:9.0f} {f['p50']:8.2f} {f['p99']:8.2f} "
                  f"{f['errors']:8.0f}")
        base = figures["OIP infer, no batching"]
        for label in ("OIP infer, batching (eager)", "OIP infer, batching (strict 5 ms)"):
            other = figures[label]
            print(f"  {label}: req/s {100 * (other['rps'] / base['rps'] - 1):+.1f}%, "
                  f"p99 {100 * (other['p99'] / base['p99'] - 1):+.1f}% vs no batching")
    print(f"\nmean records per batch over the whole run: eager {batches[BATCH]:.1f}, "
          f"strict {batches[STRICT]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
