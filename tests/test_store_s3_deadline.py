"""An S3 endpoint that holds a client where no read ever times out: headers a byte at a
time, a body a byte at a time. botocore's read timeout is per
read, so each held a load or a log for as long as the endpoint liked; every S3 call
now keeps to one deadline (``_store/s3_deadline``). Each attack is shown holding a
plain boto3 client (same timeouts) past the point where Tether's gave up."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tether import StoreError
from tether._store.blobs import S3Blobs

from .test_remote_deadline import _for, header_drip, raw_server

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
    outcome: list[object] = []

    def ask() -> None:
        try:
            outcome.append(call(client))
        except Exception as error:  # any end counts as not held
            outcome.append(error)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(seconds)
    return not outcome


def _gives_up(call: Callable[[], object]) -> str:
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        call()
    took = time.monotonic() - started
    assert took < GAVE_UP_WITHIN, f"held for {took:.1f} s"
    return str(caught.value)


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
