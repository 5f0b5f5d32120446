"""The HTTP protocol `tether server` runs (tether/server/protocol.py): request bodies
reach the app whole and in order, whether each piece is taken as it comes (handed
over without a copy) or pieces pile up while the app is busy (joined, as uvicorn
does); and a real server runs it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.server import ServerState

from tether.server.protocol import BodyProtocol, protocol

from .servers import start_server, stop


class _Transport(asyncio.Transport):
    """A connection's far end: what the protocol writes, and whether it paused reading."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.paused = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 9000)}.get(name)

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass


def _receiving_app(bodies: list[list[bytes]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        pieces: list[bytes] = []
        while True:
            message = await receive()
            assert type(message["body"]) is bytes  # ASGI: bytes, never a bytearray
            pieces.append(message["body"])
            if not message["more_body"]:
                break
        bodies.append(pieces)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def _request(body_size: int) -> bytes:
    return (f"PUT /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {body_size}\r\n\r\n"
            .encode())


async def _serve(pieces: list[bytes], *, app_runs_between: bool) -> tuple[list[bytes], _Transport]:
    bodies: list[list[bytes]] = []
    config = Config(app=_receiving_app(bodies), http=BodyProtocol, log_level="warning",
                    lifespan="off")
    config.load()
    transport = _Transport()
    proto = BodyProtocol(config=config, server_state=ServerState(), app_state={})
    proto.connection_made(transport)
    body = b"".join(pieces)
    proto.data_received(_request(len(body)))
    for piece in pieces:
        proto.data_received(piece)
        if app_runs_between:
            for _ in range(5):
                await asyncio.sleep(0)
    for _ in range(50):
        if bodies:
            break
        await asyncio.sleep(0.01)
    proto.connection_lost(None)
    assert bodies, transport.written.decode(errors="replace")
    assert b"HTTP/1.1 201" in transport.written
    return bodies[0], transport


def test_pieces_taken_as_they_come_arrive_whole_and_in_order() -> None:
    pieces = [os.urandom(n) for n in (1, 1000, 65536, 3, 200_000)]
    received, _ = asyncio.run(_serve(pieces, app_runs_between=True))
    assert b"".join(received) == b"".join(pieces)
    # Each piece reached the app on its own: nothing was joined in the protocol.
    assert len([p for p in received if p]) == len(pieces)


def test_pieces_that_pile_up_are_joined_in_order_and_reading_pauses() -> None:
    pieces = [os.urandom(40_000) for _ in range(5)]  # 200 KB, over the high-water mark
    received, transport = asyncio.run(_serve(pieces, app_runs_between=False))
    assert b"".join(received) == b"".join(pieces)
    assert len([p for p in received if p]) < len(pieces)  # joined while the app waited
    assert sum(len(p) for p in pieces) > HIGH_WATER_LIMIT
    assert transport.paused >= 1  # flow control still holds a fast sender back


def test_the_server_runs_this_protocol() -> None:
    assert protocol() is BodyProtocol


# -- a real `tether server` ------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real `tether server` (tests/test_server.py's), its log free of tracebacks."""
    running = start_server(f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'objects'}",
                           tmp_path)
    try:
        yield running.url, running.admin_token
    finally:
        stop(running)
    for log in tmp_path.glob("server-*.log"):
        assert "Traceback" not in log.read_text()


def test_an_upload_sent_in_uneven_slow_pieces_is_stored_exactly(
        server: tuple[str, str]) -> None:
    url, token = server
    data = os.urandom(3 * 1024 * 1024 + 17)
    key = f"packs/{os.urandom(16).hex()}.pack"
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    conn.putrequest("PUT", f"/api/v1/blobs/{key}")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    sent = 0
    for size in (1, 7, 4096, 100_000, 1 << 20, 3, 65536):
        conn.send(data[sent:sent + size])
        sent += size
        time.sleep(0.01)
    conn.send(data[sent:])
    answer = conn.getresponse()
    assert answer.status == 201, answer.read()
    assert json.loads(answer.read())["size"] == len(data)
    conn.close()
    back = httpx.get(f"{url}/api/v1/blobs/{key}", headers={"Authorization": f"Bearer {token}"},
                     timeout=30)
    assert back.status_code == 200
    assert hashlib.sha256(back.content).digest() == hashlib.sha256(data).digest()


def test_a_model_logged_through_the_server_loads_back_byte_for_byte(
        server: tuple[str, str], tmp_path: Path) -> None:
    import tether.remote

    url, token = server
    model = tmp_path / "model" / "weights.bin"
    model.parent.mkdir()
    model.write_bytes(os.urandom(6 * 1024 * 1024))
    client = tether.remote.connect(url, token=token, cache_dir=tmp_path / "cache")
    client.log_model(str(model), "weights", progress=False)
    out = tmp_path / "out"
    client.download("weights@1", str(out))
    loaded = next(p for p in out.rglob("weights.bin"))
    assert loaded.read_bytes() == model.read_bytes()


# -- the gateway's receiving of an upload (blobs_api._receive) --------------------------


async def _pieces(sizes: list[int], data: bytes) -> Any:
    at = 0
    for size in sizes:
        yield data[at:at + size]
        at += size


def test_an_upload_is_written_in_batches_whole_and_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tether._store.fileio import write_pieces as real
    from tether.server import blobs_api

    calls: list[int] = []

    def counted(fd: int, pieces: Any, offset: int | None = None) -> None:
        calls.append(sum(len(p) for p in pieces))
        real(fd, pieces, offset)

    monkeypatch.setattr(blobs_api, "write_pieces", counted)
    sizes = [1, 65536, 200_000, 3, 1 << 20, 262_144] * 4 + [17]
    data = os.urandom(sum(sizes))
    target = tmp_path / "upload"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        size = asyncio.run(blobs_api._receive(_pieces(sizes, data), fd, writeback=True))
    finally:
        os.close(fd)
    assert size == len(data)
    assert target.read_bytes() == data
    # Batches of at least _WRITE_BATCH (but the last), not one write per piece.
    assert len(calls) < len(sizes) / 3
    assert all(n >= blobs_api._WRITE_BATCH for n in calls[:-1])


def test_an_upload_over_the_limit_is_refused_as_it_comes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tether._errors import InvalidInput
    from tether.server import blobs_api

    monkeypatch.setattr(blobs_api, "MAX_OBJECT", 3 << 20)
    data = os.urandom(4 << 20)
    fd = os.open(tmp_path / "upload", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(InvalidInput, match="over the"):
            asyncio.run(blobs_api._receive(_pieces([1 << 18] * 16, data), fd, writeback=False))
    finally:
        os.close(fd)
    assert (tmp_path / "upload").stat().st_size <= 3 << 20


# -- zero-copy responses (ASGI's http.response.zerocopysend, protocol.py) ---------------


def _put(url: str, token: str, data: bytes) -> str:
    key = f"packs/{os.urandom(16).hex()}.pack"
    answer = httpx.put(f"{url}/api/v1/blobs/{key}", content=data, timeout=60,
                       headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201, answer.text
    return key


def test_objects_and_ranges_come_back_exactly_on_one_kept_alive_connection(
        server: tuple[str, str]) -> None:
    url, token = server
    data = os.urandom(9 * 1024 * 1024 + 3)
    key = _put(url, token, data)
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    auth = {"Authorization": f"Bearer {token}"}
    for first, last in [(None, None), (0, 0), (1000, 5_000_999), (len(data) - 7, len(data) - 1),
                        (None, None), (4096, 4096 + 65535)]:
        headers = dict(auth)
        if first is not None:
            headers["Range"] = f"bytes={first}-{last}"
        conn.request("GET", f"/api/v1/blobs/{key}", headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        if first is None:
            assert answer.status == 200
            assert body == data
        else:
            assert last is not None
            assert answer.status == 206
            assert body == data[first:last + 1]
        assert int(answer.getheader("Content-Length") or -1) == len(body)
    conn.request("HEAD", f"/api/v1/blobs/{key}", headers=auth)
    answer = conn.getresponse()
    assert answer.status == 200 and answer.read() == b""
    assert int(answer.getheader("Content-Length") or -1) == len(data)
    conn.request("GET", "/api/v1/health")  # the connection still carries requests
    assert conn.getresponse().status == 200
    conn.close()


def test_a_client_that_hangs_up_mid_body_leaves_the_server_serving(
        server: tuple[str, str]) -> None:
    import socket

    url, token = server
    data = os.urandom(48 * 1024 * 1024)
    key = _put(url, token, data)
    port = int(url.rsplit(":", 1)[1])
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /api/v1/blobs/{key} HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {token}\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    back = httpx.get(f"{url}/api/v1/blobs/{key}", timeout=60,
                     headers={"Authorization": f"Bearer {token}"})
    assert back.status_code == 200 and back.content == data


def test_send_region_sends_exactly_to_a_slow_reader_and_refuses_a_short_file(
        tmp_path: Path) -> None:
    import socket
    import threading

    from tether.server.protocol import ShortFile, send_region

    data = os.urandom(3 * 1024 * 1024)
    path = tmp_path / "f"
    path.write_bytes(data)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)  # as uvloop's: the sender must wait for room, not fail
    got = bytearray()

    def drain() -> None:
        while True:
            piece = theirs.recv(1 << 16)
            if not piece:
                return
            got.extend(piece)
            time.sleep(0.0005)  # a slow reader: the socket buffer fills

    async def send() -> None:
        with open(path, "rb") as handle:
            await send_region(ours.fileno(), handle.fileno(), 1000, len(data) - 2000)
            with pytest.raises(ShortFile):
                await send_region(ours.fileno(), handle.fileno(), len(data) - 10, 20)

    reader = threading.Thread(target=drain)
    reader.start()
    asyncio.run(send())
    ours.close()
    reader.join(timeout=30)
    theirs.close()
    assert bytes(got) == data[1000:len(data) - 1000] + data[len(data) - 10:]


def test_send_region_gives_up_on_a_client_that_reads_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from tether.server import protocol

    monkeypatch.setattr(protocol, "_STALLED_SECONDS", 0.5)
    path = tmp_path / "f"
    path.write_bytes(os.urandom(16 * 1024 * 1024))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)

    async def send() -> None:
        with open(path, "rb") as handle:
            await protocol.send_region(ours.fileno(), handle.fileno(), 0, 16 * 1024 * 1024)

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="took nothing"):
        asyncio.run(send())
    assert time.monotonic() - started < 10
    ours.close()
    theirs.close()


def test_an_upload_trickled_a_byte_at_a_time_is_not_held_piece_by_piece(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review found a client sending one byte per piece had a million objects held
    for one 1 MB batch (362 MB of Python memory); a batch is also cut at IOV_MAX."""
    from tether._store.fileio import IOV_MAX
    from tether._store.fileio import write_pieces as real
    from tether.server import blobs_api

    most: list[int] = []

    def counted(fd: int, pieces: Any, offset: int | None = None) -> None:
        most.append(len(pieces))
        real(fd, pieces, offset)

    monkeypatch.setattr(blobs_api, "write_pieces", counted)
    data = os.urandom(20_000)
    fd = os.open(tmp_path / "upload", os.O_WRONLY | os.O_CREAT)
    try:
        size = asyncio.run(blobs_api._receive(_pieces([1] * len(data), data), fd,
                                              writeback=True))
    finally:
        os.close(fd)
    assert size == len(data) and (tmp_path / "upload").read_bytes() == data
    assert max(most) <= IOV_MAX


# -- what a review of the zero-copy send found ------------------------------------------


class _GoneTransport:
    """A transport whose client went away: closing, its socket's descriptor -1."""

    def __init__(self, buffered: int = 0, fileno: int = -1) -> None:
        self.closed = False
        self.buffered = buffered
        self.fileno_ = fileno

    def get_extra_info(self, name: str) -> Any:
        fileno = self.fileno_

        class _Sock:
            def fileno(self) -> int:
                return fileno
        return _Sock()

    def is_closing(self) -> bool:
        return self.closed or self.fileno_ < 0

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def close(self) -> None:
        self.closed = True


def _cycle(transport: Any) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(response_started=True, response_complete=False,
                           chunked_encoding=False, disconnected=False,
                           expected_content_length=1000, scope={"method": "GET"},
                           transport=transport)


def test_a_client_gone_before_the_body_ends_the_response_quietly(tmp_path: Path) -> None:
    """Before: os.dup of the closed socket's -1 raised EBADF, logged as a traceback."""
    from tether.server.protocol import ZEROCOPY, _ZeroCopySend

    sent: list[Any] = []

    async def uvicorns_send(message: Any) -> None:
        sent.append(message)

    cycle = _cycle(_GoneTransport())
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    with open(path, "rb") as handle:
        asyncio.run(_ZeroCopySend(cycle, uvicorns_send)(
            {"type": ZEROCOPY, "file": handle.fileno(), "offset": 0, "count": 1000}))
    assert cycle.disconnected and cycle.transport.closed
    assert sent == []  # nothing more written for a client that is gone


def test_waiting_for_the_headers_sleeps_until_the_socket_has_room(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a 1 ms polling loop per stuck connection (about 1% of a core each)."""
    import resource
    import socket

    from tether.server import protocol

    monkeypatch.setattr(protocol, "_STALLED_SECONDS", 1.0)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            ours.send(b"\0" * 65536)  # full: the client reads nothing
    stuck = _GoneTransport(buffered=100, fileno=ours.fileno())
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(protocol._flushed(stuck, ours.fileno()))
    waited = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert 0.9 <= waited < 5
    assert cpu < 0.5 * waited  # asleep, not spinning
    ours.close()
    theirs.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_sendfile_owns_its_descriptors_whether_it_runs_or_is_cancelled(
        tmp_path: Path) -> None:
    """A request cancelled mid-send closes its descriptors, whose numbers may be reused
    at once: the thread must send from and to its own duplicates, and close them."""
    import socket
    import threading

    from tether.server import protocol

    path = tmp_path / "f"
    path.write_bytes(os.urandom(100_000))
    ours, theirs = socket.socketpair()
    with open(path, "rb") as handle:
        protocol._sender()  # its threads exist before counting
        baseline = _open_fds()
        job = protocol._submit_sendfile(ours.fileno(), handle.fileno(), 0, 1000)
        assert job.result(timeout=10) == 1000
        assert theirs.recv(2000) == path.read_bytes()[:1000]
        assert _open_fds() == baseline  # its two duplicates closed by the thread
        # Every worker busy: a call not yet started is cancelled, its duplicates closed.
        release = threading.Event()
        blockers = [protocol._sender().submit(release.wait) for _ in range(4)]
        waiting = protocol._submit_sendfile(ours.fileno(), handle.fileno(), 0, 1000)
        assert _open_fds() == baseline + 2
        assert waiting.cancel()
        assert _open_fds() == baseline
        release.set()
        for blocker in blockers:
            blocker.result(timeout=10)
    ours.close()
    theirs.close()


def test_the_zero_copy_get_gives_an_attacker_nothing(server: tuple[str, str]) -> None:
    """Against the sendfile path: no token, a wrong token, a key outside packs/,
    ranges past the object or malformed: refused with no byte of any file sent, and a
    range never reaches past the object (a sendfile count is the kernel's to obey)."""
    url, token = server
    data = os.urandom(1 << 20)
    key = _put(url, token, data)
    target = f"{url}/api/v1/blobs/{key}"
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(target, timeout=10).status_code == 401
    wrong = httpx.get(target, timeout=10, headers={"Authorization": "Bearer tth_not-a-token"})
    assert wrong.status_code == 401 and data[:64] not in wrong.content
    for hostile in ("/api/v1/blobs/packs%2F..%2F..%2Fmeta.db", "/api/v1/blobs/pins/x.json",
                    "/api/v1/blobs/packs/" + "0" * 32 + ".pack"):
        answer = httpx.get(f"{url}{hostile}", timeout=10, headers=auth)
        assert answer.status_code in (400, 404), (hostile, answer.status_code)
        assert b"SQLite format" not in answer.content
    cases = {"bytes=1048576-": 416, f"bytes={2**63}-": 416, "bytes=5-2": 416,
             "bytes=0-1,5-6": 400, "pages=0-1": 400, "bytes=-0": 416}
    for header, status in cases.items():
        answer = httpx.get(target, timeout=10, headers={**auth, "Range": header})
        assert answer.status_code == status, (header, answer.text)
        assert data[:64] not in answer.content
    # An end past the object is clamped to its last byte: the body is the object's tail.
    tail = httpx.get(target, timeout=10, headers={**auth, "Range": f"bytes={len(data) - 5}-"
                                                                   f"{10**15}"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    assert int(tail.headers["content-length"]) == 5
