"""Packs moved between a client and a server (or a presigned URL) without httpx's copies.

A load through a server reads gigabytes of pack ranges. httpx parses a body in
pure Python, 64 KiB at a time, and hands each piece over as a new bytes object
to be copied once more: 0.9 s of CPU per GB here, more than verifying the
bytes. ``http.client`` reads a body of known length straight into the buffer
(``recv_into``): 0.25 s per GB. An upload of a pack through httpx reads the
file 64 KiB at a time and copies it into the socket; ``socket.sendfile`` has
the kernel send it from the page cache.

Only plain requests take this path, and never while a proxy is configured
(httpx reads HTTP(S)_PROXY and NO_PROXY its own way: those requests keep to
it). A GET answered with anything but the bytes asked for (an error status, a
longer or encoded body) returns None and the caller asks again through its
httpx client, which owns error messages; a PUT returns the answer as an
``httpx.Response`` for the caller's usual handling. A dropped connection is
``FastFailure``, an ``httpx.NetworkError``: the caller's retry policy decides,
and counts the try. A request that went out is never sent again from here (a
PUT answered 409 on a later try was stored by this one). This is a fast path,
never a second HTTP client with its own rules.
"""

from __future__ import annotations

import http.client
import io
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import httpx

from ._exchange_deadline import LateSocket, current, on_socket, sent, start

Origin = tuple[str, str, int]
T = TypeVar("T")

#: A kept-alive connection idle longer than this is not trusted to be open (uvicorn
#: closes them after 5 s): a fresh one is made rather than a request lost.
_IDLE_SECONDS = 2.0


#: Most bytes of a file sent by the kernel in one call (each call keeps to the deadline).
_SEND_SLICE = 4 << 20
#: Most bytes of an upload's answer read (it is a line of JSON).
_MAX_PUT_ANSWER = 1 << 20
#: Content codings httpx inflates; others (``aws-chunked``, a label some object stores
#: keep on objects uploaded with trailing checksums) it passes on as they are.
INFLATED = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd", "compress", "x-compress"})


def inflated(encoding: str) -> bool:
    """Whether a Content-Encoding header names a coding httpx would inflate."""
    return any(part.strip().lower() in INFLATED for part in encoding.split(","))

class FastFailure(httpx.NetworkError):
    """The connection failed during a fast request (it may have reached the server)."""


class _GuardedReader(io.RawIOBase):
    """A connection's socket read for ``http.client``, each read within the calling
    thread's exchange deadline (see _exchange_deadline): headers a byte at a time, an
    endless run of ``100 Continue`` or a dripping body all end in a timeout."""

    def __init__(self, sock: socket.socket, made: io.BufferedReader) -> None:
        self._sock = sock
        # The file http.client made, kept open until this one closes: it holds the
        # socket open once the connection hands it to the response (Connection: close).
        self._made = made

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._made.close()
        super().close()

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        # Inline, not through on_socket: this is every read of a load through a server,
        # and the shared helper's extra calls cost a fifth of it (a loopback read of 512
        # MB by FastHTTP.read_into, seven each, interleaved: 2.4 against 3.0 GB/s). The
        # socket's timeout is cut and not put back: each exchange sets it (``_exchange``).
        deadline = current()
        if deadline is None:
            return self._sock.recv_into(buffer)
        left = deadline.bound(None, LateSocket)
        per_read = self._sock.gettimeout()
        if per_read is None or left < per_read:  # a syscall or two: only once it matters
            self._sock.settimeout(left)
        with deadline.cutting(TimeoutError, LateSocket):
            got = self._sock.recv_into(buffer)
        deadline.took(got, LateSocket)
        return got


class _GuardedResponse(http.client.HTTPResponse):
    """``http.client``'s response, read through ``_GuardedReader``."""

    def __init__(self, sock: socket.socket, *args: object, **kwargs: object) -> None:
        super().__init__(sock, *args, **kwargs)  # type: ignore[arg-type]
        self.fp = io.BufferedReader(_GuardedReader(sock, self.fp))


class _Connection:
    __slots__ = ("conn", "used")

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.used = time.monotonic()


