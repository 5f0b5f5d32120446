"""OIP benchmark: an ONNX and an XGBoost model through the Open Inference Protocol route,
`tether serve` against MLServer 1.7.1 (and `mlflow models serve`), with and without batching.

    .venv/bin/python bench/bench_oip.py [--duration 8] [--repeat 2] [--connections 16,64]
        [--mlserver-venv bench/out/mlserver-venv] [--mlserver-parallel-workers 1]
        [--no-floor] [--no-mlflow]

What runs, all on this machine, loopback only:

- two tiny models fitted here on scikit-learn's breast_cancer data (569 rows, 30
  features; nothing is downloaded): an `XGBClassifier` (50 trees, depth 4), and a
  scikit-learn pipeline (StandardScaler + LogisticRegression) converted to ONNX with
  skl2onnx (`zipmap: False`, label first);
- a fresh Tether registry holding both, served by `tether serve` (the real CLI, one
  uvicorn worker) twice: without batching, and with `batching: {max_batch: 64,
  max_wait_ms: 5}` on each endpoint;
- MLServer 1.7.1 serving the same models twice, without and with its adaptive
  batching (`max_batch_size: 64, max_batch_time: 0.005`, the same limits).
  XGBoost goes through `mlserver-xgboost` (the JSON model file Tether stores);
  MLServer has no ONNX runtime of its own, so the ONNX graph goes through
  `mlserver-mlflow` (the same graph saved with `mlflow.onnx`, run by onnxruntime);
- `mlflow models serve --env-manager local` for each model (one worker, its default).
  It does not speak the Open Inference Protocol: it gets the same row as MLflow's
  `{"inputs": [[...]]}` on `/invocations`;
- the HTTP floor: a bare Starlette route under uvicorn (httptools, one worker) that
  parses the same body and answers a fixed OIP response (no model).

Every OIP server gets byte-for-byte the same body, one FP32 [1, 30] tensor (one
record per request), posted by `wrk -t1 -cN` with bench/oip_post.lua; p50 and p99
are wrk's latency percentiles. Rounds interleave all servers so a busy moment of the
machine hurts all alike; figures are medians over rounds. wrk and every server share
the machine's cores (2 here), which is the situation these figures describe.

MLServer, mlserver-xgboost, mlserver-mlflow and MLflow are NOT Tether dependencies:
they are installed, pinned, in their own virtualenv under bench/out/ (git-ignored),
created on first use with `python -m venv` and pip (the frameworks pinned to the
versions in this interpreter, so both sides run the same xgboost and onnxruntime).
`--no-install` refuses to create it; a missing or broken MLServer venv skips the
MLServer and MLflow rows with the reason. Every server this script starts runs in a
process group of its own and is stopped (SIGTERM, then SIGKILL) on the way out, on
error and on Ctrl-C too. The run takes about `2 models x 5 servers + floor` x
connection counts x repeat x (duration + 1 s warm-up), plus start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TETHER = str(ROOT / ".venv" / "bin" / "tether")
LUA = BENCH / "oip_post.lua"
DEFAULT_VENV = BENCH / "out" / "mlserver-venv"
# uvloop 0.21.0 was current when MLServer 1.7.1 came out; with 0.22+ its inference worker
# dies at start (asyncio.get_event_loop() in mlserver/parallel/worker.py no longer makes a loop).
SERVER_PINS = ["mlserver==1.7.1", "mlserver-xgboost==1.7.1", "mlserver-mlflow==1.7.1",
               "mlflow==3.17.2", "uvloop==0.21.0"]
MAX_BATCH, MAX_WAIT_MS = 64, 5


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One server process in a session of its own; output goes to a log file."""

    def __init__(self, name: str, args: list[str], ready: list[str], env: dict[str, str],
                 log: Path, cwd: Path, timeout: float = 180) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            cwd=cwd, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        pending = list(ready)
        while pending:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-2000:]
                why = "exited" if self.process.returncode is not None else "never became ready"
                raise RuntimeError(f"{name} {why} ({pending[0]}); end of {log}:\n{tail}")
            try:
                if httpx.get(pending[0], timeout=2).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # the group this script started
            except ProcessLookupError:
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # any child left behind (workers)
        self.process.wait(timeout=10)


@dataclass
class Config:
    server: str
    model: str
    batching: str
    url: str
    body: Path


