"""Transfers through a real `tether server` and to a real S3 endpoint (moto's server).

- A client process killed at about 50% of a 200 MB upload, run again, finishes
  the version and sends again less than 5% of the file (counted by a TCP proxy
  between client and server or bucket); so does a server killed and restarted
  under a running upload, which the client rides out by itself.
- The server's blob routes stream: its peak RSS stays flat while a 300 MB pack
  goes up, is checked against its index, and comes back whole and as a range.
- ``open_file`` reads one byte range of a model's file, fetching a few chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest

import tether

from .conftest import make_bucket, subprocess_env
from .test_faults import Server

MB = 1 << 20
FILE_MB = int(os.environ.get("TETHER_TEST_TRANSFER_FILE_MB", "200"))


class CountingProxy:
    """A TCP proxy counting the bytes clients send upstream (what a resend costs);
    ``record``: it also keeps them (``heard``), to see what was said to whom."""

    def __init__(self, upstream_port: int, *, record: bool = False) -> None:
        self.upstream_port = upstream_port
        self.sent = 0
        self.record = record
        self.heard = bytearray()
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            self._open += [client, upstream]
            for sock in (client, upstream):  # no Nagle delay on small requests
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(1 << 20):
                if count:
                    with self._lock:
                        self.sent += len(data)
                        if self.record:
                            self.heard += data
                dest.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, dest):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def reset(self) -> int:
        with self._lock:
            sent, self.sent = self.sent, 0
        return sent

    def close(self) -> None:
        self._sock.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()


def peak_rss_mb(server: Server) -> float:
    """The server process's peak resident memory so far (VmHWM), in MB."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    home = tmp_path / "server"
    home.mkdir()
    running = Server(f"sqlite:///{home / 'meta.db'}", home / "objects", home / "server.log")
    running.init().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big")
    path = folder / "big.bin"
    with open(path, "wb") as handle:
        for _ in range(FILE_MB):
            handle.write(os.urandom(MB))
    return path


# The client: logs the file, prints the version. Run as its own process so it can be killed.
CLIENT = textwrap.dedent(
    """
    import sys, tether
    target, path = sys.argv[1], sys.argv[2]
    if target.startswith("http"):
        reg = tether.connect(target)
    else:
        reg = tether.open(target)
    version = reg.log_model(path, "big", progress=False)
    print(version.ref, version.files[0].digest, flush=True)
    """
)


def _client(target: str, path: Path, cache: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, target, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(TETHER_CACHE_DIR=str(cache), **env))


def _kill_at(proc: subprocess.Popen[str], proxy: CountingProxy, fraction: float,
             size: int, action: Any = None) -> int:
    """Wait until ``fraction`` of ``size`` went through ``proxy``; then kill the client
    (or run ``action``). Returns the bytes sent until then."""
    deadline = time.time() + 300
    while proxy.sent < fraction * size:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the upload stalled"
        time.sleep(0.005)
    if action is None:
        proc.kill()
        proc.wait(timeout=30)
    else:
        action()
    return proxy.sent


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


def _resent_share(first: int, second: int, size: int) -> float:
    """Bytes sent beyond one upload of the file, as a share of the file."""
    return (first + second - size) / size


def _file_digest(path: Path) -> str:
    hasher = blake3.blake3()
    with open(path, "rb") as handle:
        while block := handle.read(8 * MB):
            hasher.update(block)
    return hasher.hexdigest()


