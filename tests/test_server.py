"""The shared registry: a real `tether server` process, real HTTP, SQLite or PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tether
from tether import NotFound, PermissionDenied

from .conftest import fit_logreg, free_port, on_a_terminal, subprocess_env, tether_exe, wait_until
from .servers import Server, start_server, stop, version_values

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"



@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = start_server(
        f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'objects'}", tmp_path
    )
    yield running
    stop(running)


@pytest.fixture
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"tether_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True
    ) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- the client has the embedded registry's interface ----------------------------------


def test_log_promote_load_through_the_server(
    server: Server, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    client = server.client()
    X, _ = iris
    model = fit_logreg(iris)
    v1 = client.log_model(
        model, "iris", params={"C": 1.0}, metrics={"acc": 0.9}, input_example=X.head(3)
    )
    v2 = client.log_model(
        fit_logreg(iris, C=0.1), "iris", params={"C": 0.1}, input_example=X.head(3)
    )
    assert (v1.semver, v2.semver, v2.seq) == ("1.0.0", "1.1.0", 2)
    assert v1.author == "root@team"  # the authenticated user, not what the client claims
    client.promote("iris@1.0.0", "production", create=True)
    loaded = client.load("iris@production")
    assert (loaded.predict(X) == model.predict(X)).all()
    client.promote("iris@1.1.0", "production", create=True)
    assert client.rollback("iris", "production").version == "1.0.0"
    assert next(e.action for e in client.audit_log(limit=3)).startswith("alias.")
    assert client.verify_audit()[1] == []
    assert client.diff("iris@1.0.0", "iris@1.1.0")["params"][0]["name"] == "C"
    # A second client with an empty cache downloads the chunks and verifies them.
    other = tether.remote.connect(server.url, token=server.admin_token, cache_dir=tmp_path / "c2")
    assert other.verify("iris@1.1.0") == []


def test_cli_works_against_the_server(server: Server, iris: tuple[Any, Any]) -> None:
    client = server.client()
    client.log_model(fit_logreg(iris), "iris", input_example=iris[0].head(3))
    env = subprocess_env(TETHER_URI=server.url, TETHER_TOKEN=server.admin_token)
    out = subprocess.run(
        [tether_exe(), "versions", "iris", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["semver"] == "1.0.0"
    promote = subprocess.run(
        [tether_exe(), "promote", "iris@1.0.0", "staging", "--create"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert promote.returncode == 0 and "iris@staging → 1.0.0" in promote.stdout
    missing = subprocess.run(
        [tether_exe(), "show", "iris@4.0.0"], capture_output=True, text=True, env=env, check=False
    )
    assert missing.returncode == 1 and "iris has no version 4.0.0" in missing.stderr


# -- auth and roles ----------------------------------------------------------------------


def test_tokens_and_roles(server: Server, iris: tuple[Any, Any]) -> None:
    admin = server.client()
    admin.log_model(fit_logreg(iris), "iris", input_example=iris[0].head(3))
    reader = admin.create_token("rita", role="reader")["token"]
    contributor = admin.create_token("carl", role="contributor")["token"]
    expired = admin.create_token("eve", role="admin", expires_in="1s")["token"]
    time.sleep(1.2)

    no_token = httpx.get(f"{server.url}/api/v1/models", timeout=10)
    assert no_token.status_code == 401 and no_token.json()["error"] == "unauthenticated"
    wrong = server.api("GET", "/api/v1/models", token="tth_wrong")
    assert wrong.status_code == 401 and "not valid" in wrong.json()["message"]
    old = server.api("GET", "/api/v1/models", token=expired)
    assert old.status_code == 401 and "expired" in old.json()["message"]

    assert tether.connect(server.url, token=reader).versions("iris")[0].seq == 1
    with pytest.raises(PermissionDenied, match="needs role contributor"):
        tether.connect(server.url, token=reader).log_model(
            fit_logreg(iris, C=0.3), "iris", input_example=iris[0].head(3)
        )
    carl = tether.connect(server.url, token=contributor)
    carl.promote("iris@1.0.0", "staging", create=True)
    with pytest.raises(PermissionDenied, match="needs role approver"):
        carl.promote("iris@1.0.0", "production", create=True)
    events = admin.audit_log(limit=1)
    assert events[0].actor == "carl" and events[0].action == "alias.set"


# -- hot path: alias reads with ETags -------------------------------------------------------


def test_alias_reads_use_etags(server: Server, iris: tuple[Any, Any]) -> None:
    client = server.client()
    client.log_model(fit_logreg(iris), "iris", input_example=iris[0].head(3))
    client.log_model(fit_logreg(iris, C=0.2), "iris", input_example=iris[0].head(3))
    client.promote("iris@1", "production", create=True)
    first = server.api("GET", "/api/v1/models/iris/aliases/production")
    assert first.status_code == 200 and first.json()["version"] == "1.0.0"
    etag = first.headers["etag"]
    again = server.api(
        "GET", "/api/v1/models/iris/aliases/production", headers={"If-None-Match": etag}
    )
    assert again.status_code == 304
    client.promote("iris@2", "production", create=True)
    moved = server.api(
        "GET", "/api/v1/models/iris/aliases/production", headers={"If-None-Match": etag}
    )
    assert moved.status_code == 200 and moved.json()["version"] == "1.1.0"


# -- bad input ------------------------------------------------------------------------------


def test_bad_requests_get_clear_4xx_and_change_nothing(
    server: Server, iris: tuple[Any, Any]
) -> None:
    client = server.client()
    client.log_model(fit_logreg(iris), "iris", input_example=iris[0].head(3))
    before = len(client.audit_log())
    cases = [
        (
            server.api("PUT", "/api/v1/models/iris/aliases/prod", content=b"{not json"),
            400,
            "invalid_input",
        ),
        (
            server.api(
                "PUT",
                "/api/v1/models/iris/aliases/prod",
                json={"version": "1.0.0", "colour": "red"},
            ),
            400,
            "unknown_field",
        ),
        (
            server.api(
                "PUT",
                "/api/v1/models/iris/aliases/prod",
                content=b"x" * (9 << 20),
                headers={"content-type": "application/json"},
            ),
            413,
            "payload_too_large",
        ),
        (server.api("GET", "/api/v1/blobs/../../etc/passwd"), 404, None),
        (server.api("GET", "/api/v1/blobs/packs%2F..%2F..%2Fmeta.db"), 400, "invalid_path"),
        (server.api("GET", "/api/v1/models/iris/versions/9.9.9"), 404, "not_found"),
        (server.api("GET", "/api/v1/models/iris/versions/sha:zz"), 400, "invalid_reference"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        if code:
            assert response.json()["error"] == code
    traversal = server.api(
        "POST",
        "/api/v1/models/iris/versions",
        json={"values": version_values(
            [{"path": "../evil.py", "size": 1, "digest": "00", "chunks": []}])},
    )
    assert traversal.status_code == 400 and traversal.json()["error"] == "invalid_path"
    missing_chunks = server.api(
        "POST",
        "/api/v1/models/iris/versions",
        json={"values": version_values(
            [{"path": "w.bin", "size": 3, "digest": "ab" * 32, "chunks": [["cd" * 32, 3]]}])},
    )
    assert missing_chunks.status_code == 409, missing_chunks.text  # the client's to upload first
    assert missing_chunks.json()["error"] == "missing_chunks"
    assert len(client.audit_log()) == before
    client.delete_version("iris@1.0.0")
    with pytest.raises(NotFound):
        client.get("iris@1.0.0")


# -- PostgreSQL: several server processes, concurrent writers --------------------------------

WRITER = textwrap.dedent(
    """
    import sys, tether
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    X, y = load_iris(return_X_y=True)
    client = tether.connect(sys.argv[1], token=sys.argv[2])
    for i in range(int(sys.argv[4])):
        C = 0.01 + int(sys.argv[3]) * 10 + i
        v = client.log_model(LogisticRegression(C=C, max_iter=300).fit(X, y), "shared",
                             params={"C": C})
        print(v.seq, v.semver, flush=True)
    """
)


@pytest.mark.slow
def test_postgres_two_servers_concurrent_clients(pg_url: str, tmp_path: Path) -> None:
    first = start_server(pg_url, f"file://{tmp_path / 'objects'}", tmp_path, workers=2)
    port = free_port()
    second = subprocess.Popen(
        [tether_exe(), "server", "--db", pg_url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(),
    )
    first.procs.append(second)
    try:
        urls = [first.url, f"http://127.0.0.1:{port}"]
        wait_until(lambda: httpx.get(f"{urls[1]}/api/v1/health", timeout=1) is not None,
                   timeout=30, ignoring=(httpx.HTTPError,))
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), urls[w % 2], first.admin_token, str(w), "3"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=subprocess_env(),
            )
            for w in range(4)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
        versions = first.client().versions("shared")
        assert sorted(v.seq for v in versions) == list(range(1, 13))
        assert len({v.semver for v in versions}) == 12
        assert first.client().verify_audit()[1] == []
    finally:
        stop(first)


def test_server_refuses_a_schema_older_than_the_code(tmp_path: Path) -> None:
    from alembic import command

    from tether._metadata.engine import _alembic_config, create_engine

    db = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(db)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0001")
    engine.dispose()
    proc = subprocess.run(
        [
            tether_exe(),
            "server",
            "--db",
            db,
            "--store",
            f"file://{tmp_path / 'o'}",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert proc.returncode == 1
    assert "older than this Tether" in proc.stderr and "tether db upgrade" in proc.stderr


def test_server_refuses_a_schema_newer_than_the_code(tmp_path: Path) -> None:
    """A database a newer Tether upgraded: this one must not write to it."""
    import sqlalchemy as sa

    from tether._metadata.engine import create_engine

    db = f"sqlite:///{tmp_path / 'new.db'}"
    init = subprocess.run([tether_exe(), "server-init", "--db", db, "--store",
                           f"file://{tmp_path / 'o'}", "--admin", "root@team", "--json"],
                          capture_output=True, text=True, env=subprocess_env(), check=False)
    assert init.returncode == 0, init.stderr
    engine = create_engine(db)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    proc = subprocess.run([tether_exe(), "server", "--db", db, "--port", str(free_port())],
                          capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "9999, newer than this Tether knows" in proc.stderr


# -- MLflow's own client against Tether ---------------------------------------------------------


def test_unmodified_mlflow_client(server: Server) -> None:
    mlflow = pytest.importorskip("mlflow")
    os.environ["MLFLOW_TRACKING_TOKEN"] = server.admin_token
    try:
        client = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        client.create_registered_model("fraud", tags={"team": "risk"}, description="demo")
        with pytest.raises(mlflow.exceptions.MlflowException) as info:
            client.create_registered_model("fraud")
        assert info.value.error_code == "RESOURCE_ALREADY_EXISTS"
        v1 = client.create_model_version("fraud", "s3://bucket/fraud/1", run_id="r1")
        v2 = client.create_model_version(
            "fraud", "s3://bucket/fraud/2", run_id="r2", tags={"stage": "candidate"}
        )
        assert (v1.version, v2.version) == ("1", "2")
        client.set_registered_model_alias("fraud", "champion", "2")
        champion = client.get_model_version_by_alias("fraud", "champion")
        assert champion.version == "2" and champion.source == "s3://bucket/fraud/2"
        assert client.get_registered_model("fraud").tags == {"team": "risk"}
        found = client.search_model_versions("name = 'fraud' and run_id = 'r1'")
        assert [v.version for v in found] == ["1"]
        models = client.search_registered_models("name LIKE 'fr%'")
        assert [m.name for m in models] == ["fraud"]
        assert client.search_registered_models("tags.team = 'nobody'") == []
        client.set_model_version_tag("fraud", "1", "checked", "yes")
        assert client.get_model_version("fraud", "1").tags == {"checked": "yes"}
        client.delete_registered_model_alias("fraud", "champion")
        client.delete_model_version("fraud", "1")
        with pytest.raises(mlflow.exceptions.MlflowException) as info:
            client.get_model_version("fraud", "1")
        assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        # Tether sees what MLflow did, in its own audit log.
        actions = [e.action for e in server.client().audit_log(model="fraud")]
        assert "alias.delete" in actions and "version.deleted" in actions
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)


def test_the_api_token_never_goes_to_the_object_store(
    s3_endpoint: str, tmp_path: Path, iris: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Presigned URLs carry their own authority: a transfer that also sends the
    client's bearer token hands it to whoever runs (or logs at) the bucket's host."""
    from .conftest import make_bucket
    from .test_store_transfers import CountingProxy

    make_bucket(s3_endpoint, "models")
    bucket = CountingProxy(int(s3_endpoint.rsplit(":", 1)[1]), record=True)
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", bucket.url)  # the server presigns for it
    running = start_server(f"sqlite:///{tmp_path / 'meta.db'}", "s3://models/registry", tmp_path)
    try:
        client = running.client()
        X, _ = iris
        client.log_model(fit_logreg(iris), "iris", input_example=X.head(3))
        fresh = tether.remote.connect(
            running.url, token=running.admin_token, cache_dir=tmp_path / "fresh-cache"
        )
        fresh.download("iris@1.0.0", tmp_path / "out")
        heard = bytes(bucket.heard)
        assert b"Signature=" in heard, "packs should have gone through presigned URLs"
        assert running.admin_token.encode() not in heard
        # The harm, the unsafe way: the client's own HTTP session sends its token anywhere.
        url = next(url for (key, m), (url, *_) in fresh.store.blobs._urls.items()
                   if m == "GET" and url)
        fresh.http.get(url)
        assert running.admin_token.encode() in bytes(bucket.heard)
    finally:
        stop(running)
        bucket.close()