def run_wrk(config: Config, duration: int, connections: int) -> dict[str, float]:
    env = {**os.environ, "OIP_BODY_FILE": str(config.body)}
    options = [f"-c{connections}", "--timeout", "5s", "-s", str(LUA), config.url]
    subprocess.run(["wrk", "-t1", "-d1s", *options], env=env, capture_output=True, check=True,
                   timeout=60)  # warm-up: fresh connections, the server's caches
    out = subprocess.run(["wrk", "-t1", f"-d{duration}s", *options], env=env,
                         capture_output=True, text=True, check=True,
                         timeout=duration + 60).stdout
    match = re.search(r"^OIPBENCH (.*)$", out, re.M)
    if not match:
        raise RuntimeError(f"wrk printed no summary for {config.url}:\n{out}")
    f = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    return {"rps": f["requests"] / (f["duration_us"] / 1e6), "p50": f["p50_us"] / 1000,
            "p99": f["p99_us"] / 1000, "errors": f["status_errors"] + f["socket_errors"]}


def ensure_venv(venv: Path, install: bool) -> tuple[Path | None, str]:
    """The MLServer/MLflow interpreter, created on first use; (None, reason) if unusable."""
    import onnx
    import onnxruntime
    import sklearn
    import xgboost

    pins = [*SERVER_PINS, f"xgboost=={xgboost.__version__}",
            f"onnxruntime=={onnxruntime.__version__}", f"onnx=={onnx.__version__}",
            f"scikit-learn=={sklearn.__version__}"]
    python, marker = venv / "bin" / "python", venv / ".bench-pins"
    if not (marker.exists() and marker.read_text() == "\n".join(pins)):
        if not install:
            return None, f"{venv} is missing or has other pins (and --no-install)"
        print(f"installing {' '.join(pins)} into {venv} ...", flush=True)
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", *pins], check=True, timeout=1800)
        except (subprocess.SubprocessError, OSError) as error:
            return None, f"could not install into {venv}: {error}"
        marker.write_text("\n".join(pins))
    check = subprocess.run([str(python), "-c", "import mlserver_xgboost, mlserver_mlflow, mlflow"],
                           capture_output=True, text=True, timeout=300)
    if check.returncode:
        return None, f"{venv} cannot import MLServer's runtimes: {check.stderr.strip()[-300:]}"
    return python, ""


SAVE_MLFLOW = textwrap.dedent("""
    import sys, numpy as np, onnx, xgboost, mlflow.onnx, mlflow.xgboost
    from mlflow.models import infer_signature
    work = sys.argv[1]
    X = np.load(work + "/example.npy")
    clf = xgboost.XGBClassifier()
    clf.load_model(work + "/xgb.json")
    mlflow.xgboost.save_model(clf, work + "/mlflow-xgb",
                              signature=infer_signature(X, clf.predict(X)))
    mlflow.onnx.save_model(onnx.load(work + "/model.onnx"), work + "/mlflow-onnx",
                           signature=infer_signature(X, np.zeros(len(X), dtype=np.int64)))
""")

