"""Shared fixtures: real registries in temporary folders, small real models."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tether import Registry


@pytest.fixture(scope="session", autouse=True)
def _isolated_session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module-scoped fixtures (servers shared by a file's tests) start before the per-test
    isolation below: they too must not write the developer's config (a server's audit key
    and its marks) or cache, nor follow their TETHER_URI."""
    base = tmp_path_factory.mktemp("session-home")
    patch = pytest.MonkeyPatch()
    for var in ("TETHER_URI", "TETHER_ENV_POLICY", "TETHER_USER", "TETHER_AUDIT_KEY",
                "TETHER_AUDIT_MARK_DIR"):
        patch.delenv(var, raising=False)
    patch.setenv("TETHER_CACHE_DIR", str(base / "user-cache"))
    patch.setenv("XDG_CONFIG_HOME", str(base / "user-config"))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's registry, cache or policy."""
    for var in ("TETHER_URI", "TETHER_ENV_POLICY", "TETHER_USER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path / "user-cache"))
    # A server's audit key defaults to $XDG_CONFIG_HOME/tether: keep it in the test's folder.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user-config"))
    monkeypatch.delenv("TETHER_AUDIT_KEY", raising=False)
    monkeypatch.delenv("TETHER_AUDIT_MARK_DIR", raising=False)
    # Datasets read by an earlier test in this worker are not this test's lineage.
    from tether._registry import reads

    reads.forget()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = tether.init(tmp_path / "reg" / ".tether", actor="tester@example.com")
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture(scope="session")
def iris() -> tuple[Any, Any]:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True)
    return frame.data, frame.target


def fit_logreg(iris: tuple[Any, Any], C: float = 1.0, columns: list[str] | None = None) -> Any:
    from sklearn.linear_model import LogisticRegression

    X, y = iris
    if columns is not None:
        X = X[columns]
    return LogisticRegression(C=C, max_iter=500).fit(X, y)


def pack_files(registry: Registry) -> list[Path]:
    root = registry.location.store_url.removeprefix("file://")
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and "pack" in p.name)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def tether_exe() -> str:
    candidate = repo_root() / ".venv" / "bin" / "tether"
    return str(candidate) if candidate.exists() else "tether"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def _moto_server() -> Iterator[str]:
    """moto's standalone S3 server, one per test process (starting one took 1.7 s of CPU;
    the suite started 26): each test gets it emptied (``s3_endpoint``)."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_endpoint(_moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3 API over HTTP (moto's standalone server on a loopback port), empty: no
    bucket or object of an earlier test is left."""
    import httpx

    httpx.post(f"{_moto_server}/moto-api/reset", timeout=30).raise_for_status()
    for key, value in {
        "TETHER_S3_ENDPOINT_URL": _moto_server,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    yield _moto_server


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=name)


PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@contextlib.contextmanager
def _scratch_pg_database(prefix: str = "tether", template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (127.0.0.1:5432, trust auth; a copy of ``template`` if
    given), dropped afterwards; its name."""
    import uuid

    psycopg = pytest.importorskip("psycopg")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _pg_url(name: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    with _scratch_pg_database() as name:
        yield _pg_url(name)


@pytest.fixture(scope="session")
def _pg_schema_template() -> Iterator[str]:
    """A PostgreSQL database holding Tether's schema, migrated once per test process:
    ``any_registry`` copies it (CREATE DATABASE ... TEMPLATE, 0.2 s) rather than running
    every migration again (0.8 s) for each of its 55 PostgreSQL tests. Migrations still
    run from nothing on PostgreSQL wherever a test takes ``pg_database`` or starts a
    server on a new database (test_server, test_server_hostile, test_faults)."""
    from tether._metadata.engine import create_engine, upgrade

    with _scratch_pg_database("tether_tmpl") as name:
        engine = create_engine(_pg_url(name))
        upgrade(engine)
        engine.dispose()  # a template may have no one connected while it is copied
        yield name


@pytest.fixture
def _pg_database_with_schema(_pg_schema_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database with Tether's schema and nothing else, dropped after."""
    with _scratch_pg_database(template=_pg_schema_template) as name:
        yield _pg_url(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """An embedded registry on SQLite, then on a fresh PostgreSQL database."""
    db_url = (request.getfixturevalue("_pg_database_with_schema")
              if request.param == "postgresql" else None)
    reg = tether.init(tmp_path / "reg" / ".tether", actor="tester@example.com", db_url=db_url)
    try:
        yield reg
    finally:
        reg.close()


def wait_until(
    condition: Any, timeout: float = 15.0, *, ignoring: tuple[type[BaseException], ...] = ()
) -> float:
    """Poll ``condition`` until it holds; the seconds it took (AssertionError past ``timeout``).

    Exceptions of the ``ignoring`` types count as "not yet" (a server still starting).
    """
    import time

    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except ignoring:
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def fast_deployment(tmp_path: Path, text: str) -> Any:
    """A deployment file (polling every 0.1 s) written from ``text`` and parsed."""
    from tether.serving.config import load_deployment

    path = tmp_path / "deploy.yaml"
    path.write_text("server: {poll_interval: 0.1}\n" + text)
    return load_deployment(path)


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; its standard output, stripped (raises on failure)."""
    import subprocess

    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def git_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, name: str, email: str
) -> Path:
    """``tmp_path/project``: a fresh git repository (branch main) with an isolated git
    identity and configuration, ignoring ``/.tether``. The email is also who the CLI
    acts as when no TETHER_USER is set."""
    for key, value in {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
        "GIT_CONFIG_GLOBAL": str(tmp_path / "gitconfig"),
    }.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("/.tether\n")
    return root


def on_a_terminal(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` with its stderr on a pseudo-terminal (stdout a pipe): its exit code
    and what it drew there (progress bars appear only on a terminal)."""
    import pty
    import subprocess

    main, side = pty.openpty()
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=side, timeout=120,
                              env={**(env or os.environ), "COLUMNS": "120"}, check=False)
        os.close(side)
        side = -1
        seen = b""
        while True:
            try:
                piece = os.read(main, 65536)
            except OSError:  # the other end closed
                break
            if not piece:
                break
            seen += piece
    finally:
        os.close(main)
        if side >= 0:
            os.close(side)
    return done.returncode, seen.decode(errors="replace")


#: Test files by the time they took (seconds, both workers summed, 2026-11-28), most
#: first. xdist's --dist loadfile hands out files in collection order: alphabetical, a
#: heavy file (test_ui, test_store_*) handed out last ran alone at the end, on one core,
#: for minutes. Heaviest first, the last ones handed out are short.
_HEAVIEST_FIRST = (
    "test_ui", "test_replicas", "test_server", "test_store_transfers", "test_faults",
    "test_store_memory", "test_store_s3", "test_server_hostile", "test_build", "test_contract",
    "test_mlflow_compat", "test_cli", "test_store_scale", "test_concurrency",
    "test_chunk_records", "test_serving_http", "test_serving_security", "test_trust",
    "test_import_mlflow", "test_ui_browser", "test_serving_hostile", "test_index_cache",
    "test_store_integrity", "test_gc_race",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(_HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable within a file