def test_s3_store_bytes_bypass_the_api_server(
    s3_endpoint: str, tmp_path: Path, iris: tuple[Any, Any]
) -> None:
    from .conftest import make_bucket

    make_bucket(s3_endpoint, "models")
    running = start_server(f"sqlite:///{tmp_path / 'meta.db'}", "s3://models/registry", tmp_path)
    try:
        client = running.client()
        X, _ = iris
        model = fit_logreg(iris)
        client.log_model(model, "iris", input_example=X.head(3))
        blobs = client.store.blobs
        uploads = [k for (k, m), (url, *_) in blobs._urls.items() if m == "PUT" and url]
        assert any(k.startswith("packs/") for k in uploads), "packs should go via presigned URLs"
        assert all(
            "127.0.0.1" in str(url) and "/api/v1/" not in str(url)
            for (_, _), (url, *_) in blobs._urls.items()
            if url
        )
        fresh = tether.remote.connect(
            running.url, token=running.admin_token, cache_dir=tmp_path / "fresh-cache"
        )
        loaded = fresh.load("iris@1.0.0")
        assert (loaded.predict(X) == model.predict(X)).all()
        gets = fresh.store.blobs.requests
        fresh.load("iris@1.0.0")  # every chunk is cached now
        assert fresh.store.blobs.requests == gets
    finally:
        stop(running)


