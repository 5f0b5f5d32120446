"""The chunk store on a real S3 endpoint over HTTP (moto's server), including one that fails."""

from __future__ import annotations

import http.client
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tether import StoreError
from tether._store import open_store

from .conftest import make_bucket

Alter = Any  # (method, path, request headers, status, body) -> (status, body)


class FlakyProxy:
    """Forwards to S3, answering 503 to every ``fail_every``-th request instead, and
    passing every answer through ``alter`` (a man in the middle, or a lying endpoint)."""

    def __init__(self, upstream: str, fail_every: int, alter: Alter = None, *,
                 ignore_prefix: bool = False) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.count = 0
        self.failed = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                with lock:
                    proxy.count += 1
                    fail = fail_every and proxy.count % fail_every == 0
                if fail:
                    proxy.failed += 1
                    message = b"<Error><Code>SlowDown</Code><Message>try again</Message></Error>"
                    self.send_response(503)
                    self.send_header("content-length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{host}:{port}"
                path = self.path
                if ignore_prefix and "list-type=2" in path:  # an endpoint answering everything
                    import re

                    path = re.sub(r"prefix=[^&]*", "prefix=registry%2F", path)
                conn.request(self.command, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
                if alter is not None:
                    status, data = alter(self.command, self.path, dict(self.headers.items()),
                                         status, data)
                self.send_response(status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            free = sock.getsockname()[1]
        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up mid-answer (the tests' point), not news

        self.server = Quiet(("127.0.0.1", free), Handler)
        self.url = f"http://127.0.0.1:{free}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def bucket(s3_endpoint: str) -> Iterator[str]:
    make_bucket(s3_endpoint, "models")
    yield "s3://models/registry"


def test_round_trip_dedup_multipart_and_cache(bucket: str, tmp_path: Path) -> None:
    # A 6 MiB pack with a 5 MiB multipart threshold goes up in parts.
    store = open_store(
        bucket, cache_dir=tmp_path / "cache", pack_target=6 << 20, multipart_threshold=5 << 20
    )
    data = os.urandom(7 << 20)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.bin").write_bytes(data)
    report = store.ingest(tmp_path / "src", ["w.bin"])
    sizes = [i.size for i in store.blobs.list("packs/")]
    assert max(sizes) >= 6 << 20  # the multipart upload landed whole
    again = store.ingest(tmp_path / "src", ["w.bin"])
    assert again.new_chunks == 0

    reader = open_store(bucket, cache_dir=tmp_path / "cache2")
    reader.materialize(report.files, tmp_path / "out", label="w@1")
    assert (tmp_path / "out" / "w.bin").read_bytes() == data
    gets = reader.blobs.requests
    assert 0 < gets < len(report.files[0].chunks)  # adjacent chunks share a ranged GET
    reader.materialize(report.files, tmp_path / "out2", label="w@1")
    assert reader.blobs.requests == gets  # type: ignore[attr-defined]  # all from the cache
    assert reader.verify(report.files, label="w@1") == []


def test_a_server_that_fails_some_requests(
    s3_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = FlakyProxy(s3_endpoint, fail_every=3)
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", proxy.url)
    try:
        store = open_store(bucket, cache_dir=tmp_path / "cache", pack_target=1 << 20)
        data = os.urandom(3 << 20)
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "w.bin").write_bytes(data)
        report = store.ingest(tmp_path / "src", ["w.bin"])
        store.materialize(report.files, tmp_path / "out", label="w@1")
        assert (tmp_path / "out" / "w.bin").read_bytes() == data
        assert proxy.failed > 0  # the retries really happened
    finally:
        proxy.close()


def test_a_server_that_always_fails_gives_a_clear_error(
    s3_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = FlakyProxy(s3_endpoint, fail_every=1)
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("TETHER_RETRY_SECONDS", "2")  # not the default 30 s of retrying
    try:
        store = open_store(bucket, cache_dir=tmp_path / "cache", max_attempts=2)
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "w.bin").write_bytes(b"x" * 1000)
        with pytest.raises(StoreError, match=r"S3 .* failed"):
            store.ingest(tmp_path / "src", ["w.bin"])
    finally:
        proxy.close()


def test_a_missing_bucket_is_named(s3_endpoint: str, tmp_path: Path) -> None:
    store = open_store("s3://no-such-bucket/x", cache_dir=tmp_path)
    with pytest.raises(StoreError, match="no-such-bucket"):
        store.refresh()


def test_server_init_refuses_a_store_it_cannot_reach(
    s3_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """server-init said "registry ready" for a bucket that did not exist or an endpoint
    nobody answered; the first upload failed instead."""
    from click.testing import CliRunner

    from tether.cli import cli

    def init(store: str, name: str) -> Any:
        db = f"sqlite:///{tmp_path / name}"
        return CliRunner().invoke(cli, ["server-init", "--db", db, "--store", store,
                                        "--admin", "root@team"])

    missing = init("s3://no-such-bucket/registry", "a.db")
    assert missing.exit_code == 1 and "could not be reached" in missing.output
    assert "no-such-bucket" in missing.output and "nothing was created" in missing.output
    assert not (tmp_path / "a.db").exists()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TETHER_RETRY_SECONDS", "0")
    nobody = init(bucket, "b.db")
    assert nobody.exit_code == 1 and "could not be reached" in nobody.output
    assert not (tmp_path / "b.db").exists()
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", s3_endpoint)
    fine = init(bucket, "c.db")
    assert fine.exit_code == 0, fine.output


def test_an_endpoint_that_stops_answering_fails_within_the_retry_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that accepts connections and never answers held a call for 8 minutes
    (boto3's 8 attempts of a 60 s read timeout); it now fails after 3 attempts of the
    read timeout (30 s by default; 2 s here) and the retry budget, naming the store."""
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # read nothing, answer nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("TETHER_RETRY_SECONDS", "2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        store = open_store("s3://silent/x", cache_dir=tmp_path, read_timeout=2)
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"S3 .* failed"):
            store.refresh()
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_a_presigned_put_creates_and_never_overwrites(bucket: str, tmp_path: Path) -> None:
    """S3 overwrites by default: a PUT URL kept past its first use rewrote a pack after
    its index was checked against it (another model's deduplicated bytes were lost, in a
    review). Tether's PUT URLs are signed with If-None-Match: *."""
    import httpx

    store = open_store(bucket, cache_dir=tmp_path)
    blobs = store.blobs
    client = blobs.client
    # The harm, the unsafe way: a plain presigned PUT URL rewrites what it stored.
    plain = client.generate_presigned_url(
        "put_object", Params={"Bucket": "models", "Key": "registry/packs/plain.pack"})
    assert httpx.put(plain, content=b"honest").status_code == 200
    assert httpx.put(plain, content=b"forged").status_code == 200
    assert blobs.get_bytes("packs/plain.pack") == b"forged"
    # Tether's: the header is signed into the URL (S3 refuses the request without it; moto
    # does not check signatures), and a second PUT with it is refused.
    url = blobs.presign("packs/guarded.pack", "PUT")
    assert "X-Amz-SignedHeaders=host%3Bif-none-match" in url
    create = {"If-None-Match": "*"}
    assert httpx.put(url, content=b"honest", headers=create).status_code == 200
    assert httpx.put(url, content=b"forged", headers=create).status_code == 412
    assert blobs.get_bytes("packs/guarded.pack") == b"honest"


def test_the_gateways_store_of_an_upload_never_overwrites(bucket: str, tmp_path: Path) -> None:
    """A server over a bucket stored a client's upload with ``put_file``, which S3 lets
    overwrite: a second upload of a pack, racing the first past the server's "exists?"
    check, replaced the bytes the pack's index had been checked against (a review).
    ``put_file_new`` is one conditional PUT: the second is a Conflict, the first stays."""
    from tether import Conflict

    blobs = open_store(bucket, cache_dir=tmp_path).blobs
    for name, body in (("honest", b"honest"), ("forged", b"forged")):
        (tmp_path / name).write_bytes(body)
    # The harm, the unsafe way.
    blobs.put_file("packs/plain.pack", tmp_path / "honest")
    (tmp_path / "honest").write_bytes(b"honest")
    blobs.put_file("packs/plain.pack", tmp_path / "forged")
    assert blobs.get_bytes("packs/plain.pack") == b"forged"
    (tmp_path / "forged").write_bytes(b"forged")
    # Tether's gateway.
    blobs.put_file_new("packs/guarded.pack", tmp_path / "honest")
    with pytest.raises(Conflict, match="never overwritten"):
        blobs.put_file_new("packs/guarded.pack", tmp_path / "forged")
    assert blobs.get_bytes("packs/guarded.pack") == b"honest"
    assert not (tmp_path / "honest").exists() and not (tmp_path / "forged").exists()
    # The same bytes again, as boto3 sends them when the answer to its first PUT was lost
    # (it retries by itself): refused by S3, and taken as stored.
    (tmp_path / "again").write_bytes(b"honest")
    blobs.put_file_new("packs/guarded.pack", tmp_path / "again")
    assert blobs.get_bytes("packs/guarded.pack") == b"honest"


def test_a_range_past_a_packs_end_is_a_lying_location_not_a_failure(
    bucket: str, tmp_path: Path
) -> None:
    """An index claiming bytes past the end of a pack (a lie, beside an honest copy) is
    answered 416 by S3 and by a Tether server; that surfaced as a plain store error the
    chunk reader did not take as one location wanting, so the load failed instead of
    trying the honest copy (a review). Now it reads as a short read."""
    from tether._errors import IntegrityError

    from .servers import start_server, stop

    store = open_store(bucket, cache_dir=tmp_path / "cache")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.bin").write_bytes(os.urandom(100_000))
    store.ingest(tmp_path / "src", ["w.bin"])
    pack = next(iter(store.index.journal))
    server = start_server(f"sqlite:///{tmp_path / 'meta.db'}", bucket, tmp_path)
    try:
        client = server.client()
        client.log_model(tmp_path / "src" / "w.bin", "m", progress=False)
        through = client.store
        through.refresh()
        for where in (store, through):
            with pytest.raises(IntegrityError, match="truncated"):
                where._get_range(pack, 10**7, 5)
            with pytest.raises(IntegrityError, match="truncated"):
                where._read_into(pack, 10**7, memoryview(bytearray(5)))
    finally:
        stop(server)


def _listing_altered(change: Any) -> Alter:
    """An ``alter`` that rewrites list answers (ListObjectsV2) with ``change(prefix, xml)``."""
    def alter(method: str, path: str, headers: dict[str, str], status: int,
              data: bytes) -> tuple[int, bytes]:
        if method == "GET" and "list-type=2" in path:
            prefix = path.split("prefix=", 1)[1].split("&", 1)[0] if "prefix=" in path else ""
            data = change(prefix.replace("%2F", "/"), data.decode()).encode()
        return status, data
    return alter


def _old(xml: str) -> str:
    """Every object dated long ago (the endpoint's word), past any grace."""
    import re

    return re.sub(r"<LastModified>[^<]*</LastModified>",
                  "<LastModified>2001-01-01T00:00:00.000Z</LastModified>", xml)


def _stored(tmp_path: Path, bucket: str, **options: Any) -> tuple[Any, Any]:
    store = open_store(bucket, cache_dir=tmp_path / "c1", **options)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "keep.bin").write_bytes(os.urandom(300_000))
    (tmp_path / "src" / "dead.bin").write_bytes(os.urandom(1_000_000))
    report = store.ingest(tmp_path / "src", ["keep.bin", "dead.bin"])
    store.release_pin(report.pin)  # as a registry does once the version is committed
    return store, [f for f in report.files if f.path == "keep.bin"]


def _loads(bucket: str, tmp_path: Path, files: Any, name: str) -> bytes:
    fresh = open_store(bucket, cache_dir=tmp_path / f"fresh-{name}")
    fresh.materialize(files, tmp_path / name, label="keep@1")
    return (tmp_path / name / "keep.bin").read_bytes()


@pytest.mark.parametrize("lie", ["omit-index", "ignore-prefix"])
def test_gc_never_deletes_a_live_pack_on_a_lying_listing(
        bucket: str, s3_endpoint: str, tmp_path: Path, lie: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing that left one live pack's index out (a short or lying page) had gc
    delete the pack as a leftover, even past the grace (dates are the endpoint's word);
    one that ignored its prefix (answering tmp/ with every object) deleted the whole
    store (a review)."""
    import re

    store, live = _stored(tmp_path, bucket, pack_target=1 << 16)
    victim_id = store.index.candidates(next(iter(live[0].chunks.digests())))[0].pack
    victim = f"packs/{victim_id}.pack"  # holds the live file
    everything = sorted(i.key for i in store.blobs.list(""))

    def change(prefix: str, xml: str) -> str:
        if lie == "omit-index" and prefix.endswith("index/"):
            xml = re.sub(rf"<Contents>(?:(?!</Contents>).)*?{victim_id}\.idx.*?</Contents>",
                         "", xml, flags=re.S)
        return _old(xml)

    proxy = FlakyProxy(s3_endpoint, fail_every=0, alter=_listing_altered(change),
                       ignore_prefix=lie == "ignore-prefix")
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", proxy.url)
    try:
        lied_to = open_store(bucket, cache_dir=tmp_path / "c2")
        try:
            lied_to.gc(live, grace_seconds=3600, dry_run=False)
        except StoreError as error:
            assert "in no pack" in str(error)
    finally:
        proxy.close()
        monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", s3_endpoint)
    left = {i.key for i in store.blobs.list("")}
    if lie == "omit-index":
        assert victim in left and set(everything) == left  # refused: nothing removed
    assert {k for k in left if k.startswith("packs/")}
    if lie == "ignore-prefix":  # what such an endpoint answers is taken for what was asked
        proxy = FlakyProxy(s3_endpoint, fail_every=0, ignore_prefix=True)
        monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", proxy.url)
        try:
            listed = open_store(bucket, cache_dir=tmp_path / "c3").blobs.list("tmp/")
        finally:
            proxy.close()
            monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", s3_endpoint)
        assert listed == []
    assert _loads(bucket, tmp_path, live, "out") == (tmp_path / "src" / "keep.bin").read_bytes()


def test_gc_copies_no_chunk_it_did_not_check(bucket: str, s3_endpoint: str,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """gc copied each live chunk into a new pack as the endpoint answered it, then deleted
    the old pack: one lying ranged read (a bit flipped over http) replaced a live
    version's only copy with garbage (a review). Now the copy is checked first."""
    _store, live = _stored(tmp_path, bucket, pack_target=8 << 20)

    def flip(method: str, path: str, headers: dict[str, str], status: int,
             data: bytes) -> tuple[int, bytes]:
        if method == "GET" and "/packs/" in path and any(k.lower() == "range" for k in headers):
            data = bytes([data[0] ^ 1]) + data[1:] if data else data
        return status, data

    proxy = FlakyProxy(s3_endpoint, fail_every=0, alter=flip)
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", proxy.url)
    try:
        with pytest.raises(Exception, match="does not match its digest; nothing was removed"):
            open_store(bucket, cache_dir=tmp_path / "c2").gc(live, grace_seconds=0,
                                                            dry_run=False)
    finally:
        proxy.close()
        monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", s3_endpoint)
    assert _loads(bucket, tmp_path, live, "out") == (tmp_path / "src" / "keep.bin").read_bytes()
