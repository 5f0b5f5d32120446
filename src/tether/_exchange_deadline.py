"""How long one exchange with a server may take, from its first byte to its last,
whatever the server sends.

httpx's and http.client's timeouts are per socket operation. A server that sent
its headers a byte every few seconds, answered ``100 Continue`` without end, or
dripped a chunked body's trailer held a client for as long as it liked (a
review), and ``remote.Pace`` only sees a body's pieces as they come. Here every
byte of an exchange, sent or received, is under one rule: it may take its
timeout plus its bytes at ``MIN_RATE``. Each socket operation is given no
longer than what is left, so a held client ends in ``Late`` (a timeout the
caller does not retry: holding a client twice helps nobody).

The deadline belongs to the calling thread (``start``): connections of a pool
that threads share each count against the exchange of the thread using them.
httpx clients start one for every request they send (``guard_client``);
``_http_fast`` starts its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx

#: Slowest an exchange may move bytes once its timeout has passed.
MIN_RATE = 64 * 1024
#: Most bytes an answer may send before its headers end (``100 Continue`` answers and
#: all): a server sending them without end, fast, kept within the rate but never done.
HEADER_BYTES = 1 << 20
#: Most bytes sent in one socket operation, so that each is bounded by what is left.
_WRITE_SLICE = 1 << 20

_local = threading.local()


class Late(Exception):
    """Marks a timeout raised because an exchange ran past its deadline."""


class _LateRead(httpcore.ReadTimeout, Late):
    pass


class _LateWrite(httpcore.WriteTimeout, Late):
    pass


class LateSocket(TimeoutError, Late):
    """An ``http.client`` read or send past its deadline."""


def _late_in(error: BaseException | None) -> BaseException | None:
    """The ``Late`` that ``error`` was raised from (httpx, urllib3 and botocore each
    wrap it once or twice), if any."""
    for _ in range(8):
        if error is None or isinstance(error, Late):
            return error
        error = error.__cause__ or error.__context__
    return None


def was_late(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised from) is an exchange past its deadline."""
    return _late_in(error) is not None


def late_reason(error: BaseException) -> str:
    """What the deadline said when it ended the exchange ``error`` came from."""
    return str(_late_in(error) or error)


class Deadline:
    """One exchange's clock: ``timeout`` seconds from its first socket operation (not
    from a wait for a free connection of the pool), plus its bytes moved at
    ``MIN_RATE``: bytes sent, and bytes received once the answer's headers ended
    (a run of ``100 Continue`` earns no time; it is capped at ``header_bytes``)."""

    def __init__(self, timeout: float, header_bytes: int = HEADER_BYTES) -> None:
        self.timeout = timeout
        self.header_bytes = header_bytes
        self.started: float | None = None
        self.paused_at: float | None = None
        self.bytes = 0  # bytes that earn time
        self.received = 0  # bytes received before the headers ended (this try)
        self.headers_done = False

    def moved(self, count: int) -> None:
        """``count`` bytes sent."""
        self.bytes += count

    def took(self, count: int, late: type[Exception]) -> None:
        """``count`` bytes received; ``late`` if too many came before the headers ended."""
        if self.headers_done:
            self.bytes += count
            return
        self.received += count
        if self.received > self.header_bytes:
            raise late(f"more than {self.header_bytes} bytes came before the answer's headers "
                       "ended; stopped reading")

    def new_try(self) -> None:
        """The exchange is sent again (a client's retry under the same deadline): its
        answer's headers have not come yet, and the cap on bytes before them starts over
        (a retry after a parsed 503 had lifted it: a review)."""
        self.headers_done = False
        self.received = 0

    def pause(self) -> None:
        """The exchange's owner stops reading for now (a body read on by a consumer at its
        own pace): the time until ``resume`` is not the endpoint's."""
        if self.paused_at is None:
            self.paused_at = time.monotonic()

    def resume(self) -> None:
        if self.paused_at is not None:
            if self.started is not None:
                self.started += time.monotonic() - self.paused_at
            self.paused_at = None

    def left(self) -> float:
        """Seconds left (negative once past); the clock starts at the first ask."""
        if self.started is None:
            self.started = time.monotonic()
        return self.started + self.timeout + self.bytes / MIN_RATE - time.monotonic()

    def describe(self) -> str:
        spent = time.monotonic() - (self.started or time.monotonic())
        return (f"the exchange took {spent:.0f} s for {self.bytes + self.received} bytes "
                f"(allowed: "
                f"{self.timeout:g} s plus {MIN_RATE // 1024} KB/s); stopped waiting")

    def bound(self, timeout: float | None, late: type[Exception]) -> float:
        """The timeout for one socket operation: ``timeout``, cut to what is left;
        ``late`` raised when nothing is."""
        left = self.left()
        if left <= 0:
            raise late(self.describe())
        return left if timeout is None else min(timeout, left)

    @contextlib.contextmanager
    def cutting(self, timed_out: type[BaseException], late: type[Exception]) -> Iterator[None]:
        """Around one socket operation: its ``timed_out`` becomes ``late`` when this
        deadline is what cut it short (else the operation's own timeout passed, as is)."""
        try:
            yield
        except timed_out:
            if self.left() <= 0:
                raise late(self.describe()) from None
            raise


