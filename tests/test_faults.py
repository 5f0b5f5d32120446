"""Faults: what a user sees while a dependency is down, and what is left after.

PostgreSQL is a throwaway cluster started here (initdb + pg_ctl on a free port
in a temporary folder), never the shared one on 5432, so it can be stopped,
restarted and killed under load. Every case asserts what the client sees
(status, Retry-After, message) and what is left (no double registration, every
registered version verifies, the audit chain intact).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import tether
import tether.remote
from tether._errors import StoreError, TetherError, Unavailable

from .conftest import free_port, subprocess_env, tether_exe


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


# -- a throwaway PostgreSQL cluster -------------------------------------------------


class Cluster:
    """A PostgreSQL cluster of our own: stop, start and kill it at will."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="tether-faults-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                 "--no-sync", "-E", "UTF8")

    def _pg(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{tool} failed: {done.stdout}\n{done.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -h 127.0.0.1 -c fsync=off -c max_connections=200"
        self._pg("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                 str(self.root / "server.log"), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        import psycopg

        name = f"tether_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(AssertionError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("psycopg")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    running = Cluster(bin_dir)
    try:
        running.start()
        yield running
    finally:
        running.remove()


# -- a `tether server` process we can kill -------------------------------------------


@dataclass
class Server:
    db_url: str
    store: Path
    log: Path
    port: int = field(default_factory=free_port)
    token: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def init(self) -> Server:
        done = subprocess.run(
            [tether_exe(), "server-init", "--db", self.db_url, "--store", f"file://{self.store}",
             "--admin", "root@team", "--json"],
            capture_output=True, text=True, env=subprocess_env(), check=False)
        assert done.returncode == 0, done.stderr
        self.token = json.loads(done.stdout)["token"]
        return self

    def start(self) -> Server:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [tether_exe(), "server", "--db", self.db_url, "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=subprocess_env())
        deadline = time.time() + 30
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(self.log.read_text())

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def client(self, tmp: Path, url: str | None = None) -> Any:
        return tether.remote.connect(url or self.url, token=self.token,
                              cache_dir=tmp / f"cache-{uuid.uuid4().hex[:6]}")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=10,
                         headers={"Authorization": f"Bearer {self.token}"})


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def sqlite_server(tmp: Path, servers: list[Server]) -> Server:
    server = Server(f"sqlite:///{tmp / 'meta.db'}", tmp / "objects", tmp / "server.log")
    servers.append(server)
    return server.init().start()


def _artifact(folder: Path, size: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "weights.bin"
    path.write_bytes(os.urandom(size) if seed == 0 else (bytes([seed % 251]) * size))
    return path


def _intact(client: Any, names: list[str]) -> int:
    """Every registered version verifies (in the store) and the audit chain holds."""
    count = 0
    for name in names:
        for version in client.versions(name):
            assert client.verify(version.ref) == [], version.ref
            count += 1
    events, problems = client.verify_audit()
    assert problems == [] and events > 0
    return count


# -- PostgreSQL stopped and restarted under load ------------------------------------


def test_postgres_outage_is_503_then_recovers_and_the_client_rides_it_out(
    cluster: Cluster, servers: list[Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_RETRY_SECONDS", "25")
    server = Server(cluster.create_database(), tmp_path / "objects", tmp_path / "server.log")
    servers.append(server.init().start())
    client = server.client(tmp_path)
    client.log_model(str(_artifact(tmp_path / "m1", 200_000)), "fraud", metrics={"auc": 0.9})

    # Load: raw requests (no retries) from four threads for the whole outage.
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {server.token}"}) as http:
            while not stop.is_set():
                try:
                    answer = http.get(f"{server.url}/api/v1/models/fraud/versions", timeout=10)
                    seen.append((answer.status_code, answer.headers.get("retry-after")))
                except httpx.HTTPError:
                    seen.append((0, None))
                time.sleep(0.02)

    load = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in load:
        thread.start()
    try:
        time.sleep(0.3)
        cluster.stop("fast")
        down = server.get("/api/v1/models/fraud/versions")
        assert down.status_code == 503, down.text
        assert int(down.headers["retry-after"]) >= 1
        body = down.json()
        assert body["error"] == "unavailable"
        assert "database" in body["message"] and f"127.0.0.1:{cluster.port}" in body["message"]
        ready = server.get("/api/v1/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert ready.json()["checks"]["database"] != "ok"
        assert ready.json()["checks"]["store"] == "ok"
        assert server.get("/api/v1/health").status_code == 200  # liveness: the process is fine
        mlflow = server.get("/api/2.0/mlflow/registered-models/get?name=fraud")
        assert mlflow.status_code == 503 and mlflow.headers["retry-after"], mlflow.text
        assert mlflow.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"

        # A client that retries rides the outage out: a read and a version commit.
        results: dict[str, Any] = {}

        def read() -> None:
            results["read"] = [v.semver for v in server.client(tmp_path).versions("fraud")]

        def write() -> None:
            results["write"] = server.client(tmp_path).log_model(
                str(tmp_path / "m1" / "weights.bin"), "fraud", metrics={"auc": 0.95})

        riders = [threading.Thread(target=read), threading.Thread(target=write)]
        for thread in riders:
            thread.start()
        time.sleep(1.5)
        cluster.start()
        for thread in riders:
            thread.join(timeout=40)
        assert results["read"] == ["1.0.0"]
        assert results["write"].semver == "1.0.1"  # metadata only: a patch

        deadline = time.time() + 10
        while server.get("/api/v1/ready").status_code != 200:
            assert time.time() < deadline, "readiness did not recover"
            time.sleep(0.2)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in load:
            thread.join(timeout=20)
        if not (cluster.root / "data" / "postmaster.pid").exists():
            cluster.start()
    statuses = {status for status, _ in seen}
    assert statuses <= {200, 503}, statuses  # never a 500, never a dropped connection
    assert 503 in statuses and 200 in statuses
    assert all(after for status, after in seen if status == 503)
    log = server.log.read_text()
    assert "Traceback" not in log and "internal error" not in log
    assert _intact(client, ["fraud"]) == 2


# -- a lost response: the retried commit is answered, not registered again ----------


class DroppingProxy:
    """An HTTP proxy that forwards everything and drops the first answer to a version commit.

    The server did the work; the client never hears of it (as when a load
    balancer or the network loses the response).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.commits: list[tuple[bytes, dict[str, str], int, dict[str, str]]] = []
        self.dropped = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _forward(self) -> None:
                body = self._body()
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "transfer-encoding",
                                                "connection")}
                answer = httpx.request(self.command, proxy.upstream + self.path, headers=headers,
                                       content=body, timeout=30)
                is_commit = self.command == "POST" and self.path.endswith("/versions")
                if is_commit:
                    proxy.commits.append((body, {k.lower(): v for k, v in headers.items()},
                                          answer.status_code, dict(answer.headers)))
                    if proxy.dropped == 0:
                        proxy.dropped += 1
                        self.close_connection = True  # the answer is lost on the way
                        return
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection",
                                           "content-encoding", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_PUT = do_POST = do_DELETE = _forward

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_lost_response_never_registers_twice(
    servers: list[Server], tmp_path: Path
) -> None:
    server = sqlite_server(tmp_path, servers)
    proxy = DroppingProxy(server.url)
    try:
        client = server.client(tmp_path, url=proxy.url)
        version = client.log_model(str(_artifact(tmp_path / "m", 150_000)), "lost")
    finally:
        proxy.close()
    assert version.seq == 1
    # The server registered it on the first try; the retry, same key, got it back.
    (body, headers, first, _), (again, headers2, second, answer2) = proxy.commits
    assert first == 201 and second == 201 and body == again
    assert headers["idempotency-key"] == headers2["idempotency-key"]
    assert answer2.get("idempotent-replayed") == "true"
    assert [v.seq for v in server.client(tmp_path).versions("lost")] == [1]
    logged = [e for e in server.client(tmp_path).audit_log(model="lost")
              if e.action == "version.logged"]
    assert len(logged) == 1

    # The same key again answers the same version; with another request it is refused.
    post = f"{server.url}/api/v1/models/lost/versions"
    auth = {"Authorization": f"Bearer {server.token}"}
    key = {"Idempotency-Key": headers["idempotency-key"]}
    replay = httpx.post(post, content=body, headers={**auth, **key,
                                                     "Content-Type": "application/json"})
    assert replay.status_code == 201 and replay.json()["seq"] == 1
    changed = json.loads(body)
    changed["values"]["metrics"] = {"auc": 0.5}
    refused = httpx.post(post, json=changed, headers={**auth, **key})
    assert refused.status_code == 409 and "Idempotency-Key" in refused.json()["message"]
    bad = httpx.post(post, json=changed, headers={**auth, "Idempotency-Key": "x"})
    assert bad.status_code == 400
    assert [v.seq for v in server.client(tmp_path).versions("lost")] == [1]


# -- kill -9 of the server mid-commit -------------------------------------------------


def test_kill_9_of_the_server_mid_commit_loses_nothing_and_registers_nothing_twice(
    cluster: Cluster, servers: list[Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_RETRY_SECONDS", "25")
    server = Server(cluster.create_database(), tmp_path / "objects", tmp_path / "server.log")
    servers.append(server.init().start())
    artifact = str(_artifact(tmp_path / "m", 120_000))
    server.client(tmp_path).log_model(artifact, "busy", metrics={"writer": -1, "i": -1})

    writers, rounds = 4, 6
    done: dict[tuple[int, int], str] = {}
    failed: dict[tuple[int, int], str] = {}

    def writer(w: int) -> None:
        client = server.client(tmp_path)
        for i in range(rounds):
            try:
                # Same bytes, new metrics: no upload, so commits come fast.
                done[(w, i)] = client.log_model(artifact, "busy",
                                                metrics={"writer": w, "i": i}).semver
            except TetherError as error:
                failed[(w, i)] = error.message

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    at_kill = []
    for threshold in (writers, writers * rounds // 2):  # two kills, early and half-way
        deadline = time.time() + 30
        while len(done) < threshold and time.time() < deadline:  # commits are flowing
            time.sleep(0.02)
        at_kill.append(len(done))
        server.kill9()
        time.sleep(0.5)
        server.start()  # same port: the clients' retries find it
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    client = server.client(tmp_path)
    versions = client.versions("busy")
    keys = [(int(v.metrics["writer"]), int(v.metrics["i"])) for v in versions]
    assert len(keys) == len(set(keys)), "a commit was registered twice"
    assert set(done) <= set(keys)  # every success is registered
    # A failure is a clear error, never a hang; a retry by hand registers it once.
    for (w, i), message in failed.items():
        assert "Tether server" in message or "store" in message, message
        client.log_model(artifact, "busy", metrics={"writer": w, "i": i})
    keys = [(int(v.metrics["writer"]), int(v.metrics["i"])) for v in client.versions("busy")]
    assert len(keys) == len(set(keys)) == writers * rounds + 1
    assert _intact(client, ["busy"]) == writers * rounds + 1
    assert "Traceback" not in server.log.read_text()
    print(f"kill -9 after {at_kill} commits; {len(done)} succeeded through the restart, "
          f"{len(failed)} failed clearly and registered once on a retry by hand")


# -- verify checks the store's own copy -----------------------------------------------


def test_verify_reads_the_store_not_the_cache_in_whole_runs(
    servers: list[Server], tmp_path: Path
) -> None:
    server = sqlite_server(tmp_path, servers)
    client = server.client(tmp_path)
    version = client.log_model(str(_artifact(tmp_path / "m", 3 << 20)), "checked")
    chunks = sum(len(f.chunks) for f in version.files)
    client.load(version.ref, trusted=True)  # every chunk now in the client's cache

    client.store.blobs.requests = 0
    assert client.verify(version.ref) == []
    reads = client.store.blobs.requests
    assert 1 <= reads < chunks / 4, (reads, chunks)  # whole runs, not a request per chunk

    pack = next((server.store / "packs").glob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    problems = client.verify(version.ref)  # the cache still holds good copies
    assert problems and "chunk" in problems[0] and "does not match" in problems[0]
    cli = subprocess.run([tether_exe(), "verify", version.ref], capture_output=True, text=True,
                         env=subprocess_env(TETHER_URI=server.url, TETHER_TOKEN=server.token,
                                            TETHER_CACHE_DIR=str(client.cache_dir)),
                         check=False)
    assert cli.returncode == 1
    assert f"in the store at {server.url}/api/v1/blobs" in cli.stdout.replace("\n", " ")


# -- a client that disconnects mid-upload -----------------------------------------------


def test_a_client_gone_mid_upload_is_one_log_line(servers: list[Server], tmp_path: Path) -> None:
    server = sqlite_server(tmp_path, servers)
    key = f"packs/{uuid.uuid4().hex}.pack"
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                f"PUT /api/v1/blobs/{key} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {server.token}\r\nContent-Length: {8 << 20}\r\n\r\n"
                .encode())
            sock.sendall(os.urandom(512 << 10))
    deadline = time.time() + 10
    while server.log.read_text().count("disconnected") < 3 and time.time() < deadline:
        time.sleep(0.1)
    log = server.log.read_text()
    lines = [line for line in log.splitlines() if "disconnected" in line]
    assert len(lines) == 3 and key in lines[0], log
    assert "Traceback" not in log
    assert list((server.store / "tmp").iterdir()) == []  # the partial upload is gone
    assert not (server.store / key).exists()


# -- the object store down: 503 naming it (in process) ---------------------------------


def test_a_store_outage_is_503_naming_the_store(tmp_path: Path) -> None:
    from botocore.exceptions import EndpointConnectionError
    from starlette.testclient import TestClient

    from tether.server.app import create_app

    registry = tether.init(tmp_path / "reg" / ".tether", actor="root@team")
    store = registry.store

    class DownBlobs:
        url = "s3://models/prod"
        is_local = False

        def list(self, prefix: str) -> Any:
            try:
                raise EndpointConnectionError(endpoint_url="http://s3.internal:9000/models")
            except EndpointConnectionError as error:
                raise StoreError(f"S3 list {prefix} failed: {error}") from error

        def __getattr__(self, name: str) -> Any:
            return self.list

    store.blobs = DownBlobs()  # type: ignore[assignment]
    registry.location = registry.location.__class__(
        root=registry.location.root, db_url=registry.location.db_url,
        store_url="s3://models/prod", cache_dir=registry.location.cache_dir)
    app = TestClient(create_app(registry, open_access=True))
    listing = app.get("/api/v1/blobs", params={"prefix": "index/"})
    assert listing.status_code == 503 and listing.headers["retry-after"] == "2"
    assert listing.json()["message"].startswith("the object store s3://models/prod is unavailable")
    ready = app.get("/api/v1/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "database": "ok", "store": ready.json()["checks"]["store"]}
    assert "s3.internal" in ready.json()["checks"]["store"]
    assert app.get("/api/v1/health").status_code == 200
    registry.close()


def test_an_upload_past_the_limit_is_cut_off_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body with no Content-Length (chunked) past the object limit is refused once it
    passes it: a 4xx, nothing stored, no temporary file, no descriptor left (the
    route writes to a raw descriptor, closed whatever happens)."""
    from starlette.testclient import TestClient

    from tether.server import blobs_api
    from tether.server.app import create_app

    registry = tether.init(tmp_path / "reg" / ".tether", actor="root@team")
    app = TestClient(create_app(registry, open_access=True))
    key = f"packs/{uuid.uuid4().hex}.pack"
    before = len(os.listdir("/proc/self/fd"))

    def oversized() -> Any:  # the test client gathers a body before sending it: finite
        for _ in range(32):
            yield os.urandom(256 << 10)

    store = Path(registry.store.blobs.root)
    taken = f"packs/{uuid.uuid4().hex}.pack"
    monkeypatch.setattr(blobs_api, "MAX_OBJECT", 16 << 20)  # without the limit in reach:
    assert app.put(f"/api/v1/blobs/{taken}", content=oversized()).status_code == 201
    assert (store / taken).stat().st_size == 8 << 20  # every byte sent is kept
    monkeypatch.setattr(blobs_api, "MAX_OBJECT", 3 << 20)
    answer = app.put(f"/api/v1/blobs/{key}", content=oversized())
    assert 400 <= answer.status_code < 500, answer.text
    assert "byte limit" in answer.json()["message"]
    assert not (store / key).exists()
    assert list((store / "tmp").iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) <= before
    registry.close()


# -- the client's retries ----------------------------------------------------------------


class Flaky:
    """A tiny HTTP server answering from a script: (status, headers, body) per request."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]]) -> None:
        self.script = script
        self.requests: list[tuple[str, str, float]] = []
        flaky = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                flaky.requests.append((self.command, self.path, time.monotonic()))
                status, headers, body = (flaky.script.pop(0) if flaky.script
                                         else (200, {}, []))
                payload = json.dumps(body).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _answer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self) -> Flaky:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_DOWN = {"error": "unavailable", "message": "the database postgresql://db/x is unavailable: "
         "connection refused", "hint": None}


def test_the_client_retries_safe_calls_honouring_retry_after(tmp_path: Path) -> None:
    script = [(503, {"Retry-After": "1"}, _DOWN), (502, {}, "<html>bad gateway</html>"),
              (504, {}, {}), (200, {}, [])]
    with Flaky(script) as flaky:
        client = tether.remote.connect(flaky.url, token="t", cache_dir=tmp_path / "c")
        started = time.monotonic()
        assert client.models() == []
    times = [t for _, _, t in flaky.requests]
    assert len(times) == 4
    assert times[1] - times[0] >= 0.95  # Retry-After honoured
    assert time.monotonic() - started < 4


def test_the_client_does_not_repeat_what_is_not_idempotent(tmp_path: Path) -> None:
    store_error = {"error": "store_error", "message": "S3 put failed: AccessDenied", "hint": None}
    with Flaky([(503, {"Retry-After": "1"}, _DOWN), (502, {}, store_error)]) as flaky:
        client = tether.remote.connect(flaky.url, token="t", cache_dir=tmp_path / "c")
        with pytest.raises(Unavailable, match="database postgresql://db/x is unavailable"):
            client.rollback("fraud", "production")  # a POST without a key: asked once
        with pytest.raises(StoreError, match="AccessDenied"):
            client.models()  # the server's own store error is an answer, not an outage
    assert [m for m, _, _ in flaky.requests] == ["POST", "GET"]


def test_the_client_gives_up_in_bounded_time_naming_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_RETRY_SECONDS", "1.5")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = tether.remote.connect(url, token="t", cache_dir=tmp_path / "c")
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        client.versions("fraud")
    took = time.monotonic() - started
    assert 1.3 <= took < 4, took
    message = str(caught.value)
    assert f"the Tether server at {url} is unreachable" in message
    assert "gave up after" in message and "TETHER_RETRY_SECONDS" in message


def test_what_counts_as_an_outage(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from botocore.exceptions import ClientError, EndpointConnectionError

    from tether.server.faults import unavailable

    registry = tether.init(tmp_path / "reg" / ".tether", actor="root@team")

    def raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
        try:
            try:
                raise cause or error
            except BaseException as inner:
                if cause is None:
                    raise
                raise error from inner
        except BaseException as caught:
            return caught

    refused = sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    down = unavailable(refused, registry)
    assert down is not None and down.message.startswith(
        f"the database sqlite:///{registry.location.root}")
    assert "connection refused" in down.message
    assert unavailable(sa.exc.OperationalError("x", {}, Exception("no such table: foo")),
                       registry) is None  # a bug, not an outage: still a 500
    boto = EndpointConnectionError(endpoint_url="http://s3:9000")
    store = unavailable(raised(StoreError("S3 get failed"), boto), registry)
    assert store is not None and "object store" in store.message
    busy = ClientError({"Error": {"Code": "SlowDown"},
                        "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
    assert unavailable(raised(StoreError("S3 get failed: SlowDown"), busy), registry)
    denied = ClientError({"Error": {"Code": "AccessDenied"},
                          "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    assert unavailable(raised(StoreError("S3 get failed: AccessDenied"), denied), registry) is None
    assert unavailable(ValueError("bug"), registry) is None
    registry.close()


def test_an_error_answer_imports_no_database_driver_to_classify_itself(tmp_path: Path) -> None:
    """Telling an outage from an ordinary error imported psycopg (120 modules) and
    botocore for the first error a server answered: a fresh server's first 404 took
    60 ms. An exception of theirs means they are imported already."""
    script = f"""
import sys
import tether
from starlette.testclient import TestClient
from tether.server.app import create_app
registry = tether.init({str(tmp_path / "reg" / ".tether")!r}, actor="a@example.com")
client = TestClient(create_app(registry, open_access=True))
answer = client.get("/api/v1/models/nothing/versions/latest")
assert answer.status_code == 404, answer.text
print(sorted(m for m in ("psycopg", "botocore.exceptions") if m in sys.modules))
"""
    done = subprocess.run([str(Path(tether_exe()).parent / "python"), "-c", script],
                          capture_output=True, text=True, env=subprocess_env(), check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
