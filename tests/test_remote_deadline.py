"""The client against a server that holds it before or after the body, where no read ever
times out: headers a byte at a time, ``100 Continue`` without end (slow or fast), a chunked
body's trailer dripping, an upload read slowly. httpx's and http.client's timeouts are
per read, so each held a client for as long as the server liked (a review); every
exchange now keeps to one deadline (``_exchange_deadline``). Each attack is shown holding
a plain httpx client past the point where Tether's gave up."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tether import remote
from tether._errors import Unavailable

Attack = Callable[[socket.socket], None]
TIMEOUT = 0.5
#: Within this, a client keeping to its deadline has given up (0.5 s plus retries' slack).
GAVE_UP_WITHIN = 8.0


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return
        data += piece


@contextlib.contextmanager
def raw_server(attack: Attack, *, seconds: float = 30.0,
               tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A loopback server answering every connection with ``attack`` (for ``seconds`` at
    most, so that a held client in a failing test is let go in the end), over ``tls``
    if given."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    until = time.monotonic() + seconds

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            if tls is not None:
                conn.settimeout(5)
                conn = tls.wrap_socket(conn, server_side=True)
                conn.settimeout(None)
            _read_request(conn)
            attack(conn)

    def accept() -> None:
        while not stop.is_set() and time.monotonic() < until:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


def _for(seconds: float) -> Iterator[None]:
    """Yields until ``seconds`` have passed."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield


def header_drip(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in _for(30):
        conn.sendall(b"X")  # one endless header name, a byte at a time
        time.sleep(0.1)


def continue_flood(conn: socket.socket) -> None:
    for _ in _for(30):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(0.05)


def fast_continue_flood(conn: socket.socket) -> None:
    block = b"HTTP/1.1 100 Continue\r\n\r\n" * 4096
    for _ in _for(30):
        conn.sendall(block)  # well above any rate rule: only a byte bound ends it


def trailer_drip(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                 b"transfer-encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n")
    for _ in _for(30):
        conn.sendall(b"X")  # a trailer that never ends
        time.sleep(0.1)


def slow_reader(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for _ in _for(30):
        conn.recv(8192)  # ~40 KB/s: each read wakes the sender, none times out
        time.sleep(0.2)


def still_held(call: Callable[[], object], seconds: float) -> bool:
    """Whether ``call``, run on a thread of its own, has not ended after ``seconds``
    (any end, an error too, counts as let go)."""
    outcome: list[object] = []

    def ask() -> None:
        try:
            outcome.append(call())
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(seconds)
    return not outcome


def gives_up(call: Callable[[], object], error: type[Exception] = Unavailable,
             within: float = GAVE_UP_WITHIN) -> str:
    """What ``call`` raised (``error``), having given up within ``within`` seconds."""
    started = time.monotonic()
    with pytest.raises(error) as caught:
        call()
    took = time.monotonic() - started
    assert took < within, f"held for {took:.1f} s"
    return str(caught.value)


def _held_plain(url: str, seconds: float) -> bool:
    """Whether a plain httpx client with the same timeout is still held after
    ``seconds`` (the attack doing harm the unsafe way)."""
    def ask() -> object:
        with httpx.Client(timeout=TIMEOUT) as client:
            return client.get(f"{url}/api/v1/models").read()

    return still_held(ask, seconds)


def _listing_given_up(url: str) -> str:
    """What a client asking ``url`` for its models was told, once it gave up."""
    client = remote.RemoteRegistry(url, token="t" * 40, timeout=TIMEOUT)
    try:
        return gives_up(client.models)
    finally:
        client.close()


@pytest.mark.parametrize("attack", [header_drip, continue_flood, trailer_drip])
def test_a_server_holding_an_answer_is_given_up_on(attack: Attack) -> None:
    with raw_server(attack) as url:
        assert _held_plain(url, 3.0)  # six times its timeout, and still held
        message = _listing_given_up(url)
    assert "answered too slowly" in message, message


def test_an_endless_fast_run_of_continues_is_cut_off_by_size() -> None:
    """Bytes before the headers end earn no time, and are capped: with a timeout long
    enough, the cap is what ends a fast flood."""
    with raw_server(fast_continue_flood) as url:
        client = remote.RemoteRegistry(url, token="t" * 40, timeout=GAVE_UP_WITHIN / 2)
        try:
            message = gives_up(client.models)
        finally:
            client.close()
    assert "before the answer's headers ended" in message, message


@pytest.mark.parametrize("attack", [header_drip, continue_flood])
def test_the_fast_path_keeps_to_the_deadline_too(attack: Attack) -> None:
    """Pack ranges are read through http.client (``_http_fast``)."""
    with raw_server(attack) as url:
        client = remote.RemoteRegistry(url, token="t" * 40, timeout=TIMEOUT)
        try:
            gives_up(lambda: client._request(
                "GET", "/blobs/packs/x.pack", into=memoryview(bytearray(16)), retry=False))
        finally:
            client.close()


def test_an_upload_read_slowly_is_given_up_on(tmp_path: Path) -> None:
    """Each slow read wakes the sender before its timeout: only a deadline ends it."""
    pack = tmp_path / "x.pack"
    pack.write_bytes(b"\0" * (24 << 20))
    with raw_server(slow_reader) as url:
        client = remote.RemoteRegistry(url, token="t" * 40, timeout=TIMEOUT)
        try:
            started = time.monotonic()
            with pytest.raises(httpx.HTTPError) as caught:
                client.fast.put_file(f"{url}/api/v1/blobs/packs/x.pack", {}, pack)
            took = time.monotonic() - started
        finally:
            client.close()
    assert took < GAVE_UP_WITHIN, f"held for {took:.1f} s"
    assert "stopped waiting" in str(caught.value), caught.value


def test_a_transfer_held_past_its_deadline_is_not_asked_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Blob transfers retried an exchange that ran past its deadline: held as long again
    at every try, for the whole retry budget (seven tries in ten seconds: a review)."""
    from tether.remote_blobs import RemoteBlobs

    monkeypatch.setenv("TETHER_RETRY_SECONDS", "20")
    with raw_server(header_drip) as url:
        client = remote.RemoteRegistry(url, token="t" * 40, timeout=TIMEOUT)
        blobs = RemoteBlobs(client)
        monkeypatch.setattr(blobs, "_target", lambda key, method: None)  # no presigning
        try:
            gives_up(lambda: blobs.put_bytes("packs/x.pack", b"x" * 100))
        finally:
            client.close()
