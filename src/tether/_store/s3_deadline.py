"""Every S3 call under one deadline, from its first byte to its last, whatever the
endpoint sends.

botocore's ``read_timeout`` is per socket read: an endpoint (or anything between)
that answered a byte every few seconds, in the headers or the body, or read an
upload that slowly, held a load or a log for as long as it liked. The server path has
kept to a deadline for a while (``_exchange_deadline``); this puts a client's S3
calls under the same rule: a call may take its ``timeout`` plus its bytes at
``MIN_RATE``, botocore's own retries of it included, and the body of a download read
after the call returns too. A call past it ends in ``LateSocket`` (botocore reports a
read timeout or a closed connection), tried again like any lost connection only
while ``TETHER_RETRY_SECONDS`` lasts: the deadline bounds each call, the retry budget
all of them.

How: the client's connection pools make connections whose sockets keep to the
calling thread's deadline (``_GuardedSocket``, ``_GuardedSSLSocket``; connecting and
the TLS handshake within what is left); a ``before-call`` hook starts one for every
API call, ``before-send`` marks each try as waiting for its headers again, and
``before-parse`` marks the answer's headers as read (bytes before them earn no time
and are capped, as an endless run of ``100 Continue`` keeps to any rate). A body
read after its call returned keeps to that call's deadline
(``_exchange_deadline.keeping``: S3Blobs wraps each read), on whatever thread reads
it, and the reader's pauses between reads are not counted. Only this client's
connections are guarded: a program's own boto3 clients are left as they are.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

from .._exchange_deadline import LateSocket, current, on_socket, received, sent, start

#: Operations that S3 itself may take minutes over (it sends spaces while it works:
#: AWS documents "several minutes" for completing a large multipart upload).
SLOW_OPERATIONS = {"CompleteMultipartUpload": 1800.0, "CopyObject": 1800.0,
                   "UploadPartCopy": 1800.0}
#: Bytes a non-streamed answer may hold before botocore parses it (a listing page of
#: a thousand long keys is over a megabyte: the server path's cap is too small here).
ANSWER_BYTES = 16 << 20
#: Most bytes sent in one socket operation, so that each is bounded by what is left.
_WRITE_SLICE = 1 << 20


class _GuardedSocket(socket.socket):
    """A plain TCP socket whose reads and writes keep to the thread's deadline (the
    class of a connected socket is swapped: same layout, no new state)."""

    __slots__ = ()

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        return received(on_socket(self, super().recv_into, buffer, nbytes, flags))

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = on_socket(self, super().recv, bufsize, flags)
        received(len(data))
        return data

    def send(self, data: Any, flags: int = 0) -> int:
        return sent(on_socket(self, super().send, data, flags))

    def sendall(self, data: Any, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        for at in range(0, len(view), _WRITE_SLICE):
            piece = view[at:at + _WRITE_SLICE]
            on_socket(self, super().sendall, piece, flags)
            sent(len(piece))


class _GuardedSSLSocket(ssl.SSLSocket):
    """The same for a TLS socket. Its ``sendall`` loops over ``send`` (guarded here),
    and its reads come through ``recv_into`` or ``recv``."""

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        return received(on_socket(self, super().recv_into, buffer, nbytes, flags))

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        data = on_socket(self, super().recv, buflen, flags)
        received(len(data))
        return data

    def send(self, data: Any, flags: int = 0) -> int:
        return sent(on_socket(self, super().send, memoryview(data).cast("B")[:_WRITE_SLICE],
                              flags))


def guard_socket(sock: object) -> None:
    """Swap a connected socket's class for its guarded one (other kinds, such as TLS
    inside a TLS proxy tunnel, are left unguarded)."""
    if type(sock) is ssl.SSLSocket:
        sock.__class__ = _GuardedSSLSocket
    elif type(sock) is socket.socket:
        sock.__class__ = _GuardedSocket


def _connect_within(conn: Any, connect: Callable[[], None]) -> None:
    """Connect (TCP, and TLS: OpenSSL reads the socket itself, unguarded) within what the
    thread's deadline has left, then guard the socket. A handshake fed a byte at a time
    held a call for the connect timeout at every try (a review)."""
    deadline = current()
    if deadline is not None:
        left = deadline.bound(None, LateSocket)
        if conn.timeout is None or left < conn.timeout:
            conn.timeout = left
    connect()
    guard_socket(conn.sock)


def _guarded_pools() -> dict[str, type]:
    from botocore.awsrequest import (
        AWSHTTPConnection,
        AWSHTTPConnectionPool,
        AWSHTTPSConnection,
        AWSHTTPSConnectionPool,
    )

    class GuardedHTTPConnection(AWSHTTPConnection):  # type: ignore[misc]
        def connect(self) -> None:
            _connect_within(self, super().connect)

    class GuardedHTTPSConnection(AWSHTTPSConnection):  # type: ignore[misc]
        def connect(self) -> None:
            _connect_within(self, super().connect)

    class GuardedHTTPConnectionPool(AWSHTTPConnectionPool):  # type: ignore[misc]
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSConnectionPool(AWSHTTPSConnectionPool):  # type: ignore[misc]
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}


def guard_client(client: Any, timeout: float) -> None:
    """Put every call ``client`` (a boto3 S3 client) makes under a deadline of
    ``timeout`` seconds plus its bytes at ``MIN_RATE`` (``SLOW_OPERATIONS`` their own)."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    pools = getattr(session, "_pool_classes_by_scheme", None)
    if not isinstance(pools, dict):  # botocore changed shape: fail loudly, in the tests
        raise RuntimeError("cannot guard this boto3 client's connections")
    # The pool managers (proxied ones too) share this dict and make pools on first use.
    pools.update(_guarded_pools())

    def starts_a_call(event_name: str = "", **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        start(max(timeout, SLOW_OPERATIONS.get(operation, 0.0)), ANSWER_BYTES)

    def sends_a_try(**_: Any) -> None:
        deadline = current()
        if deadline is not None:
            deadline.new_try()

    def headers_came(**_: Any) -> None:
        deadline = current()
        if deadline is not None:
            deadline.headers_done = True

    client.meta.events.register("before-call.s3", starts_a_call)
    client.meta.events.register("before-send.s3", sends_a_try)
    client.meta.events.register("before-parse.s3", headers_came)
