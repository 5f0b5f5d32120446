"""Serving benchmark: `tether serve` against the in-process floor and `mlflow models serve`.

    .venv/bin/python bench/bench_serving.py [--duration 10] [--connections 16] [--repeat 3]
        [--mlflow-python /tmp/mlflow-bench/bin/python]

What it measures, for a small scikit-learn model (logistic regression on iris,
one record per request):

1. in-process: `model.predict` on a one-row DataFrame in a loop (the floor);
2. `tether serve iris@1.0.0` (the real CLI, one process);
3. `mlflow models serve --env-manager local` for the same fitted model, same
   scikit-learn version, one worker (its default);
4. `tether serve` with a 90/10 canary split, and with a shadow route.

Load comes from `wrk` (apt-get install -y wrk), one thread, N connections,
keep-alive, for D seconds after a warm-up; p50/p99 are wrk's latency
distribution. If wrk is missing, a small httpx load generator is used and the
table says so.

MLflow is NOT a Tether dependency. Install it only for this run, in its own
virtualenv so it cannot change the project's packages:

    .venv/bin/uv venv /tmp/mlflow-bench --python .venv/bin/python
    .venv/bin/uv pip install --python /tmp/mlflow-bench/bin/python mlflow \
        "scikit-learn==$(.venv/bin/python -c 'import sklearn; print(sklearn.__version__)')"

Without --mlflow-python (or when that interpreter lacks mlflow) the MLflow
row is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TETHER = str(ROOT / ".venv" / "bin" / "tether")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


def run_wrk(url: str, body: dict[str, Any], duration: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n'
                     'wrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(json.dumps(body))}\n")
    try:
        subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", "-s", script.name, url],
                       capture_output=True, check=True)  # warm-up
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                              "-s", script.name, url], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "errors": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_httpx(url: str, body: dict[str, Any], duration: int, connections: int) -> dict[str, float]:
    """Fallback load generator: one thread per connection, closed loop."""
    latencies: list[float] = []
    errors = [0]
    stop = time.monotonic() + duration

    def worker() -> None:
        with httpx.Client() as client:
            while time.monotonic() < stop:
                started = time.perf_counter()
                response = client.post(url, json=body)
                latencies.append(time.perf_counter() - started)
                errors[0] += response.status_code != 200

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {"rps": len(latencies) / duration, "p50": 1000 * latencies[len(latencies) // 2],
            "p99": 1000 * latencies[int(len(latencies) * 0.99)], "errors": float(errors[0]),
            "socket_errors": 0.0}


def in_process(model: Any, frame: Any, seconds: float = 3.0) -> dict[str, float]:
    times = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        started = time.perf_counter()
        model.predict(frame)
        times.append(time.perf_counter() - started)
    times.sort()
    return {"rps": len(times) / sum(times), "p50": 1000 * statistics.median(times),
            "p99": 1000 * times[int(len(times) * 0.99)], "errors": 0.0, "socket_errors": 0.0}


class Process:
    def __init__(self, args: list[str], ready_url: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=env)
        try:
            wait_ready(ready_url)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all servers")
    parser.add_argument("--mlflow-python", default="/tmp/mlflow-bench/bin/python")
    args = parser.parse_args()

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import tether

    load = run_wrk if shutil.which("wrk") else run_httpx
    tool = "wrk" if load is run_wrk else "httpx threads (wrk not found)"
    X, y = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    record = X.iloc[[0]].to_dict(orient="records")
    work = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    env = {**os.environ, "TETHER_URI": str(work / ".tether")}
    results: list[tuple[str, dict[str, float] | str]] = []
    runs: dict[str, list[dict[str, float]]] = {}
    skipped: dict[str, str] = {}
    servers: list[Process] = []
    try:
        registry = tether.init(work / ".tether")
        v1 = registry.log_model(model, "iris", input_example=X.head(5), data={"train": X})
        v2 = registry.log_model(LogisticRegression(C=0.05, max_iter=500).fit(X, y), "iris",
                                input_example=X.head(5), data={"train": X})
        registry.close()
        results.append(("in-process predict, DataFrame row", in_process(model, X.iloc[[0]])))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fitted with feature names, given an array
            results.append(("in-process predict, ndarray row",
                            in_process(model, X.iloc[[0]].to_numpy())))

        deployments = {
            "tether serve (one version)": f"endpoints: {{iris: {{routes: [{v1.ref}]}}}}",
            "tether serve, canary 90/10": (
                "endpoints: {iris: {routes: ["
                f"{{name: stable, target: {v1.ref}, weight: 90}}, "
                f"{{name: canary, target: {v2.ref}, weight: 10}}]}}}}"),
            "tether serve, shadow route": (
                f"endpoints: {{iris: {{routes: [{v1.ref}], shadow: [{v2.ref}]}}}}"),
        }
        targets: dict[str, tuple[str, dict[str, Any]]] = {}
        for label, text in deployments.items():
            port = free_port()
            path = work / f"deploy-{port}.yaml"
            path.write_text(text + "\n")
            servers.append(Process([TETHER, "serve", str(path), "--port", str(port),
                                    "--log-level", "warning"],
                                   f"http://127.0.0.1:{port}/readyz", env))
            targets[label] = (f"http://127.0.0.1:{port}/v1/endpoints/iris/predict",
                              {"records": record})
        started = start_mlflow(args, model, work, record, env)
        if isinstance(started, str):
            skipped["mlflow models serve (1 worker)"] = started
        else:
            servers.append(started[0])
            targets["mlflow models serve (1 worker)"] = started[1:]
        # Rounds interleave the servers, so a busy moment of the machine hurts all alike.
        for _ in range(args.repeat):
            for label, (url, body) in targets.items():
                runs.setdefault(label, []).append(load(url, body, args.duration,
                                                       args.connections))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    for label, figures in runs.items():
        results.append((label, {k: statistics.median(f[k] for f in figures)
                                for k in figures[0]}))
    results.extend(skipped.items())
    print(f"\nload: {tool}, 1 thread, {args.connections} connections, {args.duration} s x "
          f"{args.repeat} rounds (medians), one record per request; {os.cpu_count()} CPUs")
    print(f"{'':36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for label, figures in results:
        if isinstance(figures, str):
            print(f"{label:36} skipped: {figures}")
        else:
            print(f"{label:36} {figures['rps']:9.0f} {figures['p50']:8.2f} {figures['p99']:8.2f} "
                  f"{figures['errors']:8.0f}")
    base = dict(results).get("tether serve (one version)")
    if isinstance(base, dict):
        for label in ("tether serve, canary 90/10", "tether serve, shadow route"):
            other = dict(results).get(label)
            if isinstance(other, dict):
                print(f"{label}: p99 {100 * (other['p99'] / base['p99'] - 1):+.1f}%, "
                      f"req/s {100 * (other['rps'] / base['rps'] - 1):+.1f}% vs one version")


def start_mlflow(args: argparse.Namespace, model: Any, work: Path, record: Any,
                 env: dict[str, str]) -> tuple[Process, str, dict[str, Any]] | str:
    """`mlflow models serve` for the same fitted model, or why it cannot run."""
    python = Path(args.mlflow_python)
    if not python.exists():
        return f"{python} not found (see this script's docstring to install mlflow apart)"
    check = subprocess.run(
        [str(python), "-c", "import mlflow, sklearn; print(sklearn.__version__)"],
        capture_output=True, text=True,
    )
    if check.returncode != 0:
        return f"mlflow is not importable by {python}: {check.stderr.strip()[-200:]}"
    import sklearn

    if check.stdout.strip() != sklearn.__version__:
        return f"scikit-learn {check.stdout.strip()} there, {sklearn.__version__} here"
    pickled = work / "model.pkl"
    pickled.write_bytes(pickle.dumps(model))
    saved = work / "mlflow-model"
    subprocess.run([str(python), "-c",
                    "import pickle, sys, mlflow.sklearn; "
                    "mlflow.sklearn.save_model(pickle.load(open(sys.argv[1], 'rb')), sys.argv[2])",
                    str(pickled), str(saved)], check=True, capture_output=True)
    port = free_port()
    # mlflow starts `uvicorn` by name: its virtualenv's bin must come first on PATH.
    mlflow_env = {**env, "MLFLOW_TRACKING_URI": f"file://{work / 'mlruns'}",
                  "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}"}
    server = Process([str(python.parent / "mlflow"), "models", "serve", "-m", str(saved),
                      "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
                     f"http://127.0.0.1:{port}/ping", mlflow_env)
    url, body = f"http://127.0.0.1:{port}/invocations", {"dataframe_records": record}
    response = httpx.post(url, json=body)
    if response.status_code != 200:
        server.stop()
        return f"mlflow answered {response.status_code}: {response.text[:200]}"
    return server, url, body


if __name__ == "__main__":
    sys.exit(main())
