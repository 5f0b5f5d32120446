"""A registry on a Tether server, with the same interface as the embedded one.

``tether.connect("http://host:8080", token=...)`` (or ``TETHER_URI=http://...``
for the CLI) returns a ``RemoteRegistry``. Metadata goes through the REST API;
artifact bytes go through the same chunk store engine as locally, over a blob
gateway (``remote_blobs``): the server authorises each object and either
streams it (local store) or presigns a URL so the bytes move directly between
client and bucket (S3).
Everything judged against "this environment" (load, env diff, check) runs here,
on the client, where the model will run.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from ._audit import verify_chain
from ._audit_signing import SignedHead, check_against_checkpoint, make_checkpoint, read_checkpoint
from ._errors import (
    AmbiguousReference,
    Conflict,
    EnvironmentMismatch,
    IncompatibleBump,
    IntegrityError,
    InvalidInput,
    InvalidPath,
    InvalidReference,
    MissingChunks,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    PolicyViolation,
    RangeNotSatisfiable,
    SchemaMismatch,
    StoreError,
    TetherError,
    TooDeep,
    Unavailable,
    UnknownField,
    UnsafeArtifact,
)
from ._exchange_deadline import Deadline, was_late
from ._http_fast import FastHTTP, inflated
from ._httpx_deadline import guard_client
from ._identity import require_intact
from ._metadata.audit_log import AUDIT_PAGE, check_signed_heads
from ._metadata.clock import now_iso
from ._metadata.repository import NEXT_PAGE
from ._packed_manifest import (
    MAX_RECORDS,
    MEDIA_TYPE,
    IterReader,
    PackedBody,
    files_from_entries,
    finish,
    read_packed,
)
from ._records import AliasMove, Event, ModelInfo, ModelVersion, VersionValues
from ._reference import Reference, SelectorKind, parse_reference, validate_model_name
from ._registry import datasets, datasets_diff, datasets_io, loading, log_version, pinning
from ._registry.location import RegistryLocation, default_cache_dir
from ._registry.registry import Registry, cache_bound
from ._registry.tokens import Unauthenticated
from ._store.base import LISTED_CHUNKS, FileEntry, StoreStats
from ._store.blobs import retry_seconds
from ._store.chunklist import ChunkList, DeferredChunkList
from ._store.chunkstore import ChunkStore
from .remote_blobs import RemoteBlobs

_ERRORS: dict[str, type[TetherError]] = {
    cls.code: cls
    for cls in (
        AmbiguousReference,
        Conflict,
        EnvironmentMismatch,
        IncompatibleBump,
        IntegrityError,
        InvalidInput,
        InvalidPath,
        InvalidReference,
        MissingChunks,
        NotFound,
        PayloadTooLarge,
        PermissionDenied,
        PolicyViolation,
        RangeNotSatisfiable,
        SchemaMismatch,
        StoreError,
        TooDeep,
        Unauthenticated,
        Unavailable,
        UnknownField,
        UnsafeArtifact,
    )
}

# -- retrying through an outage --------------------------------------------------------

#: Remote methods (``/call/...``) that only read, so a retry cannot do anything twice.
READ_CALLS = frozenset({"get_policy", "grants", "keys", "signatures", "store_stats", "tokens",
                        "list_datasets", "get_dataset"})
#: POSTs that change nothing (a presigned URL is asked for, not an object written).
_SAFE_POSTS = ("/blobs/presign",)
#: Failures where the request may never have reached the server, or its answer was lost.
_TRANSIENT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
_BACKOFF_FIRST, _BACKOFF_CAP = 0.2, 5.0


def _replayable(kwargs: dict[str, Any]) -> bool:
    """The body can be sent again as it was (not a stream consumed by the first try)."""
    content = kwargs.get("content")
    return content is None or isinstance(content, bytes | str | PackedBody)


#: Largest API answer read whole (a version of a million chunks is well under it): a
#: server answering without end took a client to 1.5 GB and counting (a review).
MAX_ANSWER = 512 * 1024 * 1024
#: Least bytes a page of a listing counts against MAX_ANSWER, however small.
PAGE_COST = 64 * 1024
#: Longest head line of a packed answer: a version's JSON without its large lists.
_PACKED_HEAD = 96 * 1024 * 1024
#: Largest packed version answer: its head, then the most chunk records a version can
#: have (they go to scratch files, not memory; 16 GB of them were accepted before).
MAX_PACKED_ANSWER = _PACKED_HEAD + 1 + MAX_RECORDS


class TooSlow(Unavailable):
    """An answer (or a whole exchange) slower than its deadline: never asked again."""


class Pace:
    """The bound every answer's body is read within: at most ``limit`` bytes, and no
    slower than ``timeout`` plus its bytes at ``MIN_RATE`` (a server dripping a
    byte a second held a client for as long as it liked, httpx's timeout being per
    read). The rule of ``_exchange_deadline``, which bounds the whole exchange at the
    socket (headers too); both end in ``Unavailable`` naming the answer."""

    def __init__(self, url: str, timeout: float, limit: int) -> None:
        self.url, self.limit = url, limit
        self.clock = _clock_from_now(timeout)  # the body's own clock
        self.size = 0

    def took(self, count: int) -> None:
        self.size += count
        if self.size > self.limit:
            raise IntegrityError(f"{self.url} answered more bytes than were asked for or "
                                 f"allowed (over {self.limit}); stopped reading",
                                 hint="the server or object store is misbehaving "
                                 "(is TETHER_URI a Tether server?)")
        if _behind(self.clock, count):
            raise TooSlow(f"{self.url} answered too slowly: {self.clock.describe()}",
                          hint="check the server and the network to it")

    def pieces(self, response: httpx.Response) -> Iterator[bytes]:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            raise IntegrityError(f"{self.url} announced more bytes than were asked for or "
                                 f"allowed ({int(declared)}, over {self.limit})",
                                 hint="the server or object store is misbehaving")
        refuse_encoded(response, self.url)
        # As sent, never inflated past the limit; an answer made here from bytes it read
        # already is its bytes.
        source = response.iter_bytes() if response.is_stream_consumed else response.iter_raw()
        for piece in source:
            self.took(len(piece))
            yield piece


#: Every client asks for answers as they are: httpx would ask for gzip, brotli and
#: zstd, and inflate whatever came before any limit saw it (a review: 3 KB of nested
#: gzip, or 64 KB of zstd, took the client to 4 GB).
IDENTITY = {"Accept-Encoding": "identity"}


def refuse_encoded(response: httpx.Response, url: str) -> None:
    """IntegrityError when ``response`` came compressed (a coding httpx inflates)."""
    encoding = response.headers.get("content-encoding", "")
    if inflated(encoding):
        raise IntegrityError(f"{url} answered with Content-Encoding {encoding[:40]!r}, "
                             "which Tether never asks for: not read (a compressed answer "
                             "can inflate without bound)",
                             hint="the server, a proxy or the object store is misbehaving")


def _clock_from_now(timeout: float) -> Deadline:
    """``timeout`` plus the bytes that come at ``MIN_RATE``, counted from now (not from a
    first socket operation): an answer's body (``Pace``), or a whole paged listing."""
    clock = Deadline(timeout)
    clock.left()  # starts it
    return clock


