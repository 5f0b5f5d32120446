"""Where store objects live: a local folder or an S3 bucket, behind one small interface.

Objects are immutable once written (packs, index files, pins), so every put is
"write somewhere private, then make visible at once": rename locally, a
single (multipart) upload on S3.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .._errors import Conflict, InvalidInput, NotFound, RangeNotSatisfiable, StoreError
from .._exchange_deadline import current, keeping, late_reason, was_late
from .fileio import write_synced
from .locking import SEP, owner_tag


def disk_full(error: OSError, where: Path | str) -> StoreError | None:
    """A StoreError saying the disk is full and where, for ENOSPC/EDQUOT; else None."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return StoreError(
        f"the disk is full: could not write {where} ({os.strerror(error.errno)})",
        hint="free space on that filesystem (`tether gc`, `tether cache prune`) and retry; "
        "what was already stored is unchanged")


class MalformedObject(StoreError, ValueError):
    """A store object that is not what the store writes there: not a regular file, or
    larger than any such object. A ValueError too: readers that skip a malformed index
    file skip it (`tether store verify` names it)."""


def open_regular(path: Path, key: str) -> int:
    """A read-only descriptor of the store object ``key`` at ``path``, a regular file.

    Opened without waiting, then refused unless regular: a named pipe put in place of
    a pack blocked every load and `tether store verify` for good (a review)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as error:
        raise NotFound(f"store object {key} is missing") from error  # (not where: a server
        # says this to its clients)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MalformedObject(
                f"store object {key} ({path}) is not a regular file",
                hint="remove it: the store writes only regular files")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(fd: int, key: str, limit: int) -> bytes:
    """All of ``fd`` (closed after), refused past ``limit`` bytes."""
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise MalformedObject(f"store object {key} is over {limit >> 20} MB, larger than "
                              "anything the store writes there: not read",
                              hint="`tether store verify` reports it; remove it")
    return data


def user_cache_dir() -> Path:
    """The user's Tether cache folder: ``TETHER_CACHE_DIR`` itself, else
    ``$XDG_CACHE_HOME/tether``, else ``~/.cache/tether``.

    ``TETHER_CACHE_DIR`` used to get ``tether/`` appended like ``XDG_CACHE_HOME``
    (the Kubernetes manifests' ``/var/cache/tether`` became ``/var/cache/tether/tether``).
    """
    if configured := os.environ.get("TETHER_CACHE_DIR", "").strip():
        return Path(configured).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME", "").strip():
        return Path(xdg).expanduser() / "tether"
    return Path.home() / ".cache" / "tether"


def scratch_root() -> Path:
    """Temporary files of a process with no store folder of its own go under the user's cache."""
    return user_cache_dir() / "tmp"


def require_room(size: int, folder: Path, what: str) -> None:
    """InvalidInput unless ``folder``'s disk has ``size`` bytes free for a copy of
    ``what``: a sparse file costs its source nothing and its copy every byte (one of a
    TB filled the disk: a review)."""
    free = shutil.disk_usage(folder).free
    if size > free:
        raise InvalidInput(f"{what} is {size} bytes, more than the {free} free where it "
                           "would be copied",
                           hint="free space, or set TETHER_CACHE_DIR to a larger disk")


def owner_scratch(cache_dir: Path, kind: str) -> dict[str, Any]:
    """``tempfile`` arguments for scratch under ``cache_dir/tmp``, named for this process:
    what a killed process leaves there, the next ingest or `tether gc` removes."""
    folder = cache_dir / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return {"prefix": f"{kind}-{owner_tag()}{SEP}", "dir": str(folder)}


def make_temp(folder: Path, kind: str) -> tuple[int, Path]:
    """A private temporary file under ``folder`` named for its owner (see locking.Owner)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=f"{kind}-{owner_tag()}{SEP}")
    except OSError as error:
        raise disk_full(error, folder) or error from error
    return fd, Path(name)


#: Seconds a store transfer keeps retrying transient failures (TETHER_RETRY_SECONDS).
DEFAULT_RETRY_SECONDS = 30.0


def retry_seconds() -> float:
    """How long transfers retry through an outage: TETHER_RETRY_SECONDS, else 30 (0: never)."""
    raw = os.environ.get("TETHER_RETRY_SECONDS", "")
    if not raw.strip():
        return DEFAULT_RETRY_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if seconds != seconds:  # not a number: it was 30 without a word (a review)
        raise InvalidInput(f"TETHER_RETRY_SECONDS is {raw[:40]!r}, not a number of seconds",
                           hint="set it to a number (0: never retry), or unset it")
    return max(0.0, seconds)


#: Most bytes of one pin read whole (packs and merged indexes go by range).
MAX_WHOLE_READ = 4 << 30
#: Most bytes of any other object read whole (leases, journal index files: a few KB).
MAX_SMALL_READ = 256 << 20
#: Most objects one listing returns (a store of that many packs holds 30 TB and more) ...
MAX_LISTED = 1_000_000
#: ... and most pages it may take (S3 answers up to 1,000 keys a page), and pages in a
#: row that list nothing under the prefix.
MAX_PAGES = 100_000
MAX_IDLE_PAGES = 100


class TransientStoreError(StoreError):
    """A store request failed in a way that may pass (connection lost, 5xx, throttled)."""


_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable",
                    "SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "Throttling"}


def _is_transient(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is a lost connection or a server-side 5xx."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectionError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    seen = 0
    while error is not None and seen < 8:
        seen += 1
        if isinstance(error, ConnectionError | EndpointConnectionError | ConnectionClosedError
                      | ReadTimeoutError | ConnectionResetError | BrokenPipeError):
            return True
        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            return code in _TRANSIENT_CODES or status.startswith("5")
        error = error.__cause__ or error.__context__
    return False


def _reason(error: BaseException) -> str:
    """What went wrong, in words: a call held past its deadline says so (botocore
    reports it as a read timeout or a closed connection)."""
    if was_late(error):
        return f"the endpoint answered too slowly: {late_reason(error)}"
    return str(error)


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    mtime: float


class Blobs(Protocol):
    url: str
    is_local: bool

    def temp_file(self) -> tuple[int, Path]: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes | bytearray) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_range(self, key: str, offset: int, length: int) -> bytes: ...
    def list(self, prefix: str) -> list[BlobInfo]: ...
    def delete(self, key: str) -> None: ...
    def local_path(self, key: str) -> Path | None: ...


class LocalBlobs:
    is_local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key

    def temp_file(self) -> tuple[int, Path]:
        return make_temp(self.root / "tmp", "upload")

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(path, target)
        except OSError as error:
            path.unlink(missing_ok=True)
            raise disk_full(error, target) or error from error
        _fsync_dir(target.parent)

    def put_file_new(self, key: str, path: Path) -> None:
        """Like ``put_file``, but never replaces an existing object (Conflict instead)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        try:
            os.link(path, target)  # atomic, and fails if the name is taken
        except FileExistsError as error:
            raise Conflict(f"{key} already exists; stored objects are never overwritten") \
                from error
        finally:
            path.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def move(self, key: str, dest: str) -> None:
        """Rename ``key`` to ``dest`` (quarantine); NotFound if ``key`` is gone."""
        source, target = self._path(key), self._path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError as error:
            raise NotFound(f"store object {key} is missing from {self.root}") from error
        _fsync_dir(target.parent)
        _fsync_dir(source.parent)

    def put_bytes(self, key: str, data: bytes | bytearray) -> None:
        fd, tmp = self.temp_file()
        try:
            write_synced(fd, data)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise disk_full(error, self._path(key)) or error from error
        self.put_file(key, tmp)

    def get_bytes(self, key: str) -> bytes:
        # As a bucket's: an 8 GB file planted under index/ was read whole (a review).
        limit = MAX_WHOLE_READ if key.startswith("pins/") else MAX_SMALL_READ
        return read_bounded(open_regular(self._path(key), key), key, limit)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        fd = open_regular(self._path(key), key)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def list(self, prefix: str) -> list[BlobInfo]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        found = []
        for entry in os.scandir(folder):
            try:
                if entry.is_file():
                    st = entry.stat()
                    found.append(BlobInfo(f"{prefix}{entry.name}", st.st_size, st.st_mtime))
            except FileNotFoundError:
                continue  # removed while listing (a merge replaced it): not there any more
        return found

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class S3Blobs:
    """An S3 bucket/prefix via boto3 (endpoint from TETHER_S3_ENDPOINT_URL if set)."""

    is_local = False
    #: Where upload temp files go (the ChunkStore sets its cache's tmp folder).
    tmp_dir: Path | None = None

    def __init__(self, bucket: str, prefix: str, *, multipart_threshold: int = 16 << 20,
                 max_attempts: int = 3, read_timeout: float = 30.0) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        from .s3_deadline import guard_client

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        # A request waits at most read_timeout for each byte, and boto3 sends it
        # max_attempts times in all before _retrying (bounded by TETHER_RETRY_SECONDS,
        # and around every call) takes over. With 8 of 60 s, an endpoint that accepted
        # connections and never answered held a call for 8 minutes; now 3 of 30 s.
        # (The wait is not scaled to the retry budget: a slow "complete" of a large
        # multipart upload can legitimately take many seconds.)
        # SigV4: a presigned URL then signs the headers it needs (If-None-Match on PUT).
        config = Config(retries={"total_max_attempts": max_attempts, "mode": "standard"},
                        max_pool_connections=32, connect_timeout=5, read_timeout=read_timeout,
                        signature_version="s3v4")
        #: The endpoint (TETHER_S3_ENDPOINT_URL; empty: AWS): the URL does not name it.
        self.endpoint = os.environ.get("TETHER_S3_ENDPOINT_URL") or ""
        self.client: Any = boto3.client("s3", endpoint_url=self.endpoint or None, config=config)
        # read_timeout bounds each read; a whole call (boto3's tries of it and the body
        # read after it) keeps to twice that plus its bytes at 64 KB/s (s3_deadline), and
        # _retrying tries it again only within TETHER_RETRY_SECONDS.
        guard_client(self.client, 2 * read_timeout)
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=max(multipart_threshold, 5 << 20),
                                       max_concurrency=4)
        self.requests = 0  # GETs issued, for tests and progress
        self.retries = 0  # transfers tried again after a transient failure

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return func(*args, **kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"store object {what} is missing from {self.url}") from error
            if code == "InvalidRange":
                raise RangeNotSatisfiable(f"S3 {what}: the range starts past the object's "
                                          "end") from error
            if code == "NoSuchBucket":
                raise StoreError(f"bucket {self.bucket} does not exist",
                                 hint="create it, or fix the store URL") from error
            cls = TransientStoreError if _is_transient(error) else StoreError
            raise cls(f"S3 {what} failed: {code or error}",
                      hint="check the endpoint, credentials and bucket") from error
        except BotoCoreError as error:
            cls = TransientStoreError if _is_transient(error) else StoreError
            raise cls(f"S3 {what} failed: {_reason(error)}",
                      hint="check TETHER_S3_ENDPOINT_URL / AWS settings and the network"
                      ) from error

    def _retrying(self, what: str, attempt: Any) -> Any:
        """``attempt()``, tried again on transient failures for ``retry_seconds()``.

        boto3 retries each request a few times itself; this carries a transfer
        through a longer outage (an endpoint restarting), resending one object.
        """
        budget = retry_seconds()
        started = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                return attempt()
            except TransientStoreError:
                remaining = budget - (time.monotonic() - started)
                if remaining <= 0.05:
                    raise
                self.retries += 1
                time.sleep(min(remaining, min(5.0, 0.2 * 2 ** min(tries - 1, 8))))

    def temp_file(self) -> tuple[int, Path]:
        return make_temp(self.tmp_dir or scratch_root(), "upload")

    def put_file(self, key: str, path: Path) -> None:
        def attempt() -> None:
            try:
                self._call(f"upload of {key}", self.client.upload_file, str(path), self.bucket,
                           self._key(key), Config=self.transfer)
            except Exception as error:  # boto3's transfer manager wraps errors its own way
                if isinstance(error, StoreError | NotFound):
                    raise
                cls = TransientStoreError if _is_transient(error) else StoreError
                raise cls(f"S3 upload of {key} failed: {_reason(error)}",
                          hint="retry; chunks already stored are skipped") from error

        try:
            self._retrying(f"upload of {key}", attempt)
        finally:
            path.unlink(missing_ok=True)

    def put_file_new(self, key: str, path: Path) -> None:
        """Like ``put_file``, but never replaces an existing object (Conflict instead):
        one conditional PUT (``If-None-Match: *``, as presigned uploads are signed).
        A server's gateway stores uploads this way: with ``put_file`` a second upload
        of a pack, racing the first, replaced the bytes its index was checked against."""
        import hashlib

        from botocore.exceptions import ClientError

        def ours() -> bool:
            """Whether the object there now is this file (single-part: its ETag is the
            MD5): a try whose answer was lost stored it, boto3 sent it again (its own
            retries rewind the body), and the second PUT was refused."""
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            if int(head.get("ContentLength", -1)) != path.stat().st_size:
                return False
            digest = hashlib.md5(usedforsecurity=False)
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            return str(head.get("ETag", "")).strip('"') == digest.hexdigest()

        def put(handle: Any) -> None:
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=handle,
                                       IfNoneMatch="*")
            except ClientError as error:
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = error.response.get("Error", {}).get("Code", "")
                # 412: it exists; 409: another conditional PUT of it is under way.
                if status not in (409, 412) and code not in (
                        "PreconditionFailed", "ConditionalRequestConflict"):
                    raise
                if status == 412 and ours():
                    return
                raise Conflict(f"{key} already exists; stored objects are never "
                               f"overwritten") from None

        def attempt() -> None:
            with open(path, "rb") as handle:
                self._call(f"upload of {key}", put, handle)

        try:
            self._retrying(f"upload of {key}", attempt)
        finally:
            path.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes | bytearray) -> None:
        self._retrying(f"upload of {key}", lambda: self._call(
            f"upload of {key}", self.client.put_object, Bucket=self.bucket,
            Key=self._key(key), Body=data))

    def _read(self, key: str, limit: int, **extra: Any) -> bytes:
        """The object (or range) read whole, at most ``limit`` bytes: one past it is a
        StoreError (a range answered with an endless body took a client past 1.5 GB: a
        review), but for a range, whose caller checks the length it asked for (a lying
        location: another copy is tried)."""
        def attempt() -> bytes:
            body = self._call(f"download of {key}", self.client.get_object, Bucket=self.bucket,
                              Key=self._key(key), **extra)["Body"]
            deadline = current()
            try:
                with keeping(deadline):
                    data = bytes(self._call(f"download of {key}", body.read, limit + 1))
            finally:
                body.close()
            if len(data) > limit and "Range" not in extra:  # a range's caller checks it
                raise StoreError(f"S3 download of {key} answered more than the {limit} "
                                 "bytes asked for or allowed; stopped reading",
                                 hint="is the store URL an S3 endpoint?")
            return data

        self.requests += 1
        return self._retrying(f"download of {key}", attempt)  # type: ignore[no-any-return]

    def get_bytes(self, key: str) -> bytes:
        # A pin lists a large version's chunks (1.6 GB for 1.5 TB); the rest are small.
        return self._read(key, MAX_WHOLE_READ if key.startswith("pins/") else MAX_SMALL_READ)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._read(key, length + 1, Range=f"bytes={offset}-{offset + length - 1}")

    def get_range_into(self, key: str, offset: int, view: memoryview) -> int:
        """``get_range`` read into ``view`` (a buffer reused run after run); bytes read."""
        def attempt() -> int:
            body = self._call(f"download of {key}", self.client.get_object, Bucket=self.bucket,
                              Key=self._key(key),
                              Range=f"bytes={offset}-{offset + len(view) - 1}")["Body"]
            deadline = current()
            filled = 0
            try:
                while filled < len(view):
                    with keeping(deadline):
                        piece = self._call(f"download of {key}", body.read,
                                           min(1 << 20, len(view) - filled))
                    if not piece:
                        break
                    view[filled:filled + len(piece)] = piece
                    filled += len(piece)
            finally:
                body.close()
            return filled

        self.requests += 1
        return int(self._retrying(f"download of {key}", attempt))

    def iter_range(self, key: str, offset: int, length: int,
                   block: int = 1 << 20) -> Iterator[bytes]:
        """``length`` bytes of ``key`` from ``offset``, streamed in blocks (never all at once)."""
        self.requests += 1
        body = self._retrying(f"download of {key}", lambda: self._call(
            f"download of {key}", self.client.get_object, Bucket=self.bucket, Key=self._key(key),
            Range=f"bytes={offset}-{offset + length - 1}")["Body"])
        # Read on by whoever iterates, at their pace, on any thread (a server streams it
        # from worker threads): each read keeps to this call's deadline, pauses not counted.
        deadline = current()
        if deadline is not None:
            deadline.pause()
        left = length  # never more than asked for (an endless body was streamed on)
        try:
            while left > 0:
                with keeping(deadline):
                    piece = self._call(f"download of {key}", body.read, min(block, left))
                if not piece:
                    return
                left -= len(piece)
                yield bytes(piece)
        finally:
            body.close()

    def list(self, prefix: str) -> list[BlobInfo]:
        """Every object under ``prefix``. The endpoint's answer is checked: keys outside
        the prefix are left out (one that ignored it had gc delete every pack as a
        leftover: a review), malformed entries are a StoreError, and a listing longer
        than ``MAX_LISTED`` (an endless ``IsTruncated``) is refused."""
        wanted = self._key(prefix)

        def attempt() -> list[BlobInfo]:
            found: list[BlobInfo] = []
            seen = idle = 0
            paginator = self.client.get_paginator("list_objects_v2")
            for pages, page in enumerate(paginator.paginate(Bucket=self.bucket, Prefix=wanted),
                                         start=1):
                # Pages and entries are counted as they come, kept or not: an endpoint
                # answering empty pages, or keys outside the prefix, marked truncated
                # without end, kept a listing going forever (a review). S3 fills every
                # page but the last with keys under the prefix.
                seen += len(page.get("Contents", []))
                kept = len(found)
                if pages > MAX_PAGES or seen > MAX_LISTED or idle > MAX_IDLE_PAGES:
                    raise StoreError(f"S3 listing {prefix}: more than {MAX_LISTED} objects, "
                                     f"{MAX_PAGES} pages or {MAX_IDLE_PAGES} pages without "
                                     "an object under the prefix",
                                     hint="the endpoint may be paging without end")
                for obj in page.get("Contents", []):
                    try:
                        full, size = str(obj["Key"]), int(obj["Size"])
                        mtime = obj["LastModified"].timestamp()
                    except (KeyError, TypeError, ValueError, AttributeError) as error:
                        raise StoreError(f"S3 listing {prefix}: a malformed entry ({error!r})",
                                         hint="is the store URL an S3 endpoint?") from None
                    if full.startswith(wanted):
                        found.append(BlobInfo(full[len(self.prefix):], size, mtime))
                idle = idle + 1 if len(found) == kept else 0
            return found

        return self._retrying(f"listing {prefix}",  # type: ignore[no-any-return]
                              lambda: self._call(f"listing {prefix}", attempt))

    def size(self, key: str) -> int:
        """The size of ``key`` (one HEAD request); NotFound if it is not there."""
        head = self._retrying(f"size of {key}", lambda: self._call(
            f"size of {key}", self.client.head_object, Bucket=self.bucket, Key=self._key(key)))
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        # Retried like every other call: boto3's own few tries end within seconds when
        # the endpoint refuses connections (restarting, or overloaded).
        self._retrying(f"delete of {key}", lambda: self._call(
            f"delete of {key}", self.client.delete_object, Bucket=self.bucket,
            Key=self._key(key)))

    def local_path(self, key: str) -> Path | None:
        return None

    def move(self, key: str, dest: str) -> None:
        """Copy ``key`` to ``dest`` inside the bucket, then delete ``key`` (quarantine)."""
        self._retrying(f"copy of {key}", lambda: self._call(
            f"copy of {key}", self.client.copy_object, Bucket=self.bucket, Key=self._key(dest),
            CopySource={"Bucket": self.bucket, "Key": self._key(key)}))
        self.delete(key)

    def presign(self, key: str, method: str, expires: int = 3600) -> str:
        """A URL the client uses directly (GET with a Range header, or PUT).

        A PUT URL is signed with ``If-None-Match: *`` (the client must send that
        header, or S3 refuses the signature): S3 overwrites by default, so a PUT URL
        kept past its first use could rewrite a pack after its index was checked
        against it (a review showed it: another model's deduplicated bytes were lost).
        """
        operation = "get_object" if method == "GET" else "put_object"
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if method == "PUT":
            params["IfNoneMatch"] = "*"
        url: str = self._call(f"presigning {key}", self.client.generate_presigned_url, operation,
                              Params=params, ExpiresIn=expires)
        return url

    def now(self) -> float:
        return time.time()
