"""The HTTP protocol ``tether server`` runs: uvicorn's httptools protocol, with request
bodies handed to the app without two copies, and file regions sent by the kernel.

uvicorn appends each piece of a body it parses to a ``bytearray`` and gives the app
``bytes(that)``: every byte uploaded was copied twice more in the event loop's thread,
on top of the parser's own copy. Here a piece that arrives while none is waiting is
kept as the ``bytes`` it is (``bytes()`` of a ``bytes`` is the same object); pieces
that pile up while the app is busy are still joined, as before. Logging 2 GB of new
bytes through a server (four interleaved rounds each): 307-323 MB/s against 287-312,
the server's user time 2.6-2.7 s against 3.0-3.1.

Responses: the protocol offers ASGI's ``http.response.zerocopysend`` extension
(the message names a file descriptor, an offset and a count), which uvicorn does
not implement. The region goes out with ``os.sendfile`` from the page cache,
never through Python: a pack range read into a ``bytes`` and written to the
socket was two copies of every byte a client loaded. The headers are flushed
first; each ``sendfile`` runs on a worker thread (a page not cached is a disk
read) and waiting for the client is done on the event loop, on a duplicate of
the socket (a peer that hangs up mid-body fails that copy; a descriptor uvloop
closes is never reused under it); a file shorter than promised closes the
connection, as a body cut short must. Loading 2 GB through a server, four interleaved rounds
each: 637-763 MB/s against 554-616, the server's CPU 1.2-1.5 s against 2.0-2.4.

It leans on uvicorn's internals (``cycle.body``, ``cycle.send``,
``expected_content_length``, ``flow``, ``HIGH_WATER_LIMIT``),
which is why uvicorn is pinned (requirements.lock) and tests/test_server_protocol.py
runs a real server with it. Without httptools, uvicorn's own choice is used.
"""

from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from .._http_deadlines import Deadlines

try:
    from uvicorn.protocols.http import httptools_impl
except ImportError:  # pragma: no cover - httptools is a locked dependency
    httptools_impl = None  # type: ignore[assignment]


ZEROCOPY = "http.response.zerocopysend"
#: A client that takes nothing for this long has its response abandoned.
_STALLED_SECONDS = 120.0
#: Most bytes one sendfile call is asked for (each call is a hop to a worker thread).
_SENDFILE_STEP = 8 * 1024 * 1024


class ShortFile(OSError):
    """The file ended before the count a zero-copy send promised."""


def protocol() -> Any:
    """The protocol class for ``uvicorn.run(http=...)``: ours, or "auto"."""
    return BodyProtocol if httptools_impl is not None else "auto"


if httptools_impl is not None:

    class BodyProtocol(Deadlines, httptools_impl.HttpToolsProtocol):  # type: ignore[misc]
        # Deadlines: slow clients are let go (see _http_deadlines.py).
        def on_body(self, body: bytes) -> None:
            if ((self.parser.should_upgrade() and self._should_upgrade())
                    or self.cycle.response_complete):
                return
            cycle: Any = self.cycle  # its body becomes bytes or bytearray
            if not cycle.body:
                cycle.body = body  # handed over as it is: receive() copies nothing
            else:
                if isinstance(cycle.body, bytes):
                    cycle.body = bytearray(cycle.body)
                cycle.body += body
            if len(cycle.body) > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            cycle.message_event.set()

        def on_headers_complete(self) -> None:
            before = self.cycle
            super().on_headers_complete()
            cycle: Any = self.cycle
            if cycle is None or cycle is before:  # an upgrade: no request cycle made
                return
            cycle.scope.setdefault("extensions", {})[ZEROCOPY] = {}
            # The app is handed cycle.send when its task first runs (later, on the
            # loop): an attribute set now is what it gets.
            cycle.send = _ZeroCopySend(cycle, cycle.send)


    class _ZeroCopySend:
        """``send`` for one request: zero-copy messages here, the rest to uvicorn's."""

        def __init__(self, cycle: Any, send: Any) -> None:
            self.cycle = cycle
            self.send = send

        async def __call__(self, message: Any) -> None:
            if message["type"] != ZEROCOPY:
                await self.send(message)
                return
            cycle = self.cycle
            if not cycle.response_started or cycle.response_complete or cycle.chunked_encoding:
                raise RuntimeError(f"{ZEROCOPY} needs a started response with a Content-Length")
            count = int(message["count"])
            offset = int(message.get("offset", 0))
            if cycle.scope["method"] == "HEAD":
                count = 0
            if count > cycle.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            if count and not cycle.disconnected:
                transport = cycle.transport
                sock = -1
                try:
                    fileno = transport.get_extra_info("socket").fileno()
                    if transport.is_closing() or fileno < 0:  # uvloop's is -1 once closed
                        raise ConnectionResetError("the client went away")
                    sock = os.dup(fileno)
                    await _flushed(transport, sock)  # the headers go first
                    await send_region(sock, int(message["file"]), offset, count)
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    transport.close()  # gone, or took nothing for minutes: let it go
                    cycle.disconnected = True
                    return
                except BaseException:
                    transport.close()  # a body cut short: the connection cannot go on
                    raise
                finally:
                    if sock >= 0:
                        os.close(sock)
            cycle.expected_content_length -= count
            if not message.get("more_body", False):
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})


