"""The HTTP protocol ``tether server`` runs: uvicorn's httptools protocol, with request
bodies handed to the app without two copies.

uvicorn appends each piece of a body it parses to a ``bytearray`` and gives the app
``bytes(that)``: every byte uploaded was copied twice more in the event loop's thread,
on top of the parser's own copy. Here a piece that arrives while none is waiting is
kept as the ``bytes`` it is (``bytes()`` of a ``bytes`` is the same object); pieces
that pile up while the app is busy are still joined, as before. Logging 2 GB of new
bytes through a server (four interleaved rounds each): 307-323 MB/s against 287-312,
the server's user time 2.6-2.7 s against 3.0-3.1.

It leans on uvicorn's internals (``cycle.body``, ``flow``, ``HIGH_WATER_LIMIT``),
which is why uvicorn is pinned (requirements.lock) and tests/test_server_protocol.py
runs a real server with it. Without httptools, uvicorn's own choice is used.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

try:
    from uvicorn.protocols.http import httptools_impl
except ImportError:  # pragma: no cover - httptools is a locked dependency
    httptools_impl = None  # type: ignore[assignment]


def protocol() -> Any:
    """The protocol class for ``uvicorn.run(http=...)``: ours, or "auto"."""
    return BodyProtocol if httptools_impl is not None else "auto"


if httptools_impl is not None:

    class BodyProtocol(httptools_impl.HttpToolsProtocol):  # type: ignore[misc]
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
