"""The client against a hostile server (or whoever sits between them over http): answers
without end, answers that drip, redirects, answers of the wrong shape, and messages
carrying terminal escapes (each from a review, replayed against a fake server here)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import tether
from tether import remote
from tether._errors import IntegrityError, StoreError, Unavailable
from tether.cli import cli

from .servers import app_in_thread

SEEN: list[dict[str, Any]] = []


async def endless(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"["
        while True:
            yield b'{"name": "m", "description": "' + b"x" * 65536 + b'"},'
            await asyncio.sleep(0)
    return StreamingResponse(body(), media_type="application/json")


async def drip(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(600):
            yield b" "
            await asyncio.sleep(0.05)
    return StreamingResponse(body(), media_type="application/json")


async def redirect(request: Request) -> Response:
    return Response(status_code=302, headers={"location": "http://127.0.0.1:9/steal"})


async def misshapen(request: Request) -> Response:
    return JSONResponse([1, 2, 3])


async def escapes(request: Request) -> Response:
    return JSONResponse({"error": "not_found",
                         "message": "\x1b[2K\x1b[1A\x1b[32mm@1.0.0: 3 file(s) verified",
                         "hint": "\x1b]52;c;ZXZpbA==\x1b\\"}, status_code=404)


def _app(handler: Any) -> Starlette:
    async def record(request: Request) -> Response:
        SEEN.append(dict(request.headers))
        return await handler(request)
    return Starlette(routes=[Route("/api/v1/{rest:path}", record, methods=["GET", "POST"])])


def _serving(handler: Any) -> contextlib.AbstractContextManager[str]:
    return app_in_thread(_app(handler))  # type: ignore[no-any-return]


def test_an_answer_without_end_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "MAX_ANSWER", 4 << 20)
    with _serving(endless) as url:
        client = tether.connect(url, token="t" * 40)
        with pytest.raises(IntegrityError, match="answered more than 4 MB"):
            client.models()


def test_an_answer_that_drips_is_given_up_on() -> None:
    with _serving(drip) as url:
        client = remote.RemoteRegistry(url, token="t" * 40, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="answered too slowly"):
            client.models()
        assert time.monotonic() - started < 10  # not the 30 s the drip would take


def test_a_redirect_is_not_followed_and_says_so() -> None:
    SEEN.clear()
    with _serving(redirect) as url:
        client = tether.connect(url, token="secret-token-" + "t" * 30)
        with pytest.raises(StoreError, match="302.*not followed"):
            client.models()
    assert len(SEEN) == 1  # nothing went to the redirect's target


def test_an_answer_of_the_wrong_shape_is_a_clear_error(tmp_path: Any) -> None:
    with _serving(misshapen) as url:
        client = tether.connect(url, token="t" * 40)
        with pytest.raises(IntegrityError, match="answer to models is malformed"):
            client.models()
        with pytest.raises(TypeError):  # the caller's own mistake stays Python's
            client.models("unexpected")  # type: ignore[call-arg]
        result = CliRunner(env={"TETHER_TOKEN": "t" * 40}).invoke(
            cli, ["--registry", url, "models"])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output


def test_a_servers_message_reaches_the_terminal_escaped() -> None:
    """Its escape sequences erased the "error:" line and drew a green "verified" one, and
    its hint wrote to the clipboard (OSC 52)."""
    with _serving(escapes) as url:
        result = CliRunner(env={"TETHER_TOKEN": "t" * 40}).invoke(
            cli, ["--registry", url, "show", "m@1.0.0"])
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\\x1b[2K" in result.output, result.output
