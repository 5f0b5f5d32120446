"""An S3 endpoint that holds a client where no read ever times out: headers a byte at a
time, a body a byte at a time. botocore's read timeout is per
read, so each held a load or a log for as long as the endpoint liked; every S3 call
now keeps to one deadline (``_store/s3_deadline``). Each attack is shown holding a
plain boto3 client (same timeouts) past the point where Tether's gave up."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tether import StoreError
from tether._store.blobs import S3Blobs

from .test_remote_deadline import _for, gives_up, header_drip, raw_server, still_held

READ_TIMEOUT = 0.5
#: Within this, a call keeping to its deadline (twice the read timeout, plus the bytes
#: at 64 KB/s, plus botocore's backoff between its tries) has given up, tried again
#: once within the retry budget.
GAVE_UP_WITHIN = 8.0


def body_drip(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n"
                 b"Content-Type: application/octet-stream\r\n\r\n")
    for _ in _for(30):
        conn.sendall(b"X")  # well inside each read's timeout, never done
        time.sleep(0.1)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("TETHER_RETRY_SECONDS", "1")  # the deadline bounds each try


def _tether_blobs(url: str, monkeypatch: pytest.MonkeyPatch) -> S3Blobs:
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", url)
    return S3Blobs("models", "registry", read_timeout=READ_TIMEOUT)


def _held_plain(url: str, call: Callable[[object], object], seconds: float) -> bool:
    """Whether a plain boto3 client with the same timeouts is still held by ``call``
    after ``seconds`` (the attack doing harm the unsafe way)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=url, config=Config(
        retries={"total_max_attempts": 3, "mode": "standard"}, connect_timeout=5,
        read_timeout=READ_TIMEOUT))
    return still_held(lambda: call(client), seconds)


def _gives_up(call: Callable[[], object]) -> str:
    return gives_up(call, StoreError)


def _plain_get(client: object) -> bytes:
    return client.get_object(Bucket="models", Key="registry/pins/x")["Body"].read()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("attack", [header_drip, body_drip])