FLOOR_APP = textwrap.dedent("""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    ANSWER = {"model_name": "floor", "model_version": "1", "outputs": [
        {"name": "prediction", "datatype": "INT64", "shape": [1], "data": [0]}]}

    async def infer(request):
        await request.json()  # parse the body as a server must; no model
        return JSONResponse(ANSWER)

    async def ready(request):
        return JSONResponse({})

    app = Starlette(routes=[Route("/v2/models/floor/infer", infer, methods=["POST"]),
                            Route("/ready", ready)])
""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds (medians)")
    parser.add_argument("--connections", default="16,64", help="comma-separated, one table each")
    parser.add_argument("--mlserver-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--mlserver-parallel-workers", type=int, default=1,
                        help="MLServer's parallel_workers (1, its default: inference in one "
                             "worker process; 0: in the server process)")
    parser.add_argument("--omp-threads", type=int, default=1,
                        help="OMP_NUM_THREADS for every server alike (0: leave it unset, so "
                             "XGBoost and onnxruntime use every core)")
    parser.add_argument("--no-install", action="store_true",
                        help="never create the MLServer venv (skip its rows if missing)")
    parser.add_argument("--no-mlflow", action="store_true", help="skip `mlflow models serve`")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare Starlette floor")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers

    import numpy as np
    import skl2onnx
    import xgboost as xgb
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import tether

    counts = [int(c) for c in args.connections.split(",")]
    (BENCH / "out").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="oip-run-", dir=BENCH / "out"))
    base_env = dict(os.environ)
    if args.omp_threads:
        base_env["OMP_NUM_THREADS"] = str(args.omp_threads)
    env = {**base_env, "TETHER_URI": str(work / ".tether")}
    other_env = {**base_env, "PATH": f"{args.mlserver_venv / 'bin'}:{os.environ.get('PATH', '')}"}
    servers: list[Server] = []
    configs: list[Config] = []
    skipped: list[str] = []
    runs: dict[tuple[int, int], list[dict[str, float]]] = {}
    started = time.monotonic()
    try:
        X, y = load_breast_cancer(return_X_y=True)
        X32 = X.astype(np.float32)
        booster = xgb.XGBClassifier(n_estimators=50, max_depth=4).fit(X32, y)
        sk = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X32, y)
        proto = skl2onnx.to_onnx(sk, X32[:1], options={id(sk): {"zipmap": False}})
        registry = tether.init(work / ".tether")
        v_xgb = registry.log_model(booster, "bc-xgb", input_example=X32[:5])
        v_onnx = registry.log_model(proto, "bc-onnx", input_example=X32[:5])
        registry.close()
        booster.save_model(work / "xgb.json")
        (work / "model.onnx").write_bytes(proto.SerializeToString())
        np.save(work / "example.npy", X32[:5])

        row = [float(v) for v in X[0]]  # the dataset's own decimals; FP32 on the wire
        oip = work / "oip.json"
        oip.write_text(json.dumps({"inputs": [
            {"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}))
        rows = work / "mlflow.json"
        rows.write_text(json.dumps({"inputs": [row]}))
        batched = f"{MAX_BATCH} / {MAX_WAIT_MS} ms"

        # tether serve: one process without batching, one with, both models in each
        for batching in ("off", batched):
            port = free_port()
            extra = (f", batching: {{max_batch: {MAX_BATCH}, max_wait_ms: {MAX_WAIT_MS}}}"
                     if batching != "off" else "")
            deploy = work / f"tether-{port}.yaml"
            deploy.write_text(f"endpoints:\n  xgb: {{routes: [{v_xgb.ref}]{extra}}}\n"
                              f"  onnx: {{routes: [{v_onnx.ref}]{extra}}}\n")
            servers.append(Server(
                f"tether serve ({batching})",
                [TETHER, "serve", str(deploy), "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "warning"],
                [f"http://127.0.0.1:{port}/readyz"], env, work / f"tether-{port}.log", work))
            for model in ("xgb", "onnx"):
                configs.append(Config("tether serve", model, batching,
                                      f"http://127.0.0.1:{port}/v2/models/{model}/infer", oip))

        python, reason = ensure_venv(args.mlserver_venv, not args.no_install)
        if python is None:
            skipped.append(f"MLServer and mlflow models serve: {reason}")
        else:
            subprocess.run([str(python), "-c", SAVE_MLFLOW, str(work)], check=True,
                           capture_output=True, timeout=300)
            bin_dir = python.parent
            for batching in ("off", batched):
                port = free_port()
                repo = work / f"mlserver-{port}"
                repo.mkdir()
                (repo / "settings.json").write_text(json.dumps({
                    "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
                    "metrics_port": free_port(), "metrics_dir": str(repo / ".metrics"),
                    "parallel_workers": args.mlserver_parallel_workers}))
                batch = ({"max_batch_size": MAX_BATCH, "max_batch_time": MAX_WAIT_MS / 1000}
                         if batching != "off" else {})
                for model, implementation, uri in (
                        ("xgb", "mlserver_xgboost.XGBoostModel", work / "xgb.json"),
                        ("onnx", "mlserver_mlflow.MLflowRuntime", work / "mlflow-onnx")):
                    (repo / model).mkdir()
                    (repo / model / "model-settings.json").write_text(json.dumps({
                        "name": model, "implementation": implementation,
                        "parameters": {"uri": str(uri)}, **batch}))
                servers.append(Server(
                    f"MLServer ({batching})", [str(bin_dir / "mlserver"), "start", str(repo)],
                    [f"http://127.0.0.1:{port}/v2/models/{m}/ready" for m in ("xgb", "onnx")],
                    other_env, work / f"mlserver-{port}.log", repo))
                runtime = {"xgb": "mlserver-xgboost", "onnx": "mlserver-mlflow"}
                for model in ("xgb", "onnx"):
                    configs.append(Config(f"MLServer 1.7.1 ({runtime[model]})", model, batching,
                                          f"http://127.0.0.1:{port}/v2/models/{model}/infer",
                                          oip))
            if not args.no_mlflow:
                for model in ("xgb", "onnx"):
                    port = free_port()
                    servers.append(Server(
                        f"mlflow models serve ({model})",
                        [str(bin_dir / "mlflow"), "models", "serve", "-m",
                         str(work / f"mlflow-{model}"), "--env-manager", "local",
                         "-h", "127.0.0.1", "-p", str(port)],
                        [f"http://127.0.0.1:{port}/ping"],
                        other_env, work / f"mlflow-{model}.log", work))
                    configs.append(Config("mlflow models serve (/invocations)", model, "off",
                                          f"http://127.0.0.1:{port}/invocations", rows))
        if not args.no_floor:
            port = free_port()
            (work / "floor_app.py").write_text(FLOOR_APP)
            servers.append(Server(
                "bare Starlette", [sys.executable, "-m", "uvicorn", "floor_app:app",
                                   "--app-dir", str(work), "--host", "127.0.0.1", "--port",
                                   str(port), "--http", "httptools", "--no-access-log",
                                   "--log-level", "warning"],
                [f"http://127.0.0.1:{port}/ready"], env, work / "floor.log", work))
            configs.append(Config("bare Starlette (floor, no model)", "-", "-",
                                  f"http://127.0.0.1:{port}/v2/models/floor/infer", oip))

        print("one request to each, the same row:")
        for config in configs:
            response = httpx.post(config.url, content=config.body.read_bytes(),
                                  headers={"Content-Type": "application/json"}, timeout=30)
            if response.status_code != 200:
                raise RuntimeError(f"{config.server} {config.model}: {response.status_code} "
                                   f"{response.text[:300]}")
            print(f"  {config.server:36} {config.model:5} {config.batching:9} "
                  f"{response.text[:110]}")
        per_run = args.duration + 1
        total = len(configs) * len(counts) * args.repeat * per_run
        print(f"\n{len(configs)} configurations x {len(counts)} connection counts x "
              f"{args.repeat} rounds x ~{per_run} s = about {total // 60} min {total % 60} s",
              flush=True)
        for _ in range(args.repeat):
            for connections in counts:
                for index, config in enumerate(configs):
                    runs.setdefault((connections, index), []).append(
                        run_wrk(config, args.duration, connections))
    finally:
        for server in reversed(servers):
            server.stop()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nload: wrk -t1, keep-alive, {args.duration} s x {args.repeat} interleaved rounds "
          f"(medians), one FP32 [1, 30] row per request (breast_cancer); {os.cpu_count()} CPUs "
          f"shared by wrk and the servers; OMP_NUM_THREADS={args.omp_threads or 'unset'}; "
          f"MLServer parallel_workers={args.mlserver_parallel_workers}; "
          f"whole run {time.monotonic() - started:.0f} s")
    for connections in counts:
        print(f"\n-c{connections:<3} {'server':34} {'model':5} {'batching':9} {'req/s':>7} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7}")
        figures: dict[int, dict[str, float]] = {}
        for index, config in enumerate(configs):
            samples = runs[(connections, index)]
            f = figures[index] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
            print(f"     {config.server:34} {config.model:5} {config.batching:9} {f['rps']:7.0f} "
                  f"{f['p50']:7.2f} {f['p99']:7.2f} {f['errors']:7.0f}")
        for model in ("xgb", "onnx"):
            for mode in ("off", "on"):
                same = [i for i, c in enumerate(configs) if c.model == model
                        and (c.batching == "off") == (mode == "off")]
                mine = [i for i in same if configs[i].server == "tether serve"]
                theirs = [i for i in same if configs[i].server != "tether serve"]
                if not mine or not theirs:
                    continue
                me = figures[mine[0]]
                fast = max(theirs, key=lambda i: figures[i]["rps"])
                low = min(theirs, key=lambda i: figures[i]["p99"])
                print(f"     {model}, batching {mode}: tether {me['rps']:.0f} req/s, p99 "
                      f"{me['p99']:.1f} ms; best other {figures[fast]['rps']:.0f} req/s "
                      f"({configs[fast].server.split(' (')[0]}), lowest other p99 "
                      f"{figures[low]['p99']:.1f} ms ({configs[low].server.split(' (')[0]})")
    for line in skipped:
        print(f"skipped: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
