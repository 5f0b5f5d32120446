"""What the server says when a dependency is down, and whether it is ready.

A database or object-store outage is not a bug in the request: it is answered
503 with ``Retry-After`` and a message naming what is down (never a 500 and a
traceback), and ``GET /api/v1/ready`` fails until both answer again. Nothing
here holds state: the next request after the outage simply succeeds (the
database pool pings its connections before use).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .._errors import StoreError, TetherError, Unavailable

log = logging.getLogger("tether.server")

#: Seconds a client is told to wait before retrying while a dependency is down.
RETRY_AFTER = 2
#: Longest a readiness check waits for one dependency.
PING_SECONDS = 3.0
#: Errors of a local store's file system that mean "not reachable now" (a network
#: mount gone away), not "this request is wrong".
_TRANSIENT_ERRNO = {errno.EIO, errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN, errno.ETIMEDOUT,
                    errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH}


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 12:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return (text.splitlines() or [type(error).__name__])[0][:300]


#: SQLite reports these as OperationalError too, but they are no outage.
_NOT_AN_OUTAGE = ("no such table", "no such column", "syntax error", "disk is full")


def _database_down(error: BaseException) -> bool:
    if isinstance(error, sa.exc.OperationalError) and any(
            text in str(error.orig) for text in _NOT_AN_OUTAGE):
        return False
    if isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError
                  | sa.exc.DisconnectionError | sa.exc.TimeoutError):
        return True
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    # Never imported here: an error raised by psycopg means it is imported already, and
    # importing it (120 modules) made a fresh server's first 404 take 60 ms.
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return False
    return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)


def _store_down(error: BaseException) -> bool:
    boto = sys.modules.get("botocore.exceptions")  # imported already if it raised this
    if boto is not None:
        if isinstance(error, boto.ConnectionError | boto.HTTPClientError):
            return True
        if isinstance(error, boto.ClientError):
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return int(status) >= 500
    return isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNO


def unavailable(error: BaseException, registry: Any) -> Unavailable | None:
    """``error`` as an outage of the database or the store, or None if it is not one."""
    if isinstance(error, Unavailable):
        return error
    chain = _chain(error)
    for link in chain:
        if _database_down(link):
            return Unavailable(
                f"the database {database_name(registry)} is unavailable: {_first_line(link)}",
                hint="nothing was changed; retry shortly (GET /api/v1/ready reports when it "
                "is back)",
                retry_after=RETRY_AFTER,
            )
    for link in chain:
        if _store_down(link):
            reason = error.message if isinstance(error, StoreError) else _first_line(link)
            return Unavailable(
                f"the object store {store_name(registry)} is unavailable: {reason}",
                hint="retry shortly (GET /api/v1/ready reports when it is back)",
                retry_after=RETRY_AFTER,
            )
    return None


def database_name(registry: Any) -> str:
    from .._registry.server_setup import redacted_url

    return redacted_url(registry.location.db_url)


def store_name(registry: Any) -> str:
    return str(registry.location.store_url)


def unavailable_response(error: Unavailable, extra: dict[str, Any] | None = None) -> Response:
    seconds = max(1, round(error.retry_after))
    return JSONResponse({**error.to_dict(), **(extra or {})}, status_code=503,
                        headers={"Retry-After": str(seconds)})


def disconnected(request: Request, error: BaseException) -> Response | None:
    """A client that went away mid-request: one log line, no traceback."""
    if not any(isinstance(link, ClientDisconnect) for link in _chain(error)):
        return None
    log.warning("client %s disconnected during %s %s; nothing was stored",
                request.client.host if request.client else "?", request.method,
                request.url.path[:200])
    return Response(status_code=499)


# -- readiness ---------------------------------------------------------------------


def _ping_database(registry: Any) -> None:
    with registry.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _ping_store(registry: Any) -> None:
    blobs = registry.store.blobs
    root = getattr(blobs, "root", None)
    if isinstance(root, Path):
        if not root.is_dir():
            raise StoreError(f"{root} is not a folder")
        return
    blobs.list("locks/")  # one small listing: the bucket answers and we may read it


async def _check(func: Any, registry: Any) -> str | None:
    """None when ``func`` answered in time; otherwise why not."""
    try:
        await asyncio.wait_for(run_in_threadpool(func, registry), timeout=PING_SECONDS)
    except TimeoutError:
        return f"no answer within {PING_SECONDS:g} s"
    except Exception as error:  # any failure is "not ready", reported by its first line
        if isinstance(error, TetherError):
            return error.message
        return _first_line(error)
    return None


async def readiness(registry: Any) -> Response:
    """200 when the database and the store both answer; 503 naming what is down."""
    database, store = await asyncio.gather(_check(_ping_database, registry),
                                           _check(_ping_store, registry))
    checks = {"database": database or "ok", "store": store or "ok"}
    down = []
    if database:
        down.append(f"the database {database_name(registry)} is unavailable: {database}")
    if store:
        down.append(f"the object store {store_name(registry)} is unavailable: {store}")
    if not down:
        return JSONResponse({"status": "ready", "checks": checks})
    error = Unavailable("; ".join(down), hint="the server recovers by itself when it is back",
                        retry_after=RETRY_AFTER)
    return unavailable_response(error, {"status": "unavailable", "checks": checks})