@pytest.mark.parametrize("store", ["relative/objects", "/abs/objects", "ftp://host/objects",
                                   "s3://", "file://data/objects", "file://localhost/objects",
                                   "file:///data/objects#b", "file:///data/objects?x=1"])
def test_server_init_refuses_a_store_it_could_not_open(tmp_path: Path, store: str) -> None:
    """A store URL the server cannot open is refused at init, before the database
    remembers it (else every request would fail with it later)."""
    from click.testing import CliRunner

    from tether.cli import cli

    db = f"sqlite:///{tmp_path / 'meta.db'}"
    result = CliRunner().invoke(cli, ["server-init", "--db", db, "--store", store,
                                      "--admin", "root@team"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "store URL" in result.output
    if store.startswith("/") or store.startswith("relative"):
        assert "file://" in result.output  # the hint says how to write a folder
    assert not (tmp_path / "meta.db").exists()  # refused before the database is made


def test_pack_bytes_need_a_token_on_the_fast_path_too(
    server: Server, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """Range reads go over http.client now, not httpx: without a token, or with a
    wrong one, they are refused as before (the refusal answered by the error path),
    and no byte lands in the buffer."""
    from tether.remote import RemoteRegistry

    client = server.client()
    client.log_model(fit_logreg(iris), "iris")
    client.store.refresh()
    key = f"packs/{next(iter(client.store.index.all_packs()))}.pack"
    assert client.store.blobs.get_range_into(key, 0, memoryview(bytearray(8))) == 8
    for token in ("", "tth_not_a_token"):
        stranger = RemoteRegistry(server.url, token=token, cache_dir=tmp_path / "s")
        buffer = bytearray(8)
        with pytest.raises(tether.TetherError) as caught:
            stranger._request("GET", f"/blobs/{key}", headers={"Range": "bytes=0-7"},
                              into=memoryview(buffer))
        assert type(caught.value).__name__ in ("Unauthenticated", "PermissionDenied")
        assert buffer == bytes(8)
        stranger.close()


def test_a_log_and_a_load_through_a_server_draw_a_bar_on_a_terminal(
    server: Server, tmp_path: Path
) -> None:
    """The remote client's log_model, load and download defaulted to no progress bar,
    while the embedded registry draws one on a terminal (on stderr, over 8 MiB)."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(24 << 20))
    script = textwrap.dedent(f"""
        import tether
        reg = tether.connect({server.url!r}, token={server.admin_token!r})
        version = reg.log_model({str(big)!r}, "big")
        reg.download(version.ref, {str(tmp_path / "out")!r})
    """)
    code, drawn = on_a_terminal([sys.executable, "-c", script], subprocess_env())
    assert code == 0, drawn
    assert "storing" in drawn and "loading" in drawn, drawn
    assert (tmp_path / "out" / "big.bin").read_bytes() == big.read_bytes()


def test_a_role_on_one_model_through_a_server_and_what_it_is_told(
    server: Server, tmp_path: Path
) -> None:
    """A role on one model reads that model's records through a server, and the setting a
    load reads first; the store (shared by every model) needs the role registry-wide, and
    the refusal says so. It said the caller had "no role"."""
    admin = server.client()
    weights = tmp_path / "w.bin"
    weights.write_bytes(os.urandom(300_000))
    admin.log_model(weights, "fraud")
    admin.set_setting("env_policy", "warn")
    dev = server.client(admin.create_token("dev@team", role="contributor", model="fraud")["token"])
    assert [v.seq for v in dev.versions("fraud")] == [1]
    assert dev.get_setting("env_policy") == "warn"
    with pytest.raises(PermissionDenied, match=r"store holds the bytes of every model\).*"
                       r"has only contributor on fraud"):
        dev.log_model(weights, "fraud", notes="by dev")
    with pytest.raises(PermissionDenied, match="reading versions needs role reader on model"):
        dev.download("other@1", tmp_path / "stolen")
    with pytest.raises(PermissionDenied, match="store holds the bytes of every model"):
        dev.download("fraud@1", tmp_path / "own")
    assert not (tmp_path / "own").exists()
    # One setting at a time, and only those a load or a move reads.
    secret = server.api("GET", "/api/v1/settings?key=server.store",
                        token=admin.create_token("eve", role="reader", model="x")["token"])
    assert secret.status_code == 403


def test_an_ingest_lease_is_its_holders_to_renew_and_drop(server: Server) -> None:
    """A lease's body comes from the client: any contributor could renew or drop another
    client's lease (gc could then run under that client's ingest). The server stamps the
    holder into it and keeps the others out."""
    admin = server.client()
    alice = admin.create_token("alice@team", role="contributor")["token"]
    bob = admin.create_token("bob@team", role="contributor")["token"]
    key = f"/api/v1/blobs/locks/ingest-{uuid.uuid4().hex}"
    body = json.dumps({"host": "h", "pid": 1, "start": 2, "since": time.time()})
    assert server.api("PUT", key, token=alice, content=body).status_code == 201
    assert server.api("PUT", key, token=alice, content=body).status_code == 201  # renewal
    taken = server.api("PUT", key, token=bob, content=body)
    assert taken.status_code == 409 and "held by alice@team" in taken.text
    dropped = server.api("DELETE", key, token=bob)
    assert dropped.status_code == 403 and "alice@team's ingest lease" in dropped.text
    assert server.api("DELETE", key, token=alice).status_code == 200