def start(timeout: float, header_bytes: int = HEADER_BYTES) -> Deadline:
    """Start the calling thread's exchange (replacing the one before)."""
    deadline = _local.deadline = Deadline(timeout, header_bytes)
    return deadline


def current() -> Deadline | None:
    """The calling thread's exchange, if one started."""
    return getattr(_local, "deadline", None)


@contextlib.contextmanager
def keeping(deadline: Deadline | None) -> Iterator[None]:
    """Around one read of an answer's body read on after its call returned: the calling
    thread keeps to ``deadline`` (that call's), whichever thread this is, and the time
    outside such reads is the reader's own (``pause``). A body streamed by a server hops
    between worker threads, and another call on the same thread starts a deadline of its
    own: a thread's latest deadline cut healthy streams and let dripping ones run on (a
    review)."""
    if deadline is None:
        yield
        return
    before = current()
    _local.deadline = deadline
    deadline.resume()
    try:
        yield
    finally:
        deadline.pause()
        _local.deadline = before


class _GuardedStream(httpcore.NetworkStream):
    """An httpcore connection whose reads and writes keep to the thread's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        deadline = current()
        if deadline is None:
            return self._inner.read(max_bytes, timeout)
        with deadline.cutting(httpcore.ReadTimeout, _LateRead):
            data = self._inner.read(max_bytes, deadline.bound(timeout, _LateRead))
        deadline.took(len(data), _LateRead)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        deadline = current()
        if deadline is None:
            self._inner.write(buffer, timeout)
            return
        view = memoryview(buffer)
        for at in range(0, len(view), _WRITE_SLICE):
            piece = view[at:at + _WRITE_SLICE]
            with deadline.cutting(httpcore.WriteTimeout, _LateWrite):
                self._inner.write(piece, deadline.bound(timeout, _LateWrite))  # type: ignore[arg-type]
            deadline.moved(len(piece))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        deadline = current()
        if deadline is not None:
            timeout = deadline.bound(timeout, _LateRead)
        return _GuardedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, its connections guarded."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        deadline = current()
        if deadline is not None:
            timeout = deadline.bound(timeout, _LateRead)
        return _GuardedStream(self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _GuardedStream(self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def guard_client(client: httpx.Client, timeout: float) -> httpx.Client:
    """``client`` with every request it sends (proxied ones too) under a deadline of
    ``timeout`` (see the module)."""
    for transport in (client._transport, *client._mounts.values()):
        if transport is None:  # a pattern sent without a proxy: the default transport
            continue
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:  # httpx or httpcore changed shape: fail loudly, in the tests
            raise RuntimeError("cannot guard this httpx client's connections")
        if not isinstance(backend, _GuardedBackend):
            pool._network_backend = _GuardedBackend(backend)  # type: ignore[union-attr]

    def starts_an_exchange(_request: httpx.Request) -> None:
        start(timeout)

    def headers_came(_response: httpx.Response) -> None:
        deadline = current()
        if deadline is not None:
            deadline.headers_done = True

    client.event_hooks["request"].append(starts_an_exchange)
    client.event_hooks["response"].append(headers_came)
    return client