class FastHTTP:
    """Kept-alive ``http.client`` connections, one per thread and origin."""

    def __init__(self, *, timeout: float, ssl_context: ssl.SSLContext | None) -> None:
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._local = threading.local()
        self._every: set[http.client.HTTPConnection] = set()  # every thread's, for close()
        self._lock = threading.Lock()

    @staticmethod
    def _proxy_configured() -> bool:
        proxies = urllib.request.getproxies()
        return any(proxies.get(kind) for kind in ("http", "https", "all"))

    def _where(self, url: str) -> tuple[Origin, str] | None:
        """(origin, request target) of ``url``; None when httpx should send it."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        if self._proxy_configured():
            return None
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return (parts.scheme, parts.hostname, port), target

    def _kept(self) -> dict[Origin, _Connection]:
        """This thread's connections, by origin."""
        conns: dict[Origin, _Connection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _connection(self, origin: Origin) -> http.client.HTTPConnection:
        """This thread's connection to ``origin``: the kept-alive one unless it idled."""
        kept = self._kept().get(origin)
        if kept is not None and time.monotonic() - kept.used < _IDLE_SECONDS:
            return kept.conn
        self._drop(origin)
        scheme, host, port = origin
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        conn.response_class = _GuardedResponse
        self._kept()[origin] = _Connection(conn)
        with self._lock:
            self._every.add(conn)
        return conn

    def _drop(self, origin: Origin) -> None:
        """Close this thread's connection to ``origin``, if it has one."""
        kept = self._kept().pop(origin, None)
        if kept is not None:
            kept.conn.close()
            with self._lock:
                self._every.discard(kept.conn)

    def _exchange(self, method: str, url: str,
                  send: Callable[[http.client.HTTPConnection, str], None],
                  take: Callable[[http.client.HTTPResponse], T | None]) -> T | None:
        """``send`` a request to ``url`` on this thread's connection and ``take`` its
        answer; None when httpx should ask (no fast path there, or ``take`` declined:
        that connection is not used again). FastFailure if the connection failed."""
        where = self._where(url)
        if where is None:
            return None
        origin, target = where
        conn = self._connection(origin)
        deadline = start(self.timeout)
        if conn.sock is not None:  # a kept connection: its last read cut its timeout
            conn.sock.settimeout(self.timeout)
        try:
            send(conn, target)
            response = conn.getresponse()
            deadline.headers_done = True
            result = take(response)
        except (OSError, http.client.HTTPException) as error:
            self._drop(origin)
            raise FastFailure(f"{method} {target}: {type(error).__name__}: {error}") from error
        if result is None or response.will_close:
            self._drop(origin)  # an unread body, or the server closes: not used again
        else:
            self._kept()[origin].used = time.monotonic()
        return result

    def read_into(self, url: str, headers: Mapping[str, str], view: memoryview) -> int | None:
        """GET ``url`` into ``view``: the bytes read, or None (ask through httpx).

        FastFailure if the connection failed (the caller retries as its policy says).
        """
        return self._exchange(
            "GET", url, lambda conn, target: conn.request("GET", target, headers=dict(headers)),
            lambda response: self._body_into(response, view))

    def _body_into(self, response: http.client.HTTPResponse, view: memoryview) -> int | None:
        """The body read into ``view`` if it is the plain success asked for; else None
        (the body left unread: the caller drops the connection). Within the exchange's
        deadline, as every read here (a byte a minute kept a load waiting without end: a
        review)."""
        length = response.length
        encoded = response.getheader("Content-Encoding", "identity").lower() != "identity"
        if (response.status not in (200, 206) or length is None or length > len(view)
                or encoded):
            return None
        filled = 0
        while filled < length:
            got = response.readinto(view[filled:length])
            if not got:
                raise http.client.IncompleteRead(bytes(0), length - filled)
            filled += got
        if not response.isclosed():
            response.read()  # an empty body: marks the answer done, or the next request fails
        return filled

    def put_file(self, url: str, headers: Mapping[str, str], path: Path) -> httpx.Response | None:
        """PUT the file at ``path`` (sent by the kernel): the answer, or None when httpx
        should send it. FastFailure if the connection failed: the request may have been
        stored, so it is not sent again here."""

        def send(conn: http.client.HTTPConnection, target: str) -> None:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                conn.putrequest("PUT", target, skip_accept_encoding=True)
                for name, value in {**headers, "Content-Length": str(size)}.items():
                    conn.putheader(name, value)
                conn.endheaders()
                sock = conn.sock
                assert sock is not None
                done = 0
                while done < size:  # in slices, each waiting no longer than is left
                    count = sent(on_socket(sock, sock.sendfile, handle, done,
                                           min(_SEND_SLICE, size - done)))
                    if not count:
                        raise OSError(f"{path} changed size while it was sent")
                    done += count

        def take(response: http.client.HTTPResponse) -> httpx.Response:
            # An upload's answer is a few hundred bytes of JSON: read no more than a MB.
            content = response.read(_MAX_PUT_ANSWER + 1)
            if len(content) > _MAX_PUT_ANSWER:
                raise OSError(f"{url} answered an upload with more than a MB; not read")
            encoding = response.getheader("Content-Encoding") or ""
            if inflated(encoding):
                # httpx would inflate it as the answer is made, unbounded
                raise OSError(f"{url} answered an upload with Content-Encoding "
                              f"{encoding[:40]!r}, never asked for; not read")
            return httpx.Response(response.status, headers=response.getheaders(),
                                  content=content, request=httpx.Request("PUT", url))

        return self._exchange("PUT", url, send, take)

    def close(self) -> None:
        """Close every thread's connections."""
        with self._lock:
            every, self._every = self._every, set()
        for conn in every:
            conn.close()
        self._local = threading.local()
