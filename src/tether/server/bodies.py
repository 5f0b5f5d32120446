"""Request bodies: one size limit for every route, one JSON reader for every handler.

``BodyLimit`` is ASGI middleware around the whole server: a declared
``Content-Length`` over the route's limit is answered 413 before a byte is read,
and a chunked body is cut off (413) as soon as it passes the limit, whichever
handler reads it. ``read_json_body`` is the one JSON reader the REST and MLflow
handlers share: size limit, nesting-depth limit, JSON that does not parse, all
answered with an ``InvalidInput`` (400) or ``PayloadTooLarge`` (413) that the
handlers render in their own error format.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from .._errors import InvalidInput, PayloadTooLarge, TooDeep

#: Largest request body on any route except a store object upload (version
#: metadata with a big environment is ~100 KB).
MAX_BODY = 8 * 1024 * 1024
#: A new version's values: their manifest lists every chunk (54 bytes each, packed),
#: so a 70 GB checkpoint's is about 60 MB. 96 MB: files of about 110 GB in all.
MAX_VERSION_BODY = 96 * 1024 * 1024
#: Deepest JSON nesting accepted: far beyond real metadata (a tensor example is a
#: handful of levels), far below anything that could exhaust a recursive walker.
MAX_DEPTH = 64
#: Bodies larger than this are parsed off the event loop.
_THREAD_PARSE = 64 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def too_large(limit: int, size: int | None = None) -> PayloadTooLarge:
    what = f"body of {size} bytes" if size is not None else "body"
    return PayloadTooLarge(
        f"{what} is over the {limit} byte limit",
        hint="large artifacts go to the store (PUT /api/v1/blobs/...), not in JSON",
    )


def _depth_error() -> TooDeep:
    return TooDeep(f"body is nested deeper than {MAX_DEPTH} levels")


def _out_of_range(number: int) -> InvalidInput:
    digits = str(abs(number))
    return InvalidInput(f"body is not valid JSON: number {'-' * (number < 0)}{digits[:20]}... "
                        f"({len(digits)} digits) is out of range",
                        hint="numbers must be finite: within about 1.8e308")


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` (iterative: no recursion to exhaust), or
    holding an integer no float holds (as 1e400 is refused: past it, ``float(10**400)``
    raised OverflowError wherever a handler took a number as a float)."""
    if not isinstance(value, dict | list):
        if value.__class__ is int and value.bit_length() > _FLOAT_BITS:
            _check_int(value)
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise _depth_error()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif child.__class__ is int and child.bit_length() > _FLOAT_BITS:
                _check_int(child)


#: Integers of up to this many bits are floats (the largest float is just under 2**1024).
_FLOAT_BITS = 1023


def _check_int(number: int) -> None:
    try:
        float(number)
    except OverflowError:
        raise _out_of_range(number) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def parse_json(body: bytes) -> Any:
    """Bytes to JSON with the depth limit; ``InvalidInput`` for anything else."""
    try:
        data = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError as error:
        raise _depth_error() from error
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise InvalidInput(f"body is not valid JSON: {error}") from error
    check_depth(data)
    if _SURROGATE_ESCAPE.search(body):
        _refuse_lone_surrogates(data)
    return data


#: ``\ud800``-``\udfff`` in JSON text: half of a pair (an emoji's, say) or a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(value: Any) -> None:
    """Refuse text JSON decodes to but no encoding holds: a lone surrogate (``\ud800``)
    reached the database layer and was a 500 there (a review). Pairs are characters."""
    stack = [value]
    while stack:
        node = stack.pop()
        items = [*node.keys(), *node.values()] if isinstance(node, dict) else (
            node if isinstance(node, list) else [node])
        for item in items:
            if isinstance(item, dict | list):
                stack.append(item)
            elif isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidInput(
                        "body holds text that is not Unicode: a lone surrogate escape "
                        "(\\ud800 to \\udfff without its pair)",
                        hint="send the character itself, or both halves of its pair") from None


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The whole body, refused (413) as soon as it passes ``limit``."""
    parts: list[bytes] = []
    await receive_body(request, limit, parts.append)
    return b"".join(parts)


async def receive_body(request: Request, limit: int, sink: Callable[[bytes], Any]) -> None:
    """The body handed to ``sink`` as it comes (awaited, if it is a coroutine function),
    refused (413) as soon as it passes ``limit`` (or before a byte is read, when its
    Content-Length says so)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise InvalidInput(f"Content-Length {declared[:40]!r} is not a byte count")
        if int(declared) > limit:
            raise too_large(limit, int(declared))
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        done = sink(chunk)
        if inspect.isawaitable(done):
            await done


async def read_json_body(request: Request, limit: int = MAX_BODY) -> Any:
    """The body as JSON (``None`` when empty), with the size and depth limits."""
    body = await read_body(request, limit)
    if not body.strip():
        return None
    if len(body) > _THREAD_PARSE:
        return await run_in_threadpool(parse_json, body)
    return parse_json(body)


def describe(value: Any) -> str:
    """A JSON value's type as a client would name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class BodyLimit:
    """ASGI middleware: no request body over its route's limit reaches a handler.

    ``limit_for(scope)`` may raise the limit for a route (store uploads); every
    other route gets ``MAX_BODY``. The refusal is JSON in the format of the API
    the path belongs to.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int = MAX_BODY,
        limit_for: Callable[[Scope], int | None] | None = None,
        render: Callable[[Scope, PayloadTooLarge | InvalidInput], tuple[int, bytes]] | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.limit_for = limit_for
        self.render = render or _render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = (self.limit_for(scope) if self.limit_for else None) or self.limit
        declared = None
        for key, value in scope.get("headers") or []:
            if key == b"content-length":
                declared = value.decode("latin-1")
        if declared is not None:
            if not declared.strip().isdigit():
                error = InvalidInput(f"Content-Length {declared[:40]!r} is not a byte count")
                await self._refuse(scope, send, error)
                return
            if int(declared) > limit:
                await self._refuse(scope, send, too_large(limit, int(declared)))
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge as error:
            if started:
                raise
            await self._refuse(scope, send, error)

    async def _refuse(self, scope: Scope, send: Send, error: InvalidInput) -> None:
        status, body = self.render(scope, error)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _render(scope: Scope, error: InvalidInput) -> tuple[int, bytes]:
    return error.http_status, json.dumps(error.to_dict()).encode()
