"""The fast path for pack transfers (``tether._http_fast``) against a real HTTP server.

It must hand over exactly the bytes a successful range GET answered, and
leave everything else (errors, longer bodies, dropped connections, proxies)
to httpx by returning None, without poisoning the next request on the same
kept-alive connection.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from tether._http_fast import FastFailure, FastHTTP

BODY = os.urandom(300_000)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept-alive connections, as uvicorn's
    seen: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, dict(self.headers), b""))
        if self.path == "/missing":
            self._answer(404, b'{"error": "not_found"}')
        elif self.path == "/longer":
            self._answer(206, BODY[:2000])  # more than the caller asked for
        elif self.path.endswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/empty":
            self._answer(200, b"")
        elif self.path == "/gzip":  # a body that is not the bytes themselves
            self._answer(206, BODY[:1000], encoding="gzip")
        elif self.path == "/close":
            self._answer(206, BODY[:1000], close=True)
        else:
            start, end = self.headers["Range"].removeprefix("bytes=").split("-")
            self._answer(206, BODY[int(start):int(end) + 1])

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(("PUT", self.path, dict(self.headers), body))
        if self.path.endswith("/lost"):
            if sum(1 for seen in self.seen if seen[1] == self.path) == 1:
                self.close_connection = True  # stored, and the answer is lost
                return
            self._answer(409, b'{"error": "conflict", "message": "already exists"}')
        elif self.path == "/taken":
            self._answer(409, b'{"error": "conflict", "message": "already exists"}')
        else:
            self._answer(201, b'{"size": %d}' % len(body))

    def _answer(self, status: int, body: bytes, *, close: bool = False,
                encoding: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> Iterator[FastHTTP]:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = FastHTTP(timeout=10, ssl_context=None)
    try:
        yield client
    finally:
        client.close()


def test_a_range_lands_in_the_buffer_exactly(server: str, fast: FastHTTP) -> None:
    buffer = bytearray(5000)
    got = fast.read_into(f"{server}/packs/a", {"Range": "bytes=100-4099"}, memoryview(buffer))
    assert got == 4000 and bytes(buffer[:4000]) == BODY[100:4100]
    # The same connection serves the next range (kept alive), and the headers given
    # are the ones sent: nothing of the caller's session rides along.
    got = fast.read_into(f"{server}/packs/a", {"Range": "bytes=0-9"}, memoryview(buffer))
    assert got == 10 and bytes(buffer[:10]) == BODY[:10]
    sent = _Handler.seen[-1][2]
    assert "Authorization" not in sent and sent["Accept-Encoding"] == "identity"


def test_anything_but_the_bytes_asked_for_is_left_to_httpx(server: str,
                                                           fast: FastHTTP) -> None:
    buffer = memoryview(bytearray(1000))
    assert fast.read_into(f"{server}/missing", {}, buffer) is None
    assert fast.read_into(f"{server}/longer", {}, buffer) is None  # 2000 bytes for 1000
    assert fast.read_into(f"{server}/gzip", {}, buffer) is None  # encoded: httpx decodes
    # Neither left half a body on the connection: the next answer is read whole and right.
    assert fast.read_into(f"{server}/packs/a", {"Range": "bytes=5-104"}, buffer) == 100
    assert bytes(buffer[:100]) == BODY[5:105]


def test_a_closed_connection_is_replaced(server: str, fast: FastHTTP) -> None:
    buffer = memoryview(bytearray(1000))
    assert fast.read_into(f"{server}/close", {}, buffer) == 1000
    assert fast.read_into(f"{server}/packs/a", {"Range": "bytes=0-99"}, buffer) == 100
    assert bytes(buffer[:100]) == BODY[:100]


@pytest.mark.parametrize("no_proxy", ["", "127.0.0.1"])
def test_a_proxy_in_the_environment_keeps_requests_on_httpx(
    server: str, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    """Even where NO_PROXY may exempt the host: httpx and urllib read it differently,
    so which way a request goes is left to httpx whenever a proxy is set."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    fast = FastHTTP(timeout=10, ssl_context=None)
    assert fast.read_into(f"{server}/packs/a", {"Range": "bytes=0-9"},
                          memoryview(bytearray(10))) is None
    assert fast.put_file(f"{server}/packs/a", {}, Path(__file__)) is None
    assert _Handler.seen == []  # nothing went around the proxy


def test_an_upload_is_sent_whole_and_its_answer_returned(
    server: str, fast: FastHTTP, tmp_path: Path
) -> None:
    pack = tmp_path / "pack"
    pack.write_bytes(BODY)
    answer = fast.put_file(f"{server}/packs/b", {"Authorization": "Bearer t"}, pack)
    assert isinstance(answer, httpx.Response) and answer.status_code == 201
    method, path, headers, body = _Handler.seen[-1]
    assert (method, path, body) == ("PUT", "/packs/b", BODY)
    assert headers["Authorization"] == "Bearer t"
    # An error comes back as the answer it is, for the caller's usual handling
    # (a 409 after a lost answer means "already stored").
    taken = fast.put_file(f"{server}/taken", {}, pack)
    assert taken is not None and taken.status_code == 409
    assert taken.json()["error"] == "conflict"


def test_a_dropped_connection_is_a_network_error_for_the_callers_retries(
    fast: FastHTTP,
) -> None:
    from .conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/packs/a"
    with pytest.raises(FastFailure) as caught:
        fast.read_into(url, {}, memoryview(bytearray(10)))
    assert isinstance(caught.value, httpx.NetworkError)  # what the retry loops retry
    with pytest.raises(FastFailure):
        fast.put_file(url, {}, Path(__file__))


def test_an_empty_answer_does_not_resend_the_next_request(server: str, fast: FastHTTP) -> None:
    buffer = memoryview(bytearray(10))
    assert fast.read_into(f"{server}/empty", {}, buffer) == 0
    assert fast.read_into(f"{server}/packs/a", {"Range": "bytes=0-9"}, buffer) == 10
    assert [path for _, path, _, _ in _Handler.seen] == ["/empty", "/packs/a"]


def test_an_upload_whose_answer_was_lost_counts_as_stored(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stores the pack and the connection drops before its answer: the
    retry is answered 409 (objects are never overwritten), which means "stored".
    Sent again inside the same try, the 409 would read as a real conflict."""
    from tether.remote import RemoteRegistry
    from tether.remote_blobs import RemoteBlobs

    monkeypatch.setenv("TETHER_RETRY_SECONDS", "10")
    pack = tmp_path / "pack"
    pack.write_bytes(BODY)
    blobs = RemoteBlobs(RemoteRegistry(server, token="t"))
    blobs._streams_packs = True  # the test server presigns nothing
    blobs.put_file("packs/lost", pack)
    puts = [path for method, path, _, _ in _Handler.seen if method == "PUT"]
    assert puts == ["/api/v1/blobs/packs/lost"] * 2  # the first stored, the retry told so
    assert blobs.retries == 1


def test_a_redirect_where_bytes_were_asked_for_is_a_clear_error(server: str) -> None:
    from tether import StoreError
    from tether.remote import RemoteRegistry

    client = RemoteRegistry(server, token="t")
    with pytest.raises(StoreError, match="HTTP 302 where bytes were asked for"):
        client._request("GET", "/blobs/packs/moved", headers={"Range": "bytes=0-9"},
                        into=memoryview(bytearray(10)))