def test_an_endpoint_dripping_an_answer_is_given_up_on(
        attack: Callable[[socket.socket], None], aws: None, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Every kind of call, all at once (each on its own thread, under its own deadline)."""
    pack = tmp_path / "x.pack"
    pack.write_bytes(b"\0" * 4096)
    with raw_server(attack) as url:
        blobs = _tether_blobs(url, monkeypatch)
        calls: dict[str, Callable[[], object]] = {
            "get": lambda: blobs.get_bytes("pins/x"),
            "range": lambda: blobs.get_range_into("packs/x.pack", 0, memoryview(bytearray(64))),
            "stream": lambda: b"".join(blobs.iter_range("packs/x.pack", 0, 1000000)),
            "put": lambda: blobs.put_bytes("packs/x.pack", b"\0" * 4096),
            "upload": lambda: blobs.put_file("packs/x.pack", pack),
            "list": lambda: blobs.list("packs/"),
        }
        with ThreadPoolExecutor(len(calls) + 1) as pool:
            held = pool.submit(_held_plain, url, _plain_get, 4.0)
            told = dict(zip(calls, pool.map(_gives_up, calls.values()), strict=True))
            assert held.result()  # eight times its read timeout, and still held
    for what, message in told.items():
        assert "answered too slowly" in message and "stopped waiting" in message, (what,
                                                                                    message)


def test_a_program_s_own_boto3_clients_are_left_alone(aws: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Only Tether's client is guarded: a deadline left on the thread by Tether's last
    call does not cut a call the program makes with its own boto3 client."""
    import boto3

    with raw_server(body_drip) as url:
        blobs = _tether_blobs(url, monkeypatch)
        _gives_up(lambda: blobs.get_bytes("pins/x"))  # leaves an expired deadline behind
        own = boto3.client("s3", endpoint_url=url)
        pool_classes = own._endpoint.http_session._pool_classes_by_scheme
        assert "Guarded" not in pool_classes["http"].__name__
        assert "Guarded" in blobs.client._endpoint.http_session._pool_classes_by_scheme[
            "http"].__name__


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (nothing is downloaded)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.parametrize("attack", [header_drip, body_drip])
def test_the_deadline_holds_over_tls(attack: Callable[[socket.socket], None], aws: None,
                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An https endpoint (the usual one): TLS sockets are guarded too."""
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    with raw_server(attack, tls=context) as url:
        blobs = _tether_blobs(url, monkeypatch)
        with ThreadPoolExecutor(2) as pool:
            told = list(pool.map(_gives_up, [lambda: blobs.get_bytes("pins/x"),
                                             lambda: blobs.put_bytes("packs/x", b"1" * 4096)]))
    for message in told:
        assert "answered too slowly" in message and "stopped waiting" in message, message


# -- found by a review of the above --------------------------------------------------------


def _every_other(first: Callable[[socket.socket], None],
                 then: Callable[[socket.socket], None]) -> Callable[[socket.socket], None]:
    """An attack answering the first connection with ``first``, every later one ``then``."""
    calls = itertools.count()

    def attack(conn: socket.socket) -> None:
        (first if next(calls) == 0 else then)(conn)

    return attack


def slow_down(conn: socket.socket) -> None:
    body = b"<Error><Code>SlowDown</Code><Message>slow down</Message></Error>"
    conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def fast_continue_flood(conn: socket.socket) -> None:
    block = b"HTTP/1.1 100 Continue\r\n\r\n" * 4096
    for _ in _for(30):
        conn.sendall(block)


def test_a_retry_is_held_to_the_deadline_and_the_cap_again(
        aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's tries of a call share its deadline; after a parsed 503 the next try's
    headers counted as done, and a fast run of ``100 Continue`` earned time without end."""
    with raw_server(_every_other(slow_down, fast_continue_flood)) as url:
        blobs = _tether_blobs(url, monkeypatch)
        message = _gives_up(lambda: blobs.get_bytes("pins/x"))
    assert "answered too slowly" in message or "headers ended" in message, message


def _spaced(blocks: int, every: float) -> Callable[[socket.socket], None]:
    def attack(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (blocks * 1024))
        for _ in range(blocks):
            conn.sendall(b"x" * 1024)
            time.sleep(every)
    return attack


def test_a_stream_keeps_its_calls_deadline_on_any_thread_and_not_the_readers_pauses(
        aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body read after its call returned was under the reading thread's latest deadline:
    a server streams it from worker threads, so a dripped body read on a fresh thread
    ran on unbounded, and a reader pausing (a slow downstream client) had a healthy
    stream cut (a review)."""
    with raw_server(body_drip) as url:
        blobs = _tether_blobs(url, monkeypatch)
        stream = blobs.iter_range("packs/x.pack", 0, 1000000, block=1)
        next(stream)  # the call, on this thread
        with ThreadPoolExecutor(1) as other:  # the rest, on another
            _gives_up(lambda: other.submit(lambda: b"".join(stream)).result())
    monkeypatch.setenv("TETHER_RETRY_SECONDS", "0")
    with raw_server(_spaced(6, 0.6)) as url:  # 3.6 s of wall time, against a 2 s deadline
        monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", url)
        blobs = S3Blobs("models", "registry", read_timeout=1.0)
        got = 0
        for piece in blobs.iter_range("packs/x.pack", 0, 6 * 1024, block=1024):
            got += len(piece)
            time.sleep(0.5)  # the reader's own time
        assert got == 6 * 1024


_tokens = itertools.count()


def endless_listing(conn: socket.socket) -> None:
    body = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
            b"<Name>models</Name><Prefix>registry/packs/</Prefix><KeyCount>0</KeyCount>"
            b"<MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>"
            b"<NextContinuationToken>more%d</NextContinuationToken></ListBucketResult>"
            % next(_tokens))
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def test_a_listing_paged_without_end_is_given_up_on(aws: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the objects kept were counted: empty pages marked truncated kept a listing
    going for ever (16,000 pages in 20 s, and on: a review)."""
    with raw_server(endless_listing) as url:
        blobs = _tether_blobs(url, monkeypatch)
        with pytest.raises(StoreError, match="pages without an object under the prefix"):
            blobs.list("packs/")


def test_a_tls_handshake_dripped_is_given_up_on(aws: None, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """OpenSSL reads the socket itself during the handshake, before the socket is
    guarded: a record fed a byte at a time held every try for the connect timeout."""
    def handshake_drip(conn: socket.socket) -> None:
        conn.recv(65536)  # the ClientHello
        conn.sendall(b"\x16\x03\x03\x40\x00")  # a 16 KB handshake record follows ...
        for _ in _for(30):
            conn.sendall(b"\x02")  # ... a byte at a time
            time.sleep(0.3)

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=lambda c=conn: contextlib.suppress(OSError).__enter__()
                             or handshake_drip(c), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("TETHER_S3_ENDPOINT_URL",
                           f"https://127.0.0.1:{listener.getsockname()[1]}")
        blobs = S3Blobs("models", "registry", read_timeout=READ_TIMEOUT)
        _gives_up(lambda: blobs.size("packs/x"))
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_completing_a_multipart_upload_gets_the_time_s3_documents(
        s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 may take minutes to complete a large multipart upload (it sends spaces while it
    works): that call gets SLOW_OPERATIONS' time, every other twice the read timeout."""
    from tether._store import s3_deadline

    from .conftest import make_bucket

    make_bucket(s3_endpoint, "models")
    started: dict[float, int] = {}
    real = s3_deadline.start

    def counted(timeout: float, header_bytes: int) -> Any:
        started[timeout] = started.get(timeout, 0) + 1
        return real(timeout, header_bytes)

    monkeypatch.setattr(s3_deadline, "start", counted)
    blobs = S3Blobs("models", "registry", multipart_threshold=5 << 20, read_timeout=7.0)
    pack = tmp_path / "x.pack"
    pack.write_bytes(os.urandom(11 << 20))  # three parts
    blobs.put_file("packs/x.pack", pack)
    assert started[1800.0] == 1 and started[14.0] >= 4, started  # create, 3 parts, ...
    assert blobs.get_bytes("packs/x.pack")[:1] and set(started) == {14.0, 1800.0}