def _behind(clock: Deadline, count: int) -> bool:
    """Whether ``clock`` has run out once ``count`` more bytes have come."""
    clock.moved(count)
    return clock.left() < 0


def _keep_pace(clock: Deadline, count: int, what: str) -> None:
    """For a paged listing: the pages, each within its own deadline, come within one
    clock (``_clock_from_now``). Each page alone in time, a server answering a version a
    page, just inside the timeout, kept a client paging for days (a review)."""
    if _behind(clock, count):
        raise TooSlow(f"the pages of {what} came too slowly: {clock.describe()}; stopped "
                      "paging", hint="check the server and the network to it")


def read_answer(response: httpx.Response, url: str, timeout: float,
                limit: int | None = None) -> bytes:
    """An answer's body, within ``Pace`` (``limit`` bytes, default ``MAX_ANSWER``)."""
    return b"".join(Pace(url, timeout, MAX_ANSWER if limit is None else limit)
                    .pieces(response))


def json_answer(content: bytes, what: str) -> Any:
    """An answer's JSON (None for an empty one); IntegrityError naming ``what`` if it
    is not JSON."""
    try:
        return json.loads(content) if content else None
    except ValueError as error:
        raise IntegrityError(f"{what} answered something that is not JSON: {error}",
                             hint="is TETHER_URI a Tether server?") from None
    except RecursionError:  # arrays nested 100,000 deep: a traceback in every command
        raise IntegrityError(f"{what} answered JSON nested too deeply to read",
                             hint="is TETHER_URI a Tether server?") from None


def json_list(content: bytes, what: str) -> list[Any]:
    """An answer that must be a JSON list; IntegrityError naming ``what`` if not."""
    found = json_answer(content, what)
    if not isinstance(found, list):
        raise IntegrityError(f"{what} answered a {type(found).__name__} where a list was due",
                             hint="is TETHER_URI a Tether server?")
    return found


def read_body_into(response: httpx.Response, into: memoryview, url: str,
                   timeout: float) -> int:
    """A streamed response's body read into ``into``, within ``Pace``; the bytes read (a
    longer one is refused)."""
    filled = 0
    for piece in Pace(url, timeout, len(into)).pieces(response):
        end = filled + len(piece)
        into[filled:end] = piece
        filled = end
    return filled


V = TypeVar("V", ModelVersion, datasets.DatasetVersion)
P = TypeVar("P")


def read_version(response: httpx.Response, *, timeout: float = 60.0) -> ModelVersion:
    """The model version a server answered, as JSON or packed (``read_packed_version``)."""
    return read_packed_version(response, ModelVersion, timeout=timeout)


def read_packed_version(response: httpx.Response, kind: type[V], *, timeout: float) -> V:
    """The version a server answered, as JSON or packed (its large chunk lists read as they
    come into lists kept in scratch files; see _packed_manifest.py), within ``Pace``.
    Nothing is trusted: ``require_intact`` checks it where its bytes will be used."""
    try:
        url = str(response.url)
    except RuntimeError:  # a response made here, from bytes
        url = "the answer"
    try:
        if response.headers.get("content-type", "").split(";")[0].strip() != MEDIA_TYPE:
            return kind.from_dict(json_answer(read_answer(response, url, timeout), url))
        stream = IterReader(Pace(url, timeout, MAX_PACKED_ANSWER).pieces(response))
        head, records = read_packed(stream, _PACKED_HEAD)
        files = files_from_entries(head.pop("files", None), records, in_file=True)
        finish(stream, records)
        return replace(kind.from_dict(head), files=files)  # type: ignore[type-var]
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
        raise IntegrityError(f"{url} answered a malformed version: {error}",
                             hint="the server is not a Tether server of this version, or "
                             "is misbehaving") from None


def retry_safe(method: str, path: str, kwargs: dict[str, Any]) -> bool:
    """Whether repeating this request cannot do anything twice."""
    method = method.upper()
    if method in ("GET", "HEAD", "OPTIONS"):
        return True
    if not _replayable(kwargs):
        return False
    if method == "PUT":  # setting a state (an alias, an object) is idempotent
        return True
    if method == "DELETE":  # only a lease: gone twice is gone (its holder ignores NotFound)
        return path.startswith("/blobs/locks/")
    if method == "POST":
        headers = kwargs.get("headers") or {}
        keyed = any(k.lower() == "idempotency-key" for k in headers)
        return keyed or path.endswith(_SAFE_POSTS)
    return False


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter: 0.1-0.2 s, then doubling, at most 5 s."""
    ceiling = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2.0 ** min(attempt - 1, 16))
    return ceiling * random.uniform(0.5, 1.0)


def retry_after(response: httpx.Response) -> float:
    """The server's ``Retry-After`` in seconds (0 when absent), at most 30."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return 0.0
    try:
        return min(30.0, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError):  # a zone of +99999999999999999
        return 0.0
    return min(30.0, max(0.0, when - time.time()))