async def send_region(sock: int, fd: int, offset: int, count: int) -> None:
    """Send ``count`` bytes of ``fd`` from ``offset`` to the non-blocking ``sock``.

    Each ``sendfile`` (at most ``_SENDFILE_STEP``, and what the socket has room for)
    runs on a worker thread, since a page not in the cache is a disk read; waiting
    for room is done on the event loop, so a client that reads slowly, or not at
    all, holds no thread (and is given up after ``_STALLED_SECONDS``).
    """
    loop = asyncio.get_running_loop()
    while count > 0:
        try:
            sent = await asyncio.wrap_future(
                _submit_sendfile(sock, fd, offset, min(count, _SENDFILE_STEP)))
        except BlockingIOError:
            await _room(loop, sock, _STALLED_SECONDS)
            continue
        if sent == 0:
            raise ShortFile(f"the file ended {count} bytes before the region sent")
        offset += sent
        count -= sent


def _submit_sendfile(sock: int, fd: int, offset: int, count: int) -> Future[int]:
    """One ``sendfile`` on a worker thread, with descriptors of its own.

    The thread owns duplicates of both and closes them itself: a request cancelled
    while the call is under way closes the originals, and their numbers may be
    reused at once, by another client's socket or another file, which the thread
    must never send from or to. A call cancelled before it starts closes them here.
    """
    mine = [os.dup(sock)]
    try:
        mine.append(os.dup(fd))
    except BaseException:
        _close_all(mine)
        raise

    def run() -> int:
        try:
            return os.sendfile(mine[0], mine[1], offset, count)
        finally:
            _close_all(mine)

    try:
        job = _sender().submit(run)
    except BaseException:
        _close_all(mine)
        raise
    job.add_done_callback(lambda done: _close_all(mine) if done.cancelled() else None)
    return job


def _close_all(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())


@functools.cache
def _sender() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="tether-sendfile")


async def _flushed(transport: Any, sock: int) -> None:
    """Until the transport has handed all it buffered (the response's headers) to the
    socket: woken when the socket has room, never polling; ``_STALLED_SECONDS`` at most."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STALLED_SECONDS
    while transport.get_write_buffer_size():
        if transport.is_closing():
            raise ConnectionResetError("the client went away")
        await _room(loop, sock, deadline - loop.time())
        await asyncio.sleep(0)  # the transport writes what it holds when it has room too


async def _room(loop: asyncio.AbstractEventLoop, sock: int, seconds: float) -> None:
    """Until ``sock`` can take more bytes (TimeoutError after ``seconds``)."""
    if seconds <= 0:
        raise TimeoutError(f"the client took nothing for {_STALLED_SECONDS:.0f} s")
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock, wake)
    try:
        await asyncio.wait_for(ready, seconds)
    except TimeoutError:
        raise TimeoutError(f"the client took nothing for {_STALLED_SECONDS:.0f} s") from None
    finally:
        loop.remove_writer(sock)
