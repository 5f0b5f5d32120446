"""Packs moved between a client and a server (or a presigned URL) without httpx's copies.

A load through a server reads gigabytes of pack ranges. httpx parses a body in
pure Python, 64 KiB at a time, and hands each piece over as a new bytes object
to be copied once more: 0.9 s of CPU per GB here, more than verifying the
bytes. ``http.client`` reads a body of known length straight into the buffer
(``recv_into``): 0.25 s per GB. An upload of a pack through httpx reads the
file 64 KiB at a time and copies it into the socket; ``socket.sendfile`` has
the kernel send it from the page cache.

Only plain requests take this path. A GET answered with anything but the
bytes asked for (an error status, a longer body, a dropped connection), or an
origin behind a proxy, returns None and the caller asks again through its httpx
client, which owns retries, proxies and error messages; a PUT returns the
answer as an ``httpx.Response`` for the caller's usual handling. This is a
fast path, never a second HTTP client with its own rules.
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx

Origin = tuple[str, str, int]


class FastHTTP:
    """Kept-alive ``http.client`` connections, one per thread and origin."""

    def __init__(self, *, timeout: float, ssl_context: ssl.SSLContext | None) -> None:
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._local = threading.local()
        self._proxied: dict[Origin, bool] = {}

    def _connections(self) -> dict[Origin, http.client.HTTPConnection]:
        conns: dict[Origin, http.client.HTTPConnection] | None = getattr(
            self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _behind_a_proxy(self, origin: Origin) -> bool:
        """Whether httpx would send requests to ``origin`` through a proxy (the
        environment's HTTP(S)_PROXY and NO_PROXY): those keep to httpx."""
        if origin not in self._proxied:
            scheme, host, _port = origin
            proxies = urllib.request.getproxies()
            self._proxied[origin] = bool(
                (proxies.get(scheme) or proxies.get("all"))
                and not urllib.request.proxy_bypass(host))
        return self._proxied[origin]

    def _connect(self, origin: Origin) -> http.client.HTTPConnection:
        scheme, host, port = origin
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                               context=self.ssl_context)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def _where(self, url: str) -> tuple[Origin, str] | None:
        """(origin, request target) of ``url``; None when httpx should send it."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        origin = (parts.scheme, parts.hostname, port)
        if self._behind_a_proxy(origin):
            return None
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return origin, target

    def _exchange(self, origin: Origin, send: Callable[[http.client.HTTPConnection], None],
                  ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse] | None:
        """``send`` a request on this thread's connection to ``origin``; its answer's head.

        A kept-alive connection the server has closed since is replaced once.
        """
        conns = self._connections()
        for fresh in (False, True):
            conn = conns.get(origin)
            if conn is None or fresh:
                if conn is not None:
                    conn.close()
                conn = conns[origin] = self._connect(origin)
            reused = not fresh and getattr(conn, "sock", None) is not None
            try:
                send(conn)
                return conn, conn.getresponse()
            except (OSError, http.client.HTTPException):
                conn.close()
                if not reused:
                    return None
        return None

    def read_into(self, url: str, headers: Mapping[str, str], view: memoryview) -> int | None:
        """GET ``url`` into ``view``: the bytes read, or None (ask through httpx)."""
        where = self._where(url)
        if where is None:
            return None
        origin, target = where
        answer = self._exchange(
            origin, lambda conn: conn.request("GET", target, headers=dict(headers)))
        if answer is None:
            return None
        return self._body_into(*answer, view)

    def put_file(self, url: str, headers: Mapping[str, str], path: Path) -> httpx.Response | None:
        """PUT the file at ``path`` (sent by the kernel); the answer, or None when the
        request could not be made (the caller's retry policy decides what next)."""
        where = self._where(url)
        if where is None:
            return None
        origin, target = where
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size

            def send(conn: http.client.HTTPConnection) -> None:
                handle.seek(0)
                conn.putrequest("PUT", target, skip_accept_encoding=True)
                for name, value in {**headers, "Content-Length": str(size)}.items():
                    conn.putheader(name, value)
                conn.endheaders()
                assert conn.sock is not None
                if conn.sock.sendfile(handle) != size:
                    raise OSError(f"{path} changed size while it was sent")

            answer = self._exchange(origin, send)
        if answer is None:
            return None
        conn, response = answer
        try:
            body = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            return None
        if response.will_close:
            conn.close()
        return httpx.Response(response.status, headers=response.getheaders(), content=body,
                              request=httpx.Request("PUT", url))

    @staticmethod
    def _body_into(conn: http.client.HTTPConnection, response: http.client.HTTPResponse,
                   view: memoryview) -> int | None:
        length = response.length
        encoded = response.getheader("Content-Encoding", "identity").lower() != "identity"
        if (response.status not in (200, 206) or length is None or length > len(view)
                or encoded):
            conn.close()  # unread body: the connection cannot be used again
            return None
        filled = 0
        try:
            while filled < length:
                got = response.readinto(view[filled:length])
                if not got:
                    break
                filled += got
        except (OSError, http.client.HTTPException):
            conn.close()
            return None
        if filled < length:
            conn.close()
            return None
        if response.will_close:
            conn.close()
        return filled

    def close(self) -> None:
        """Close this thread's connections (others close with their threads)."""
        for conn in self._connections().values():
            conn.close()
        self._local.conns = {}
