"""Replicas of a deployment stored in the registry: throughput, propagation, rollback, shadows.

    python bench/bench_replicas.py [--duration 8] [--db postgresql://...]

1. `tether serve --deployment NAME` with 1 and 2 workers: requests/s and p99
   (wrk, 16 connections, one record per request).
2. Three replicas (separate processes): the time from `set_deployment_weights`
   and from an alias move until all three serve the change.
3. A failing version promoted under three replicas with a rule
   ``error_rate > 0.2``: the rollback events the registry holds (must be 1),
   and the failed requests during the switch that the failing version did not
   answer (must be 0).
4. The shadow route's added p99 against the same deployment without it, with
   shadows predicted in a separate process (the default) and in a thread of
   the serving process (TETHER_SHADOW_IN_PROCESS=1, the old way).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import free_port, run_httpx, run_wrk, wait_ready

import tether

TETHER = str(Path(sys.executable).with_name("tether"))
USER = "bench@example.com"


class Failing:
    """The failing version: raises on every prediction."""

    def predict(self, frame: Any) -> list[int]:
        raise RuntimeError("model backend unavailable")


class Good:
    def predict(self, frame: Any) -> list[int]:
        return [1] * len(frame)


class Replica:
    def __init__(self, root: str, name: str, *, workers: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [TETHER, "--registry", root, "serve", "--deployment", name, "--port",
             str(self.port), "--workers", str(workers), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "TETHER_USER": USER, **(env or {})})

    def ready(self) -> Replica:
        wait_ready(self.url + "/readyz")
        return self

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def routes(url: str, endpoint: str) -> dict[str, Any]:
    body = httpx.get(f"{url}/v1/endpoints/{endpoint}", timeout=5).json()
    return {r["name"]: r for r in body["routes"]}


def until(condition: Any, timeout: float = 30.0, step: float = 0.01) -> float:
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout:
            raise RuntimeError("condition not met in time")
        time.sleep(step)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", default=None, help="PostgreSQL URL (default: SQLite)")
    args = parser.parse_args()
    load = run_wrk if shutil.which("wrk") else run_httpx
    work = Path(tempfile.mkdtemp(prefix="tether-bench-replicas-"))
    root = str(work / ".tether")
    replicas: list[Replica] = []
    try:
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression

        X, y = load_iris(return_X_y=True, as_frame=True)
        registry = tether.init(root, actor=USER, db_url=args.db)
        v1 = registry.log_model(LogisticRegression(max_iter=500).fit(X, y), "iris",
                                input_example=X.head(3), progress=False)
        v2 = registry.log_model(LogisticRegression(C=0.05, max_iter=500).fit(X, y), "iris",
                                input_example=X.head(3), progress=False)
        registry.promote(v1.ref, "production", create=True)
        good = registry.log_model(Good(), "scorer", progress=False)
        bad = registry.log_model(Failing(), "scorer", progress=False)
        registry.promote(good.ref, "production", create=True)
        record = {k: float(v) for k, v in X.iloc[0].items()}
        body = {"records": [record]}
        one = {"endpoints": {"iris": {"routes": [{"name": "stable", "target": "iris@production",
                                                  "weight": 100}]}}}
        registry.apply_deployment("iris-one", one)
        canary = {"endpoints": {"iris": {"routes": [
            {"name": "stable", "target": "iris@production", "weight": 90},
            {"name": "canary", "target": v2.ref, "weight": 10}]}}}
        registry.apply_deployment("iris-canary", canary)
        shadowed = {"endpoints": {"iris": {"routes": [v1.ref], "shadow": [v2.ref]}}}
        plain = {"endpoints": {"iris": {"routes": [v1.ref]}}}
        registry.apply_deployment("iris-plain", plain)
        registry.apply_deployment("iris-shadow", shadowed)
        registry.apply_deployment("scorer", {"endpoints": {"scorer": {
            "routes": [{"name": "main", "target": "scorer@production"}], "trusted": True,
            "rollback": {"window": 10, "min_requests": 20, "rules": ["error_rate > 0.2"]}}}})
        print(f"registry: {args.db or 'SQLite'}; {os.cpu_count()} CPUs; load: {load.__name__}, "
              f"{args.connections} connections, {args.duration} s x {args.repeat} (medians)")

        # 1. throughput with 1 and 2 workers ------------------------------------------
        servers = {n: Replica(root, "iris-one", workers=n).ready() for n in (1, 2)}
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for _ in range(args.repeat):
            for n, server in servers.items():
                runs[n].append(load(f"{server.url}/v1/endpoints/iris/predict", body,
                                    args.duration, args.connections))
        for server in servers.values():
            server.stop()
        print("\n1. tether serve --deployment iris-one")
        print(f"   {'workers':8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for n, figures in runs.items():
            m = {k: statistics.median(f[k] for f in figures) for k in figures[0]}
            print(f"   {n:<8} {m['rps']:8.0f} {m['p50']:8.2f} {m['p99']:8.2f} {m['errors']:8.0f}")

        # 2. propagation to 3 replicas --------------------------------------------------
        replicas = [Replica(root, "iris-canary") for _ in range(3)]
        for replica in replicas:
            replica.ready()
        weight_times, alias_times = [], []
        for i in range(5):
            stable, canary_w = (50.0, 50.0) if i % 2 == 0 else (90.0, 10.0)
            started = time.perf_counter()
            registry.set_deployment_weights("iris-canary", {"stable": stable,
                                                            "canary": canary_w})
            until(lambda s=stable: all(routes(r.url, "iris")["stable"]["weight"] == s
                                       for r in replicas))
            weight_times.append(time.perf_counter() - started)
            target = v2 if i % 2 == 0 else v1
            started = time.perf_counter()
            registry.promote(target.ref, "production")
            until(lambda t=target: all(routes(r.url, "iris")["stable"]["ref"] == t.ref
                                       for r in replicas))
            alias_times.append(time.perf_counter() - started)
        print("\n2. a change reaching all of 3 replicas (5 changes each; poll interval 0.5 s)")
        for label, times in (("weight change", weight_times), ("alias move", alias_times)):
            print(f"   {label:14} median {statistics.median(times):.2f} s, "
                  f"max {max(times):.2f} s")
        for replica in replicas:
            replica.stop()

        # 3. a failing version rolled back across 3 replicas ---------------------------
        replicas = [Replica(root, "scorer") for _ in range(3)]
        for replica in replicas:
            replica.ready()
        before = len(registry.audit_log(action="alias.rollback")) + len(
            registry.audit_log(action="deployment.rollback"))
        outcomes: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def send(replica: Replica) -> None:
            with httpx.Client(base_url=replica.url, timeout=10) as client:
                while not stop.is_set():
                    try:
                        r = client.post("/v1/endpoints/scorer/predict",
                                        json={"records": [{"x": 1.0}]})
                        outcomes.append((time.perf_counter(), r.status_code,
                                         r.headers.get("x-model-version", "")))
                    except httpx.HTTPError as error:
                        outcomes.append((time.perf_counter(), 0, type(error).__name__))
                    time.sleep(0.005)

        threads = [threading.Thread(target=send, args=(r,)) for r in replicas for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        promoted = time.perf_counter()
        registry.promote(bad.ref, "production")
        until(lambda: registry.get("scorer@production").digest == good.digest, timeout=60)
        rolled = time.perf_counter()
        until(lambda: all(routes(r.url, "scorer")["main"]["ref"] == good.ref for r in replicas),
              timeout=30)
        switched = time.perf_counter()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        events = len(registry.audit_log(action="alias.rollback")) + len(
            registry.audit_log(action="deployment.rollback")) - before
        from_bad = [o for o in outcomes if o[1] != 200 and o[2].startswith(bad.ref)]
        other_failures = [o for o in outcomes if o[1] != 200 and not o[2].startswith(bad.ref)]
        during = [o for o in outcomes if rolled <= o[0] <= switched]
        print("\n3. failing version promoted under 3 replicas (rule: error_rate > 0.2, "
              "window 10 s, min 20 requests)")
        print(f"   rollback decided {rolled - promoted:.2f} s after the promotion; all 3 "
              f"replicas back on {good.ref} {switched - rolled:.2f} s later")
        print(f"   rollback events in the audit log: {events}")
        print(f"   requests: {len(outcomes)} in all, {len(during)} during the switch; "
              f"errors answered by the failing version {bad.ref}: {len(from_bad)}; "
              f"other failed requests: {len(other_failures)}")
        for replica in replicas:
            replica.stop()
        replicas = []

        # 4. the shadow route's added p99 --------------------------------------------
        kinds = {"one version": ("iris-plain", {}),
                 "shadow, separate process": ("iris-shadow", {}),
                 "shadow, in-process thread": ("iris-shadow", {"TETHER_SHADOW_IN_PROCESS": "1"})}
        servers4 = {label: Replica(root, name, env=env).ready()
                    for label, (name, env) in kinds.items()}
        shadow_runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for _ in range(args.repeat):
            for label, server in servers4.items():
                shadow_runs[label].append(load(f"{server.url}/v1/endpoints/iris/predict", body,
                                               args.duration, args.connections))
        for server in servers4.values():
            server.stop()
        print("\n4. shadow route (iris, one replica)")
        print(f"   {'':28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        medians = {}
        for label, figures in shadow_runs.items():
            m = medians[label] = {k: statistics.median(f[k] for f in figures)
                                  for k in figures[0]}
            print(f"   {label:28} {m['rps']:8.0f} {m['p50']:8.2f} {m['p99']:8.2f}")
        base = medians["one version"]["p99"]
        for label in ("shadow, separate process", "shadow, in-process thread"):
            print(f"   {label}: p99 {100 * (medians[label]['p99'] / base - 1):+.1f}% "
                  "vs one version")
        registry.close()
    finally:
        for replica in replicas:
            replica.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
