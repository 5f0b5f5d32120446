"""Deadlines for slow clients, for the HTTP servers Tether runs (``tether server`` and
``tether serve``, both uvicorn with httptools).

uvicorn times out an idle connection between requests (keep-alive), but not one
that connects and sends nothing, sends half its headers, or sends a body a byte
now and then: such a socket was held for as long as its sender liked (a review
held dozens for minutes without a token). Here a request's headers must arrive
within ``HEADER_SECONDS`` of its first byte (or of the connection), and while its
body is being read some of it must arrive every ``BODY_IDLE_SECONDS``. A large
upload that keeps sending is never cut off, and a body the app is not reading yet
(flow control paused the socket) is not counted against its sender. A connection
past its deadline is closed: the app sees the client gone.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from uvicorn.protocols.http import httptools_impl
except ImportError:  # pragma: no cover - httptools is a locked dependency
    httptools_impl = None  # type: ignore[assignment]

#: Longest a request's headers may take to arrive, from its first byte or the connection.
HEADER_SECONDS = 30.0
#: Longest a request body being read may go without a byte.
BODY_IDLE_SECONDS = 60.0


class Deadlines:
    """A mixin for uvicorn's ``HttpToolsProtocol`` (list it first): see the module."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._phase, self._since = "headers", self.loop.time()
        self._watch: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._last = self.loop.time()
        super().data_received(data)  # type: ignore[misc]

    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        self._phase, self._since = "headers", self.loop.time()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # type: ignore[misc]
        self._phase, self._last = "body", self.loop.time()

    def on_message_complete(self) -> None:
        super().on_message_complete()  # type: ignore[misc]
        self._phase = "app"  # the app answers in its own time; keep-alive covers after

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self._phase == "app":
            self._phase = "idle"  # uvicorn's keep-alive timeout from here

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        every = max(0.05, min(HEADER_SECONDS, BODY_IDLE_SECONDS, 20.0) / 4)
        self._watch = self.loop.call_later(every, self._check)

    def _check(self) -> None:
        self._watch = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        late = (self._phase == "headers" and now - self._since > HEADER_SECONDS) or (
            self._phase == "body" and not self.flow.read_paused
            and now - self._last > BODY_IDLE_SECONDS)
        if late:
            self.transport.close()
            return
        self._arm()


def protocol() -> Any:
    """uvicorn's httptools protocol with these deadlines, for ``uvicorn.Config(http=...)``
    (uvicorn's own choice where httptools is missing)."""
    return GuardedHttpTools if httptools_impl is not None else "auto"


if httptools_impl is not None:

    class GuardedHttpTools(Deadlines, httptools_impl.HttpToolsProtocol):  # type: ignore[misc]
        """uvicorn's httptools protocol, with deadlines for slow clients."""