def _read(streamed: httpx.Response, content: bytes) -> httpx.Response:
    """A streamed response whose body was read (within ``Pace``), as one that holds it."""
    # The body is decoded already: no Content-Encoding to apply again, no stale length.
    headers = [(k, v) for k, v in streamed.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(streamed.status_code, headers=headers, content=content,
                          request=streamed.request)


def _tether_error(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) and "error" in body else None


def transient_status(response: httpx.Response) -> bool:
    """503 and 504 always; 502 from a gateway, not a store error the server reported."""
    if response.status_code in (503, 504):
        return True
    return response.status_code == 502 and _tether_error(response) is None


def _describe_status(response: httpx.Response) -> str:
    body = _tether_error(response)
    if body and body.get("message"):
        return str(body["message"])
    return f"HTTP {response.status_code}"


def _answers(asked: Reference, name: str, seq: int, semver: str, digest: str) -> bool:
    """Whether a version (name, seq, semver, digest) is one ``asked`` can name."""
    if name != asked.name:
        return False
    if asked.kind is SelectorKind.DIGEST:
        return digest.lower().startswith(asked.value.lower())
    if asked.kind is SelectorKind.SEQUENCE:
        return str(seq) == asked.value
    if asked.kind is SelectorKind.SEMVER:
        return semver == asked.value
    return True  # an alias, a range or "latest": the server's to resolve


T = TypeVar("T")
#: Where an answer is turned into records: an error raised there is the answer's fault.
_ANSWER_READERS = (__file__, sys.modules[ModelVersion.__module__].__file__,
                   sys.modules[FileEntry.__module__].__file__,
                   os.path.join(os.path.dirname(__file__), "remote_blobs.py"))


def _raised_reading_an_answer(error: BaseException) -> bool:
    """Whether ``error`` was raised in this module or the records' (building records
    from an answer), not in code they called (a reviewer's `set_tags={"a": object()}`
    failed to serialise in httpx, and was blamed on the server)."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_code.co_filename in _ANSWER_READERS


def _answers_checked(cls: type[T]) -> type[T]:
    """Wrap every public method of ``cls`` so an answer of the wrong shape (a list where
    a record belongs, a missing field) is an ``IntegrityError`` naming the call, not a
    ``TypeError`` from deep inside (a review: `tether models` against a hostile server
    ended in a traceback). A call made with wrong arguments still fails as Python does:
    the arguments are bound before the call."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        cls_method = member
        signature = inspect.signature(cls_method)

        @functools.wraps(cls_method)
        def checked(*args: Any, __method: Any = cls_method, __signature: Any = signature,
                    **kwargs: Any) -> Any:
            __signature.bind(*args, **kwargs)  # the caller's own mistakes stay TypeErrors
            try:
                return __method(*args, **kwargs)
            except (TypeError, KeyError, ValueError, AttributeError, IndexError) as error:
                if not _raised_reading_an_answer(error):
                    raise  # the client's own code (a flavor, a bad argument): as it is
                raise IntegrityError(
                    f"the server's answer to {__method.__name__} is malformed: "
                    f"{type(error).__name__}: {str(error)[:200]}",
                    hint="the server is not a Tether server of this version, or was "
                    "tampered with; nothing was done with the answer") from error

        setattr(cls, name, checked)
    return cls


@_answers_checked
class RemoteRegistry:
    """The registry API of ``Registry``, spoken over HTTP."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        cache_dir: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        try:  # httpx's own InvalidURL, later, was a traceback (a review)
            parsed = httpx.URL(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError("not http(s)://host")
        except (httpx.InvalidURL, ValueError, TypeError) as error:
            raise InvalidInput(f"{url[:200]!r} is not a server's URL: {error}",
                               hint="http(s)://host[:port], in --registry or TETHER_URI"
                               ) from None
        self.token = token if token is not None else os.environ.get("TETHER_TOKEN")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.auth_headers = headers
        headers = {**headers, **IDENTITY}
        tls = httpx.create_ssl_context()  # one trust setting for every client below
        limits = httpx.Limits(max_connections=16)
        self.timeout = timeout
        # Every exchange within its deadline, headers and all (see _exchange_deadline).
        self.http = guard_client(httpx.Client(headers=headers, timeout=timeout,
                                              limits=limits, verify=tls), timeout)
        #: For presigned URLs: they carry their own authority, and the object store
        #: (or whoever logs requests there) must never see the API token.
        self.direct_http = guard_client(httpx.Client(headers=IDENTITY, timeout=timeout,
                                                     limits=limits, verify=tls), timeout)
        #: Packs up and down without httpx's copies (see _http_fast).
        self.fast = FastHTTP(timeout=timeout, ssl_context=tls)
        self._cache_dir = cache_dir or default_cache_dir() / "remote"
        self.location = RegistryLocation(
            root=None,
            db_url=self.url,
            store_url=f"{self.url}/api/v1/blobs",
            cache_dir=self._cache_dir,
        )
        self._store: ChunkStore | None = None
        self._actor: str | None = None

    # -- plumbing -----------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        raw: bool = False,
        retry: bool | None = None,
        into: memoryview | None = None,
        read: Callable[[httpx.Response], Any] | None = None,
        with_headers: bool = False,
        limit: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """One API call; those safe to repeat are retried through an outage.

        ``limit``: the most bytes of its answer read (default ``MAX_ANSWER``).

        ``into``: read a successful answer's body into this buffer (a reused one:
        no new pages, no joined copy) and return how many bytes came. ``read``:
        return what it makes of a successful answer, read as it streams in.
        ``with_headers``: the answer and its headers.

        ``retry``: whether this call is safe to repeat (default: ``retry_safe``:
        GET and HEAD, PUT with a body that can be sent again, POST with an
        ``Idempotency-Key``, deleting a lease). Retries run on connection errors
        and 502/503/504 for ``TETHER_RETRY_SECONDS``; then ``Unavailable`` names
        the server and what it said.
        """
        url = path if path.startswith("http") else f"{self.url}/api/v1{path}"
        if retry is None:
            retry = retry_safe(method, path, kwargs)
        budget = retry_seconds() if retry else 0.0
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                if into is None and read is None:
                    with self.http.stream(method, url, **kwargs) as streamed:
                        content = read_answer(streamed, url, self.timeout, limit)
                    response = _read(streamed, content)
                elif into is not None and method == "GET" and (got := self.fast.read_into(
                        url, {**self.auth_headers, **kwargs.get("headers", {})}, into,
                )) is not None:
                    return got
                else:
                    with self.http.stream(method, url, **kwargs) as response:
                        if response.status_code < 300 and read is not None:
                            return read(response)
                        if response.status_code < 300 and into is not None:
                            return read_body_into(response, into, url, self.timeout)
                        content = read_answer(response, url, self.timeout, limit)
                        response = _read(response, content)
                        if response.status_code < 400:  # not bytes, nor an error to read
                            raise StoreError(
                                f"{url} answered HTTP {response.status_code} where bytes "
                                f"were asked for",
                                hint="something in front of the server redirects; point "
                                "TETHER_URI at the server itself")
            except httpx.HTTPError as error:
                if was_late(error):  # held past its deadline: as Pace says, not retried here
                    raise TooSlow(f"{url} answered too slowly: {error}",
                                  hint="check the server and the network to it") from error
                problem = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                if not retry or not isinstance(error, _TRANSIENT):
                    raise self._gave_up(problem, attempt, started, reached=False) from error
                wait, reached = backoff(attempt), False
            else:
                if not (retry and transient_status(response)):
                    answer = self._answer(response, content, url, raw)
                    return (answer, response.headers) if with_headers else answer
                problem = _describe_status(response)
                wait, reached = max(backoff(attempt), retry_after(response)), True
            remaining = budget - (time.monotonic() - started)
            if remaining <= 0.05:
                raise self._gave_up(problem, attempt, started, reached=reached)
            time.sleep(min(wait, remaining))

    def _gave_up(
        self, problem: str, attempts: int, started: float, *, reached: bool
    ) -> Unavailable:
        took = time.monotonic() - started
        tried = f" (gave up after {attempts} attempts in {took:.0f} s)" if attempts > 1 else ""
        state = "unavailable" if reached else "unreachable"
        return Unavailable(
            f"the Tether server at {self.url} is {state}: {problem}{tried}",
            hint="check that `tether server` runs and TETHER_URI points at it (GET /api/v1/ready "
            "says what is down); TETHER_RETRY_SECONDS sets how long safe calls keep retrying",
        )

    def _answer(self, response: httpx.Response, content: bytes, url: str, raw: bool) -> Any:
        if response.status_code == 304:
            return None
        if response.status_code >= 400:
            try:
                body = json.loads(content)
            except (ValueError, RecursionError):
                body = {}
            if not isinstance(body, dict):
                body = {}
            if "error" not in body and transient_status(response):
                # A gateway's 502/503/504 (an HTML page): the server did nothing, and
                # an upload sent again is safe; as Unavailable, its caller's retries
                # take it (a review: one 503 failed a whole log at once).
                raise Unavailable(f"{url} is unavailable: {_describe_status(response)}",
                                  hint="TETHER_RETRY_SECONDS sets how long transfers retry")
            # Every code the server sends has its class here; an unknown one (a newer
            # server) is a plain TetherError. Its words are text, cut short.
            cls = _ERRORS.get(str(body.get("error")), TetherError)
            hint = body.get("hint")
            raise cls(
                str(body.get("message") or f"HTTP {response.status_code} from {url}")[:4000],
                hint=str(hint)[:4000] if hint else None,
            )
        if response.status_code >= 300:  # never followed: the token would go along
            raise StoreError(
                f"{url} answered HTTP {response.status_code} (a redirect, to "
                f"{response.headers.get('location', 'nowhere')[:200]!r}); not followed",
                hint="point TETHER_URI at the server itself (https where it is served so)")
        if raw:
            return content
        return json_answer(content, url)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._request(
            "POST",
            f"/call/{method}",
            json={"args": list(args), "kwargs": kwargs},
            retry=method in READ_CALLS,
        )

    def close(self) -> None:
        self.http.close()
        self.direct_http.close()
        self.fast.close()

    def __enter__(self) -> RemoteRegistry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return self.url

    @property
    def actor(self) -> str:
        if self._actor is None:
            self._actor = str(self._request("GET", "/whoami")["principal"])
        return self._actor

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir

    @property
    def store(self) -> ChunkStore:
        if self._store is None:
            self._store = ChunkStore(RemoteBlobs(self), cache_dir=self._cache_dir,  # type: ignore[arg-type]
                                     cache_max_bytes=cache_bound(self))
        return self._store

    # -- settings -----------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        return dict(self._request("GET", "/settings"))

    def get_setting(self, key: str) -> str | None:
        """One setting: any caller may read it (a load needs env_policy), not only readers
        of the whole registry. (A server that ignores ``?key=`` answers every setting.)"""
        value = self._request("GET", "/settings", params={"key": key}).get(key)
        return None if value is None else str(value)

    def set_setting(self, key: str, value: str) -> None:
        self._call("set_setting", key, value)

    # -- models and versions ------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(**m) for m in self._request("GET", "/models")]

    def _paged(self, path: str, convert: Callable[[dict[str, Any]], P],
               params: dict[str, str] | None = None) -> list[P]:
        """Every version of a paged listing, each made by ``convert`` as its page comes:
        the server answers a page at a time, its ``NEXT_PAGE`` header naming where the
        next starts. A page's versions come after the page before, in order; the next
        page starts after them; and the pages, each counted at least ``PAGE_COST``
        bytes, come to at most ``MAX_ANSWER`` bytes (what one answer could hold before
        pages: a server answering a version a page kept a client paging for hours, a
        review)."""
        found: list[P] = []
        after, size = 0, 0
        clock = _clock_from_now(self.timeout)
        while True:
            asked = {**(params or {}), **({"after": str(after)} if after else {})}
            content, headers = self._request("GET", path, params=asked, raw=True,
                                             with_headers=True)
            size += max(len(content), PAGE_COST)
            if size > MAX_ANSWER:
                raise IntegrityError(f"the pages of {path} came to more than {MAX_ANSWER} "
                                     "bytes: stopped paging", hint="is the server misbehaving?")
            _keep_pace(clock, len(content), path)
            rows = json_list(content, path)
            seqs = [row.get("seq") if isinstance(row, dict) else None for row in rows]
            if any(not isinstance(seq, int) or not isinstance(before, int) or seq <= before
                   for seq, before in zip(seqs, [after, *seqs[:-1]], strict=True)):
                raise IntegrityError(f"the server answered a page of {path} whose versions do "
                                     "not follow the page before in order: stopped paging",
                                     hint="is the server misbehaving?")
            found += [convert(row) for row in rows]
            following = headers.get(NEXT_PAGE)
            if following is None:
                return found
            # A version deleted while the server read the page leaves the next page
            # starting after the last one listed (it is gone, not skipped).
            last = int(seqs[-1] or 0) if rows else after  # an int: checked above
            if not following.isdigit() or int(following) < max(last, after + 1):
                raise IntegrityError(f"the server's page of {path} names a next page that "
                                     "does not start after it: stopped paging",
                                     hint="is the server misbehaving?")
            after = int(following)

    def versions(self, name: str) -> list[ModelVersion]:
        return self._paged(f"/models/{quote(name)}/versions", self._listed)

    def deleted_models(self) -> list[ModelInfo]:
        return [ModelInfo(**m) for m in self._request("GET", "/models",
                                                      params={"deleted": "1"})]

    def versions_with_deleted(self, name: str) -> list[ModelVersion]:
        return self._paged(f"/models/{quote(name)}/versions", self._listed, {"deleted": "1"})

    def _listed(self, data: dict[str, Any], kind: type[V] = ModelVersion,  # type: ignore[assignment]
                ) -> V:
        """A version of a list (a model's or a dataset's): a large chunk list comes as its
        length and is asked for (the version, by itself, checked) only if it is used."""
        files = []
        fetched: list[Any] = []  # the version, asked for once for all its lists
        ref = f"{data['name']}@{data['semver']}"
        fetch = self.get if kind is ModelVersion else self.get_dataset

        def list_of(listed: FileEntry) -> ChunkList:
            if not fetched:
                fetched.append(fetch(ref))  # checked against its digest
            entry: FileEntry = fetched[0].file(listed.path)
            if (entry.size, entry.digest) != (listed.size, listed.digest):
                raise IntegrityError(f"{listed.path} of {ref} changed between the list of "
                                     "versions and the version",
                                     hint="the server is misbehaving; list the versions again")
            return entry.chunks

        for item in data.get("files", []):
            if item.get("chunks") is not None or "chunk_count" not in item:
                files.append(FileEntry.from_dict(item))
                continue
            listed = FileEntry(path=str(item["path"]), size=int(item["size"]),
                               digest=str(item["digest"]))
            chunks = DeferredChunkList(int(item["chunk_count"]), partial(list_of, listed))
            files.append(replace(listed, chunks=chunks))
        return replace(kind.from_dict({**data, "files": []}), files=tuple(files))  # type: ignore[type-var]

    def get(self, ref: str) -> ModelVersion:
        # The server is not trusted to keep a version's manifest and digest consistent.
        return require_intact(self._one_version("models", ref, ModelVersion))

    def _one_version(self, collection: str, ref: str, kind: type[V]) -> V:
        """The version ``ref`` names under ``/{collection}``, asked for packed.

        Its manifest is not checked here (``require_intact`` does that), but that it
        is the version asked for is: every version a server could answer is intact
        on its own, so a server answering ``name@sha:D`` (how serving, lineage and
        reproduce ask for an exact version) with another one would go unnoticed.
        """
        parsed = parse_reference(ref)
        selector = ref.partition("@")[2] or "latest"
        answer: V = self._request(
            "GET", f"/{collection}/{quote(parsed.name)}/versions/{quote(selector, safe='')}",
            headers={"Accept": f"{MEDIA_TYPE}, application/json"},
            read=partial(read_packed_version, kind=kind, timeout=self.timeout))
        if not _answers(parsed, answer.name, answer.seq, answer.semver, answer.digest):
            raise IntegrityError(
                f"asked the server at {self.url} for {ref}, it answered "
                f"{answer.name}@{answer.semver} (#{answer.seq}, sha:{answer.digest[:12]})",
                hint="the server (or its database) answers another version than the one asked "
                "for; do not use its answers until that is explained",
            )
        return answer

    def _new_version(self, path: str, fields: dict[str, Any], files: Sequence[Any],
                     bump: str | None, kind: type[V], **kwargs: Any) -> V:
        """POST a new version to ``path``: JSON, or packed when a file's chunk list is too
        long to list (see _packed_manifest.py); the answer unchecked."""
        try:
            return self._post_version(path, fields, files, bump, kind, **kwargs)
        except MissingChunks as error:
            # This client skipped uploading chunks its index said the store held. If that
            # index came from copies kept on this disk, they may lie (a server or a man in
            # the middle once served one, and every later log failed: a review): they
            # are dropped, and the next run fetches them again and uploads what is missing.
            if self._store is not None and self._store.index.forget_kept_copies():
                raise MissingChunks(error.message, hint="this machine's kept copies of the "
                                    "store's index were dropped: run it again") from error
            raise

    def _post_version(self, path: str, fields: dict[str, Any], files: Sequence[Any],
                      bump: str | None, kind: type[V], **kwargs: Any) -> V:
        headers = kwargs.pop("headers", {})
        if not any(isinstance(f, FileEntry) and len(f.chunks) > LISTED_CHUNKS for f in files):
            listed = [f.to_dict() if isinstance(f, FileEntry) else f for f in files]
            body = {"values": {**fields, "manifest": listed}, "bump": bump}
            return kind.from_dict(self._request("POST", path, json=body, headers=headers,
                                                **kwargs))
        packed = PackedBody({"values": fields, "bump": bump}, files, key="manifest")
        return self._request(  # type: ignore[no-any-return]
            "POST", path, content=packed,
            read=partial(read_packed_version, kind=kind, timeout=self.timeout),
            headers={**headers, "Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE,
                     "Content-Length": str(packed.length)}, **kwargs)

    def commit(self, name: str, values: dict[str, Any] | VersionValues,
               bump: str | None) -> ModelVersion:
        if isinstance(values, VersionValues):  # the JSON the server checks, but its manifest
            values = {**values.to_dict(manifest=False), "manifest": list(values.manifest)}
        fields = {k: v for k, v in values.items()
                  if k not in ("digest", "files_digest", "manifest")}
        manifest = values.get("manifest") or []
        # One key per commit, sent again with every retry: a retry after a lost
        # response gets the version the first attempt registered, never a second one.
        key = uuid.uuid4().hex
        return self._new_version(f"/models/{quote(name)}/versions", fields, manifest, bump,
                                 ModelVersion, headers={"Idempotency-Key": key})

    def trust_facts(self, version: ModelVersion) -> dict[str, Any]:
        """The server's answer, refused (IntegrityError) unless it has the shape load and
        check read: a hostile one made `tether check` crash with a traceback (a review)."""
        path = f"/models/{quote(version.name)}/trust/{version.semver}"
        facts = self._request("GET", path)
        lists = ("require_signed_by", "load_signers", "valid_signers", "signature_problems")
        if not (isinstance(facts, dict)
                and all(isinstance(facts.get(k), list)
                        and all(isinstance(x, str) for x in facts[k]) for k in lists)
                and isinstance(facts.get("deprecated_by_policy"), bool)
                and isinstance(facts.get("signatures"), list)
                and all(isinstance(row, dict) for row in facts["signatures"])):
            raise IntegrityError(
                f"the server's answer about the signatures and policy of {version.ref} is "
                "malformed", hint="the server is not a Tether server of this version, or "
                "is not to be trusted; nothing was loaded")
        return dict(facts)

    def vouched_for_loading(self, version: ModelVersion, facts: dict[str, Any]) -> str | None:
        """Never the server's word: a signature this client checks itself, by a key it
        pins in ``TETHER_LOAD_KEYS`` (``trust.vouched_by_pinned_keys``)."""
        from ._registry.trust import vouched_by_pinned_keys

        return vouched_by_pinned_keys(version, facts)

    def log_model(self, model: Any, name: str, **options: Any) -> ModelVersion:
        """As ``Registry.log_model``: saved and chunked here, committed by the server.

        A progress bar on a terminal by default, as the embedded registry draws
        (it had none through a server).
        """
        options.setdefault("progress", True)
        return log_version.log_model(self, model, name, **options)  # type: ignore[arg-type]

    def load(
        self,
        ref: str,
        *,
        expect: str | None = None,
        env_policy: str | None = None,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
        progress: bool = True,
        environment: dict[str, Any] | None = None,
        use_lock: bool = True,
    ) -> Any:
        if use_lock:
            ref = pinning.pinned_reference(self, ref)  # type: ignore[arg-type]
        return loading.load_version(
            self,  # type: ignore[arg-type]
            self.get(ref),
            expect=expect,
            env_policy=env_policy,  # type: ignore[arg-type]
            trusted=trusted,
            trusted_types=trusted_types,
            progress=progress,
            environment=environment,
        )

    def download(self, ref: str, dest: str | Path, *, progress: bool = True) -> Path:
        target = loading.new_destination(dest)
        return loading.materialize(self, self.get(ref), target, progress=progress)  # type: ignore[arg-type]

    def verify(self, ref: str) -> list[str]:
        version = self.get(ref)
        return self.store.verify(version.files, label=version.ref)

    def open_file(self, ref: str, path: str) -> Any:
        """As ``Registry.open_file`` (a ``ModelFile``): reads fetch only the chunks they
        cover, through the gateway or presigned ranged GETs, verified here."""
        from ._registry import model_files

        return model_files.open_file(self.store, self.get(ref), path)

    def deprecate(self, ref: str, *, reason: str = "", undo: bool = False) -> ModelVersion:
        return ModelVersion.from_dict(self._call("deprecate", ref, reason=reason, undo=undo))

    def delete_version(self, ref: str) -> ModelVersion:
        return ModelVersion.from_dict(self._call("delete_version", ref))

    def model(self, name: str) -> ModelInfo:
        return ModelInfo(**self._call("model", name))

    def create_model(
        self, name: str, *, description: str = "", tags: dict[str, str] | None = None
    ) -> ModelInfo:
        return ModelInfo(**self._call("create_model", name, description=description, tags=tags))

    def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        set_tags: dict[str, str] | None = None,
        delete_tags: list[str] | None = None,
    ) -> ModelInfo:
        return ModelInfo(
            **self._call(
                "update_model",
                name,
                description=description,
                set_tags=set_tags,
                delete_tags=delete_tags,
            )
        )

    def delete_model(self, name: str) -> None:
        self._call("delete_model", name)

    def update_version(
        self,
        ref: str,
        *,
        notes: str | None = None,
        set_tags: dict[str, str] | None = None,
        delete_tags: list[str] | None = None,
    ) -> ModelVersion:
        return ModelVersion.from_dict(
            self._call(
                "update_version", ref, notes=notes, set_tags=set_tags, delete_tags=delete_tags
            )
        )

    # -- aliases ------------------------------------------------------------------

    def _alias_path(self, name: str, alias: str) -> str:
        return f"/models/{quote(name)}/aliases/{quote(alias)}"

    def promote(
        self,
        ref: str,
        alias: str,
        *,
        reason: str = "",
        checks: Sequence[Any] = (),
        create: bool = False,
    ) -> AliasMove:
        if checks:
            raise InvalidInput("custom promote checks run only in-process; use a policy instead")
        parsed = parse_reference(ref)
        selector = ref.partition("@")[2] or "latest"
        data = self._request(
            "PUT",
            self._alias_path(parsed.name, alias),
            json={"version": selector, "reason": reason, "create": create},
        )
        return AliasMove(**data)

    def rollback(self, name: str, alias: str, *, reason: str = "",
                 from_digest: str | None = None,
                 from_generation: int | None = None) -> AliasMove:
        body: dict[str, Any] = {"reason": reason}
        if from_digest is not None:
            body["from_digest"] = from_digest
        if from_generation is not None:
            body["from_generation"] = from_generation
        return AliasMove(
            **self._request("POST", self._alias_path(name, alias) + "/rollback", json=body))

    def delete_alias(self, name: str, alias: str) -> AliasMove:
        return AliasMove(**self._request("DELETE", self._alias_path(name, alias)))

    def record_route_rollback(
        self,
        model: str,
        *,
        endpoint: str,
        route: str,
        before: str,
        after: str | None,
        reason: str,
    ) -> None:
        self._call("record_route_rollback", model, endpoint=endpoint, route=route,
                   before=before, after=after, reason=reason)

    # -- deployments ------------------------------------------------------------

    def apply_deployment(self, name: str, spec: dict[str, Any], *,
                         reason: str = "") -> dict[str, Any]:
        return dict(self._call("apply_deployment", name, spec, reason=reason))

    def deployment(self, name: str, *, known_revision: int | None = None) -> dict[str, Any]:
        return dict(self._call("deployment", name, known_revision=known_revision))

    def deployments(self) -> list[dict[str, Any]]:
        return list(self._call("deployments"))

    def deployment_history(self, name: str) -> list[dict[str, Any]]:
        return list(self._call("deployment_history", name))

    def set_deployment_weights(self, name: str, weights: dict[str, float], *,
                               endpoint: str | None = None, reason: str = "") -> dict[str, Any]:
        return dict(self._call("set_deployment_weights", name, weights, endpoint=endpoint,
                               reason=reason))

    def pause_routes(self, name: str, routes: list[str], *, endpoint: str | None = None,
                     resume: bool = False, reason: str = "") -> dict[str, Any]:
        return dict(self._call("pause_routes", name, list(routes), endpoint=endpoint,
                               resume=resume, reason=reason))

    def rollback_deployment(self, name: str, *, to_revision: int | None = None,
                            reason: str = "") -> dict[str, Any]:
        return dict(self._call("rollback_deployment", name, to_revision=to_revision,
                               reason=reason))

    def rollback_route(self, name: str, *, endpoint: str | None, route: str,
                       failing: str | None = None, reason: str = "",
                       holder: str | None = None) -> dict[str, Any]:
        return dict(self._call("rollback_route", name, endpoint=endpoint, route=route,
                               failing=failing, reason=reason, holder=holder))

    def replica_heartbeat(self, name: str, replica: str, *, host: str, pid: int,
                          url: str = "", started_at: str = "",
                          info: dict[str, Any] | None = None,
                          stats: dict[str, Any] | None = None,
                          lead: bool = True) -> dict[str, Any]:
        return dict(self._call("replica_heartbeat", name, replica, host=host, pid=pid, url=url,
                               started_at=started_at, info=info, stats=stats, lead=lead))

    def leave_deployment(self, name: str, replica: str) -> None:
        self._call("leave_deployment", name, replica)

    def deployment_status(self, name: str) -> dict[str, Any]:
        return dict(self._call("deployment_status", name))

    def sign_deployment(self, name: str, key_path: str, *, versions: Sequence[str] = (),
                        expires_in: str | None = None,
                        confirm: Callable[[list[Any]], bool] | None = None) -> dict[str, Any]:
        """As ``Registry.sign_deployment``: signed here, the private key stays here."""
        from ._registry.deployment_signing import sign_deployment

        return sign_deployment(self, name, key_path, versions=versions,  # type: ignore[arg-type]
                               expires_in=expires_in, confirm=confirm)

    def record_deployment_signature(self, name: str, payload: dict[str, Any], key_id: str,
                                    signature: str) -> dict[str, Any]:
        return dict(self._call("record_deployment_signature", name, payload, key_id, signature))

    def vouched_deployment_digests(self, name: str,
                                   record: dict[str, Any]) -> dict[str, dict[str, float]] | None:
        """Never the server's word: only signatures checked here by keys this process pins
        in ``TETHER_LOAD_KEYS`` (``deployment_signing.vouched_digests``)."""
        from ._registry.deployment_signing import vouched_digests
        from ._registry.trust import pinned_load_keys

        return vouched_digests(name, record, pinned_load_keys())

    def alias_history(self, name: str, alias: str) -> list[AliasMove]:
        return [
            AliasMove(**m) for m in self._request("GET", self._alias_path(name, alias) + "/history")
        ]

    def alias(self, name: str, alias: str) -> dict[str, Any]:
        return dict(self._request("GET", self._alias_path(name, alias)))

    # -- audit ----------------------------------------------------------------------

    def audit_log(
        self, *, model: str | None = None, action: str | None = None, limit: int | None = None,
        before: int | None = None,
    ) -> list[Event]:
        """Page by page (the server answers at most AUDIT_PAGE events at a time), newest
        first: each page's events older than the one before them, and the pages, each
        counted at least ``PAGE_COST`` bytes, at most ``MAX_ANSWER`` bytes in all (a
        server answering page after page of made-up events kept a client paging, and
        holding them, without end)."""
        found: list[Event] = []
        size = 0
        clock = _clock_from_now(self.timeout)
        while True:
            page = AUDIT_PAGE if not limit else min(AUDIT_PAGE, limit - len(found))
            params: dict[str, Any] = {k: v for k, v in (("model", model), ("action", action))
                                      if v}
            params["limit"] = page
            if before is not None:
                params["before"] = before
            content = self._request("GET", "/audit", params=params, raw=True)
            size += max(len(content), PAGE_COST)
            if size > MAX_ANSWER:
                raise IntegrityError(
                    f"the audit log's pages came to more than {MAX_ANSWER} bytes: stopped "
                    "paging", hint="read it in parts (limit, before), or verify it on the "
                    "server (`tether audit verify` without a checkpoint)")
            _keep_pace(clock, len(content), "/audit")
            try:
                got = [Event(**e) for e in json_list(content, "/audit")]
            except TypeError as error:  # a field missing or unknown
                raise IntegrityError(f"the server answered an audit event that is not one: "
                                     f"{error}", hint="is the server misbehaving?") from None
            ids = [e.id for e in got]
            if any(not isinstance(i, int) or i < 1 or (older is not None and i >= older)
                   for i, older in zip(ids, [before, *ids[:-1]], strict=True)):
                raise IntegrityError("the server answered a page of the audit log with events "
                                     "not older than the one before: stopped paging",
                                     hint="is the server misbehaving?")
            found += got
            if len(got) < page or (limit and len(found) >= limit):
                return found
            before = got[-1].id

    def verify_audit(self, *, checkpoint: str | None = None) -> tuple[int, list[str]]:
        """The server's verdict; with ``checkpoint``, checked here, trusting no server.

        With a checkpoint the client fetches every event and the server's
        signed head, recomputes the chain itself and checks both against the
        checkpoint's key, so a server (or database) that rewrote history
        cannot talk its way past it.
        """
        if checkpoint is None:
            result = self._request("GET", "/audit/verify")
            return int(result["events"]), list(result["problems"])
        mark, public = read_checkpoint(checkpoint, source="the checkpoint")
        events = sorted(self.audit_log(), key=lambda e: e.id)
        triples = [(_event_content(e), e.prev_hash, e.hash) for e in events]
        problems = verify_chain(triples, None)
        hashes = {e.id: e.hash for e in events}
        head = SignedHead(**{k: v for k, v in self.audit_head().items() if k != "public_key"})
        problems += check_signed_heads([head], hashes, [public])
        problems += check_against_checkpoint(mark, hashes)
        return len(events), problems

    def audit_head(self) -> dict[str, Any]:
        return dict(self._request("GET", "/audit/head"))

    def audit_checkpoint(self) -> dict[str, Any]:
        head = self.audit_head()
        signed = SignedHead(**{k: v for k, v in head.items() if k != "public_key"})
        return make_checkpoint(signed, head["public_key"], registry=self.describe(),
                               taken_at=now_iso())

    # -- governance and administration (use cases run on the server) -------------

    def set_policy(self, name: str, text: str) -> dict[str, Any]:
        return dict(self._call("set_policy", name, text))

    def get_policy(self, name: str, revision: int | None = None) -> dict[str, Any]:
        return dict(self._call("get_policy", name, revision))

    def approve(self, ref: str, alias: str, *, comment: str = "") -> list[str]:
        return list(self._call("approve", ref, alias, comment=comment))

    def grant(self, principal: str, role: str, *, model: str | None = None) -> None:
        self._call("grant", principal, role, model=model)

    def revoke(self, principal: str, role: str, *, model: str | None = None) -> None:
        self._call("revoke", principal, role, model=model)

    def grants(self) -> list[dict[str, Any]]:
        return list(self._call("grants"))

    def trust_key(self, name: str, public_pem: str) -> str:
        return str(self._call("trust_key", name, public_pem))

    def keys(self) -> list[dict[str, Any]]:
        return list(self._call("keys"))

    def remove_key(self, name: str) -> dict[str, Any]:
        return dict(self._call("remove_key", name))

    def sign(self, ref: str, key_path: str) -> dict[str, Any]:
        from . import _signing as signing

        key = signing.load_private_key(key_path)  # the private key stays here
        version = self.get(ref)
        return self.record_signature(
            version.ref, signing.key_id(key.public_key()), signing.sign(key, version)
        )

    def record_signature(self, ref: str, key_id: str, signature: str) -> dict[str, Any]:
        return dict(self._call("record_signature", ref, key_id, signature))

    def signatures(self, ref: str) -> tuple[list[str], list[str]]:
        valid, problems = self._call("signatures", ref)
        return list(valid), list(problems)

    def create_token(self, principal: str, **options: Any) -> dict[str, Any]:
        return dict(self._call("create_token", principal, **options))

    def authenticate(self, token: str | None) -> str:
        """The principal of ``token``, asked of the server with that token."""
        if not token:
            raise Unauthenticated("no API token given", hint="send Authorization: Bearer TOKEN")
        data = self._request("GET", "/whoami", headers={"Authorization": f"Bearer {token}"})
        return str(data["principal"])

    def roles(self, principal: str, model: str | None = None) -> tuple[str, ...]:
        params = {"principal": principal, **({"model": model} if model else {})}
        return tuple(self._request("GET", "/roles", params=params)["roles"])

    def revoke_token(self, prefix: str) -> None:
        self._call("revoke_token", prefix)

    def tokens(self) -> list[dict[str, Any]]:
        return list(self._call("tokens"))

    def store_stats(self) -> StoreStats:
        data = self._call("store_stats")
        return StoreStats(
            data["logical_bytes"],
            data["stored_bytes"],
            data["chunks"],
            data["packs"],
            data.get("extra") or {},
        )

    def gc(self, **options: Any) -> Any:
        from types import SimpleNamespace

        options.pop("progress", None)  # the server collects: nothing to draw here
        data = self._call("gc", **options)
        return _GcView(data, SimpleNamespace)

    # -- datasets ---------------------------------------------------------------------
    # Chunked here and uploaded through the blob gateway (straight to S3 where the
    # store presigns), as log_model does; the server validates, re-seals and numbers.

    def add_dataset(
        self,
        path: str | Path,
        name: str,
        *,
        notes: str = "",
        bump: str | None = None,
        tags: Mapping[str, str] | None = None,
        progress: bool = False,
    ) -> datasets.DatasetVersion:
        validate_model_name(name)
        values, pin = datasets.prepare_dataset(self.store, path, author=self.actor, notes=notes,
                                               tags=tags, progress=progress,
                                               newest=lambda: self.get_dataset(name).files)
        fields = {k: values[k] for k in ("tables", "source", "tags", "notes")}
        try:
            # Safe to repeat: the same bytes and metadata answer the version already added.
            version = self._new_version(f"/datasets/{quote(name)}/versions", fields,
                                        list(values["files"]), bump, datasets.DatasetVersion,
                                        retry=True)
        finally:
            self.store.release_pin(pin)
        return datasets.require_intact(version)

    def list_datasets(self) -> list[datasets.DatasetInfo]:
        return [datasets.DatasetInfo(**d) for d in self._call("list_datasets")]

    def dataset_versions(self, name: str) -> list[datasets.DatasetVersion]:
        listed = self._paged(f"/datasets/{quote(name)}/versions",
                             partial(self._listed, kind=datasets.DatasetVersion))
        # Checked against its digest where every list came; one whose large lists come
        # as lengths is checked when they are asked for (``get_dataset``).
        return [v if any(isinstance(f.chunks, DeferredChunkList) for f in v.files)
                else datasets.require_intact(v) for v in listed]

    def get_dataset(self, ref: str) -> datasets.DatasetVersion:
        # The server is not trusted to keep a manifest and its digest consistent.
        return datasets.require_intact(
            self._one_version("datasets", ref, datasets.DatasetVersion))

    def diff_datasets(self, old_ref: str, new_ref: str) -> dict[str, Any]:
        """Judged here: each side read with the caller's rights, changed chunks streamed."""
        return datasets_diff.diff_datasets(self, self.get_dataset(old_ref),
                                           self.get_dataset(new_ref))

    def promote_dataset(self, ref: str, alias: str, *, reason: str = "") -> AliasMove:
        return AliasMove(**self._call("promote_dataset", ref, alias, reason=reason))

    def download_dataset(self, ref: str, dest: str | Path, *, progress: bool = True) -> Path:
        """As ``Registry.download_dataset``: chunks fetched through the gateway, verified here."""
        target = loading.new_destination(dest)
        return loading.materialize(self, self.get_dataset(ref), target,  # type: ignore[arg-type]
                                   progress=progress)

    def open_dataset(self, ref: str, path: str) -> datasets_io.DatasetFile:
        """A streaming file: ranged reads of the chunks a read covers, via the gateway."""
        return datasets_io.open_file(self, ref, path)

    # -- client-side use cases, shared with the embedded registry -----------------
    # These only read versions and judge them here, so the same code serves both.

    diff = Registry.diff
    env_diff = Registry.env_diff
    env_verdict = Registry.env_verdict
    env_export = Registry.env_export
    lock_add = Registry.lock_add
    lock_update = Registry.lock_update
    check = Registry.check
    reproduce = Registry.reproduce


class _GcView:
    """A gc result received as JSON, with the attributes the CLI reads."""

    def __init__(self, data: dict[str, Any], namespace: Any) -> None:
        self.data = data
        self.expired = data["expired_versions"]
        self.kept_versions = data["kept_versions"]
        self.store = namespace(
            **{
                k: data[k]
                for k in (
                    "removed_chunks",
                    "removed_bytes",
                    "repacked_packs",
                    "kept_chunks",
                    "dry_run",
                )
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return self.data


def _event_content(event: Event) -> dict[str, Any]:
    data = event.to_dict()
    return {k: data[k] for k in ("id", "ts", "actor", "action", "model", "subject", "before",
                                 "after", "details")}


def connect(url: str, *, token: str | None = None, cache_dir: Path | None = None) -> RemoteRegistry:
    """A client of the Tether server at ``url`` (token: ``token=`` or ``TETHER_TOKEN``)."""
    return RemoteRegistry(url, token=token, cache_dir=cache_dir)
