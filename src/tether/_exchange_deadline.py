"""How long one exchange with a server may take, from its first byte to its last,
whatever the server sends.

httpx's and http.client's timeouts are per socket operation. A server that sent
its headers a byte every few seconds, answered ``100 Continue`` without end, or
dripped a chunked body's trailer held a client for as long as it liked (a
review), and ``remote.Pace`` only sees a body's pieces as they come. Here every
byte of an exchange, sent or received, is under one rule: it may take its
timeout plus its bytes at ``MIN_RATE``. Each socket operation is given no
longer than what is left, so a held client ends in ``Late`` (a timeout a client
of a Tether server does not retry: holding it twice helps nobody; S3 calls are
tried again only within the retry budget).

The deadline belongs to the calling thread (``start``): connections of a pool
that threads share each count against the exchange of the thread using them.
httpx clients start one for every request they send (``_httpx_deadline``);
``_http_fast`` starts its own, and S3 calls theirs (``_store/s3_deadline``). This
module is the clock alone (it imports no HTTP library: S3 and local registries
load it without httpx).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

#: Slowest an exchange may move bytes once its timeout has passed.
MIN_RATE = 64 * 1024
#: Most bytes an answer may send before its headers end (``100 Continue`` answers and
#: all): a server sending them without end, fast, kept within the rate but never done.
HEADER_BYTES = 1 << 20

_local = threading.local()
T = TypeVar("T")


class Late(Exception):
    """Marks a timeout raised because an exchange ran past its deadline."""


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


def on_socket(sock: Any, operation: Callable[..., T], *args: Any) -> T:
    """``operation(*args)``, an operation of socket ``sock``, with the socket's timeout
    cut to what the calling thread's exchange has left (and put back after): past it,
    ``LateSocket``. Without an exchange, as it is."""
    deadline = current()
    if deadline is None:
        return operation(*args)
    left = deadline.bound(None, LateSocket)
    per_operation = sock.gettimeout()
    cut = per_operation is None or left < per_operation  # a syscall or two: when it matters
    if cut:
        sock.settimeout(left)
    try:
        with deadline.cutting(TimeoutError, LateSocket):
            return operation(*args)
    finally:
        if cut:
            sock.settimeout(per_operation)


def received(count: int) -> int:
    """``count`` bytes received on a socket (``on_socket``) in the calling thread's
    exchange: ``LateSocket`` if too many came before its headers ended."""
    deadline = current()
    if deadline is not None:
        deadline.took(count, LateSocket)
    return count


def sent(count: int) -> int:
    """``count`` bytes sent on a socket in the calling thread's exchange."""
    deadline = current()
    if deadline is not None:
        deadline.moved(count)
    return count