def test_a_killed_client_resumes_through_the_server(tmp_path: Path, server: Server,
                                                    big_file: Path) -> None:
    size = big_file.stat().st_size
    proxy = CountingProxy(server.port)
    try:
        env = {"TETHER_TOKEN": server.token}
        first = _client(proxy.url, big_file, tmp_path / "cache-1", **env)
        sent_first = _kill_at(first, proxy, 0.5, size)
        assert first.returncode != 0  # killed mid-upload, never committed
        proxy.reset()
        out = _finish(_client(proxy.url, big_file, tmp_path / "cache-2", **env))
        sent_second = proxy.reset()
    finally:
        proxy.close()
    share = _resent_share(sent_first, sent_second, size)
    print(f"killed at {sent_first / MB:.0f} MB, then {sent_second / MB:.0f} MB: "
          f"{share:.2%} of {size / MB:.0f} MB sent again")
    assert sent_first >= 0.5 * size
    assert share < 0.05, (sent_first, sent_second)
    ref, digest = out.split()
    assert digest == _file_digest(big_file)

    # The version reads back through the server, and a range of it fetches a few chunks.
    client = tether.connect(server.url, token=server.token)
    try:
        with client.open_file(ref, "big.bin") as handle:
            assert handle.size == size
            with open(big_file, "rb") as local:
                local.seek(size // 2)
                expected = local.read(4096)
            assert handle.read_range(size // 2, size // 2 + 4096) == expected
            assert handle.fetched_bytes < 2 * MB
    finally:
        client.close()


def test_a_server_restart_under_an_upload_is_ridden_out(tmp_path: Path, server: Server,
                                                        big_file: Path) -> None:
    size = big_file.stat().st_size
    proxy = CountingProxy(server.port)

    def restart() -> None:
        server.kill9()
        time.sleep(1.0)  # the client meets a refused connection for a while
        server.start()

    try:
        client = _client(proxy.url, big_file, tmp_path / "cache",
                         TETHER_TOKEN=server.token, TETHER_RETRY_SECONDS="120")
        sent_first = _kill_at(client, proxy, 0.5, size, action=restart)
        out = _finish(client)
        sent_second = proxy.reset() - sent_first
    finally:
        proxy.close()
    share = _resent_share(sent_first, sent_second, size)
    print(f"server killed at {sent_first / MB:.0f} MB: {share:.2%} sent again")
    assert share < 0.05, (sent_first, sent_second)
    assert out.split()[1] == _file_digest(big_file)


def test_a_killed_client_resumes_against_s3(tmp_path: Path, s3_endpoint: str,
                                            big_file: Path) -> None:
    make_bucket(s3_endpoint, "models")
    port = int(s3_endpoint.rsplit(":", 1)[1])
    proxy = CountingProxy(port)
    size = big_file.stat().st_size
    root = tmp_path / "reg" / ".tether"
    reg = tether.init(root, store_url="s3://models/tether", actor="t@example.com")
    reg.close()
    try:
        env = {"TETHER_S3_ENDPOINT_URL": proxy.url}
        first = _client(str(root), big_file, tmp_path / "cache-1", **env)
        sent_first = _kill_at(first, proxy, 0.5, size)
        proxy.reset()
        out = _finish(_client(str(root), big_file, tmp_path / "cache-2", **env))
        sent_second = proxy.reset()
    finally:
        proxy.close()
    share = _resent_share(sent_first, sent_second, size)
    print(f"S3: killed at {sent_first / MB:.0f} MB, then {sent_second / MB:.0f} MB: "
          f"{share:.2%} sent again")
    assert share < 0.05, (sent_first, sent_second)
    assert out.split()[1] == _file_digest(big_file)


def test_the_server_streams_a_300_mb_pack(tmp_path: Path, server: Server) -> None:
    """PUT (and the index check that reads it back), GET and a ranged GET in flat memory."""
    chunk = 4 * MB
    count = 75  # 300 MB of raw chunks
    pack = tmp_path / "pack"
    entries = []
    md5 = hashlib.md5()
    with open(pack, "wb") as handle:
        for i in range(count):
            data = os.urandom(chunk)
            entries.append([blake3.blake3(data).hexdigest(), i * chunk, chunk, chunk, 0])
            handle.write(data)
            md5.update(data)
    size = count * chunk
    pack_id = "ab" * 16
    headers = {"Authorization": f"Bearer {server.token}"}
    base = f"{server.url}/api/v1/blobs"
    before = peak_rss_mb(server)
    with httpx.Client(headers=headers, timeout=120) as http:
        with open(pack, "rb") as handle:
            put = http.put(f"{base}/packs/{pack_id}.pack", content=handle)
        assert put.status_code == 201, put.text
        index = {"pack": pack_id, "size": size, "chunks": entries}
        put = http.put(f"{base}/index/{pack_id}.idx", content=json.dumps(index).encode())
        assert put.status_code == 201, put.text
        after_put = peak_rss_mb(server)

        got = hashlib.md5()
        with http.stream("GET", f"{base}/packs/{pack_id}.pack") as response:
            assert response.status_code == 200
            assert int(response.headers["content-length"]) == size
            for block in response.iter_bytes():
                got.update(block)
        assert got.hexdigest() == md5.hexdigest()

        start, end = 10 * MB + 7, size - 3 * MB
        ranged = hashlib.md5()
        received = 0
        with http.stream("GET", f"{base}/packs/{pack_id}.pack",
                         headers={"Range": f"bytes={start}-{end}"}) as response:
            assert response.status_code == 206
            assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
            for block in response.iter_bytes():
                ranged.update(block)
                received += len(block)
        assert received == end - start + 1
        with open(pack, "rb") as handle:
            handle.seek(start)
            expected = hashlib.md5()
            left = end - start + 1
            while left:
                block = handle.read(min(left, 8 * MB))
                expected.update(block)
                left -= len(block)
        assert ranged.hexdigest() == expected.hexdigest()
    peak = peak_rss_mb(server)
    print(f"server peak RSS: {before:.0f} MB before, {after_put:.0f} MB after the PUT "
          f"and index check, {peak:.0f} MB after the GETs ({size / MB:.0f} MB pack)")
    assert peak - before < 64, (before, after_put, peak)


def test_open_file_reads_a_range_of_a_model_file(tmp_path: Path) -> None:
    reg = tether.init(tmp_path / "reg" / ".tether", actor="t@example.com")
    try:
        path = tmp_path / "weights.bin"
        data = os.urandom(24 * MB)
        path.write_bytes(data)
        version = reg.log_model(path, "weights", progress=False)
        with reg.open_file(version.ref, "weights.bin") as handle:
            assert handle.size == len(data)
            assert handle.digest == version.files[0].digest
            assert handle.read_range(17 * MB, 17 * MB + 1000) == data[17 * MB:17 * MB + 1000]
            assert handle.fetched_bytes < MB  # a chunk or two, not 24 MB
            handle.seek(5 * MB)
            assert handle.read(3 * MB) == data[5 * MB:8 * MB]
        with pytest.raises(tether.NotFound, match=r"other\.bin"):
            reg.open_file(version.ref, "other.bin")
        with reg.open_file(version.ref, "weights.bin") as handle:
            assert handle.read_range(len(data) - 10, len(data) + 10**12) == data[-10:]
            assert handle.read_range(5, 5) == b""
            # (-100, 10) read bytes 0..10 and (10, 5) nothing, both quietly (a review).
            for start, end in ((-100, 10), (10, 5), (0, -1), (1.5, 10), ("0", 10), (0, None)):
                with pytest.raises(tether.InvalidInput, match="0 <= start <= end"):
                    handle.read_range(start, end)  # type: ignore[arg-type]
    finally:
        reg.close()


def _chunk_cache_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and "chunks" in p.parts)


def test_a_download_through_the_server_keeps_one_copy(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept folder is the copy: the chunk cache does not hold the bytes a second time
    (a loaded object, whose folder is temporary, still fills the cache for the next load)."""
    from tether.remote import RemoteRegistry

    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(6 * MB))
    cache = tmp_path / "client-cache"
    client = RemoteRegistry(server.url, token=server.token, cache_dir=cache)
    try:
        version = client.log_model(model, "one-copy", progress=False)
        client.download(version.ref, tmp_path / "out", progress=False)
        assert (tmp_path / "out" / "model.bin").read_bytes() == model.read_bytes()
        assert _chunk_cache_bytes(cache) < MB, _chunk_cache_bytes(cache)
        loaded = client.load(version.ref, progress=False)  # files flavor: a kept folder too
        assert Path(loaded).read_bytes() == model.read_bytes()
        assert _chunk_cache_bytes(cache) < MB
    finally:
        client.close()


def test_the_server_merges_the_index_files_its_clients_upload(
    tmp_path: Path, server: Server
) -> None:
    """A client writing through the gateway may not delete index files, so without the
    server merging them every upload left one more file for every later lookup to read."""
    from tether._store.chunk_index import _JOURNAL_MAX

    client = tether.connect(server.url, token=server.token)
    index = server.store / "index"
    try:
        for i in range(_JOURNAL_MAX + 6):
            model = tmp_path / f"m{i}.bin"
            model.write_bytes(os.urandom(3000) + i.to_bytes(4, "big"))
            client.log_model(model, "tiny", progress=False)
        files = list(index.glob("*.idx"))
        assert len(files) <= _JOURNAL_MAX, len(files)  # not one per upload
        assert client.load("tiny@latest", progress=False).read_bytes()[-4:] == (
            (_JOURNAL_MAX + 5).to_bytes(4, "big")
        )
    finally:
        client.close()


def test_a_server_that_answers_more_than_asked_is_refused(tmp_path: Path) -> None:
    """Runs are read straight into reused buffers: a body longer than the range asked for
    must be refused, not written past the run (nor silently truncated)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tether._errors import IntegrityError
    from tether.remote import RemoteRegistry

    class TooLong(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"x" * 5000
            self.send_response(206)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), TooLong)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = RemoteRegistry(f"http://127.0.0.1:{httpd.server_address[1]}", token="t",
                            cache_dir=tmp_path / "cache")
    buffer = bytearray(4096 + 16)
    try:
        with pytest.raises(IntegrityError, match="more bytes than were asked"):
            client._request("GET", "/blobs/packs/x.pack", into=memoryview(buffer)[:4096])
        assert buffer[4096:] == bytes(16)  # nothing written past the run
    finally:
        httpd.shutdown()
        client.close()


def test_a_client_follows_the_previous_version_through_the_server(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote client asks the server for the newest version's chunks and cuts along them:
    the second version sends only the changed chunks and equals a from-scratch cutting."""
    from tether._registry import previous
    from tether._store import following
    from tether.remote import RemoteRegistry

    monkeypatch.setattr(previous, "FOLLOW_FROM", MB)
    cut: list[int] = []
    real = following._cut_step
    monkeypatch.setattr(following, "_cut_step",
                        lambda walk, *a: cut.append(walk.at) or real(walk, *a))
    v1 = os.urandom(6 * MB)
    v2 = v1[:3 * MB] + os.urandom(50_000) + v1[3 * MB + 50_000:]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(v1)
    (tmp_path / "b" / "w.bin").write_bytes(v2)
    client = RemoteRegistry(server.url, token=server.token, cache_dir=tmp_path / "cache")
    try:
        client.log_model(tmp_path / "a" / "w.bin", "followed", progress=False)
        assert cut == []
        second = client.log_model(tmp_path / "b" / "w.bin", "followed", progress=False)
        assert 1 <= len(cut) <= 3
        expected = [c.length for c in following.FastCDC(avg_size=64 * 1024).cut_buf(v2)]
        assert [c.size for c in second.files[0].chunks] == expected
        client.download(second.ref, tmp_path / "out", progress=False)
        assert (tmp_path / "out" / "w.bin").read_bytes() == v2
    finally:
        client.close()
