"""httpx clients under the exchange deadline (``_exchange_deadline``): every socket
operation of their connections, proxied ones too, is cut to what the calling
thread's exchange has left."""

from __future__ import annotations

from typing import Any

import httpcore
import httpx

from ._exchange_deadline import Late, current, start

#: Most bytes sent in one socket operation, so that each is bounded by what is left.
_WRITE_SLICE = 1 << 20


class _LateRead(httpcore.ReadTimeout, Late):
    pass


class _LateWrite(httpcore.WriteTimeout, Late):
    pass


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
