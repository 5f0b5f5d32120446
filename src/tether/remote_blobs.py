"""The blob interface a client's chunk store uses to reach a Tether server's store.

``RemoteBlobs`` gives ``ChunkStore`` the same object operations a folder or a
bucket does (put, get, ranged get, list, delete), spoken to the server's blob
gateway: the server authorises each object and either streams it itself (a
local store) or presigns a URL so the bytes move directly between client and
bucket (S3). It rides out outages with the same retry policy as the client's
API calls (``remote.backoff``, ``remote._TRANSIENT``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from ._errors import (
    Conflict,
    IntegrityError,
    NotFound,
    RangeNotSatisfiable,
    StoreError,
    TetherError,
    Unavailable,
)
from ._exchange_deadline import was_late
from ._store.blobs import BlobInfo, make_temp, retry_seconds, scratch_root

if TYPE_CHECKING:
    from .remote import RemoteRegistry


class _Transfer(Exception):
    """A transfer to or from a presigned URL failed in a way worth trying again."""


#: Uploads the server checks (indexes, pins) or stamps with their holder (leases): it
#: never presigns them, so they are not asked for (one request saved per pin).
_THROUGH_THE_API = ("index/", "pins/", "locks/")


#: Largest object read whole from a presigned URL (the server refuses larger uploads).
MAX_DOWNLOAD = 1024 * 1024 * 1024


class RemoteBlobs:
    """The chunk store's blob interface, over the server's gateway.

    Every transfer retries through a dropped connection, a server restart or a
    503 for ``TETHER_RETRY_SECONDS``, resending only the object it was moving
    (a pack is a few MB: see ``chunkstore.REMOTE_PACK_TARGET``). Objects are
    never overwritten, so an upload whose answer was lost is answered "already
    exists" when retried: that is taken as stored (the names are random, so
    nobody else wrote it). A client killed mid-ingest and run again finds the
    packs it had published in the index and sends only the chunks after them.
    """

    is_local = False
    #: The gateway neither serves lease bodies nor lets clients take locks/gc.
    reads_locks = False
    #: Where upload temp files go (the ChunkStore sets its cache's tmp folder).
    tmp_dir: Path | None = None

    def __init__(self, client: RemoteRegistry) -> None:
        self.client = client
        self.url = f"{client.url}/api/v1/blobs"
        #: (key, method) -> (presigned URL or None, expiry, headers it was signed with).
        self._urls: dict[tuple[str, str], tuple[str | None, float, dict[str, str]]] = {}
        self._lock = threading.Lock()
        self.requests = 0
        #: Transfers tried again after a transient failure (for tests and benches).
        self.retries = 0
        #: The server answered a pack with no presigned URL: it streams them all.
        self._streams_packs = False

    def _target(self, key: str, method: str) -> str | None:
        """A presigned URL for ``key`` (cached until near expiry), or None to use the API."""
        return self._presigned(key, method)[0]

    def _presigned(self, key: str, method: str) -> tuple[str | None, dict[str, str]]:
        """``_target``'s URL and the headers it was signed with (a PUT's If-None-Match: *).

        A server that streams packs itself (a local store) says so once; it is
        not asked again for every pack.
        """
        if self._streams_packs and key.startswith("packs/"):
            return None, {}
        if method == "PUT" and key.startswith(_THROUGH_THE_API):
            return None, {}  # never presigned: the server checks or stamps them
        now = time.time()
        with self._lock:
            cached = self._urls.get((key, method))
        if cached and cached[1] > now:
            return cached[0], cached[2]
        answer = self.client._request("POST", "/blobs/presign", json={"key": key, "method": method})
        url, headers = _presign_answer(answer, key)
        with self._lock:
            self._urls[(key, method)] = (url, now + 3000 if method == "GET" else now + 60,
                                         headers)
            if url is None and key.startswith("packs/"):
                self._streams_packs = True
        return url, headers

    def _retrying(self, what: str, attempt: Any, *, stored_on_conflict: bool = False) -> Any:
        """``attempt()`` until it succeeds, retrying transient failures for a bounded time."""
        # Imported here, not at the top: remote.py imports this module, and the
        # retry policy is the client's, shared with its API calls.
        from .remote import _TRANSIENT, TooSlow, backoff

        budget = retry_seconds()
        started = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                return attempt()
            except Conflict:
                if stored_on_conflict and tries > 1:
                    return None  # an earlier try stored it; its answer was lost
                raise
            except (Unavailable, _Transfer, *_TRANSIENT) as error:
                if was_late(error) or isinstance(error, TooSlow):
                    # Held past its deadline: asked again, it held the client as long again
                    # (seven times in ten seconds: a review).
                    raise (error if isinstance(error, TetherError) else Unavailable(
                        f"{what} answered too slowly: {error}",
                        hint="check the server and the network to it")) from error
                remaining = budget - (time.monotonic() - started)
                if remaining <= 0.05:
                    if isinstance(error, TetherError):
                        raise
                    raise Unavailable(
                        f"{what} failed: {type(error).__name__}: {error} "
                        f"(gave up after {tries} attempts)",
                        hint="TETHER_RETRY_SECONDS sets how long transfers keep retrying; "
                        "run it again to continue from what was stored") from error
                with self._lock:
                    self.retries += 1
                time.sleep(min(backoff(tries), remaining))

    def _direct(self, method: str, url: str, key: str, *, limit: int = 1 << 20,
                **kwargs: Any) -> bytes:
        """One request to a presigned URL, its answer's body read within ``Pace`` (at most
        ``limit`` bytes: a presigned URL pointing at an endless answer was read whole, a
        review): 5xx is a transient failure, 404 NotFound."""
        from .remote import read_answer

        with self.client.direct_http.stream(method, url, **kwargs) as response:
            self._refuse(response, method, key)
            return read_answer(response, key, self.client.timeout, limit)

    @staticmethod
    def _refuse(response: httpx.Response, method: str, key: str) -> None:
        """Raise for an answer of a presigned URL that is not a success."""
        if response.status_code == 404:
            raise NotFound(f"store object {key} is missing")
        if response.status_code == 416:
            raise RangeNotSatisfiable(f"a range past the end of {key} was asked for")
        if response.status_code == 412 and method == "PUT":  # If-None-Match: it exists
            raise Conflict(f"{key} already exists; stored objects are never overwritten")
        if response.status_code >= 500:
            raise _Transfer(f"{method} of {key}: HTTP {response.status_code}")
        if response.status_code >= 300:
            raise StoreError(f"{'upload' if method == 'PUT' else 'download'} of {key} "
                             f"to the object store failed: HTTP {response.status_code}")

    def temp_file(self) -> tuple[int, Path]:
        # In the client's cache (set by the ChunkStore), never the system /tmp.
        return make_temp(self.tmp_dir or scratch_root(), "upload")

    def put_file(self, key: str, path: Path) -> None:
        def attempt() -> None:
            url, signed = self._presigned(key, "PUT")
            # Sent by the kernel when it can (see _http_fast); else through httpx.
            direct = url or f"{self.url}/{key}"
            sent = self.client.fast.put_file(direct, signed if url else self.client.auth_headers,
                                             path)
            if sent is not None:
                if url:
                    self._refuse(sent, "PUT", key)
                else:
                    self.client._answer(sent, sent.content, direct, raw=False)
                return
            with open(path, "rb") as handle:
                if url:
                    self._direct("PUT", url, key, content=handle, headers=signed)
                else:
                    self.client._request("PUT", f"/blobs/{key}", content=handle, retry=False)

        try:
            self._retrying(f"upload of {key}", attempt, stored_on_conflict=True)
        finally:
            path.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes | bytearray) -> None:
        data = bytes(data)  # httpx sends bytes as a body; other buffers it would iterate

        def attempt() -> None:
            url, signed = self._presigned(key, "PUT")
            if url:
                self._direct("PUT", url, key, content=data, headers=signed)
            else:
                self.client._request("PUT", f"/blobs/{key}", content=data, retry=False)

        self._retrying(f"upload of {key}", attempt,
                       stored_on_conflict=not key.startswith("locks/"))

    def get_bytes(self, key: str) -> bytes:
        self.requests += 1
        url = self._target(key, "GET") if key.startswith("packs/") else None
        if url:
            return self._download(url, key, {})
        return self.client._request("GET", f"/blobs/{key}", raw=True)  # type: ignore[no-any-return]

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.requests += 1
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        url = self._target(key, "GET")
        if url:
            return self._download(url, key, headers, limit=length)
        # No more than asked for, whatever the answer says (a server ignoring the range
        # sent up to 512 MB for every index file a listing named: a review).
        data = self.client._request("GET", f"/blobs/{key}", raw=True, headers=headers,
                                    limit=max(length, 0) + 1)
        return data  # type: ignore[no-any-return]

    def get_range_into(self, key: str, offset: int, view: memoryview) -> int:
        """``get_range`` read into ``view`` (a buffer reused run after run); bytes read."""
        from .remote import read_body_into

        self.requests += 1
        headers = {"Range": f"bytes={offset}-{offset + len(view) - 1}"}
        url = self._target(key, "GET")
        if url is None:
            return int(self.client._request("GET", f"/blobs/{key}", headers=headers, into=view))

        def attempt() -> int:
            got = self.client.fast.read_into(url, headers, view)
            if got is not None:
                return got
            with self.client.direct_http.stream("GET", url, headers=headers) as response:
                self._refuse(response, "GET", key)
                return read_body_into(response, view, key, self.client.timeout)

        return int(self._retrying(f"download of {key}", attempt))

    def _download(self, url: str, key: str, headers: dict[str, str],
                  limit: int = MAX_DOWNLOAD) -> bytes:
        return self._retrying(  # type: ignore[no-any-return]
            f"download of {key}",
            lambda: self._direct("GET", url, key, headers=headers, limit=limit))

    def list(self, prefix: str) -> list[BlobInfo]:
        rows = self.client._request("GET", "/blobs", params={"prefix": prefix})
        try:
            return [BlobInfo(str(r["key"]), int(r["size"]), float(r["mtime"])) for r in rows]
        except (TypeError, KeyError, ValueError, OverflowError) as error:
            raise IntegrityError(f"the server's listing of {prefix!r} is malformed: "
                                 f"{type(error).__name__}: {error}",
                                 hint="is TETHER_URI a Tether server of this version?") from None

    def delete(self, key: str) -> None:
        self.client._request("DELETE", f"/blobs/{key}")

    def local_path(self, key: str) -> Path | None:
        return None


def _presign_answer(answer: Any, key: str) -> tuple[str | None, dict[str, str]]:
    """(URL or None, headers) of a presign answer; IntegrityError for anything else. The
    URL must be http(s) to a host: ``file:///etc/passwd``, a relative path or a list
    ended in httpx's or Python's own traceback (a review)."""
    try:
        url = answer.get("url")
        headers = {str(k): str(v) for k, v in (answer.get("headers") or {}).items()}
        if url is not None:
            parsed = urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"{str(url)[:200]!r} is no http(s) URL")
            parsed.port  # noqa: B018 - raises ValueError for a port out of range
    except (AttributeError, TypeError, ValueError) as error:
        raise IntegrityError(f"the server's presigned URL for {key} is malformed: {error}",
                             hint="is TETHER_URI a Tether server of this version?") from None
    return url, headers
